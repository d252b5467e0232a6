"""CNN on rotated, translated and scaled MNIST (RTS, 42×42)."""

from train.configs import base


def get_config():
    return base.mnist("RTS", "cnn")
