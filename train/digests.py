"""SHA-256 digests of a finished checkpoint, one file per process for the part that process wrote.

Every process writes into a step directory ``checkpoints/<step>/``: files whose path names
``process_<i>`` (``state/ocdbt.process_1/…``, ``state/array_metadatas/process_1``,
``data/process_1-of-2.json``) are process ``i``'s; everything else (metadata, manifests, the
merged OCDBT tree, ``meta/``, ``metrics/``) is written by the primary process 0. Once Orbax has
finished the checkpoint, each process hashes its own part and writes ``digest.process_<i>.json``
into it (:func:`train.storage.write_bytes`: a local temporary renamed over, or one object), so a
digest is either complete or absent. Verifying re-hashes the files the digest lists: a damaged
checkpoint (truncated, overwritten, edited, a file or item directory missing) no longer matches.

No JAX here: plain files (local or ``gs://``, through ``etils.epath``), readable by any tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from etils import epath

from train import storage

PREFIX = "digest.process_"  # digest files (and their temporaries) are not part of what they digest
VERIFIED, NO_DIGEST, DAMAGED = "verified", "no digest", "damaged"
_OWNER = re.compile(r"(?:^|[._])process_(\d+)(?=$|[-._])")


def owner(relpath: str) -> int:
    """The process that writes ``relpath`` (relative to the step directory)."""
    for part in relpath.split("/"):
        if match := _OWNER.search(part):
            return int(match.group(1))
    return 0


def path(step_dir: os.PathLike | str, process: int) -> epath.Path:
    return storage.path(step_dir) / f"{PREFIX}{process}.json"


def _part(step_dir: epath.Path, process: int) -> dict[str, int]:
    """``{relative path: size}`` of ``process``'s files in ``step_dir``, sorted."""
    return {
        rel: size
        for rel, size in storage.files(step_dir).items()
        if not rel.split("/")[-1].startswith(PREFIX) and owner(rel) == process
    }


def _sha256(file: epath.Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write(step_dir: os.PathLike | str, process: int, process_count: int) -> None:
    """Writes ``process``'s digest of its part of the finished ``step_dir`` (atomically)."""
    step_dir = storage.path(step_dir)
    files = {rel: {"size": size, "sha256": _sha256(step_dir / rel)} for rel, size in _part(step_dir, process).items()}
    text = json.dumps({"process": process, "process_count": process_count, "files": files}, indent=1)
    storage.write_text(path(step_dir, process), text)


def _load(file: epath.Path) -> dict | None:
    """A digest's ``{path: (size, sha256)}`` and process count; None when unreadable."""
    try:
        data = json.loads(file.read_text())
        files = {rel: (int(v["size"]), str(v["sha256"])) for rel, v in data["files"].items()}
        return {"files": files, "process_count": int(data["process_count"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check(step_dir: os.PathLike | str, process: int) -> tuple[str, str]:
    """``(status, what is wrong)`` of ``process``'s part: VERIFIED, NO_DIGEST or DAMAGED."""
    step_dir = storage.path(step_dir)
    storage.forget_listings(step_dir)
    digest = path(step_dir, process)
    if not step_dir.is_dir():
        return DAMAGED, "its directory is gone"
    present = storage.files(step_dir)  # one listing: what is there, and its sizes
    if digest.name not in present:
        lead = _load(path(step_dir, 0)) if process else None
        if lead is not None and process >= lead["process_count"]:
            return VERIFIED, ""  # written by fewer processes: nothing of this one's in it
        return NO_DIGEST, f"no {digest.name}"
    if (loaded := _load(digest)) is None:
        return DAMAGED, f"{digest.name} is unreadable"
    problems = []
    for rel, (size, sha) in loaded["files"].items():
        if rel not in present:
            problems.append(f"{rel} is missing")
        elif (actual := present[rel]) != size:
            problems.append(f"{rel} has {actual} bytes, {size} when written")
        elif _sha256(step_dir / rel) != sha:
            problems.append(f"{rel} differs from its digest")
    if not problems:
        return VERIFIED, ""
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return DAMAGED, problems[0] + more


def check_all(step_dir: os.PathLike | str) -> tuple[str, str]:
    """Status of the whole checkpoint (every process's part), for readers outside a run."""
    status, reason = check(step_dir, 0)
    if status == NO_DIGEST:
        others = sorted(storage.path(step_dir).glob(f"{PREFIX}*.json"))
        return (DAMAGED, f"{reason} but {others[0].name}") if others else (status, reason)
    if status == DAMAGED:
        return status, reason
    for process in range(1, _load(path(step_dir, 0))["process_count"]):
        status, reason = check(step_dir, process)
        if status != VERIFIED:
            return DAMAGED, f"process {process}'s part: {reason}"
    return VERIFIED, ""
