"""One config per experiment, by name: ``get_config(name)`` → ``ml_collections.ConfigDict``.

Each module here is an experiment with a ``get_config()``. Every cell of the paper's Table 1
(``mnist_<r|rts|p|e>_<model>`` for its eight models) exists too, as ``base.mnist(distortion,
model)`` unless a module of that name says otherwise. :data:`NAMES` lists them all. ``tiny`` is
the smallest useful run, for tests.
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from train.configs import base

TABLE1_DISTORTIONS = ("R", "RTS", "P", "E")
TABLE1_MODELS = ("fcn", "cnn", *(f"st_{net}_{t}" for net in ("fcn", "cnn") for t in ("affine", "projective", "tps")))
_MODULES = {m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")}
_TABLE1 = {f"mnist_{d.lower()}_{m}": (d, m) for d in TABLE1_DISTORTIONS for m in TABLE1_MODELS}
NAMES: tuple[str, ...] = tuple(sorted(_MODULES | set(_TABLE1)))


_MODEL_WORDS = {"fcn": "FCN", "cnn": "CNN", "st_fcn": "ST-FCN", "st_cnn": "ST-CNN"}


def describe(name: str) -> str:
    """One line about experiment ``name``: its module's first docstring line, or which Table 1 cell it is."""
    if name in _MODULES:
        doc = (importlib.import_module(f"{__name__}.{name}").__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
    distortion, model = _TABLE1[name]
    net, _, transform = model.rpartition("_") if model.startswith("st_") else (model, "", "")
    what = f"{_MODEL_WORDS[net]} ({transform.replace('tps', 'TPS')})" if transform else _MODEL_WORDS[net]
    return f"Table 1 cell: {what} on {distortion}-distorted MNIST"


class UnknownConfigError(ValueError):
    """No experiment of that name."""


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of experiment ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise UnknownConfigError(f"unknown experiment {name!r}; known experiments: {', '.join(NAMES)}")
    if name in _MODULES:
        config = importlib.import_module(f"{__name__}.{name}").get_config()
    else:
        config = base.mnist(*_TABLE1[name])
    config.name = name
    return config
