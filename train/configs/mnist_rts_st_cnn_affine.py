"""ST-CNN (affine) on RTS MNIST (42×42): the README's main experiment.

Sized to train in a few minutes on a 2-core CPU: 1000 steps of 64 (about 1.2 epochs
of the 55,200 training digits, distorted afresh every step), AdamW with warm-up and
cosine decay. The paper-sized run is ``mnist_rts_st_cnn_affine_paper``.
"""

from train.configs import base


def get_config():
    c = base.mnist("RTS", "st_cnn_affine")
    c.batch_size = 64
    c.steps = 1000
    c.warmup_steps = 50
    c.eval_every = 250
    c.checkpoint_every = 250
    return c
