"""ST-CNN (affine) on undistorted MNIST."""

from train.configs import base


def get_config():
    return base.mnist("none", "st_cnn_affine")
