"""2×ST-FCN (affine) for MNIST addition: each transformer sees both channels."""

from train.configs import base


def get_config():
    return base.mnist("addition", "st_fcn_addition")
