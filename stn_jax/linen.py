"""Spatial transformer as a Flax Linen module.

The Linen twin of :mod:`stn_jax.nnx`: same options (checked by the shared
:class:`stn_jax.transformer.TransformerConfig` when the module is constructed), same
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

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stn_jax import _checks
from stn_jax.transformer import (
    TransformerConfig,
    affine_constraints,
    check_hidden,
    localisation_labels,
    with_localisation_lr,
)

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

    def __post_init__(self):
        check_hidden(self.hidden)
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

    Attributes (keyword-only):
      out_shape: spatial output shape; ``None``: the input's spatial shape.
      transform: a name of :data:`stn_jax.TRANSFORMS`.
      localisation: any Linen module mapping the inputs to features ``(B, ...)``;
        default :class:`MLPLocalisation` with ``hidden`` widths. Inside a parent's
        ``@nn.compact`` method create it with ``parent=None`` (e.g.
        ``SpatialTransformer(localisation=MyNet(parent=None))``) so that the transformer
        adopts it as its ``localisation`` submodule; otherwise the parent owns its
        parameters and :func:`localisation_labels` cannot tell them apart.
      hidden: widths of the default localisation network.
      num_control_points: K for ``"tps"`` (a perfect square).
      constraints: fix entries of θ (``None`` = regressed, number = fixed).
      theta_init: ``"identity"`` (zero kernel, identity bias) or ``"random"``.
      num_transformers, combine: parallel transformers and how their outputs are
        returned (``"concat"`` on channels, ``"list"``, ``"stack"``).
      method, padding, align_corners, antialias: sampler options of :func:`stn_jax.sample`.
      return_theta: also return θ.

    Raises:
      ValueError, TypeError: at construction, for a bad option (naming it).

    Example:
      >>> from stn_jax.linen import SpatialTransformer
      >>> SpatialTransformer(transform="affine", out_shape=(1, 2, 3, 4))
      Traceback (most recent call last):
      ...
      ValueError: out_shape must have length in (1, 2, 3), got (1, 2, 3, 4) (length 4)
    """

    out_shape: Sequence[int] | None = None
    transform: str = "affine"
    localisation: nn.Module | None = None
    hidden: Sequence[int] = (32, 32)
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

    def __post_init__(self):
        self.config  # validates every option now, at construction
        check_hidden(self.hidden)
        _checks.check_bool("return_theta", self.return_theta)
        super().__post_init__()

    @property
    def config(self) -> TransformerConfig:
        return TransformerConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
        )

    @nn.compact
    def __call__(self, inputs: jax.Array):
        """Warps ``inputs`` ``(B, *spatial, C)``; returns the output, and θ if ``return_theta``."""
        config = self.config
        inputs = jnp.asarray(inputs)
        out_shape = config.check_inputs(inputs)
        ndim = inputs.ndim - 2
        localisation = self.localisation
        if localisation is None:
            localisation = MLPLocalisation(hidden=self.hidden, name="localisation")
        features = localisation(inputs)
        raw = nn.Dense(
            config.outputs_for(ndim),
            kernel_init=config.kernel_init(),
            bias_init=config.bias_init(ndim),
            name="localisation_head",
        )(features.reshape(features.shape[0], -1))
        out, theta = config.apply(inputs, raw, out_shape)
        if self.return_theta:
            return out, config.returned_theta(theta)
        return out
