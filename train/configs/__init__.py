"""One config per experiment, by name: ``get_config(name)`` → ``ml_collections.ConfigDict``.

Each module here is an experiment with a ``get_config()``; :data:`NAMES` lists them.
``tiny`` is the smallest useful run, for tests.
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections

NAMES: tuple[str, ...] = tuple(
    sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base",) and not m.name.startswith("_"))
)


class UnknownConfigError(ValueError):
    """No experiment of that name."""


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of experiment ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise UnknownConfigError(f"unknown experiment {name!r}; known experiments: {', '.join(NAMES)}")
    config = importlib.import_module(f"{__name__}.{name}").get_config()
    config.name = name
    return config
