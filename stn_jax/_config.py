"""The options of a spatial transformer, written once: default, doc and check of each.

:class:`TransformerConfig`'s fields are *the* option list: the NNX and Linen ``SpatialTransformer``
modules take exactly these keyword arguments (written out in ``stn_jax.nnx``'s ``__init__`` and as
``stn_jax.linen``'s fields, so that type checkers see them; the tests check that both match this
list) and document them with :func:`with_option_docs`. A new option is one field here (its default,
its one-line doc and its check) and what it does in the warp or the modules. ``hidden`` and
``return_theta`` belong to the modules rather than the warp: they are in the list all the same,
but out of the config's equality and hash (the jitted warp's cache key).

Building a config runs every option's check, in the list's order, so both modules fail at
construction with a ``ValueError``/``TypeError`` that names the option. What follows from the
options (θ's shape, the constraint template, the regression layer's initialisers, θ from the
regression output) is :mod:`stn_jax._theta`; the warp itself is :mod:`stn_jax._warp`.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stn_jax import _checks, _theta, _tps, grids, sampling

INITS = ("identity", "random", "random_zero_bias")
COMBINES = ("concat", "list", "stack")

#: ``check(name, value, config)``: the checked (normalised) value of one option, or an error that
#: names it. Checks run in the list's order: one may read the options above it (checked already).
Check = Callable[[str, Any, "TransformerConfig"], Any]


def _option(default: Any, doc: str, *, check: Check, warp: bool = True) -> Any:
    """A field of the option list: its default, its doc and its check. ``warp=False``: an option of
    the modules (not of the warp), left out of the config's equality and hash, so it costs no
    recompilation."""
    return dataclasses.field(default=default, compare=warp, metadata={"doc": doc, "check": check})


# -- the checks ----------------------------------------------------------------------------------
def _one_of(allowed: Sequence[str]) -> Check:
    return lambda name, value, config: _checks.check_option(name, value, allowed)


def _flag(name: str, value: Any, config: TransformerConfig) -> bool:
    return _checks.check_bool(name, value)


def _out_shape(name: str, value: Any, config: TransformerConfig) -> tuple[int, ...] | None:
    return None if value is None else _checks.check_shape_tuple(name, value)


def _transform(name: str, value: Any, config: TransformerConfig) -> str:
    _checks.check_option(name, value, grids.TRANSFORMS)
    if value in grids._PLANAR_ONLY and config.out_shape is not None and len(config.out_shape) != 2:
        raise ValueError(f"out_shape must be 2-D (H, W) for transform={value!r}, got {config.out_shape!r}")
    return value


def _hidden(name: str, value: Any, config: TransformerConfig) -> tuple[int, ...]:
    return _checks.check_widths(name, value)


def _num_control_points(name: str, value: Any, config: TransformerConfig) -> Any:
    if config.transform == "tps":  # ignored by the other transforms
        _tps.lattice_side(value)
    return value


def _constraints(name: str, value: Any, config: TransformerConfig) -> Any:
    if value is None:
        return None
    _theta.template(config, _theta.ndim_of(config))  # raises unless they fit θ (config.constraints is value)
    return _as_nested_tuple(np.array(value, dtype=object).tolist())


def _as_nested_tuple(value):
    return tuple(_as_nested_tuple(v) for v in value) if isinstance(value, list) else value


def _num_transformers(name: str, value: Any, config: TransformerConfig) -> int:
    return _checks.check_int(name, value, minimum=1)


def _method(name: str, value: Any, config: TransformerConfig) -> str:
    _checks.check_option(name, value, sampling.METHODS)
    if value == "bicubic" and config.out_shape is not None and len(config.out_shape) != 2:
        raise ValueError(f"method='bicubic' needs a 2-D out_shape, got {config.out_shape!r}")
    return value


def _antialias(name: str, value: Any, config: TransformerConfig) -> bool:
    if _checks.check_bool(name, value) and config.method != "bilinear":
        raise ValueError(f"antialias=True needs method='bilinear', got method={config.method!r}")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Validated options of a spatial transformer, shared by the NNX and Linen modules.

    Args:
      <options>

    Example:
      >>> from stn_jax._config import TransformerConfig
      >>> TransformerConfig(transform="tps", out_shape=(8, 8), num_control_points=9).transform
      'tps'
      >>> TransformerConfig(transform="warp")
      Traceback (most recent call last):
      ...
      ValueError: transform must be one of [...], got 'warp'
    """

    # The option list (order: as documented, and as checked).
    out_shape: tuple[int, ...] | None = _option(
        None,
        "spatial output shape ``(W,)``, ``(H, W)`` or ``(D, H, W)`` (smaller: down-sampling, larger: "
        "over-sampling); ``None``: the input's spatial shape.",
        check=_out_shape,
    )
    transform: str = _option(
        "affine",
        'a name of :data:`stn_jax.TRANSFORMS` (``"affine"`` works in 1-D, 2-D and 3-D; '
        '``"projective"``, ``"tps"``, ``"similarity"`` are 2-D).',
        check=_transform,
    )
    hidden: tuple[int, ...] = _option(
        (32, 32), "widths of the default localisation network (an :class:`MLP`).", check=_hidden, warp=False
    )
    num_control_points: int = _option(16, 'K for ``"tps"`` (a perfect square >= 4).', check=_num_control_points)
    constraints: Any = _option(
        None,
        "fix entries of θ: ``None``, or a nested sequence of θ's shape with ``None`` for each regressed "
        "entry and a number for each fixed one (see :func:`affine_constraints`).",
        check=_constraints,
    )
    theta_init: str = _option(
        "identity",
        '``"identity"`` (zero kernel, identity bias: the untrained transformer is the identity) or '
        '``"random"`` (LeCun-normal kernel, identity bias: a random input-dependent transform around '
        'the identity) or ``"random_zero_bias"`` (LeCun-normal kernel, zero bias, as a plain dense layer '
        "starts: a random transform around θ = 0, which shrinks the whole output onto the input's centre).",
        check=_one_of(INITS),
    )
    num_transformers: int = _option(
        1, "transformers regressed in parallel by the one localisation net.", check=_num_transformers
    )
    combine: str = _option(
        "concat",
        'how parallel outputs are returned: ``"concat"``-enated on channels, as a ``"list"``, or '
        '``"stack"``-ed on a new axis 1.',
        check=_one_of(COMBINES),
    )
    method: str = _option(
        "bilinear", "interpolation of :func:`stn_jax.sample`, a name of :data:`stn_jax.METHODS`.", check=_method
    )
    padding: str = _option(
        "zeros",
        "reads outside the input, in :func:`stn_jax.sample`: a name of :data:`stn_jax.PADDINGS`.",
        check=_one_of(sampling.PADDINGS),
    )
    align_corners: bool = _option(False, "PyTorch's meaning, for the grid and the sampler.", check=_flag)
    antialias: bool = _option(
        False,
        "``True``: the warp reads the input averaged over each output pixel's footprint, for "
        "transforms that shrink (bilinear only; see :func:`stn_jax.sample`).",
        check=_antialias,
    )
    return_theta: bool = _option(
        False,
        "also return θ: ``(B, *theta_shape)``, or ``(B, N, *theta_shape)`` for ``num_transformers=N > 1``.",
        check=_flag,
        warp=False,
    )

    def __post_init__(self) -> None:
        for option in dataclasses.fields(self):
            value = option.metadata["check"](option.name, getattr(self, option.name), self)
            object.__setattr__(self, option.name, value)


#: The option list: name → default, in documentation order.
OPTIONS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}


def with_option_docs(doc: str | None) -> str:
    """``doc`` with its line ``<options>`` replaced by one entry per option, at that line's indentation."""
    if doc is None:
        raise ValueError("with_option_docs needs a docstring (none under python -OO)")
    lines = doc.split("\n")
    (index,) = [i for i, line in enumerate(lines) if line.strip() == "<options>"]
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    entries = [
        textwrap.fill(
            f"{f.name}: {f.metadata['doc']}",
            100,
            initial_indent=indent,
            subsequent_indent=indent + "  ",
            break_long_words=False,
            break_on_hyphens=False,  # a line break must not split a word
        )
        for f in dataclasses.fields(TransformerConfig)
    ]
    return "\n".join([*lines[:index], *entries, *lines[index + 1 :]])


TransformerConfig.__doc__ = with_option_docs(TransformerConfig.__doc__)
