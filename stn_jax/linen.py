"""Spatial transformer as a Flax Linen module.

The Linen twin of :mod:`stn_jax.nnx`: same options (its fields are the one option list,
``TransformerConfig`` in ``stn_jax._config``, written out, and checked by it when the module is
constructed), same
parameter names (``localisation/dense_i``, ``localisation_head``), same numbers.
Shapes are inferred at ``init`` time, so no ``input_shape`` is needed.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from stn_jax.linen import SpatialTransformer
  >>> st = SpatialTransformer(out_shape=(14, 14), return_theta=True)
  >>> x = jnp.ones((2, 28, 28, 1))
  >>> variables = st.init(jax.random.key(0), x)
  >>> out, theta = st.apply(variables, x)
  >>> out.shape, theta.shape
  ((2, 14, 14, 1), (2, 2, 3))
  >>> sorted(variables["params"])
  ['localisation', 'localisation_head']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stn_jax import _checks, _config, _warp
from stn_jax._config import affine_constraints

try:
    import flax.linen as nn
except ModuleNotFoundError as _error:  # the core install, without the flax extra
    raise _checks.missing_extra(__name__, _error) from _error

from stn_jax.optim import localisation_labels, with_localisation_lr

__all__ = [
    "MLPLocalisation",
    "SpatialTransformer",
    "affine_constraints",
    "localisation_labels",
    "with_localisation_lr",
]


class MLPLocalisation(nn.Module, kw_only=True):
    """The default localisation network: flatten, then ``Dense → ReLU`` per hidden width.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from stn_jax.linen import MLPLocalisation
      >>> net = MLPLocalisation(hidden=(8, 4))
      >>> net.apply(net.init(jax.random.key(0), jnp.ones((2, 3, 4))), jnp.ones((2, 3, 4))).shape
      (2, 4)
    """

    hidden: Sequence[int] = (32, 32)

    def __post_init__(self) -> None:
        _config.check_hidden(self.hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
        return x


class SpatialTransformer(nn.Module, kw_only=True):
    """A spatial transformer layer (Jaderberg et al., 2015) for batched inputs.

    ``inputs`` ``(B, *spatial, C)`` with 1, 2 or 3 spatial axes → localisation net →
    regression layer (``localisation_head``) → θ → :func:`stn_jax.grid` →
    :func:`stn_jax.sample`, vmapped over the batch.

    Attributes:
      localisation: any Linen module mapping the inputs to features ``(B, ...)``;
        default :class:`MLPLocalisation` with ``hidden`` widths. Inside a parent's
        ``@nn.compact`` method create it with ``parent=None`` (e.g.
        ``SpatialTransformer(localisation=MyNet(parent=None))``) so that the transformer
        adopts it as its ``localisation`` submodule; otherwise the parent owns its
        parameters and :func:`localisation_labels` cannot tell them apart.
      <options>

    Raises:
      ValueError, TypeError: at construction, for a bad option (naming it).

    Example:
      >>> from stn_jax.linen import SpatialTransformer
      >>> SpatialTransformer(transform="affine", out_shape=(1, 2, 3, 4))
      Traceback (most recent call last):
      ...
      ValueError: out_shape must have length in (1, 2, 3), got (1, 2, 3, 4) (length 4)
    """

    localisation: nn.Module | None = None
    # The options of TransformerConfig (stn_jax/_config.py), written out for type checkers and IDEs;
    # tests/test_linen.py checks that they are exactly that list, with its defaults and types.
    out_shape: tuple[int, ...] | None = None
    transform: str = "affine"
    hidden: tuple[int, ...] = (32, 32)
    num_control_points: int = 16
    constraints: Any = None
    theta_init: str = "identity"
    num_transformers: int = 1
    combine: str = "concat"
    method: str = "bilinear"
    padding: str = "zeros"
    align_corners: bool = False
    antialias: bool = False
    return_theta: bool = False

    def __post_init__(self) -> None:
        _ = self.config  # validates every option now, at construction
        super().__post_init__()

    @property
    def config(self) -> _config.TransformerConfig:
        return _config.TransformerConfig(**{name: getattr(self, name) for name in _config.OPTIONS})

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Warps ``inputs`` ``(B, *spatial, C)``; returns the output, and θ if ``return_theta``."""
        config = self.config
        inputs = jnp.asarray(inputs)
        out_shape = config.check_inputs(inputs)
        ndim = inputs.ndim - 2
        localisation = self.localisation
        if localisation is None:
            localisation = MLPLocalisation(hidden=config.hidden, name="localisation")
        features = localisation(inputs)
        raw = nn.Dense(
            config.outputs_for(ndim),
            kernel_init=config.kernel_init(),
            bias_init=config.bias_init(ndim),
            name="localisation_head",
        )(features.reshape(features.shape[0], -1))
        out, theta = _warp.apply(config, inputs, raw, out_shape)
        if self.return_theta:
            return out, config.returned_theta(theta)
        return out


SpatialTransformer.__doc__ = _config.with_option_docs(SpatialTransformer.__doc__)
