"""Drives a jitted training step without waiting for the devices at every step.

``drive`` runs steps ``start + 1 .. stop`` of ``step(carry, batch, s) -> (carry, metrics)``:

* JAX dispatches the step asynchronously, so while the devices run step ``s`` the host
  already reads batch ``s + 1`` and starts its transfer (``global_batch``): the next
  batch is on its way to the devices while the current step runs;
* the per-step metrics stay on the devices; they are fetched (one ``jax.device_get``)
  only at the steps where ``boundary(s)`` is true, and at ``stop``. There ``drive``
  yields ``(s, carry, metrics)``, ``metrics`` being the host values of every step since
  the previous boundary, in order, so the caller decides (non-finite losses, logging,
  evaluation, checkpoints) from values that are complete up to step ``s``.

Batch ``s + 1`` is taken from ``batches`` only when the caller resumes the generator after
the boundary of step ``s``: at a yield the iterator has produced exactly the batches of
the steps run so far, so a checkpoint saved there holds an iterator position that matches
its step.

Imports JAX and NumPy only: a benchmark (``benchmarks/loop_speed.py``) runs this on
synthetic in-memory data on a machine without TFDS, grain, orbax or ml_collections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

Step = Callable[[Any, Any, int], tuple[Any, Any]]


def global_batch(local_batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Each process's local batch → global ``jax.Array`` leaves split by ``sharding`` (sent, not awaited)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def drive(step: Step, carry: Any, batches: Iterable, *, sharding: jax.sharding.Sharding, start: int, stop: int,
          boundary: Callable[[int], bool]) -> Iterator[tuple[int, Any, list]]:  # fmt: skip
    """Yields ``(s, carry, metrics)`` at every boundary step ``s`` (and at ``stop``); see the module docstring.

    Args:
      step: ``step(carry, batch, s)`` for the 1-based step number ``s``; a jitted function
        (or one that only dispatches jitted work), returning device arrays.
      carry: what the step threads through (parameters, optimiser state).
      batches: host batches (pytrees of NumPy arrays), one per step, this process's part.
      sharding: how each global batch is split over the devices.
      start, stop: runs steps ``start + 1`` to ``stop``.
      boundary: the steps after which metrics are fetched and the caller gets control.
    """
    batches = iter(batches)
    pending: list = []
    batch = global_batch(next(batches), sharding) if start < stop else None
    for s in range(start + 1, stop + 1):
        carry, metrics = step(carry, batch, s)  # dispatched, not awaited
        pending.append(metrics)
        if s == stop or boundary(s):
            fetched, pending = jax.device_get(pending), []
            yield s, carry, fetched
        if s < stop:
            batch = global_batch(next(batches), sharding)  # overlaps with step s on the devices


def run(step: Step, carry: Any, batches: Iterable, *, sharding: jax.sharding.Sharding, steps: int,
        fetch_every: int) -> tuple[Any, list]:  # fmt: skip
    """Runs ``steps`` steps, fetching metrics every ``fetch_every``; returns ``(carry, every step's metrics)``."""
    metrics: list = []
    running = drive(step, carry, batches, sharding=sharding, start=0, stop=steps,
                    boundary=lambda s: s % fetch_every == 0)  # fmt: skip
    for _, carry_now, fetched in running:
        carry = carry_now
        metrics.extend(fetched)
    return carry, metrics
