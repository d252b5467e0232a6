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
