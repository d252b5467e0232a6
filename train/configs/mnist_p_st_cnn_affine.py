"""ST-CNN (affine) on projectively distorted MNIST (P)."""

from train.configs import base


def get_config():
    return base.mnist("P", "st_cnn_affine")
