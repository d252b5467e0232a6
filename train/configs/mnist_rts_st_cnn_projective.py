"""ST-CNN (projective) on RTS MNIST (42×42)."""

from train.configs import base


def get_config():
    return base.mnist("RTS", "st_cnn_projective")
