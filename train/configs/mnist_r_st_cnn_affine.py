"""ST-CNN (affine) on rotated MNIST (R)."""

from train.configs import base


def get_config():
    return base.mnist("R", "st_cnn_affine")
