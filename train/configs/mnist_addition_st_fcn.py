"""ST-FCN (affine, one transformer) for MNIST addition: the paper's single-transformer row."""

from train.configs import base


def get_config():
    return base.mnist("addition", "st_fcn_affine")
