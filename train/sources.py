"""Where a run's training batches come from: the split held on the devices, or batches sent from the host.

Both give step ``s`` (1-based) the rows :meth:`train.input_pipeline.EpochBatches.rows` names for batch ``s - 1`` (one
permutation per epoch drawn from ``(seed, epoch)``), so a run's batches are the same whichever source it
uses, and a resumed run needs only its step to continue where it stopped. ``feed(first, length)`` returns
the inputs of ``length`` steps from step ``first`` on, as :func:`train.step.make_train_chunk` takes them,
sent to the devices (not awaited):

* :class:`DeviceSource` puts the raw split (uint8) on every device once (replicated) and feeds only a
  ``(K, B)`` block of row numbers per chunk; the chunk gathers its batches on the devices. One process only
  (its rows are the whole split).
* :class:`HostSource` reads ``K`` batches from a grain iterator (:func:`train.input_pipeline.train_iterator`, started
  at the run's step) and sends them, stacked, split over the devices; each process reads its own shard:
  the source for several processes, and for a split too large for the devices' memory.

:func:`choose` picks one for ``config.data_source`` (``"auto"``: the device when there is one process and
the split fits :data:`DEVICE_LIMIT`). Imports JAX and NumPy only (grain when a :class:`HostSource` is made).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from train import input_pipeline, loop
from train.errors import ConfigError

CHOICES = ("auto", "device", "host")
DEVICE_LIMIT = 2 << 30  # bytes: "auto" keeps a larger split on the host (MNIST's is 47 MB, SVHN+extra's 1.9 GB)
DEVICE_SHARE = 1 / 8  # ... or one larger than this share of a device's memory, where JAX reports it


class DeviceSource:
    """The training split on the devices (replicated); each chunk gets a ``(K, B)`` block of row numbers."""

    kind = "device"

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        replicated: jax.sharding.Sharding,
        steps_sharding: jax.sharding.Sharding,
    ):
        self.order = input_pipeline.EpochBatches(images, labels, batch_size, seed)
        self.dataset = input_pipeline.replicate({"image": images, "label": np.asarray(labels, np.int32)}, replicated)
        self.steps_sharding = steps_sharding

    def feed(self, first: int, length: int) -> dict[str, jax.Array]:
        rows = np.stack([self.order.rows(b) for b in range(first - 1, first - 1 + length)]).astype(np.int32)
        return loop.global_batch({"index": rows}, self.steps_sharding)


class HostSource:
    """Host batches (those of steps ``start + 1, ...``, in order), ``K`` at a time, sent split over the devices."""

    kind = "host"
    dataset = None

    def __init__(self, batches: Iterator[dict], *, start: int, steps_sharding: jax.sharding.Sharding):
        self.iterator, self.steps_sharding, self.next_step = batches, steps_sharding, start + 1

    def feed(self, first: int, length: int) -> dict[str, jax.Array]:
        if first != self.next_step:  # a grain iterator only goes forward
            raise ValueError(f"steps are fed in order: expected step {self.next_step}, got {first}")
        self.next_step += length
        return loop.global_batch(loop.stacked(next(self.iterator) for _ in range(length)), self.steps_sharding)


def choose(choice: str, nbytes: int) -> tuple[str, str]:
    """``("device" or "host", why)`` for ``config.data_source`` and a training split of ``nbytes``."""
    if choice not in CHOICES:
        raise ConfigError(f"data_source must be one of {CHOICES}, got {choice!r}")
    processes = jax.process_count()
    if choice == "device" and processes > 1:
        raise ConfigError(
            f"data_source='device' needs one process (each feeds its own shard), got {processes}; use 'host' or 'auto'"
        )
    if choice != "auto":
        return choice, "data_source=" + repr(choice)
    if processes > 1:
        return "host", f"{processes} processes each read their shard"
    limit = _device_limit()
    if nbytes > limit:
        return "host", f"the split ({nbytes / 2**20:.0f} MiB) exceeds {limit / 2**20:.0f} MiB"
    return "device", f"the split ({nbytes / 2**20:.0f} MiB) fits"


def _device_limit() -> int:
    """:data:`DEVICE_LIMIT`, or :data:`DEVICE_SHARE` of the smallest device memory JAX reports, if less."""
    limits = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a CPU (and some plugins) report nothing
            stats = {}
        if "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"] * DEVICE_SHARE))
    return min([DEVICE_LIMIT, *limits])


def make(
    kind: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    start: int,
    replicated: jax.sharding.Sharding,
    steps_sharding: jax.sharding.Sharding,
) -> Any:
    """The :class:`DeviceSource` or :class:`HostSource` of this process's training split."""
    if kind == "device":
        return DeviceSource(
            images, labels, batch_size=batch_size, seed=seed, replicated=replicated, steps_sharding=steps_sharding
        )
    batches = input_pipeline.train_iterator(images, labels, batch_size=batch_size, seed=seed, start=start)
    return HostSource(batches, start=start, steps_sharding=steps_sharding)
