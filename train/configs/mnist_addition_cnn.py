"""CNN baseline for MNIST addition (two RTS digits as 2 channels, 19 classes)."""

from train.configs import base


def get_config():
    return base.mnist("addition", "cnn")
