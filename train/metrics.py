"""What a run reports: JSON-lines metrics, TensorBoard events, a progress bar.

Only process 0 writes (``MetricWriter(active=jax.process_index() == 0)``); the others
get no-op writers, so the calling code is the same on every host.

``<workdir>/metrics.jsonl`` holds one object per record, e.g.
``{"step": 500, "split": "train", "loss": 0.21, "learning_rate": 0.002, "images_per_s": 900.1}``
and ``{"step": 500, "split": "val", "error": 0.031, "loss": 0.1}``. A train record's
``loss`` is the mean over the finite steps since the previous train record (the
progress line shows the same value, labelled "mean of last N steps"); ``accuracy``,
``learning_rate`` and ``grad_norm`` are the logged step's own. On resume, records
after the restored step are dropped first, so the file describes one history. On an object
store (``gs://`` workdir), where an append would silently overwrite, the writer keeps the
file's lines and writes it whole at every record (one upload per record).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import TextIO

from train import storage


class MetricWriter:
    """Adds records to ``metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``), local or ``gs://``."""

    def __init__(self, workdir: os.PathLike | str, *, active: bool = True, tensorboard: bool = True):
        self.active = active
        self.path = storage.path(workdir) / "metrics.jsonl"
        self._tb = None
        # On an object store: every line of the file, written whole at each record (no appends there).
        self._lines: list[str] | None = None
        if active and storage.is_remote(self.path):
            self._lines = self.path.read_text().splitlines() if self.path.exists() else []
        if active and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # a machine with JAX and little else (a lent accelerator): metrics.jsonl only
                print("tensorboardX is not installed: no TensorBoard files, metrics.jsonl only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(os.fspath(storage.path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops records of steps > ``step`` (written by a run that was later killed)."""
        if not self.active or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        storage.write_text(self.path, "".join(f"{line}\n" for line in kept))
        if self._lines is not None:
            self._lines = kept

    def write(self, step: int, split: str, **values: float) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        if self._lines is not None:
            self._lines.append(json.dumps(record))
            storage.write_text(self.path, "".join(f"{line}\n" for line in self._lines))
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{split}/{key}", float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: os.PathLike | str) -> list[dict]:
    path = storage.path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """``step/total, loss, images/s, ETA`` on one refreshed line when ``stream`` is a TTY.

    Not a TTY (CI logs, files): silent except one plain line every ``log_every`` steps,
    so logs stay short. Inactive (processes other than 0): silent.

    The loop calls :meth:`update` only where it has fetched the metrics from the devices
    (never once a step, which would make the host wait for every step), so the line is
    redrawn there; the loss it shows is the one last logged, the mean over the finite
    steps since the log before, and says so (``loss 0.1234 (mean of last 50 steps)``).
    """

    def __init__(
        self,
        *,
        total: int,
        start: int,
        batch_size: int,
        log_every: int,
        active: bool = True,
        stream: TextIO | None = None,
    ):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.start, self.batch_size = total, start, batch_size
        self.log_every, self.active = max(1, log_every), active
        self._t0 = None
        self._t0_step = start
        self._last_draw = 0.0
        self._loss: float | None = None
        self._loss_steps = 0

    def rate(self, step: int) -> float:
        """Steps per second since the first update after (re)start (compilation excluded)."""
        if self._t0 is None or step <= self._t0_step:
            return float("nan")
        return (step - self._t0_step) / (time.perf_counter() - self._t0)

    def exclude(self, seconds: float) -> None:
        """Leaves ``seconds`` (evaluation, checkpointing) out of the training throughput."""
        if self._t0 is not None:
            self._t0 += seconds

    def update(self, step: int, loss: float | None = None, *, mean_of: int = 1) -> None:
        """Step ``step`` is complete on the devices; ``loss``, when given, is the mean over the last ``mean_of`` steps.

        The first call starts the clock (the first step includes compilation); call it
        where the loop has waited for the devices anyway, or the rate is the host's.
        """
        if self._t0 is None:
            self._t0, self._t0_step = time.perf_counter(), step
        if loss is not None:
            self._loss, self._loss_steps = float(loss), mean_of
        if not self.active:
            return
        now = time.perf_counter()
        if self.tty and (now - self._last_draw < 0.2 and step < self.total):
            return
        if not self.tty and step % self.log_every and step != self.total:
            return
        self._last_draw = now
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        if self._loss is None:
            loss_text = "loss -"
        else:
            steps = "step" if self._loss_steps == 1 else f"{self._loss_steps} steps"
            loss_text = f"loss {self._loss:.4f} (mean of last {steps})"
        line = (
            f"[{bar}] step {step}/{self.total}  {loss_text}  "
            f"{rate * self.batch_size:,.0f} images/s  ETA {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that survives the bar (evaluations, checkpoints)."""
        if not self.active:
            return
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self.tty:
            self.stream.write("\n")
            self.stream.flush()
