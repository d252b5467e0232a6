"""ST-CNN (affine) on translated and cluttered MNIST (TC, 60×60)."""

from train.configs import base


def get_config():
    return base.mnist("TC", "st_cnn_affine")
