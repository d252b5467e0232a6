"""What a run builds: its model, the mesh, and the jitted functions that initialise, train and evaluate it.

Everything here takes plain arguments, unpacked from the config once at the top of the run
(:func:`train.train.train_and_evaluate`); nothing jitted sees the config. :mod:`train.step` holds the
jitted functions themselves (the train step's body, the chunk of steps, evaluation, the transformer's output).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
from flax import nnx

from stn_jax.models import build_model
from train import configs, datasets, input_pipeline, optimizer
from train import step as step_lib
from train.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model keys of a config (:data:`train.configs.base.KEYS` has their docs and checks)."""

    model: str
    model_kwargs: dict
    dataset: str
    distortion: str
    train_distortion: str
    seed: int


def model_factory(spec: ModelSpec) -> Callable[[], nnx.Module]:
    """``make() -> nnx.Module``: the model for the dataset's input with its distortion, seeded with ``spec.seed``.

    Bad ``model_kwargs`` raise :class:`ConfigError` from ``make()``."""
    shape, classes = datasets.DATASETS[spec.dataset].input_spec(spec.distortion)

    def make() -> nnx.Module:
        try:
            return build_model(
                spec.model, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(spec.seed), **spec.model_kwargs
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model {spec.model!r} with model_kwargs={spec.model_kwargs}: {err}") from err

    return make


def build(config: ml_collections.ConfigDict) -> nnx.Module:
    """The model of ``config``, as its run builds it (to restore a run's parameters into, or to look at)."""
    return model_factory(configs.unpack(config, ModelSpec))()


def training_input(spec: ModelSpec) -> Callable:
    """``preprocess(key, images, labels) -> (model input, labels)`` of a training batch on the device: the
    dataset's preprocessing with its distortion, or with ``train_distortion="fixed"`` the stored, already
    distorted images, scaled, whatever the key."""
    if spec.train_distortion == "fixed":
        return lambda key, images, labels: datasets.scaled(images, labels)
    return functools.partial(datasets.DATASETS[spec.dataset].preprocess, spec.distortion)


class Functions(NamedTuple):
    """A run's mesh layouts and jitted functions (:func:`functions`)."""

    platform: str  # of the devices: "cpu", "gpu", "tpu"
    replicated: jax.sharding.NamedSharding  # parameters, optimiser state, metrics
    batch: jax.sharding.NamedSharding  # the leading axis split over "data"
    init: Callable  # () -> {"params", "opt_state", "other"}, replicated
    train_chunk: Callable  # K steps per dispatch (train.step.make_train_chunk)
    eval_step: Callable
    transform: Callable | None  # None: the model has no transformer
    eval_params: Callable  # (params, opt_state) -> what evaluation, pictures and the returned params use


def functions(spec: ModelSpec, recipe: optimizer.Recipe, *, label_smoothing: float) -> Functions:
    """The mesh over every device and the jitted functions of the model of ``spec`` on it; nothing compiled.

    ``init`` is one jitted call: one compilation instead of one per initialiser op (eager construction of
    the bigger models costs tens of seconds on CPU), every process computing the same values straight into
    the replicated layout; ``jax.eval_shape(init)`` gives what a restore needs without compiling it.
    """
    # Auto axes: XLA propagates shardings through the model (JAX 0.10's default, Explicit,
    # makes every scatter in the library ask for an out_sharding).
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = input_pipeline.data_sharding(mesh)
    make_model = model_factory(spec)
    model = nnx.eval_shape(make_model)  # shapes only: bad model_kwargs fail here
    graphdef, _, rng_state, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tx = optimizer.chain(recipe)

    def init():
        _, params, _, other = nnx.split(make_model(), nnx.Param, nnx.RngState, ...)
        return {"params": params, "opt_state": tx.init(params), "other": other}

    step = step_lib.make_train_step(
        graphdef,
        rng_state,
        tx,
        seed=spec.seed,
        preprocess=training_input(spec),
        schedule=optimizer.schedule(recipe),
        label_smoothing=label_smoothing,
    )
    platform = mesh.devices.flat[0].platform
    stepwise = step_lib.stepwise_chunks(platform)
    return Functions(
        platform=platform,
        replicated=replicated,
        batch=batch,
        init=jax.jit(init, out_shardings=replicated),
        train_chunk=step_lib.make_train_chunk(step, replicated=replicated, batch=batch, stepwise=stepwise),
        eval_step=step_lib.make_eval_step(graphdef, rng_state, replicated=replicated, batch=batch),
        transform=step_lib.make_transform(graphdef, rng_state, replicated=replicated)
        if model.has_transformer
        else None,
        # The weights' average with ema_decay, else the weights.
        eval_params=jax.jit(functools.partial(optimizer.eval_params, recipe.ema_decay), out_shardings=replicated),
    )
