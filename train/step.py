"""The jitted functions of a model, without a config: the train step and the chunk of steps that ``train.train``
compiles (through :mod:`train.compiled`) and ``benchmarks/loop_speed.py`` times, the evaluation step and the
transformer's output.

Imports JAX, Flax and Optax only (no TFDS, grain, orbax or ml_collections), so a
benchmark can build the real step on a machine that has nothing else.
"""

from __future__ import annotations

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


def make_train_step(graphdef, rng_state, tx: optax.GradientTransformation, *, seed: int,
                    preprocess: Callable, schedule: optax.Schedule, label_smoothing: float = 0.0) -> Callable:  # fmt: skip
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
            "learning_rate": schedule(step),
            "finite": ok,
        }
        return keep(new_params, params), keep(new_opt_state, opt_state), out

    return step_fn


def chunk_sharding(batch: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """A chunk's per-step inputs ``(K, B, ...)``: the steps axis whole, the batch axis split like ``batch``."""
    return jax.sharding.NamedSharding(batch.mesh, jax.sharding.PartitionSpec(None, *batch.spec))


def unrolled_chunks(platform: str) -> bool:
    """Whether a chunk's steps are unrolled rather than scanned on ``platform``: on a CPU, where XLA runs the
    convolutions of a loop body an order of magnitude slower than the same outside a loop (measured here:
    165 vs 10 ms a step of the CNN at batch 16; jax-ml/jax#12868), so a CPU takes one step per dispatch."""
    return platform == "cpu"


def default_steps_per_dispatch(platform: str) -> int:
    """``steps_per_dispatch=0``'s value: 32 on an accelerator; 1 on a CPU, where unrolled chunks only compile
    longer (:func:`unrolled_chunks`) and one dispatch per step already reaches 0.88 of the bare step."""
    return 1 if unrolled_chunks(platform) else 32


def make_train_chunk(step_fn: Callable, *, replicated, batch, unroll: bool = False) -> Callable:
    """``chunk(params, opt_state, other, dataset, xs, first) -> (params, opt_state, metrics)``, jitted: ``K``
    steps of ``step_fn`` (:func:`make_train_step`) in one ``lax.scan``, one dispatch, no host in between.

    ``first`` is the 0-based index of the chunk's first step (int32; step ``first + k`` takes its keys and
    learning rate from its own index). ``xs`` holds each step's input along a leading axis of ``K`` steps,
    batch axis split over the devices (:func:`chunk_sharding`):

    * ``{"image": (K, B, H, W, C), "label": (K, B)}``: the batches themselves (``dataset`` is None); or
    * ``{"index": (K, B)}``: rows of ``dataset = {"image": (N, H, W, C), "label": (N,)}``, the training
      split held on the devices (replicated), gathered there.

    ``metrics`` are each step's (``(K,)`` leaves). ``params`` and ``opt_state`` are donated: the
    caller keeps only what the chunk returns. ``K`` is static, so each chunk length compiles once.
    With ``unroll`` the ``K`` steps are written out one after another instead of scanned (no loop in the
    program, ``K`` times the program to compile: :func:`unrolled_chunks`); the results are the same.
    """
    row_sharding = batch

    def chunk(params, opt_state, other, dataset, xs, first):
        def one(carry, step_input):
            x, k = step_input
            if "index" in x:
                rows = x["index"]
                x = {"image": dataset["image"][rows], "label": dataset["label"][rows]}
                x = jax.lax.with_sharding_constraint(x, row_sharding)
            params, opt_state = carry
            params, opt_state, out = step_fn(params, opt_state, other, x["image"], x["label"], first + k)
            return (params, opt_state), out

        length = jax.tree.leaves(xs)[0].shape[0]
        steps = jnp.arange(length, dtype=jnp.int32)
        if not unroll:
            (params, opt_state), out = jax.lax.scan(one, (params, opt_state), (xs, steps))
            return params, opt_state, out
        carry, outs = (params, opt_state), []
        for k in range(length):
            carry, out = one(carry, (jax.tree.map(lambda x, k=k: x[k], xs), steps[k]))
            outs.append(out)
        return *carry, jax.tree.map(lambda *values: jnp.stack(values), *outs)

    return jax.jit(
        chunk,
        in_shardings=(replicated, replicated, replicated, replicated, chunk_sharding(batch), replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


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
