"""Splits of a dataset packed in one ``.npz`` file: what a run reads on a machine without TFDS.

``benchmarks/reproduce_on_device.py pack`` writes one from a prepared TFDS data_dir (:func:`write`); a run
given the file as its data_dir (``--data_dir out/device/mnist.npz``) reads its splits from it through
:func:`train.input_pipeline.load_split` and :func:`train.input_pipeline.split_size`: the same raw uint8 images and int32
labels, in the same order, as TFDS gives. Imports NumPy only.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

SUFFIX = ".npz"


def is_pack(data_dir: os.PathLike | str | None) -> bool:
    """Whether ``data_dir`` names a pack (a ``.npz`` file) rather than a TFDS data_dir."""
    return data_dir is not None and os.fspath(data_dir).endswith(SUFFIX)


def write(
    path: os.PathLike | str, dataset: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict | None = None
) -> None:
    """``splits`` (split string → (uint8 images, labels)) of ``dataset`` into one compressed file at ``path``."""
    if not is_pack(path):
        raise ValueError(f"path must end in {SUFFIX}, got {os.fspath(path)!r}")
    header = {"dataset": dataset, "splits": list(splits), **(meta or {})}
    arrays = {}
    for i, (images, labels) in enumerate(splits.values()):
        arrays[f"images_{i}"], arrays[f"labels_{i}"] = np.asarray(images, np.uint8), np.asarray(labels, np.int32)
    np.savez_compressed(path, header=np.asarray(json.dumps(header)), **arrays)


def header(path: os.PathLike | str) -> dict:
    """What the pack holds: ``{"dataset", "splits", ...}`` (the metadata given to :func:`write`)."""
    return _load(os.fspath(path), os.stat(path).st_mtime_ns)[0]


def read(path: os.PathLike | str, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of ``split``; ``ValueError`` naming what the pack holds if it lacks it."""
    head, arrays = _load(os.fspath(path), os.stat(path).st_mtime_ns)
    if head["dataset"] != dataset or split not in head["splits"]:
        raise ValueError(
            f"the pack {os.fspath(path)} holds {head['dataset']} splits {head['splits']}, not {dataset} {split!r}"
        )
    i = head["splits"].index(split)
    return arrays[f"images_{i}"], arrays[f"labels_{i}"]


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> tuple[dict, dict[str, np.ndarray]]:
    del mtime_ns  # part of the cache key only: a rewritten pack is read again
    with np.load(path) as f:
        return json.loads(str(f["header"])), {k: f[k] for k in f.files if k != "header"}
