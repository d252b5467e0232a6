"""Exit codes of ``python -m train`` and the errors that map to them (no JAX import here:
the command line must set devices and hosts up before anything touches JAX)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected exception (a bug, a crashed peer, ...)
EXIT_CONFIG = 2  # bad configuration or command line, found before any compile
EXIT_NONFINITE = 3  # NaN/inf loss with nonfinite="stop"; the message names the checkpoint a rerun resumes from
EXIT_DATA = 4  # the dataset is missing and could not be prepared
EXIT_CHECKPOINT = 5  # the workdir has checkpoints but none verifies (all damaged); nothing was moved
EXIT_BUSY = 6  # another run holds the workdir
EXIT_PREEMPTED = 7  # SIGTERM / a preemption notice: stopped with a checkpoint; a rerun resumes from it
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); checkpoints already written stay valid
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "unexpected error",
    EXIT_CONFIG: "bad configuration",
    EXIT_NONFINITE: "non-finite loss",
    EXIT_DATA: "dataset unavailable",
    EXIT_CHECKPOINT: "no checkpoint verifies",
    EXIT_BUSY: "workdir in use by another run",
    EXIT_PREEMPTED: "preempted, checkpoint saved",
    EXIT_INTERRUPTED: "interrupted",
}


# Each error below carries the exit code ``python -m train`` ends with and the start of the line it prints.


class ConfigError(ValueError):
    """A configuration that cannot run (exit code 2)."""

    exit_code, prefix = EXIT_CONFIG, "error: bad configuration: "


class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/inf (exit code 3)."""

    exit_code, prefix = EXIT_NONFINITE, "error: "


class DataError(RuntimeError):
    """The dataset is missing and could not be prepared (exit code 4)."""

    exit_code, prefix = EXIT_DATA, "error: "


class CheckpointError(RuntimeError):
    """Checkpoints exist but none verifies, or the one asked for is damaged (exit code 5)."""

    exit_code, prefix = EXIT_CHECKPOINT, "error: "


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir (exit code 6)."""

    exit_code, prefix = EXIT_BUSY, "error: "


class PreemptedError(RuntimeError):
    """A preemption notice (SIGTERM) stopped the run after a checkpoint of the step it names (exit code 7)."""

    exit_code, prefix = EXIT_PREEMPTED, ""  # not an error: the message says how to resume


RUN_ERRORS = (ConfigError, NonFiniteLossError, DataError, CheckpointError, WorkdirBusyError, PreemptedError)
