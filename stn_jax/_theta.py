"""θ from a spatial transformer's regression layer, as its options (a checked config) say.

The regression layer outputs the free entries of θ for each parallel transformer; ``constraints``
fix the others (the *template*: a free mask and the fixed values). This module knows θ's shape,
the template, the layer's width and initialisers (zero kernel and identity bias by default, so
that the untrained transformer is the identity) and how the raw output becomes θ. ``ndim`` is
the number of spatial axes; :func:`ndim_of` is the one the options imply before an input is seen.
The options themselves, and their checks, are :class:`stn_jax._config.TransformerConfig`.

Example:
  >>> import jax.numpy as jnp
  >>> from stn_jax import _theta
  >>> from stn_jax._config import TransformerConfig
  >>> config = TransformerConfig(constraints=_theta.affine_constraints(shear=False))
  >>> _theta.theta_shape(config, 2), _theta.num_outputs(config, 2)
  ((2, 3), 4)
  >>> _theta.from_regression(config, jnp.array([[2.0, 0.5, 3.0, -0.5]]), 2)[0, 0]
  Array([[ 2. ,  0. ,  0.5],
         [ 0. ,  3. , -0.5]], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from stn_jax import grids

if TYPE_CHECKING:
    from stn_jax._config import TransformerConfig


def affine_constraints(
    *, ndim: int = 2, scale: bool = True, shear: bool = True, translation: bool = True
) -> tuple[tuple[float | None, ...], ...]:
    """A constraint template for ``transform="affine"`` (Sonnet's AffineWarpConstraints idea).

    Entries that are ``None`` are regressed; numbers are fixed at that value. Turning a
    part off fixes it at the identity.

    Args:
      ndim: spatial dimensions (1, 2 or 3).
      scale: regress the diagonal.
      shear: regress the off-diagonal entries of the linear part (shear and rotation).
      translation: regress the last column.

    Returns:
      ``(ndim, ndim + 1)`` nested tuple of ``None`` / floats.

    Example:
      >>> from stn_jax.nnx import affine_constraints
      >>> affine_constraints(shear=False)   # scale and translation only
      ((None, 0.0, None), (0.0, None, None))
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    rows = []
    for r in range(ndim):
        row = []
        for c in range(ndim + 1):
            free = translation if c == ndim else (scale if r == c else shear)
            row.append(None if free else (1.0 if r == c else 0.0))
        rows.append(tuple(row))
    return tuple(rows)


def theta_shape(config: TransformerConfig, ndim: int) -> tuple[int, ...]:
    """Shape of one transformer's θ for ``ndim`` spatial dimensions."""
    params = grids.identity_params(config.transform, ndim=ndim, num_control_points=config.num_control_points)
    return tuple(params.shape)


def ndim_of(config: TransformerConfig) -> int:
    """The spatial rank the options imply: ``out_shape``'s length, else the rank whose θ has the
    constraints' shape, else 2."""
    if config.out_shape is not None:
        return len(config.out_shape)
    if config.constraints is not None:  # the constraints' shape tells the rank
        shape = np.array(config.constraints, dtype=object).shape
        for n in (2, 1, 3):
            if (n == 2 or config.transform not in grids._PLANAR_ONLY) and theta_shape(config, n) == shape:
                return n
    return 2


def template(config: TransformerConfig, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(free mask, fixed values), each of θ's shape, from ``constraints`` (``None``: all free, but
    ``h_22 = 1`` for ``"projective"``). Raises if the constraints do not fit θ."""
    shape = theta_shape(config, ndim)
    transform = config.transform
    if config.constraints is None:
        flat = np.full(shape, None, dtype=object)
        if transform == "projective":
            flat[2, 2] = 1.0  # 8 degrees of freedom: h_22 = 1, as in the paper
    else:
        flat = np.array(config.constraints, dtype=object)
        if flat.shape != shape and transform == "affine":
            raise ValueError(
                f"constraints for transform={transform!r} must be a nested sequence of shape {shape} "
                f"(None = regressed, number = fixed), got shape {flat.shape}"
            )
        if flat.shape != shape:
            raise ValueError(
                f"constraints for transform={transform!r} must have theta's shape {shape}, got {flat.shape}"
            )
    free = np.vectorize(lambda v: v is None, otypes=[bool])(flat)
    fixed = np.zeros(shape, np.float32)
    for index in zip(*np.nonzero(~free)):
        value = flat[index]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"constraints entries must be None or real numbers, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"constraints entries must be finite, got {value!r}")
        fixed[index] = value
    if not free.any():
        raise ValueError("constraints must leave at least one entry free (None), got every entry fixed")
    return free, fixed


def num_outputs(config: TransformerConfig, ndim: int) -> int:
    """Width of the regression layer: the free entries of θ, for all parallel transformers."""
    return config.num_transformers * int(template(config, ndim)[0].sum())


def kernel_init(config: TransformerConfig) -> Callable[..., jax.Array]:
    """Initialiser of the regression kernel: zeros for ``theta_init="identity"``, else LeCun normal."""
    if config.theta_init == "identity":
        return jax.nn.initializers.zeros
    return jax.nn.initializers.lecun_normal()


def bias_init(config: TransformerConfig, ndim: int) -> Callable[..., jax.Array]:
    """Initialiser of the regression bias: the identity transform's free entries, tiled (zeros for
    ``theta_init="random_zero_bias"``)."""
    free, _ = template(config, ndim)
    with jax.ensure_compile_time_eval():  # concrete even when called under jit
        identity = np.asarray(
            grids.identity_params(config.transform, ndim=ndim, num_control_points=config.num_control_points)
        )
    values = np.tile(identity[free], config.num_transformers)
    if config.theta_init == "random_zero_bias":
        values = np.zeros_like(values)

    def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        del key
        if tuple(shape) != values.shape:
            raise ValueError(f"regression bias must have shape {values.shape}, got {tuple(shape)}")
        return jnp.asarray(values, dtype)

    return init


def from_regression(config: TransformerConfig, raw: jax.Array, ndim: int) -> jax.Array:
    """Regression output ``(B, num_outputs)`` → θ ``(B, num_transformers, *theta_shape)``."""
    free, fixed = template(config, ndim)
    batch = raw.shape[0]
    raw = raw.reshape(batch, config.num_transformers, -1)
    full = jnp.broadcast_to(jnp.asarray(fixed, raw.dtype), (batch, config.num_transformers, *fixed.shape))
    full = full.reshape(batch, config.num_transformers, -1)
    full = full.at[:, :, np.flatnonzero(free.ravel())].set(raw)
    return full.reshape(batch, config.num_transformers, *fixed.shape)


def as_returned(config: TransformerConfig, theta: jax.Array) -> jax.Array:
    """θ as returned to the user: ``(B, *theta_shape)`` for one transformer, else ``(B, N, ...)``."""
    return theta[:, 0] if config.num_transformers == 1 else theta
