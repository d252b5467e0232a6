"""Where a run's files live: a local directory or an object store (``gs://``), through ``etils.epath``.

Orbax and TFDS take the same paths, so ``--workdir`` and ``--data_dir`` may be either. What differs
on an object store, and is handled here once:

* an object appears whole when its upload ends, and there is no rename: :func:`write_bytes` writes
  a local file through a temporary and ``os.replace`` (atomic on a crash), an object directly;
* ``open(..., "a")`` silently overwrites: nothing in ``train`` appends to a remote file;
* a directory "move" is a copy of every object, then a delete (:func:`move`): a crash half-way
  leaves the source whole, so nothing is ever lost, at worst copied twice.

Every remote request here is one object operation; a listing is one request per directory level.
``python -m train`` sets ``EPATH_USE_TF=false`` unless it is set: epath then reaches ``gs://`` through
gcsfs, the client the tests run against, rather than TensorFlow's (which it picks when TensorFlow is
installed, as the ``train`` extra has it).
"""

from __future__ import annotations

import os
import sys
import urllib.parse

from etils import epath


def path(value: os.PathLike | str) -> epath.Path:
    """``value`` as an ``epath.Path``: a URL (``gs://bucket/dir``) as it is, a local path made absolute."""
    text = os.fspath(value)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(value: os.PathLike | str) -> bool:
    """True for a URL with a scheme (``gs://…``), False for a local path."""
    return len(urllib.parse.urlsplit(os.fspath(value)).scheme) > 1  # one letter: a Windows drive


def mkdir(directory: epath.Path) -> None:
    """Creates a local directory and its parents; nothing on an object store, which has no directories (and
    where creating a path's bucket by mistake must not happen)."""
    if not is_remote(directory):
        directory.mkdir(parents=True, exist_ok=True)


def write_bytes(target: epath.Path, data: bytes) -> None:
    """``target`` holds ``data`` or what it held before, never a part (see the module docstring)."""
    if is_remote(target):
        target.write_bytes(data)  # an object is created whole, when its upload completes
        return
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the content must not reach the disk later than the name
    os.replace(tmp, target)


def write_text(target: epath.Path, text: str) -> None:
    write_bytes(target, text.encode())


def forget_listings(where: os.PathLike | str) -> None:
    """Drops the directory listings gcsfs keeps (it never expires them), so that what other writers made
    since (TensorStore for Orbax, other hosts) is seen: call before checking what a directory holds."""
    if is_remote(where) and "gcsfs" in sys.modules:  # not imported: nothing listed, nothing to forget
        from etils.epath import backend

        backend.fsspec_backend.fs(os.fspath(where)).invalidate_cache()


def files(directory: epath.Path) -> dict[str, int]:
    """``{relative /-separated path: size in bytes}`` of every file under ``directory``, sorted by path.

    One listing request per directory on an object store: the sizes come with the listings."""
    forget_listings(directory)
    return dict(sorted(_files(directory)))


def _files(directory: epath.Path) -> list[tuple[str, int]]:
    found = []
    for entry in directory.iterdir():
        if entry.is_dir():
            found.extend((f"{entry.name}/{rel}", size) for rel, size in _files(entry))
        else:
            try:
                found.append((entry.name, entry.stat().length))
            except FileNotFoundError:  # renamed since the listing: another process's temporary file
                continue
    return found


def copy_tree(source: epath.Path, target: epath.Path, *, last: str | None = None) -> None:
    """Copies every file of ``source`` into ``target``; the file named ``last`` (relative) goes last, so
    that its presence means the copy is complete."""
    names = files(source)
    if last is not None:
        names = [n for n in names if n != last] + ([last] if last in names else [])
    for rel in names:
        mkdir((target / rel).parent)
        (target / rel).write_bytes((source / rel).read_bytes())  # any pair of filesystems, local to gs:// too


def move(source: epath.Path, target: epath.Path) -> None:
    """Renames a directory; on an object store, copies every object, then deletes the source."""
    if not is_remote(source):
        os.rename(source, target)
        return
    copy_tree(source, target)
    source.rmtree()
