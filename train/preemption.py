"""Preemption notices: SIGTERM (then a short grace period) ends a run with a checkpoint, not a loss.

One process (``jax.distributed`` not initialised): a SIGTERM handler, installed for the run and
removed after it, notes the signal; :meth:`Preemption.reached` is True from the next step on.

Several processes (after ``jax.distributed.initialize()``): JAX's preemption service catches
SIGTERM on whichever host gets it and agrees with every host on a step, one past the largest any
of them had reached; ``multihost_utils.reached_preemption_sync_point`` is True on every host at
that step, and only there, so :meth:`Preemption.reached` must be asked at every step on every
host. No Python handler is installed then: it would replace JAX's and break the agreement.

The loop (:mod:`train.train`) makes that step a boundary, saves a checkpoint of it, waits for
it and its digests, and stops with :class:`train.errors.PreemptedError` (exit code 7).
"""

from __future__ import annotations

import signal
import threading

import jax


class Preemption:
    """Context manager for one run; :meth:`reached` says whether to stop at a step (see the module docstring)."""

    def __init__(self):
        self._signalled = False
        self._previous = None
        self._distributed = jax.distributed.is_initialized()

    def __enter__(self) -> Preemption:
        if not self._distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _note(self, signum, frame) -> None:
        del signum, frame
        self._signalled = True

    def reached(self, step: int) -> bool:
        """True at the step to stop at; asked after dispatching each step, by every process."""
        if self._distributed:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled
