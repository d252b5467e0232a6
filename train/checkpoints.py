"""Orbax checkpoints of a training run: model/optimiser state, data iterator, step.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items:

* ``state`` — ``{"params", "opt_state", "other"}`` (the model's non-parameter, non-RNG
  variables), replicated ``jax.Array`` leaves, saved asynchronously where Orbax can;
* ``data`` — the grain iterator's state, one JSON file per process
  (``grain.checkpoint``), so every host resumes its own shard exactly;
* ``meta`` — ``{"step", "seed", "config"}`` as JSON.

The PRNG needs no saving: every random key of step ``s`` is ``fold_in(key(seed), s)``.
Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a kill during a save leaves the previous checkpoints as they were (the half-written
one is ignored and cleaned up at the next start). Retention: the last
``keep`` checkpoints plus the one with the lowest validation error.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

VAL_METRIC = "val_error"


class Checkpoints:
    """A run's ``CheckpointManager``: every process calls every method (saves are collective)."""

    def __init__(self, directory: os.PathLike | str, *, keep: int, async_save: bool = True):
        policy = pp.AnyPreservationPolicy(
            [pp.LatestN(n=keep), pp.BestN(get_metric_fn=lambda m: m[VAL_METRIC], reverse=True, n=1,
                      keep_checkpoints_without_metrics=False)]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.fspath(directory)),
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, *, state: Any, iterator: Any, meta: dict, val_error: float | None = None) -> None:
        metrics = None if val_error is None else {VAL_METRIC: float(val_error)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, *, abstract_state: Any, iterator: Any) -> tuple[Any, dict]:
        """Restores ``step`` into ``abstract_state``'s shapes and shardings; sets ``iterator``'s state."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree`` (what a restore should produce)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
