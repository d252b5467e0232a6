"""The checks of a training config that need neither data nor compilation: :func:`validate`.

:func:`train.train.train_and_evaluate` runs them first, so a bad configuration raises
:class:`~train.errors.ConfigError` (exit code 2) before any data is read or anything compiled. What only
the data or the model can tell (a batch larger than the training split, ``model_kwargs`` the model
rejects, a checkpoint that does not fit) is checked later, still before compiling.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
from etils import epath

from stn_jax.models import MODEL_NAMES
from train import datasets, distortions, optim, packed, sources, storage
from train.errors import ConfigError

NONFINITE = ("stop", "skip")
TRAIN_DISTORTIONS = ("fresh", "fixed")


def _positive_int(config, name: str) -> None:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


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
    """Every check that needs neither data nor compilation; raises :class:`ConfigError`."""
    if config.dataset not in datasets.DATASETS:
        raise ConfigError(f"dataset must be one of {datasets.NAMES}, got {config.dataset!r}")
    if config.distortion not in distortions.KINDS:
        raise ConfigError(f"distortion must be one of {distortions.KINDS}, got {config.distortion!r}")
    if not datasets.of(config).distortable and config.distortion != "none":
        raise ConfigError(f"distortions are MNIST's; dataset={config.dataset!r} needs distortion='none', "
                          f"got {config.distortion!r}")  # fmt: skip
    if config.train_distortion not in TRAIN_DISTORTIONS:
        raise ConfigError(f"train_distortion must be one of {TRAIN_DISTORTIONS}, got {config.train_distortion!r}")
    if config.train_distortion == "fixed" and config.distortion == "none":
        raise ConfigError("train_distortion='fixed' needs an MNIST distortion, got distortion='none'")
    if config.model not in MODEL_NAMES:
        raise ConfigError(f"model must be one of {list(MODEL_NAMES)}, got {config.model!r}")
    if config.optimizer not in optim.OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {optim.OPTIMIZERS}, got {config.optimizer!r}")
    if config.schedule not in optim.SCHEDULES:
        raise ConfigError(f"schedule must be one of {optim.SCHEDULES}, got {config.schedule!r}")
    if config.nonfinite not in NONFINITE:
        raise ConfigError(f"nonfinite must be one of {NONFINITE}, got {config.nonfinite!r}")
    if config.data_source not in sources.CHOICES:
        raise ConfigError(f"data_source must be one of {sources.CHOICES}, got {config.data_source!r}")
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "log_every", "checkpoint_every",
                 "keep_checkpoints", "num_show"):  # fmt: skip
        _positive_int(config, name)
    value = config.steps_per_dispatch
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"steps_per_dispatch must be a non-negative int (0: per platform), got {value!r}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f"learning_rate must be a positive finite number, got {config.learning_rate!r}")
    steps = tuple(config.profile_steps)
    if steps and not (len(steps) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
                      and 1 <= steps[0] <= steps[1] <= config.steps):  # fmt: skip
        raise ConfigError(f"profile_steps must be () or (first, last) with 1 <= first <= last <= steps={config.steps}, "
                          f"got {config.profile_steps!r}")  # fmt: skip
    for name in ("ema_decay", "label_smoothing"):
        if not (isinstance(config[name], (int, float)) and 0 <= config[name] < 1):
            raise ConfigError(f"{name} must be a number in [0, 1) (0: off), got {config[name]!r}")
    devices, processes = jax.device_count(), jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % devices or config[name] % processes:
            raise ConfigError(
                f"{name}={config[name]} must be divisible by the number of devices ({devices}) "
                f"and of processes ({processes}): the global batch is split evenly over them"
            )
    resolve_data_dir(config)
