"""One run per workdir: the run's lead process holds ``<workdir>/run.lock`` while it runs.

A local workdir: an ``flock`` on that file, so the kernel drops it when the process ends, however
it ends (``kill -9`` included): a lock file left by a killed run never blocks a rerun. The file's
text only says who holds it, for the message a second run prints. On a network filesystem this
relies on its ``flock`` support (Linux NFS maps it to byte-range locks); where the filesystem has
none (``flock`` fails with ENOLCK or EOPNOTSUPP), the run says so in one warning and goes on
without a lock: keeping to one run per workdir is then the user's job.

A ``gs://`` workdir has no locks, so the lock is a lease: ``run.lock`` is an object created only if
absent (a write with the precondition ``ifGenerationMatch=0``, which GCS enforces), holding the
holder (host, pid, command) and the time its lease ends, :data:`LEASE_S` seconds after it was last
written. A thread of the holder rewrites it every ``LEASE_S / 4`` seconds, each write conditional
on the generation it wrote last, so it never overwrites a successor; :meth:`WorkdirLock.release`
deletes it. A second run that finds a lease still running exits 6 naming the holder; one that
finds it ended (its holder was killed, or could not reach GCS for ``LEASE_S``) takes it over with
a one-line warning, by a write conditional on the generation it read, so of two runs taking over
at once exactly one wins. The run that lost its lease sees :attr:`WorkdirLock.lost` and stops before
its next checkpoint (:mod:`train.train`). Lease ends are compared with this host's clock: hosts must keep time
(NTP, as cloud VMs do) to well within ``LEASE_S``. ``$STN_JAX_LOCK_LEASE_S`` sets ``LEASE_S``
(default 120 s: after a ``kill -9`` a rerun waits at most that long).

No JAX here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse

from train import storage
from train.errors import WorkdirBusyError

NAME = "run.lock"
LEASE_S = float(os.environ.get("STN_JAX_LOCK_LEASE_S", "120"))

log = logging.getLogger("train.workdir_lock")


def _holder() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)}"


def _busy(workdir, holder: str) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {workdir} is in use by another run ({holder}); wait for it to end or use another --workdir"
    )


class WorkdirLock:
    """Holds ``workdir``'s lock until :meth:`release` or the end of the process (see the module docstring)."""

    def __init__(self, workdir: os.PathLike | str):
        self._fd: int | None = None
        self._lease: _Lease | None = None
        if storage.is_remote(workdir):
            self._lease = _Lease(workdir)
        else:
            self._fd = _flock(workdir)

    @property
    def lost(self) -> bool:
        """True once another run has taken over this run's lease (it could not renew it in time)."""
        return self._lease is not None and self._lease.lost

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _flock(workdir: os.PathLike | str) -> int | None:
    path = os.path.join(os.fspath(workdir), NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "holder unknown"
        os.close(fd)
        raise _busy(workdir, holder) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        os.close(fd)
        log.warning("workdir %s: its filesystem has no flock (%s); running without a lock", workdir, err.strerror)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder().encode()[:4000], 0)
    return fd


class _Lease:
    """The ``gs://`` lock: an object written with generation preconditions, renewed by a thread."""

    def __init__(self, workdir: os.PathLike | str):
        from google.cloud import storage as gcs

        url = urllib.parse.urlsplit(f"{os.fspath(workdir).rstrip('/')}/{NAME}")
        self._blob = gcs.Client().bucket(url.netloc).blob(url.path.lstrip("/"))
        self.holder, self.lost = _holder(), False
        self._generation = self._acquire(workdir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_released, name="workdir-lease", daemon=True)
        self._thread.start()

    def _body(self) -> str:
        return json.dumps({"holder": self.holder, "lease_ends": time.time() + LEASE_S})

    def _write(self, generation: int) -> int:
        """Writes the lease if the object's generation is ``generation`` (0: absent); its new generation."""
        self._blob.upload_from_string(self._body(), content_type="application/json", if_generation_match=generation)
        return int(self._blob.generation)

    def _acquire(self, workdir) -> int:
        from google.api_core import exceptions

        for _ in range(5):  # only a holder that releases between our two requests makes us go round
            try:
                return self._write(0)
            except exceptions.PreconditionFailed:
                pass
            current = self._blob.bucket.get_blob(self._blob.name)
            if current is None:
                continue
            try:
                lease = json.loads(current.download_as_bytes(if_generation_match=current.generation))
                holder, ends = str(lease["holder"]), float(lease["lease_ends"])
            except exceptions.PreconditionFailed:
                continue  # renewed meanwhile: read again
            except (ValueError, KeyError, TypeError):
                holder, ends = "unreadable lock", 0.0
            if ends > time.time():
                raise _busy(workdir, f"{holder}; lease ends in {ends - time.time():.0f} s unless renewed")
            try:
                generation = self._write(int(current.generation))
            except exceptions.PreconditionFailed:
                continue  # another run took it over, or its holder renewed it, first: read again
            log.warning(
                "workdir %s: took over the lock of %s, whose lease ended %.0f s ago",
                workdir,
                holder,
                time.time() - ends,
            )
            return generation
        raise _busy(workdir, "its lock changed hands five times while this run tried to take it")

    def _renew_until_released(self) -> None:
        from google.api_core import exceptions

        while not self._stop.wait(LEASE_S / 4):
            try:
                self._generation = self._write(self._generation)
            except exceptions.PreconditionFailed:
                self.lost = True
                log.error(
                    "the workdir lock %s was taken over by another run: this run no longer holds it", self._blob.name
                )
                return
            except Exception as err:  # a network error: try again at the next renewal
                log.warning("could not renew the workdir lock %s: %s", self._blob.name, err)

    def release(self) -> None:
        from google.api_core import exceptions

        self._stop.set()
        self._thread.join()
        if not self.lost:
            with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
                self._blob.delete(if_generation_match=self._generation)
