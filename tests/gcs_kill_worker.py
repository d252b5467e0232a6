"""``python -m train`` that kills itself with SIGKILL right after starting the save of one step.

Usage: ``python tests/gcs_kill_worker.py STEP <python -m train arguments>``. The save is asynchronous,
so the kill lands while Orbax is still writing it (or, rarely, just after): what a preempted VM
without a grace period leaves behind.
"""

from __future__ import annotations

import os
import signal
import sys

import orbax.checkpoint as ocp

from train import __main__ as cli


def main() -> int:
    step, argv = int(sys.argv[1]), sys.argv[2:]
    save = ocp.CheckpointManager.save

    def save_then_die(self, at, *args, **kwargs):
        saved = save(self, at, *args, **kwargs)
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    ocp.CheckpointManager.save = save_then_die
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
