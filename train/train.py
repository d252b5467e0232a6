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

The config is checked (:func:`train.config_checks.validate`), then unpacked once, here, into the plain
arguments the modules take (:func:`train.configs.unpack`): the data (:mod:`train.run_data`), the
recipe (:mod:`train.optimizer`), the model and its jitted functions (:mod:`train.compiled`) and the
steps with their boundaries (:mod:`train.run`, where the host waits for the devices only at boundaries).

Randomness is a pure function of ``(config.seed, step)``: step ``s`` distorts and drops
out with ``fold_in(key(seed), s)``, and its batch is a function of ``s`` too, so a resumed
run sees exactly the batches and keys of an uninterrupted one, however its steps were chunked.

Errors (exit codes: :data:`train.errors.EXIT_CODES`): a bad configuration raises :class:`ConfigError`
(:mod:`train.config_checks`) before any data is read or anything compiled; checkpoints that exist but
none verifies raise :class:`CheckpointError` (:mod:`train.checkpoints`); a workdir held by another run
raises :class:`WorkdirBusyError` (:mod:`train.workdir_lock`); :mod:`train.run` says what stops the steps.

Files in ``workdir`` (a local directory or ``gs://…``: :mod:`train.storage`): ``run.lock``,
``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``samples/step_<s>.png`` (test inputs
beside the transformer's outputs, every evaluation), ``curves.png`` (loss and error curves),
``summary.json``, and ``profile/`` with ``profile_steps`` (:mod:`train.profiling`).
:func:`final_params` and :func:`restore_model` read the run's checkpoints back.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from train import (
    checkpoints,
    compiled,
    configs,
    evaluation,
    hosts,
    metrics,
    optimizer,
    packed,
    plots,
    preemption,
    run_data,
    sources,
    storage,
    workdir_lock,
)
from train import step as step_lib
from train.compiled import build
from train.config_checks import resolve_data_dir, validate
from train.errors import WorkdirBusyError
from train.run import Cadence, Run

__all__ = ["build", "final_params", "restore_model", "train_and_evaluate"]


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
    if hosts.is_lead():
        storage.mkdir(workdir)
        if not packed.is_pack(data_dir):
            storage.mkdir(data_dir)
    with contextlib.ExitStack() as stack:
        lock = _hold(workdir)
        if lock is not None:
            stack.callback(lock.release)
        preempted = stack.enter_context(preemption.Preemption())
        return _run(config, workdir, data_dir, preempted, lock, t_start, return_params)


def _run(config, workdir: epath.Path, data_dir: epath.Path, preempted, lock, t_start: float, return_params: bool):
    # The config unpacked, once: nothing below reads it. Shapes only, nothing allocated or compiled: bad
    # model_kwargs fail here, before the data.
    data_spec, cadence = configs.unpack(config, run_data.DataSpec), configs.unpack(config, Cadence)
    recipe, model_spec = configs.unpack(config, optimizer.Recipe), configs.unpack(config, compiled.ModelSpec)
    fns = compiled.functions(model_spec, recipe, label_smoothing=config.label_smoothing)
    seed, meta = config.seed, {"seed": config.seed, "config": json.loads(config.to_json())}  # in every checkpoint
    per_dispatch = config.steps_per_dispatch or step_lib.default_steps_per_dispatch(fns.platform)
    ckpt = checkpoints.Checkpoints(
        workdir / "checkpoints", keep=config.keep_checkpoints, async_save=config.async_checkpoints
    )
    del config

    data, lead = run_data.read(data_spec, data_dir), hosts.is_lead()
    writer = metrics.MetricWriter(workdir, active=lead)
    start, state, window, verified = _restore_or_init(ckpt, fns.init, writer)
    # The batches of step s are a function of s alone: a resumed run's source starts at its step.
    source = sources.make(
        data.source_kind,
        data.train_images,
        data.train_labels,
        batch_size=cadence.batch_size // jax.process_count(),
        seed=seed,
        start=start,
        replicated=fns.replicated,
        steps_sharding=step_lib.chunk_sharding(fns.batch),
    )
    progress = metrics.Progress(
        total=cadence.steps, start=start, batch_size=cadence.batch_size, log_every=cadence.log_every, active=lead
    )
    if start:
        how = "verified" if verified else "unverified: no digest"
        progress.message(f"resumed from the checkpoint of step {start} in {workdir / 'checkpoints'} ({how})")
    progress.message(f"training batches: {data.source_why}; up to {per_dispatch} steps per dispatch")

    run = Run(
        cadence,
        workdir,
        data,
        fns,
        ckpt=ckpt,
        writer=writer,
        progress=progress,
        preempted=preempted,
        lock=lock,
        source=source,
        per_dispatch=per_dispatch,
        meta=meta,
        window=window,
    )
    try:
        state = run.steps(start, state)
        rate = progress.rate(cadence.steps)  # the training steps only: not the last save's wait nor the test set
        ckpt.wait()
    finally:
        if run.trace is not None:
            run.trace.stop()  # a run stopped inside the traced steps keeps its trace
        ckpt.write_digests()  # stopped by an error or Ctrl-C: digests of the saves already complete
        progress.close()

    params = fns.eval_params(state["params"], state["opt_state"])
    test = evaluation.evaluate(fns.eval_step, params, state["other"], data.test_set, fns.batch)
    summary = {
        "config": cadence.name,
        "steps": cadence.steps,
        "resumed_from": start,
        "test_error": test["error"],
        "test_loss": test["loss"],
        "test_examples": data.test_set.size,
        "best_checkpoint": ckpt.best_step(),
        "skipped_steps": run.skipped,
        "steps_per_s": rate if rate == rate else None,
        "images_per_s": rate * cadence.batch_size if rate == rate else None,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # speed depends on them (train/xla_cpu.py)
        "wall_time_s": time.perf_counter() - t_start,
    }
    writer.write(cadence.steps, "test", error=test["error"], loss=test["loss"])
    if lead:
        plots.save_curves(workdir / "curves.png", metrics.read_metrics(workdir), test_error=test["error"])
        storage.write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    writer.close()
    ckpt.close()
    progress.message(
        f"done: test error {100 * test['error']:.2f}% on {data.test_set.size} {data_spec.test_split} examples, "
        f"wall time {summary['wall_time_s']:.0f} s; figures and metrics in {workdir}"
    )
    if return_params:
        return summary, jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
    return summary


def _hold(workdir: epath.Path) -> workdir_lock.WorkdirLock | None:
    """The lead process takes the workdir's lock; every process stops if it cannot (collective)."""
    lock, busy = None, ""
    if hosts.is_lead():
        try:
            lock = workdir_lock.WorkdirLock(workdir)
        except WorkdirBusyError as err:
            busy = str(err)
    if hosts.lead_says(bool(busy)):
        raise WorkdirBusyError(busy or f"workdir {workdir} is in use by another run (see process 0's message)")
    return lock


def _restore_or_init(ckpt: checkpoints.Checkpoints, init, writer: metrics.MetricWriter):
    """``(start step, state, loss window, verified)``: the newest checkpoint that verifies (damaged newer ones
    moved aside, later metrics dropped), else step 0 with a fresh state. The loss window is the finite losses
    since the last log, so that the log after a resume averages the same steps."""
    # Compiles init only without a checkpoint: its shapes come from jax.eval_shape.
    restored = ckpt.restore_newest(abstract_state=jax.eval_shape(init))
    if restored is None:
        return 0, init(), [], False
    _, state, meta, verified = restored
    start = int(meta["step"])
    writer.truncate_after(start)
    return start, state, list(meta.get("loss_window", [])), verified


# -- reading a run back ----------------------------------------------------------------------------------


def final_params(workdir: os.PathLike | str, *, step: int | None = None, ema_decay: float = 0.0) -> Any:
    """Parameters of a checkpoint in ``workdir`` (default: the newest that verifies) as host NumPy arrays.

    With the run's ``ema_decay`` (> 0), the debiased moving average of the weights, the parameters
    the run evaluated (:func:`train.optimizer.eval_params`).

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
