"""Orbax checkpoints of a training run: model/optimiser state, step; verified on restore.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds two items:

* ``state`` — ``{"params", "opt_state", "other"}`` (the model's non-parameter, non-RNG
  variables), replicated ``jax.Array`` leaves, saved asynchronously where Orbax can;
* ``meta`` — ``{"step", "seed", "config", "loss_window"}`` as JSON;

and with ``Checkpoints(..., iterators=True)`` a third, ``data``: a grain iterator's state, one JSON file
per process (``grain.checkpoint``), so that every host resumes its own shard of a stream exactly. The
training loop saves none: its batches are a function of the step (:mod:`train.sources`).

plus Orbax's ``metrics`` (the validation error, where the step was evaluated) and one
``digest.process_<i>.json`` per process (:mod:`train.digests`), written once Orbax has
finished the checkpoint.

The PRNG needs no saving: every random key of step ``s`` is ``fold_in(key(seed), s)``.
Orbax writes each checkpoint into a temporary directory and renames it when complete
(locally), or into its final directory and marks it complete with ``commit_success.txt``
(on ``gs://``, which has no rename); either way a checkpoint counts as saved only when Orbax
says it is finalised, so a kill during a save leaves the previous checkpoints as they were
(the half-written one is ignored and cleaned up at the next start). Retention: the last ``keep``
checkpoints plus the one with the lowest validation error (metrics are on disk, so
this survives a resume).

Restoring takes the newest checkpoint that verifies, all processes agreeing on it; a
newer one that fails verification or cannot be read is reported in one line and moved
aside to ``<step>.corrupt`` (never deleted; on ``gs://`` copied, then deleted:
:func:`train.storage.move`). Checkpoints that exist but none verifies:
:class:`CheckpointError`, nothing moved. A checkpoint without digests (written before
they existed, or its run was killed before writing them) restores with a note.

Readers outside a run (:func:`read_params`, behind :func:`train.train.final_params` and
:func:`train.train.restore_model`) take the newest checkpoint that verifies, or the step asked for, on
any machine whatever the device count of the run that wrote it; damaged ones are skipped, never moved.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train import digests, hosts, optimizer, storage
from train.errors import CheckpointError, ConfigError

log = logging.getLogger("train.checkpoints")

VAL_METRIC = "val_error"
_CODES = {digests.VERIFIED: 0, digests.NO_DIGEST: 1, digests.DAMAGED: 2}


def _val_error(metrics: dict) -> float:
    """Ranks checkpoints: those saved without an evaluation rank last."""
    return metrics.get(VAL_METRIC, math.inf)


class Checkpoints:
    """A run's ``CheckpointManager``: every process calls every method (saves are collective)."""

    def __init__(self, directory: os.PathLike | str, *, keep: int, async_save: bool = True, iterators: bool = False):
        self.directory = storage.path(directory)
        best = pp.BestN(get_metric_fn=_val_error, reverse=True, n=1, keep_checkpoints_without_metrics=False)
        policy = pp.AnyPreservationPolicy([pp.LatestN(n=keep), best])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_val_error,  # without it Orbax writes no metrics and best_step() is the latest step
            best_mode="min",
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        if iterators:  # grain only where a data iterator is saved with the state
            import grain

            handlers["data"] = grain.checkpoint.CheckpointHandler()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._undigested: list[int] = []  # saved by this process, digest not yet written

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept checkpoint with the lowest validation error; None if none was evaluated."""
        step = self.manager.best_step()
        return step if step is not None and VAL_METRIC in (self.manager.metrics(step) or {}) else None

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, *, state: Any, meta: dict, iterator: Any = None, val_error: float | None = None) -> None:
        """Saves ``state`` and ``meta`` (and a grain ``iterator``'s position, with ``iterators=True``) as ``step``."""
        self.write_digests()
        # Metrics on every checkpoint ({} without an evaluation): Orbax warns on each save without.
        metrics = {} if val_error is None else {VAL_METRIC: float(val_error)}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        self._undigested.append(step)
        self.write_digests()  # a synchronous save is already complete

    def write_digests(self, *, wait: bool = False) -> None:
        """Writes this process's digest of each checkpoint it saved that Orbax has finished.

        Orbax finalises a step (renames it into place, or writes its commit marker on ``gs://``)
        only once every process has written its part, so each process can write its digests on its own.
        ``wait`` (collective): first wait for every pending save.
        """
        if wait:
            self.manager.wait_until_finished()
            hosts.sync("checkpoints finished")  # the primary process has finalised every step
        if self._undigested:
            storage.forget_listings(self.directory)
        for step in list(self._undigested):
            step_dir = self.directory / str(step)
            if step not in self.manager.all_steps():
                self._undigested.remove(step)  # already deleted by retention
            elif ocp.step.is_path_finalized(step_dir):
                digests.write(step_dir, jax.process_index(), jax.process_count())
                self._undigested.remove(step)

    def wait(self) -> None:
        self.write_digests(wait=True)

    def close(self) -> None:
        self.write_digests(wait=True)
        self.manager.close()

    def restore_newest(self, *, abstract_state: Any, iterator: Any = None) -> tuple[int, Any, dict, bool] | None:
        """Restores the newest checkpoint that verifies into ``abstract_state``'s shapes and
        shardings (and ``iterator``'s state, if given); returns ``(step, state, meta, verified)``, or
        None when there is no checkpoint (``verified`` is False for one without digests).

        Newer checkpoints that fail verification or cannot be read are moved aside.
        Raises :class:`CheckpointError` when checkpoints exist and none verifies (nothing moved),
        :class:`ConfigError` when the newest verified one does not fit this run.
        """
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            status, reason = self._status(step)
            if status != digests.DAMAGED:
                restored, error = self._try_restore(step, abstract_state, iterator)
                if hosts.everywhere(not error):
                    self._move_aside(damaged)
                    if status == digests.NO_DIGEST and hosts.is_lead():
                        log.warning(
                            "checkpoint step %d in %s has no digest (written before digests existed, or "
                            "its run stopped first): restored unverified",
                            step,
                            self.directory,
                        )
                    return step, restored["state"], restored["meta"], status == digests.VERIFIED
                what = error or "another process could not read it"
                if status == digests.VERIFIED:
                    raise ConfigError(
                        f"checkpoint step {step} in {self.directory} verifies but does not fit this run ({what}): "
                        "rerun with the configuration and process count it was written with, or use another --workdir"
                    )
                reason = f"cannot be read: {what}"
            damaged.append((step, reason))
        if damaged:
            listed = "; ".join(f"step {s}: {r}" for s, r in damaged)
            raise CheckpointError(
                f"no checkpoint in {self.directory} verifies ({listed}); nothing was moved or deleted: restore "
                "them from a copy, or move the directory away to start from step 0"
            )
        return None

    def resume_note(self) -> str:
        """Which checkpoint a rerun resumes from, in a sentence; only a verified one is called good (collective)."""
        good = self.newest_good()
        if good is None and not self.all_steps():
            return f"There is no checkpoint in {self.directory} yet: a rerun starts from step 0."
        if good is None:
            return f"No checkpoint in {self.directory} verifies: a rerun has none to resume from."
        step, status = good
        if status == digests.VERIFIED:
            return f"The last good checkpoint is step {step} in {self.directory} (verified); a rerun resumes from it."
        return f"A rerun resumes from step {step} in {self.directory}, unverified (it has no digest)."

    def newest_good(self) -> tuple[int, str] | None:
        """``(step, VERIFIED or NO_DIGEST)`` of the checkpoint a rerun would resume from (collective)."""
        for step in sorted(self.all_steps(), reverse=True):
            status, _ = self._status(step)
            if status != digests.DAMAGED:
                return step, status
        return None

    def _try_restore(self, step: int, abstract_state: Any, iterator: Any) -> tuple[dict | None, str]:
        """``(restored items, "")``, or ``(None, what went wrong)`` in one line."""
        _drop_closed_loop_noise()
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        args = ocp.args.Composite(**items)
        try:
            return self.manager.restore(step, args=args), ""
        except Exception as err:
            return None, _first_line(err)

    def _status(self, step: int) -> tuple[str, str]:
        """Status of ``step`` that every process agrees on; each process checks its own part."""
        status, reason = digests.check(self.directory / str(step), jax.process_index())
        if jax.process_count() == 1:
            return status, reason
        codes = hosts.allgather(_CODES[status])
        if len(set(codes)) == 1:
            return status, reason
        if status == digests.DAMAGED:
            log.warning("checkpoint step %d: process %d's part: %s", step, jax.process_index(), reason)
            return status, f"process {jax.process_index()}'s part: {reason}"
        if _CODES[digests.DAMAGED] in codes:
            return digests.DAMAGED, f"damage in process {codes.index(_CODES[digests.DAMAGED])}'s part, named in its log"
        return digests.DAMAGED, f"process {codes.index(_CODES[digests.NO_DIGEST])}'s part has no digest"

    def _move_aside(self, damaged: list[tuple[int, str]]) -> None:
        if not damaged:
            return
        if hosts.is_lead():
            for step, reason in damaged:
                target = self.directory / f"{step}.corrupt"
                n = 1
                while target.exists():
                    n += 1
                    target = self.directory / f"{step}.corrupt{n}"
                storage.move(self.directory / str(step), target)
                log.warning("checkpoint step %d is damaged (%s): moved aside to %s", step, reason, target)
        hosts.sync("damaged checkpoints moved aside")
        self.manager.reload()


def pick(directory: os.PathLike | str, steps: list[int], step: int | None = None) -> int:
    """The checkpoint a reader outside a run should restore: ``step`` if given and not damaged,
    else the newest of ``steps`` that verifies (damaged ones are skipped with a warning and
    left in place). Raises :class:`CheckpointError` when there is none."""
    directory = storage.path(directory)
    if step is not None and step not in steps:
        raise CheckpointError(f"no checkpoint step {step} in {directory}; there are steps {sorted(steps)}")
    candidates = [step] if step is not None else sorted(steps, reverse=True)
    for s in candidates:
        status, reason = digests.check_all(directory / str(s))
        if status == digests.DAMAGED:
            if step is not None:
                raise CheckpointError(f"checkpoint step {s} in {directory} is damaged: {reason}")
            log.warning("skipping checkpoint step %d in %s: damaged (%s)", s, directory, reason)
            continue
        if status == digests.NO_DIGEST:
            log.warning("checkpoint step %d in %s has no digest: read unverified", s, directory)
        return s
    raise CheckpointError(f"no checkpoint in {directory} verifies" if steps else f"no checkpoint in {directory}")


def read_params(directory: os.PathLike | str, *, step: int | None = None, ema_decay: float = 0.0) -> Any:
    """The parameters of a checkpoint in ``directory`` (default: the newest that verifies, :func:`pick`) as host
    NumPy arrays, in the checkpoint's layout (``nnx.State`` dicts: see :func:`pure_dict`).

    With the run's ``ema_decay`` (> 0), the debiased moving average of the weights, the parameters the run
    evaluated (:func:`train.optimizer.eval_params`); :class:`CheckpointError` if the checkpoint has none.
    """
    directory = storage.path(directory)
    with ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as mngr:
        step = pick(directory, list(mngr.all_steps()), step)
        tree = mngr.item_metadata(step)["state"].tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=restore_args)))
    state = restored["state"]
    if not ema_decay:
        return state["params"]
    # Restored without its types: the average is the one dict of the optimiser state with the fields of
    # optimizer.ParamsEMAState, wherever the chain holds it.
    averages = list(_dicts_with_keys(state["opt_state"], set(optimizer.ParamsEMAState._fields)))
    if len(averages) != 1:
        raise CheckpointError(
            f"ema_decay={ema_decay} but the checkpoint of step {step} in {directory} has no "
            "average of the weights: was the run trained with ema_decay=0?"
        )
    ema = optimizer.ParamsEMAState(np.asarray(averages[0]["count"]), averages[0]["ema"])
    return jax.tree.map(np.asarray, optimizer.debiased(ema, ema_decay)) if ema.count > 0 else state["params"]


def _dicts_with_keys(tree: Any, keys: set[str]):
    """The dicts in a restored tree (dicts and lists) whose keys are exactly ``keys``, outermost first."""
    if isinstance(tree, dict):
        if set(tree) == keys:
            yield tree
            return
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _dicts_with_keys(item, keys)


def pure_dict(tree: Any) -> Any:
    """:func:`read_params`' tree as ``nnx.replace_by_pure_dict`` takes it: checkpointed ``nnx.State`` dicts hold
    each array under ``"value"``, pure dicts do not."""
    if isinstance(tree, dict):
        return tree["value"] if set(tree) == {"value"} else {k: pure_dict(v) for k, v in tree.items()}
    return tree


def _drop_closed_loop_noise() -> None:
    """Installed before any checkpoint is read: a read that fails inside TensorStore leaves
    callbacks that later hit Orbax's closed asyncio loop, and Python would print each as a
    traceback (dozens, at unpredictable times) although the failure is reported once. Only
    those errors are dropped, for the rest of the process."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_noise", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_noise = True
    sys.unraisablehook = hook


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."
