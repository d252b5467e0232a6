"""One config per experiment, by name: ``get_config(name)`` → ``ml_collections.ConfigDict``.

Each module here is an experiment with a ``get_config()``. Every cell of the paper's Table 1
(``mnist_<r|rts|p|e>_<model>`` for its eight models) exists too, as ``base.mnist(distortion,
model)`` unless a module of that name says otherwise. :data:`NAMES` lists them all. ``tiny`` is
the smallest useful run, for tests.

``get_config(name, overrides)`` applies ``key=value`` strings as ``python -m train --set`` does
(:func:`parse_overrides`, :func:`apply_overrides`), so a script gets the config a command line runs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from typing import TypeVar

import ml_collections

from train import errors
from train.configs import base

TABLE1_DISTORTIONS = ("R", "RTS", "P", "E")
_MODEL_WORDS = {"fcn": "FCN", "cnn": "CNN", "st_fcn": "ST-FCN", "st_cnn": "ST-CNN"}
_TRANSFORM_WORDS = {"affine": "Aff", "projective": "Proj", "tps": "TPS"}  # as Table 1 abbreviates them


def _split_model(model: str) -> tuple[str, str]:
    """``"st_cnn_affine"`` -> ``("st_cnn", "affine")``; ``"cnn"`` -> ``("cnn", "")``."""
    net, _, transform = model.rpartition("_") if model.startswith("st_") else (model, "", "")
    return net, transform


def _row_label(model: str) -> str:
    """``"st_cnn_affine"`` -> ``"ST-CNN Aff"``, as Table 1 labels its rows."""
    net, transform = _split_model(model)
    return f"{_MODEL_WORDS[net]} {_TRANSFORM_WORDS[transform]}" if transform else _MODEL_WORDS[net]


# Table 1's rows in its order, as stn_jax.models.build_model names the models.
TABLE1_MODELS = ("fcn", "cnn", *(f"st_{net}_{t}" for net in ("fcn", "cnn") for t in _TRANSFORM_WORDS))
TABLE1_LABELS = {model: _row_label(model) for model in TABLE1_MODELS}  # model -> row label
_MODULES = {m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")}
_TABLE1 = {f"mnist_{d.lower()}_{m}": (d, m) for d in TABLE1_DISTORTIONS for m in TABLE1_MODELS}
NAMES: tuple[str, ...] = tuple(sorted(_MODULES | set(_TABLE1)))


def describe(name: str) -> str:
    """One line about experiment ``name``: its module's first docstring line, or which Table 1 cell it is."""
    if name in _MODULES:
        doc = (importlib.import_module(f"{__name__}.{name}").__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
    distortion, model = _TABLE1[name]
    net, transform = _split_model(model)
    what = f"{_MODEL_WORDS[net]} ({transform.replace('tps', 'TPS')})" if transform else _MODEL_WORDS[net]
    return f"Table 1 cell: {what} on {distortion}-distorted MNIST"


class UnknownConfigError(ValueError):
    """No experiment of that name."""


def parse_overrides(pairs: Iterable[str]) -> dict[str, object]:
    """``["steps=20", "lr_drops=(0.3,0.6)", "model=cnn"]`` -> ``{"steps": 20, "lr_drops": (0.3, 0.6), "model": "cnn"}``.

    Values are Python literals; anything else is a string. Raises :class:`train.errors.ConfigError`
    for a pair without ``=`` or key.
    """
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise errors.ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare word: a string
        out[key.strip()] = value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, object]) -> None:
    """Sets each dotted ``key`` of ``config`` to its value, in place.

    Keys must exist, except new options under ``model_kwargs``; a list given for a tuple field
    becomes a tuple. Raises :class:`train.errors.ConfigError` for an unknown key or a value the
    field refuses.
    """
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise errors.ConfigError(f"unknown config key {key!r}")
            node = node[part]
        if leaf not in node and not (parents and parents[-1] == "model_kwargs"):
            raise errors.ConfigError(f"unknown config key {key!r}; keys: {', '.join(sorted(config.keys()))}")
        try:
            if leaf in node and isinstance(node[leaf], tuple) and isinstance(value, list):
                value = tuple(value)
            node[leaf] = value
        except (TypeError, ValueError, KeyError) as err:
            raise errors.ConfigError(f"--set {key}={value!r}: {err}") from err


T = TypeVar("T")


def unpack(config: ml_collections.ConfigDict, cls: type[T]) -> T:
    """A ``cls`` (a dataclass) with each field read from the config key of its name, ``ConfigDict`` values as dicts:
    how a run hands its config to the modules that need part of it, as plain arguments."""
    value = lambda v: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
    return cls(**{field.name: value(config[field.name]) for field in dataclasses.fields(cls)})  # type: ignore[arg-type]


def get_config(name: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The config of experiment ``name`` (one of :data:`NAMES`) with ``overrides`` applied.

    ``overrides`` are ``key=value`` strings, read as ``python -m train --set`` reads them, e.g.
    ``get_config("tiny", ["steps=20", "model_kwargs.channels=(8,8)"])``. Raises
    :class:`UnknownConfigError` for an unknown name and :class:`train.errors.ConfigError` for a bad
    override.
    """
    if isinstance(overrides, str):  # its characters would read as pairs
        raise TypeError(f"overrides: expected key=value strings, got one string {overrides!r}")
    if name not in NAMES:
        raise UnknownConfigError(f"unknown experiment {name!r}; known experiments: {', '.join(NAMES)}")
    if name in _MODULES:
        config = importlib.import_module(f"{__name__}.{name}").get_config()
    else:
        config = base.mnist(*_TABLE1[name])
    config.name = name
    apply_overrides(config, parse_overrides(overrides))
    return config
