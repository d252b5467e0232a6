"""ST-CNN (thin-plate spline, 4×4) on RTS MNIST (42×42)."""

from train.configs import base


def get_config():
    return base.mnist("RTS", "st_cnn_tps")
