"""CNN on rotated MNIST (R, ±90°)."""

from train.configs import base


def get_config():
    return base.mnist("R", "cnn")
