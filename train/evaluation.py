"""Evaluation over every process: each holds its part of a split (:class:`EvalSet`), and all of them run the
same number of batches of the jitted evaluation step (:func:`train.step.make_eval_step`), the last padded and
masked, so the sums cover every example exactly once whatever the process count (:func:`evaluate`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from train import input_pipeline


def rows(size: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a ``size``-example split that this process evaluates."""
    own = input_pipeline.shard_indices(
        size, shard_index=jax.process_index(), shard_count=jax.process_count(), drop_remainder=False
    )
    return (int(own[0]), int(own[-1]) + 1) if len(own) else (0, 0)


class EvalSet:
    """This process's part of an evaluation split (its :func:`rows` of ``size``), in equally many batches on
    every process."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, size: int, global_batch: int):
        count = jax.process_count()
        start, stop = rows(size)
        if len(labels) != stop - start:
            raise ValueError(f"this process evaluates rows [{start}, {stop}) of {size}, got {len(labels)} examples")
        self.images, self.labels = images, labels
        self.local_batch = global_batch // count
        largest = -(-size // count)
        self.num_batches = max(1, -(-largest // self.local_batch))
        self.size = size

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        return input_pipeline.eval_batches(
            self.images, self.labels, batch_size=self.local_batch, num_batches=self.num_batches
        )


def evaluate(eval_step: Callable, params: Any, other: Any, eval_set: EvalSet, sharding) -> dict[str, float]:
    """``{"error", "loss"}``: means over the whole split (collective: every process calls it)."""
    totals = {"loss": 0.0, "errors": 0.0, "count": 0.0}
    for local in eval_set.batches():
        batch = input_pipeline.global_batch(local, sharding)
        out = jax.device_get(eval_step(params, other, batch["image"], batch["label"], batch["mask"]))
        for k in totals:
            totals[k] += float(out[k])
    count = max(totals["count"], 1.0)
    return {"error": totals["errors"] / count, "loss": totals["loss"] / count}
