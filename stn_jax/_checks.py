"""Argument checks shared by the public functions.

Every check runs at trace time on static information (shapes, dtypes, option
strings) and raises a ``ValueError``/``TypeError`` whose message names the
argument, what was expected and what was given. :func:`missing_extra` is the error of a
Flax-side module (``stn_jax.nnx``, ``linen``, ``models``, ``optim``) imported without the
``flax`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def missing_extra(module: str, error: ModuleNotFoundError) -> ImportError:
    """The ImportError of ``module`` when ``error.name`` (flax or optax) is not installed: the core
    install (``pip install stn_jax``) brings JAX and NumPy only."""
    return ImportError(
        f'{module} needs {error.name}, which comes with the flax extra: pip install "stn_jax[flax]"',
        name=error.name,
    )


def check_option(name: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a Python bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_widths(name: str, value) -> tuple[int, ...]:
    """Widths of fully connected layers: a sequence (possibly empty) of positive Python ints."""
    try:
        widths = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    return tuple(check_int(name, w, minimum=1) for w in widths)


def check_mlp(hidden, out_features, dropout) -> tuple[tuple[int, ...], int | None, float | None]:
    """The options of the NNX and Linen ``MLP``, checked alike: hidden widths, output width
    (``None`` or a positive int) and dropout rate (``None`` or in [0, 1])."""
    hidden = check_widths("hidden", hidden)
    if out_features is not None:
        out_features = check_int("out_features", out_features, minimum=1)
    if dropout is not None:
        dropout = check_finite_scalar("dropout", dropout)
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be None or a rate in [0, 1], got {dropout!r}")
    return hidden, out_features, dropout


def check_shape_tuple(name: str, shape, ranks: Sequence[int] = (1, 2, 3)) -> tuple[int, ...]:
    """An output shape: a tuple of positive Python ints of one of the allowed lengths."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}") from None
    if len(dims) not in ranks:
        raise ValueError(f"{name} must have length in {tuple(ranks)}, got {shape!r} (length {len(dims)})")
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{name} must contain Python ints, got {shape!r}")
        if d < 1:
            raise ValueError(f"{name} must contain positive sizes, got {shape!r}")
    return tuple(int(d) for d in dims)


def check_finite_scalar(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def as_float_array(name: str, x) -> jnp.ndarray:
    """Converts to an array; integers and bools promote to the default float, other types are rejected."""
    arr = jnp.asarray(x)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def compute_dtype(dtype) -> np.dtype:
    """Half-precision inputs are computed (accumulated) in float32."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return jnp.dtype(jnp.float32)
    return dtype
