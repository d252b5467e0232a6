"""What a run builds from its config: the model, and the jitted functions that initialise and train it.

Config-bound wrappers of :mod:`train.step`, which holds the jitted functions without a config
(the train step's body, evaluation, the transformer's output) for ``benchmarks/loop_speed.py`` too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import optax
from flax import nnx

from stn_jax.models import build_model
from train import data, datasets, optim
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


def make_train_chunk(config: ml_collections.ConfigDict, graphdef, rng_state, tx: optax.GradientTransformation, *,
                     replicated, batch) -> Callable:  # fmt: skip
    """``chunk(params, opt_state, other, dataset, xs, first) -> (params, opt_state, metrics)``: steps of
    :func:`train.step.make_train_step` with the config's seed, preprocessing, schedule and label smoothing, as
    many per dispatch as ``xs`` holds (:func:`train.step.make_train_chunk`).

    A non-finite loss or gradient leaves params and optimiser state unchanged (the host
    then stops or skips, per ``config.nonfinite``).
    """
    step = step_lib.make_train_step(graphdef, rng_state, tx, seed=config.seed,
                                    preprocess=functools.partial(preprocess, config), schedule=optim.schedule(config),
                                    label_smoothing=config.label_smoothing)  # fmt: skip
    stepwise = step_lib.stepwise_chunks(replicated.mesh.devices.flat[0].platform)
    return step_lib.make_train_chunk(step, replicated=replicated, batch=batch, stepwise=stepwise)


class Functions(NamedTuple):
    """A run's mesh layouts and jitted functions (:func:`functions`)."""

    replicated: jax.sharding.NamedSharding  # parameters, optimiser state, metrics
    batch: jax.sharding.NamedSharding  # the leading axis split over "data"
    init: Callable
    train_chunk: Callable  # K steps per dispatch (train.step.make_train_chunk)
    eval_step: Callable
    transform: Callable | None  # None: the model has no transformer
    eval_params: Callable  # (params, opt_state) -> what evaluation, pictures and the returned params use


def functions(config: ml_collections.ConfigDict, model: nnx.Module) -> Functions:
    """The mesh over every device and the jitted functions of ``model`` (abstract) on it; nothing compiled yet."""
    # Auto axes: XLA propagates shardings through the model (JAX 0.10's default, Explicit,
    # makes every scatter in the library ask for an out_sharding).
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = data.data_sharding(mesh)
    graphdef, _, rng_state, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tx = optim.optimizer(config)
    transform = step_lib.make_transform(graphdef, rng_state, replicated=replicated) if model.has_transformer else None
    return Functions(
        replicated=replicated,
        batch=batch,
        init=make_init(config, tx, replicated),
        train_chunk=make_train_chunk(config, graphdef, rng_state, tx, replicated=replicated, batch=batch),
        eval_step=step_lib.make_eval_step(graphdef, rng_state, replicated=replicated, batch=batch),
        transform=transform,
        # The weights' average with ema_decay, else the weights.
        eval_params=jax.jit(functools.partial(optim.eval_params, config), out_shardings=replicated),
    )
