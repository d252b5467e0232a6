"""The smallest useful run (for tests): a narrow ST-CNN on a few undistorted MNIST batches."""

import ml_collections

from train.configs import base


def get_config():
    c = base.mnist("none", "st_cnn_affine")
    c.model_kwargs = ml_collections.ConfigDict({"channels": (4, 4)})
    c.batch_size = 8
    c.steps = 6
    c.warmup_steps = 2
    c.eval_every = 3
    c.eval_batch_size = 8
    c.log_every = 2
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    c.num_show = 4
    return c
