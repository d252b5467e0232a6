"""Every config key, declared once (:data:`KEYS`: default, doc, check), and the defaults built from them.

An experiment's ``get_config()`` starts from :func:`base_config` and changes only what differs. Every key
can be overridden from the command line with ``--set key=value`` (or ``--config.key=value``).
:func:`train.config_checks.validate` runs each key's check, then the checks that relate keys;
``python -m train --config NAME --print_config`` prints the keys with their docs. Adding a key means adding
one :class:`Key` here (``tests/test_train.py`` fails for a key without a doc or a check).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from stn_jax.models import MODEL_NAMES
from train import datasets, distortions, optimizer, sources


@dataclasses.dataclass(frozen=True)
class Check:
    """What a key accepts: ``accepts(value)``, and ``expected``, the words an error message uses."""

    expected: str
    accepts: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def one_of(choices: tuple[str, ...]) -> Check:
    return Check(f"one of {choices}", lambda v: isinstance(v, str) and v in choices)


POSITIVE_INT = Check("a positive int", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = Check("a non-negative int", lambda v: _is_int(v) and v >= 0)
POSITIVE = Check("a positive finite number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE = Check("a non-negative finite number (0: off)", lambda v: _is_number(v) and v >= 0)
FRACTION = Check("a number in [0, 1) (0: off)", lambda v: _is_number(v) and 0 <= v < 1)
TEXT = Check("a non-empty string", lambda v: isinstance(v, str) and bool(v))
PATH = Check("a string (a directory, a gs:// URL or a .npz pack; empty: $TFDS_DATA_DIR)", lambda v: isinstance(v, str))
FLAG = Check("True or False", lambda v: isinstance(v, bool))
OPTIONS = Check("a mapping of the model's options", lambda v: isinstance(v, (dict, ml_collections.ConfigDict)))
FRACTIONS = Check(
    "a tuple of increasing fractions in (0, 1)",
    lambda v: isinstance(v, tuple) and all(_is_number(f) and 0 < f < 1 for f in v) and list(v) == sorted(set(v)),
)
STEP_RANGE = Check(  # that last <= steps is checked with the keys together (train.config_checks)
    "() or (first, last) with 1 <= first <= last <= steps",
    lambda v: isinstance(v, tuple) and (v == () or (len(v) == 2 and all(map(_is_int, v)) and 1 <= v[0] <= v[1])),
)


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its name, default, one-line doc and check."""

    name: str
    default: Any
    doc: str
    check: Check


KEYS: tuple[Key, ...] = (
    Key("name", "base", "the experiment's name (set by train.configs.get_config)", TEXT),
    # Data.
    Key("dataset", "mnist", '"mnist" or "svhn" (TFDS svhn_cropped)', one_of(datasets.NAMES)),
    Key(
        "distortion",
        "none",
        'MNIST\'s distortion (train.distortions.KINDS); "none" for SVHN',
        one_of(distortions.KINDS),
    ),
    Key("data_dir", "", "the TFDS data dir or a .npz pack; else --data_dir, else $TFDS_DATA_DIR", PATH),
    Key("prepare", True, "prepare MNIST (TFDS, else the offline copy) when data_dir lacks it", FLAG),
    Key("train_split", "train[:92%]", "the TFDS split trained on", TEXT),
    Key("val_split", "train[92%:]", 'evaluated every eval_every steps; ranks checkpoints ("best": lowest error)', TEXT),
    Key("test_split", "test", "evaluated once at the end: the reported test error", TEXT),
    Key(
        "test_seed",
        0,
        "the fixed distortion of the test set (validation: +1, a fixed training set: +2)",
        NON_NEGATIVE_INT,
    ),
    Key(
        "train_distortion",
        "fresh",
        '"fresh": distorted anew every step; "fixed": once, the same every epoch',
        one_of(("fresh", "fixed")),
    ),
    Key(
        "data_source",
        "auto",
        '"device" (the split held on the devices), "host" (sent every dispatch) or "auto"',
        one_of(sources.CHOICES),
    ),
    # Model.
    Key("model", "cnn", "a stn_jax.models.build_model name", one_of(MODEL_NAMES)),
    Key("model_kwargs", {}, "the model's options (checked when the model is built)", OPTIONS),
    # Optimisation.
    Key("seed", 0, "parameters, dropout and training distortions: a pure function of (seed, step)", NON_NEGATIVE_INT),
    Key("batch_size", 128, "the global batch (all devices of all processes)", POSITIVE_INT),
    Key("steps", 2000, "optimisation steps", POSITIVE_INT),
    Key("optimizer", "adamw", '"adamw" or "sgd" (the paper\'s; train.optimizer)', one_of(optimizer.OPTIMIZERS)),
    Key("learning_rate", 3e-3, "the peak learning rate", POSITIVE),
    Key(
        "schedule",
        "cosine",
        '"cosine" (warm-up, cosine decay), "steps" (÷10 at lr_drops) or "constant"',
        one_of(optimizer.SCHEDULES),
    ),
    Key("warmup_steps", 100, 'steps of linear warm-up of "cosine"', NON_NEGATIVE_INT),
    Key("lr_drops", (0.5, 0.75), 'fractions of steps where "steps" divides the rate by 10', FRACTIONS),
    Key("momentum", 0.9, 'momentum of "sgd" (0: none)', FRACTION),
    Key("weight_decay", 1e-4, "decoupled weight decay (adamw), L2 added to the gradient (sgd)", NON_NEGATIVE),
    Key("localisation_lr", 0.1, "learning-rate multiplier of the localisation nets (paper: 0.1)", NON_NEGATIVE),
    Key("grad_clip_norm", 0.0, "clip gradients to this global norm (0: off)", NON_NEGATIVE),
    Key("ema_decay", 0.0, "evaluate a moving average of the weights with this decay (0: off)", FRACTION),
    Key("label_smoothing", 0.0, "train on labels smoothed by this much (0: off); evaluation unsmoothed", FRACTION),
    Key("nonfinite", "stop", 'a non-finite loss: "stop" (exit code 3) or "skip" the step', one_of(("stop", "skip"))),
    Key(
        "steps_per_dispatch",
        0,
        "the most steps one dispatch takes (0: 32 on an accelerator, 1 on a CPU)",
        NON_NEGATIVE_INT,
    ),
    # Evaluation, logging, checkpoints.
    Key("eval_every", 500, "evaluate the validation split (and save a checkpoint) every this many steps", POSITIVE_INT),
    Key("eval_batch_size", 512, "the global evaluation batch (divisible by common device counts)", POSITIVE_INT),
    Key("log_every", 50, "log the mean training loss every this many steps", POSITIVE_INT),
    Key("checkpoint_every", 500, "save a checkpoint every this many steps", POSITIVE_INT),
    Key("keep_checkpoints", 3, "checkpoints kept (and the best by validation error)", POSITIVE_INT),
    Key("async_checkpoints", True, "save checkpoints in the background", FLAG),
    Key("num_show", 16, "test images in each inputs-vs-transformer picture", POSITIVE_INT),
    Key("profile_steps", (), "(first, last): a jax.profiler trace of those steps in <workdir>/profile", STEP_RANGE),
)


def base_config() -> ml_collections.ConfigDict:
    """Every key at its default (:data:`KEYS`)."""
    return ml_collections.ConfigDict({key.name: key.default for key in KEYS})


def describe(config: ml_collections.ConfigDict) -> str:
    """``config``'s keys, values and docs, a line each (``python -m train --print_config``)."""
    values = {key.name: config[key.name] for key in KEYS}
    shown = {name: repr(v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v) for name, v in values.items()}
    width = max(map(len, shown.values()))
    return "\n".join(f"{key.name:<19} {shown[key.name]:<{width}}  # {key.doc}" for key in KEYS)


def mnist(distortion: str, model: str, **model_kwargs) -> ml_collections.ConfigDict:
    c = base_config()
    c.name = f"mnist_{distortion.lower()}_{model}"
    c.distortion = distortion
    c.model = model
    c.model_kwargs = ml_collections.ConfigDict(model_kwargs)
    return c


# The paper's optimiser: SGD (momentum 0.9, the default), lr 0.01 divided by 10 at ``lr_drops``, no weight
# decay; the localisation nets at 0.1× (the default).
PAPER_SGD = {"optimizer": "sgd", "learning_rate": 0.01, "schedule": "steps", "warmup_steps": 0, "weight_decay": 0.0}


def paper_sgd(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c`` with the paper's optimiser (:data:`PAPER_SGD`)."""
    c.update(PAPER_SGD)
    return c
