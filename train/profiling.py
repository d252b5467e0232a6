"""A ``jax.profiler`` trace of chosen training steps, on request: ``--set profile_steps=(FIRST,LAST)``.

The trace covers steps ``FIRST`` to ``LAST`` as the devices run them: it starts where the loop has
waited for step ``FIRST - 1`` and stops where it has waited for step ``LAST`` (both are made
boundaries). The profiler writes local files only, so it traces into a local temporary directory,
then copies the result to ``<workdir>/profile/`` (local or ``gs://``), where TensorBoard's profile
plugin (``tensorboard --logdir <workdir>/profile``) and Perfetto (the ``.trace.json.gz``) read it.
Only process 0 traces. A run resumed after ``FIRST`` does not trace.
"""

from __future__ import annotations

import shutil
import tempfile

import jax
from etils import epath

from train import hosts, storage


class StepTrace:
    """Starts and stops the trace at the boundaries :meth:`boundary` names (see the module docstring)."""

    def __init__(self, steps: tuple[int, ...], workdir: epath.Path, *, start: int):
        self.first, self.last = tuple(steps) if steps else (0, -1)
        self.target = workdir / "profile"
        self.active = bool(steps) and hosts.is_lead() and start < self.first
        self._local: str | None = None
        if self.active and start == self.first - 1:
            self._start()

    def boundary(self, step: int) -> bool:
        return self.active and step in (self.first - 1, self.last)

    def reached(self, step: int) -> None:
        """Called at each boundary, where the devices have finished ``step``."""
        if not self.active:
            return
        if step == self.first - 1 and self._local is None:
            self._start()
        elif step >= self.last and self._local is not None:
            self.stop()

    def _start(self) -> None:
        self._local = tempfile.mkdtemp(prefix="stn_jax_profile_")
        jax.profiler.start_trace(self._local)

    def stop(self) -> None:
        """Ends the trace (if running) and copies it into the workdir; also where a run stops early."""
        if self._local is None:
            return
        jax.profiler.stop_trace()
        storage.copy_tree(storage.path(self._local), self.target)
        shutil.rmtree(self._local, ignore_errors=True)
        self._local, self.active = None, False
