"""ST-CNN Multi on SVHN cropped digits: a transformer before each of the first 4 conv layers."""

from train.configs import svhn_cnn


def get_config():
    c = svhn_cnn.get_config()
    c.model = "svhn_st_cnn_multi"
    return c
