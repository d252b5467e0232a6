"""The paper's recipe for ST-CNN (affine) on RTS MNIST: SGD, lr 0.01 ÷10 at fixed steps, 0.1× localisation."""

from train.configs import base


def get_config():
    c = base.paper_sgd(base.mnist("RTS", "st_cnn_affine"))
    c.steps = 30_000
    c.batch_size = 256
    c.lr_drops = (0.5, 0.75)
    c.eval_every = 2000
    c.checkpoint_every = 1000
    return c
