"""What a run builds from its config: the model, and the jitted functions that initialise and train it.

Config-bound wrappers of :mod:`train.step`, which holds the jitted functions without a config
(the train step's body, evaluation, the transformer's output) for ``benchmarks/loop_speed.py`` too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import ml_collections
import optax
from flax import nnx

from stn_jax.models import build_model
from train import datasets, optim
from train import step as step_lib
from train.errors import ConfigError


def build(config: ml_collections.ConfigDict) -> nnx.Module:
    """The config's model for its dataset's input (:func:`train.datasets.input_spec`), seeded with ``config.seed``."""
    shape, classes = datasets.input_spec(config)
    try:
        return build_model(config.model, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(config.seed),
                           **config.model_kwargs.to_dict())  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {config.model!r} with model_kwargs={config.model_kwargs.to_dict()}: {err}") from err


def preprocess(config: ml_collections.ConfigDict, key: jax.Array, images: jax.Array, labels: jax.Array):
    """A training batch on the device → (model input, labels): the dataset's preprocessing with its distortion,
    or with ``train_distortion="fixed"`` the stored (already distorted) images, scaled, whatever the key."""
    if config.train_distortion == "fixed":
        return datasets.scaled(images, labels)
    return datasets.of(config).preprocess(config.distortion, key, images, labels)


def make_init(config: ml_collections.ConfigDict, tx: optax.GradientTransformation, replicated) -> Callable:
    """``init() -> {"params", "opt_state", "other"}``, one jitted call, replicated.

    One compilation instead of one per initialiser op (eager construction of the bigger
    models costs tens of seconds on CPU), and every process computes the same values
    straight into the global replicated layout. ``jax.eval_shape(init)`` gives what a
    restore needs without compiling it.
    """

    def init():
        _, params, _, other = nnx.split(build(config), nnx.Param, nnx.RngState, ...)
        return {"params": params, "opt_state": tx.init(params), "other": other}

    return jax.jit(init, out_shardings=replicated)


def make_train_step(config: ml_collections.ConfigDict, graphdef, rng_state, tx: optax.GradientTransformation, *,
                    replicated, batch) -> Callable:  # fmt: skip
    """``step(params, opt_state, other, images, labels, step) -> (params, opt_state, metrics)``
    (:func:`train.step.make_train_step` with the config's seed, preprocessing, schedule and label smoothing).

    A non-finite loss or gradient leaves params and optimiser state unchanged (the host
    then stops or skips, per ``config.nonfinite``).
    """
    return step_lib.make_train_step(graphdef, rng_state, tx, seed=config.seed,
                                    preprocess=functools.partial(preprocess, config),
                                    schedule=optim.schedule(config), replicated=replicated, batch=batch,
                                    label_smoothing=config.label_smoothing)  # fmt: skip
