"""A run after its set-up (:class:`Run`): the chunks of steps, and what happens at every boundary.

The host waits for the devices only at boundaries (:func:`train.loop.drive`): chunks are dispatched
asynchronously, the next chunk's inputs are sent while the current chunk runs, and the per-step metrics
(loss, non-finite flag) stay on the devices until a boundary — the first step, every ``log_every``,
``eval_every`` and ``checkpoint_every`` step, the preemption stop, and the last — fetches them all, in
:meth:`Run.steps`'s order: non-finite check, log, evaluation, checkpoint.

A non-finite loss raises :class:`NonFiniteLossError` at the boundary that fetches it (naming the step
it happened at) after the pending checkpoint is complete; the flags are checked before anything is saved,
so no checkpoint follows that step, and the message names the newest checkpoint that verifies, the one a
rerun resumes from. A preemption notice (SIGTERM; :mod:`train.preemption`) makes the step every process
agrees on a boundary: its checkpoint is saved and waited for, then :class:`PreemptedError` names the step
a rerun resumes from (the loss window since the last log is in the checkpoint, so the rerun logs what an
uninterrupted run logs).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from etils import epath

from train import checkpoints, compiled, evaluation, hosts, input_pipeline, loop, metrics, plots, preemption, profiling
from train.errors import NonFiniteLossError, PreemptedError, WorkdirBusyError
from train.run_data import RunData
from train.workdir_lock import WorkdirLock

MAX_SKIPPED_IN_A_ROW = 20  # with nonfinite="skip": a run that only produces NaNs still stops


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The keys of a config that say what happens when (:data:`train.configs.base.KEYS`)."""

    name: str
    steps: int
    batch_size: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    profile_steps: tuple[int, ...]
    nonfinite: str
    num_show: int


def due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


class Run:
    """The steps of one run after its set-up: what happens at every boundary, in :meth:`steps`'s order."""

    def __init__(
        self,
        cadence: Cadence,
        workdir: epath.Path,
        run_data: RunData,
        fns: compiled.Functions,
        *,
        ckpt: checkpoints.Checkpoints,
        writer: metrics.MetricWriter,
        progress: metrics.Progress,
        preempted: preemption.Preemption,
        lock: WorkdirLock | None,
        source,
        per_dispatch: int,
        meta: dict,
        window: list[float],
    ):
        self.cadence, self.workdir, self.data, self.fns, self.source = cadence, workdir, run_data, fns, source
        self.per_dispatch = per_dispatch  # the most steps a chunk takes (train.loop)
        self.ckpt, self.writer, self.progress, self.preempted = ckpt, writer, progress, preempted
        self.lock = lock  # process 0's; None elsewhere
        self.meta = meta  # saved with every checkpoint, with the step and the loss window
        self.stop_at: int | None = None  # the step every process agreed to stop at for a preemption
        self.trace: profiling.StepTrace | None = None
        self.show = input_pipeline.replicate(run_data.test_images[: cadence.num_show], fns.replicated)
        self.window = window  # finite losses since the last log (a resumed run's from its checkpoint)
        self.skipped_in_a_row, self.skipped = 0, 0

    def steps(self, start: int, state: dict) -> dict:
        """Steps ``start + 1 .. cadence.steps`` from ``state``; returns the final state."""
        cadence, fns = self.cadence, self.fns
        params, opt_state, other = state["params"], state["opt_state"], state["other"]
        self.trace = profiling.StepTrace(cadence.profile_steps, self.workdir, start=start)

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
            every = (cadence.log_every, cadence.eval_every, cadence.checkpoint_every)
            return (
                step == self.stop_at
                or step == start + 1
                or self.trace.boundary(step)
                or any(step % n == 0 for n in every)
            )

        chunks = loop.drive(
            run_chunk,
            (params, opt_state),
            self.source.feed,
            start=start,
            stop=cadence.steps,
            boundary=boundary,
            max_steps=self.per_dispatch,
        )
        for step, (params, opt_state), fetched in chunks:
            self.trace.reached(step)
            self.check_finite(step, fetched)
            self.log(step, fetched[-1])
            t_other = time.perf_counter()
            val = None
            if due(step, cadence.eval_every, cadence.steps):
                val = self.evaluate(step, params, opt_state, other)
            if due(step, cadence.checkpoint_every, cadence.steps) or val is not None or step == self.stop_at:
                self.check_lock(step)
                meta = {"step": step, **self.meta, "loss_window": self.window}
                self.ckpt.save(
                    step,
                    state={"params": params, "opt_state": opt_state, "other": other},
                    meta=meta,
                    val_error=None if val is None else val["error"],
                )
            self.ckpt.write_digests()  # of an asynchronous save as soon as it is complete
            self.progress.exclude(time.perf_counter() - t_other)
            if step == self.stop_at and step < cadence.steps:
                self.ckpt.wait()  # every process: the checkpoint complete and its digests written
                raise PreemptedError(
                    f"preempted: stopped at step {step} of {cadence.steps} with a checkpoint of it in "
                    f"{self.ckpt.directory}; rerun the same command to resume from step {step}"
                )
        return {"params": params, "opt_state": opt_state, "other": other}

    def check_lock(self, step: int) -> None:
        """Before a save (collective): stop if another run has taken this run's lease on a ``gs://`` workdir over
        (it could not be renewed in time), rather than write into a workdir another run now writes."""
        if hosts.lead_says(self.lock is not None and self.lock.lost):
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
            if self.cadence.nonfinite == "stop" or self.skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
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
        cadence = self.cadence
        if not due(step, cadence.log_every, cadence.steps):
            self.progress.update(step)
            return
        rate = self.progress.rate(step)
        loss = float(np.mean(self.window)) if self.window else float("nan")
        self.writer.write(
            step,
            "train",
            loss=loss,
            accuracy=float(out["accuracy"]),
            learning_rate=float(out["learning_rate"]),
            grad_norm=float(out["grad_norm"]),
            images_per_s=rate * cadence.batch_size if rate == rate else 0.0,
        )
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
            if hosts.is_lead():
                plots.save_transformed(
                    self.workdir / "samples" / f"step_{step:06d}.png",
                    self.data.test_images[: self.cadence.num_show],
                    warped,
                    title=f"{self.cadence.name}, step {step}",
                )
        return val
