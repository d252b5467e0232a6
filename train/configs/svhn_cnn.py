"""Goodfellow et al.'s CNN (width 0.25) on SVHN cropped digits (32×32×3, single digit)."""

import ml_collections

from train.configs import base


def get_config():
    c = base.base_config()
    c.dataset = "svhn"
    c.model = "svhn_cnn"
    c.model_kwargs = ml_collections.ConfigDict({"width": 0.25})
    c.prepare = False  # no offline copy of SVHN: python -m train.prepare svhn --from DIR
    c.train_split = "train"
    c.val_split = "test[:20%]"
    c.test_split = "test[20%:]"
    c.steps = 20_000
    c.learning_rate = 1e-3
    return c
