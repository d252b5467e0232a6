"""One run per workdir: the run's lead process holds ``<workdir>/run.lock`` while it runs.

The lock is an ``flock`` on that file, so the kernel drops it when the process ends, however
it ends (``kill -9`` included): a lock file left by a killed run never blocks a rerun. The
file's text only says who holds it, for the message a second run prints. On a network
filesystem this relies on its ``flock`` support (Linux NFS maps it to byte-range locks).
No JAX here.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from train.errors import WorkdirBusyError

NAME = "run.lock"


class WorkdirLock:
    """Holds ``workdir``'s lock until :meth:`release` or the end of the process."""

    def __init__(self, workdir: os.PathLike | str):
        self.path = Path(workdir) / NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "holder unknown"
            os.close(fd)
            raise WorkdirBusyError(
                f"workdir {Path(workdir)} is in use by another run ({holder}); wait for it to end "
                "or use another --workdir"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode()[:4000], 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None
