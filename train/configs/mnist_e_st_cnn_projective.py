"""ST-CNN (projective) on elastically distorted MNIST (E)."""

from train.configs import base


def get_config():
    return base.mnist("E", "st_cnn_projective")
