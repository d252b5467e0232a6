"""The colour-image tutorial STN (localisation conv 7×7 64 → conv 5×5 128 → FC 256) on SVHN cropped digits."""

import ml_collections

from train.configs import svhn_cnn


def get_config():
    c = svhn_cnn.get_config()
    c.model = "colour_stn"
    c.model_kwargs = ml_collections.ConfigDict()
    return c
