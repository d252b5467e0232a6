"""The jitted functions of a model, without a config: the train step and the chunk of steps that ``train.train``
compiles (through :mod:`train.compiled`) and ``benchmarks/loop_speed.py`` times, the evaluation step and the
transformer's output.

Imports JAX, Flax and Optax only (no TFDS, grain, orbax or ml_collections), so a
benchmark can build the real step on a machine that has nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def rngs(abstract_rng_state: Any) -> Any:
    """Concrete RNG variables made inside the current trace (NNX only reseeds its own trace's).

    Their values never matter: training reseeds dropout with the step's key, evaluation
    is deterministic.
    """

    def make(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jnp.zeros(x.shape, x.dtype)

    return jax.tree.map(make, abstract_rng_state)


def finite(tree: Any) -> jax.Array:
    """True where every leaf of ``tree`` is finite everywhere."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(
    graphdef,
    rng_state,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    preprocess: Callable,
    schedule: optax.Schedule,
    label_smoothing: float = 0.0,
) -> Callable:
    """``step(params, opt_state, other, images, labels, step) -> (params, opt_state, metrics)``, not jitted:
    the body that :func:`make_train_chunk` scans (and ``benchmarks/loop_speed.py`` jits alone).

    Step ``s`` (0-based) draws its keys from ``fold_in(fold_in(key(seed), 1), s)``:
    ``preprocess(key, images, labels) -> (x, y)`` (the distortion), then dropout. A
    non-finite loss or gradient leaves params and optimiser state unchanged and sets
    ``metrics["finite"]`` to False (the host then stops or skips). ``metrics`` also holds
    ``loss``, ``accuracy``, ``grad_norm`` and ``learning_rate`` (``schedule(step)``).
    With ``label_smoothing`` the loss is against labels smoothed by that much.
    """
    root = jax.random.fold_in(jax.random.key(seed), 1)

    def step_fn(params, opt_state, other, images, labels, step):
        k_distort, k_dropout = jax.random.split(jax.random.fold_in(root, step))
        x, y = preprocess(k_distort, images, labels)

        def loss_fn(p):
            # A copy made inside this trace: NNX refuses to reseed variables of an outer trace.
            model = nnx.merge(graphdef, p, rngs(rng_state), other)
            nnx.reseed(model, default=k_dropout)
            logits = model(x, train=True)
            if label_smoothing:
                targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype), label_smoothing)
                return optax.softmax_cross_entropy(logits, targets).mean(), logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        out = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": jnp.asarray(schedule(step), jnp.float32),  # a constant schedule gives a float
            "finite": ok,
        }
        return keep(new_params, params), keep(new_opt_state, opt_state), out

    return step_fn


def chunk_sharding(batch: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """A chunk's per-step inputs ``(K, B, ...)``: the steps axis whole, the batch axis split like ``batch``."""
    return jax.sharding.NamedSharding(batch.mesh, jax.sharding.PartitionSpec(None, *batch.spec))


def stepwise_chunks(platform: str) -> bool:
    """Whether a chunk's steps are dispatched one at a time rather than scanned on ``platform``: on a CPU, where
    XLA runs the convolutions of a loop body an order of magnitude slower than the same outside a loop
    (measured here: 165 vs 10 ms a step of the CNN at batch 16; jax-ml/jax#12868), and where one dispatch
    per step already reaches 0.88 of the bare step."""
    return platform == "cpu"


def default_steps_per_dispatch(platform: str) -> int:
    """``steps_per_dispatch=0``'s value: 32 on an accelerator, 1 on a CPU (:func:`stepwise_chunks`)."""
    return 1 if stepwise_chunks(platform) else 32


def make_train_chunk(step_fn: Callable, *, replicated, batch, stepwise: bool = False) -> Callable:
    """``chunk(params, opt_state, other, dataset, xs, first) -> (params, opt_state, metrics)``: ``K`` steps of
    ``step_fn`` (:func:`make_train_step`) in one jitted ``lax.scan``, one dispatch, no host in between.

    ``first`` is the 0-based index of the chunk's first step (int32; step ``first + k`` takes its keys and
    learning rate from its own index). ``xs`` holds each step's input along a leading axis of ``K`` steps,
    batch axis split over the devices (:func:`chunk_sharding`):

    * ``{"image": (K, B, H, W, C), "label": (K, B)}``: the batches themselves (``dataset`` is None); or
    * ``{"index": (K, B)}``: rows of ``dataset = {"image": (N, H, W, C), "label": (N,)}``, the training
      split held on the devices (replicated), gathered there.

    ``metrics`` are each step's (``(K,)`` leaves). ``params`` and ``opt_state`` are donated: the
    caller keeps only what the chunk returns. ``K`` is static, so each chunk length compiles once
    (the scan's body is the same program for every ``K``, so every chunking gives the same results).
    With ``stepwise`` the chunk dispatches its ``K`` steps one at a time through the chunk of one step
    (:func:`stepwise_chunks`): one program for every ``K``.
    """

    def one(carry, step_input, *, other, dataset):
        x, index = step_input
        if "index" in x:
            rows = x["index"]
            x = {"image": dataset["image"][rows], "label": dataset["label"][rows]}
            x = jax.lax.with_sharding_constraint(x, batch)
        params, opt_state, out = step_fn(*carry, other, x["image"], x["label"], index)
        return (params, opt_state), out

    def scanned(params, opt_state, other, dataset, xs, first):
        steps = first + jnp.arange(jax.tree.leaves(xs)[0].shape[0], dtype=jnp.int32)
        body = functools.partial(one, other=other, dataset=dataset)
        (params, opt_state), out = jax.lax.scan(body, (params, opt_state), (xs, steps))
        return params, opt_state, out

    def single(params, opt_state, other, dataset, xs, first):  # K = 1 without a loop in the program
        x = jax.tree.map(lambda v: v[0], xs)
        carry, out = one((params, opt_state), (x, first), other=other, dataset=dataset)
        return *carry, jax.tree.map(lambda v: v[None], out)

    jitted = jax.jit(
        single if stepwise else scanned,
        in_shardings=(replicated, replicated, replicated, replicated, chunk_sharding(batch), replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )
    return TrainChunk(jitted, stepwise=stepwise)


class TrainChunk:
    """A chunk of train steps (:func:`make_train_chunk`): ``jitted`` runs them in one dispatch, or with
    ``stepwise`` runs one step, called once per step of the chunk."""

    def __init__(self, jitted: Callable, *, stepwise: bool):
        self.jitted, self.stepwise = jitted, stepwise

    def __call__(self, params, opt_state, other, dataset, xs, first):
        if not self.stepwise:
            return self.jitted(params, opt_state, other, dataset, xs, first)
        outs = []
        for k in range(jax.tree.leaves(xs)[0].shape[0]):
            step_xs = jax.tree.map(lambda x, k=k: x[k : k + 1], xs)
            params, opt_state, out = self.jitted(params, opt_state, other, dataset, step_xs, first + k)
            outs.append(out)
        return params, opt_state, jax.tree.map(lambda *values: jnp.concatenate(values), *outs)


def make_eval_step(graphdef, rng_state, *, replicated, batch) -> Callable:
    """``eval(params, other, images, labels, mask) -> {"loss", "errors", "count"}`` (sums over the real rows)."""

    def eval_fn(params, other, images, labels, mask):
        logits = nnx.merge(graphdef, params, rngs(rng_state), other)(images, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        wrong = jnp.argmax(logits, -1) != labels
        return {"loss": jnp.sum(loss * mask), "errors": jnp.sum(wrong & mask), "count": jnp.sum(mask)}

    return jax.jit(eval_fn, in_shardings=(replicated, replicated, batch, batch, batch), out_shardings=replicated)


def make_transform(graphdef, rng_state, *, replicated) -> Callable:
    """``transform(params, other, images) -> warped images`` of the model's (first) transformer."""

    def transform_fn(params, other, images):
        warped, _ = nnx.merge(graphdef, params, rngs(rng_state), other).transform(images)
        return warped

    return jax.jit(transform_fn, in_shardings=replicated, out_shardings=replicated)
