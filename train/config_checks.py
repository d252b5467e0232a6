"""The checks of a training config that need neither data nor compilation: :func:`validate`.

:func:`train.train.train_and_evaluate` runs them first, so a bad configuration raises
:class:`~train.errors.ConfigError` (exit code 2) before any data is read or anything compiled. What only
the data or the model can tell (a batch larger than the training split, ``model_kwargs`` the model
rejects, a checkpoint that does not fit) is checked later, still before compiling.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from etils import epath

from train import datasets, packed, storage
from train.configs import base
from train.errors import ConfigError


def resolve_data_dir(config: ml_collections.ConfigDict) -> epath.Path:
    """``config.data_dir``, else ``$TFDS_DATA_DIR``; it must be given and, when local, it or its parent must exist.

    A URL (``gs://bucket/tfds``) is taken as it is: an object store has no directories to check, and a
    missing dataset there is reported when it is read."""
    value = config.data_dir or os.environ.get("TFDS_DATA_DIR", "")
    if not value:
        raise ConfigError("no data_dir: pass --data_dir DIR (or set data_dir, or $TFDS_DATA_DIR)")
    path = storage.path(value)
    if storage.is_remote(path):
        return path
    if packed.is_pack(path):  # splits packed in one file (train.packed)
        if not path.is_file():
            raise ConfigError(f"data_dir {path} (a pack of splits) does not exist")
        return path
    dataset = datasets.DATASETS.get(config.dataset)
    creatable = dataset is not None and dataset.auto_prepare and config.prepare  # the run prepares it inside
    if not path.is_dir() and not (creatable and path.parent.is_dir()):
        raise ConfigError(f"data_dir {path} does not exist")
    return path


def validate(config: ml_collections.ConfigDict) -> None:
    """Each key's check (:data:`train.configs.base.KEYS`), then those that relate keys; raises :class:`ConfigError`."""
    declared = {key.name for key in base.KEYS}
    unknown = sorted(set(config.keys()) - declared)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}: every key is declared in train/configs/base.py")
    for key in base.KEYS:
        if key.name not in config:
            raise ConfigError(f"config lacks the key {key.name!r} (start from train.configs.base.base_config())")
        if not key.check.accepts(config[key.name]):
            raise ConfigError(f"{key.name} must be {key.check.expected}, got {config[key.name]!r}")
    if not datasets.DATASETS[config.dataset].distortable and config.distortion != "none":
        raise ConfigError(
            f"distortions are MNIST's; dataset={config.dataset!r} needs distortion='none', got {config.distortion!r}"
        )
    if config.train_distortion == "fixed" and config.distortion == "none":
        raise ConfigError("train_distortion='fixed' needs an MNIST distortion, got distortion='none'")
    if config.profile_steps and config.profile_steps[1] > config.steps:
        raise ConfigError(
            f"profile_steps must be () or (first, last) with last <= steps={config.steps}, got {config.profile_steps!r}"
        )
    devices, processes = jax.device_count(), jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % devices or config[name] % processes:
            raise ConfigError(
                f"{name}={config[name]} must be divisible by the number of devices ({devices}) "
                f"and of processes ({processes}): the global batch is split evenly over them"
            )
    resolve_data_dir(config)
