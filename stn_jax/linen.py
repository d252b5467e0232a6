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

from stn_jax import _checks, _config, _theta, _warp
from stn_jax._theta import affine_constraints

try:
    import flax.linen as nn
except ModuleNotFoundError as _error:  # the core install, without the flax extra
    raise _checks.missing_extra(__name__, _error) from _error

from stn_jax.optim import localisation_labels, with_localisation_lr

__all__ = [
    "MLP",
    "SpatialTransformer",
    "affine_constraints",
    "localisation_labels",
    "with_localisation_lr",
]


class MLP(nn.Module, kw_only=True):
    """Fully connected layers: flatten, ``Dense → ReLU`` per hidden width, then an optional output layer.

    The Linen twin of :class:`stn_jax.nnx.MLP`: the same options (the input size is inferred at
    ``init``), the same parameter names (``dense_0``, ``dense_1``, ..., ``out``); the default
    localisation network of :class:`SpatialTransformer`. Dropout, when active (``train=True``
    and a rate above 0), draws from the ``"dropout"`` random stream.

    Attributes:
      hidden: widths of the hidden layers (may be empty).
      out_features: width of a linear output layer after the hidden ones (no ReLU); ``None``: no
        output layer (the last hidden layer's activations are the output).
      dropout: rate of the dropout after each hidden layer's ReLU (active with ``train=True``);
        ``None``: no dropout.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from stn_jax.linen import MLP
      >>> net = MLP(hidden=(8, 4))
      >>> net.apply(net.init(jax.random.key(0), jnp.ones((2, 3, 4))), jnp.ones((2, 3, 4))).shape
      (2, 4)
      >>> net = MLP(hidden=(8,), out_features=10, dropout=0.5)
      >>> variables = net.init(jax.random.key(0), jnp.ones((2, 12)))
      >>> net.apply(variables, jnp.ones((2, 12)), train=True, rngs={"dropout": jax.random.key(1)}).shape
      (2, 10)
    """

    hidden: Sequence[int]
    out_features: int | None = None
    dropout: float | None = None

    def __post_init__(self) -> None:
        _checks.check_mlp(self.hidden, self.out_features, self.dropout)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """``(B, ...)``, flattened → ``(B, out_features)``; without an output layer, the last hidden
        layer's activations (or, with no layers at all, the flattened input)."""
        x = x.reshape(x.shape[0], -1)
        dropout = (
            nn.Dropout(self.dropout, deterministic=not train, name="dropout") if self.dropout is not None else None
        )
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
            if dropout is not None:
                x = dropout(x)
        return nn.Dense(self.out_features, name="out")(x) if self.out_features is not None else x


class SpatialTransformer(nn.Module, kw_only=True):
    """A spatial transformer layer (Jaderberg et al., 2015) for batched inputs.

    ``inputs`` ``(B, *spatial, C)`` with 1, 2 or 3 spatial axes → localisation net →
    regression layer (``localisation_head``) → θ → :func:`stn_jax.grid` →
    :func:`stn_jax.sample`, vmapped over the batch.

    Attributes:
      localisation: any Linen module mapping the inputs to features ``(B, ...)``;
        default :class:`MLP` with ``hidden`` widths. Inside a parent's
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
        out_shape = _warp.check_inputs(config, inputs)
        ndim = inputs.ndim - 2
        localisation = self.localisation
        if localisation is None:
            localisation = MLP(hidden=config.hidden, name="localisation")
        features = localisation(inputs)
        raw = nn.Dense(
            _theta.num_outputs(config, ndim),
            kernel_init=_theta.kernel_init(config),
            bias_init=_theta.bias_init(config, ndim),
            name="localisation_head",
        )(features.reshape(features.shape[0], -1))
        out, theta = _warp.apply(config, inputs, raw, out_shape)
        if self.return_theta:
            return out, _theta.as_returned(config, theta)
        return out


SpatialTransformer.__doc__ = _config.with_option_docs(SpatialTransformer.__doc__)
