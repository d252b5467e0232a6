"""Drives a jitted chunk of training steps: many steps per dispatch, the host waiting only at boundaries.

``drive`` runs steps ``start + 1 .. stop`` of ``run_chunk(carry, xs, first) -> (carry, metrics)``, a
jitted function that takes as many steps as ``xs`` holds (:func:`train.step.make_train_chunk`):

* it cuts the steps into **spans** that end at a boundary (``boundary(s)`` true, or ``stop``) or after
  ``max_steps`` steps, asking ``boundary`` once for every step in order (a preemption sync point must be
  asked at every step: :mod:`train.preemption`);
* each span runs as chunks whose lengths are powers of two, largest first (:func:`pieces`): a span of 50
  is 32 + 16 + 2, so a run compiles at most ``log2(max_steps) + 1`` chunk lengths, each once;
* JAX dispatches each chunk asynchronously, so while the devices run it the host plans the next span and
  reads and sends its inputs (``feed(first, length)``);
* the per-step metrics stay on the devices; they are fetched (one ``jax.device_get``) only at the end of a
  span that ends at a boundary. There ``drive`` yields ``(s, carry, metrics)``, ``metrics`` being the host
  values of every step since the previous boundary, one dict per step, in order, so the caller decides
  (non-finite losses, logging, evaluation, checkpoints) from values that are complete up to step ``s``.

The next span is planned and fed only when the caller resumes the generator after a boundary: at a yield
``feed`` has been asked for exactly the steps run so far.

Imports JAX and NumPy only: a benchmark (``benchmarks/loop_speed.py``) runs this on synthetic in-memory
data on a machine without TFDS, grain, orbax or ml_collections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

RunChunk = Callable[[Any, Any, int], tuple[Any, Any]]
Feed = Callable[[int, int], Any]


def global_batch(local_batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Each process's local batch → global ``jax.Array`` leaves split by ``sharding`` (sent, not awaited)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def pieces(length: int) -> list[int]:
    """``length`` as a sum of distinct powers of two, largest first (its binary digits): chunk lengths."""
    return [1 << bit for bit in reversed(range(length.bit_length())) if length >> bit & 1]


def spans(start: int, stop: int, boundary: Callable[[int], bool], max_steps: int) -> Iterator[tuple[int, int, bool]]:
    """``(first, last, at_boundary)`` of each span of steps ``start + 1 .. stop``, planned lazily: ``boundary``
    is asked once per step, in order, and only when the span holding that step is asked for."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    s = start
    while s < stop:
        first = s + 1
        while True:
            s += 1
            hit = s == stop or boundary(s)
            if hit or s - first + 1 == max_steps:
                break
        yield first, s, hit


def split_metrics(chunks: list[dict]) -> list[dict]:
    """Fetched chunk metrics (``(K,)`` leaves each) → one dict per step, in order."""
    return [
        {name: values[i] for name, values in chunk.items()}
        for chunk in chunks
        for i in range(len(next(iter(chunk.values()))))
    ]


def drive(
    run_chunk: RunChunk,
    carry: Any,
    feed: Feed,
    *,
    start: int,
    stop: int,
    boundary: Callable[[int], bool],
    max_steps: int,
) -> Iterator[tuple[int, Any, list[dict]]]:
    """Yields ``(s, carry, metrics)`` at every boundary step ``s`` (and at ``stop``); see the module docstring.

    Args:
      run_chunk: ``run_chunk(carry, xs, first)`` takes the steps ``first .. first + K - 1`` (1-based) whose
        inputs ``xs`` holds (leading axis ``K``); jitted (or only dispatching jitted work), returning device
        arrays, its metrics with a leading axis of ``K``.
      carry: what the steps thread through (parameters, optimiser state).
      feed: ``feed(first, length)`` → the inputs of those steps, sent to the devices (not awaited); asked for
        consecutive steps, in order.
      start, stop: runs steps ``start + 1`` to ``stop``.
      boundary: the steps after which metrics are fetched and the caller gets control.
      max_steps: the most steps one span takes before its inputs are fed afresh (without a boundary no
        fetch: the next span follows at once).
    """
    chunks = _chunks(spans(start, stop, boundary, max_steps))
    pending: list = []
    planned = next(chunks, None)
    xs = feed(*planned[:2]) if planned else None
    while planned is not None:
        first, length, fetch = planned
        carry, metrics = run_chunk(carry, xs, first)  # dispatched, not awaited
        pending.append(metrics)
        if fetch:
            fetched, pending = jax.device_get(pending), []
            yield first + length - 1, carry, split_metrics(fetched)
        planned = next(chunks, None)
        if planned is not None:
            xs = feed(*planned[:2])  # overlaps with the chunk just dispatched


def _chunks(planned_spans: Iterator[tuple[int, int, bool]]) -> Iterator[tuple[int, int, bool]]:
    """``(first, length, fetch)`` of each chunk: a span's :func:`pieces`, the last fetching at a boundary."""
    for first, last, at_boundary in planned_spans:
        for length in pieces(last - first + 1):
            yield first, length, at_boundary and first + length - 1 == last
            first += length


def run(
    run_chunk: RunChunk, carry: Any, feed: Feed, *, steps: int, fetch_every: int, max_steps: int
) -> tuple[Any, list]:
    """Runs ``steps`` steps, fetching metrics every ``fetch_every``; returns ``(carry, every step's metrics)``."""
    metrics: list = []
    running = drive(
        run_chunk, carry, feed, start=0, stop=steps, boundary=lambda s: s % fetch_every == 0, max_steps=max_steps
    )
    for _, carry_now, fetched in running:
        carry = carry_now
        metrics.extend(fetched)
    return carry, metrics


def stacked(batches: Iterable[Any]) -> Any:
    """Host batches (pytrees of arrays) → one pytree with a leading axis of steps."""
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
