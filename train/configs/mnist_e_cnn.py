"""CNN on elastically distorted MNIST (E)."""

from train.configs import base


def get_config():
    return base.mnist("E", "cnn")
