"""Spatial transformer as a Flax NNX module.

A thin wrapper: a localisation network (any module, or a small MLP), a regression
layer initialised to the identity transform, and :func:`stn_jax.grid` /
:func:`stn_jax.sample` vmapped over the batch. Options and their checks live in
:class:`stn_jax.transformer.TransformerConfig`, shared with :mod:`stn_jax.linen`; the
parameter names are the same as the Linen module's, so
``nnx.state(st, nnx.Param).to_pure_dict()`` is a valid Linen ``params`` dict.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from stn_jax.nnx import SpatialTransformer
  >>> st = SpatialTransformer((28, 28, 1), out_shape=(14, 14), return_theta=True, rngs=nnx.Rngs(0))
  >>> out, theta = st(jnp.ones((2, 28, 28, 1)))
  >>> out.shape, theta.shape
  ((2, 14, 14, 1), (2, 2, 3))
  >>> theta[0]   # the untrained transformer is the identity
  Array([[1., 0., 0.],
         [0., 1., 0.]], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

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


class MLPLocalisation(nnx.Module):
    """The default localisation network: flatten, then ``Linear → ReLU`` per hidden width.

    Args:
      in_features: size of one flattened input example.
      hidden: widths of the hidden layers (may be empty: the regression layer then
        reads the raw input).
      rngs: random streams for the initialisers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from stn_jax.nnx import MLPLocalisation
      >>> MLPLocalisation(12, hidden=(8, 4), rngs=nnx.Rngs(0))(jnp.ones((2, 3, 4))).shape
      (2, 4)
    """

    def __init__(self, in_features: int, *, hidden: Sequence[int] = (32, 32), rngs: nnx.Rngs):
        hidden = check_hidden(hidden)
        self.num_layers = len(hidden)
        widths = (in_features, *hidden)
        for i in range(self.num_layers):
            setattr(self, f"dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for i in range(self.num_layers):
            x = nnx.relu(getattr(self, f"dense_{i}")(x))
        return x


class SpatialTransformer(nnx.Module):
    """A spatial transformer layer (Jaderberg et al., 2015) for batched inputs.

    ``inputs`` ``(B, *spatial, C)`` → localisation net → regression layer → θ →
    ``grid(θ, out_shape)`` → ``sample(inputs, grid)``, all channels warped alike.

    Args:
      input_shape: one example's shape ``(W, C)``, ``(H, W, C)`` or ``(D, H, W, C)``.
      out_shape: spatial output shape (smaller: down-sampling, larger: over-sampling);
        default: the input's spatial shape.
      transform: a name of :data:`stn_jax.TRANSFORMS` (``"affine"`` works in 1-D, 2-D
        and 3-D; ``"projective"``, ``"tps"``, ``"similarity"`` are 2-D).
      localisation: any callable module mapping the batched inputs to features
        ``(B, ...)`` (flattened before the regression layer); default
        :class:`MLPLocalisation` with ``hidden`` widths.
      localisation_features: flattened feature size of ``localisation``; inferred with
        ``nnx.eval_shape`` when omitted.
      hidden: widths of the default localisation network.
      num_control_points: K for ``"tps"`` (a perfect square).
      constraints: fix some entries of θ (``None`` = regressed, number = fixed); see
        :func:`stn_jax.transformer.affine_constraints`.
      theta_init: ``"identity"`` (zero kernel, identity bias) or ``"random"`` (LeCun-normal
        kernel, identity bias).
      num_transformers: parallel transformers regressed by the one localisation net.
      combine: parallel outputs ``"concat"``-enated on channels, as a ``"list"``, or
        ``"stack"``-ed on axis 1.
      method, padding, align_corners, antialias: sampler options of :func:`stn_jax.sample`.
      return_theta: also return θ (``(B, *theta_shape)``; ``(B, N, *theta_shape)`` for
        ``num_transformers=N > 1``).
      rngs: random streams for the initialisers.

    Raises:
      ValueError, TypeError: at construction, for a bad option (naming it).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from stn_jax.nnx import SpatialTransformer
      >>> st = SpatialTransformer((8, 8, 3), transform="tps", num_control_points=9,
      ...                         num_transformers=2, hidden=(16,), rngs=nnx.Rngs(0))
      >>> st(jnp.ones((4, 8, 8, 3))).shape   # two warps concatenated on channels
      (4, 8, 8, 6)
      >>> SpatialTransformer((8, 8, 3), transform="tps", num_control_points=10, rngs=nnx.Rngs(0))
      Traceback (most recent call last):
      ...
      ValueError: num_control_points must be a perfect square >= 4 ...
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        out_shape: Sequence[int] | None = None,
        transform: str = "affine",
        localisation: Callable[[jax.Array], jax.Array] | None = None,
        localisation_features: int | None = None,
        hidden: Sequence[int] = (32, 32),
        num_control_points: int = 16,
        constraints: Any = None,
        theta_init: str = "identity",
        num_transformers: int = 1,
        combine: str = "concat",
        method: str = "bilinear",
        padding: str = "zeros",
        align_corners: bool = False,
        antialias: bool = False,
        return_theta: bool = False,
        rngs: nnx.Rngs,
    ):
        input_shape = _checks.check_shape_tuple("input_shape", input_shape, ranks=(2, 3, 4))
        spatial = input_shape[:-1]
        if out_shape is None:
            out_shape = spatial
        out_shape = _checks.check_shape_tuple("out_shape", out_shape)
        if len(out_shape) != len(spatial):
            raise ValueError(
                f"out_shape must have as many axes as the input's spatial shape {spatial}, got {out_shape!r}"
            )
        self.config = TransformerConfig(
            transform=transform,
            out_shape=out_shape,
            num_control_points=num_control_points,
            constraints=constraints,
            theta_init=theta_init,
            num_transformers=num_transformers,
            combine=combine,
            method=method,
            padding=padding,
            align_corners=align_corners,
            antialias=antialias,
        )
        self.input_shape = input_shape
        self.return_theta = _checks.check_bool("return_theta", return_theta)
        if localisation is None:
            if localisation_features is not None:
                raise ValueError("localisation_features is only for a custom localisation network")
            localisation = MLPLocalisation(math.prod(input_shape), hidden=hidden, rngs=rngs)
        if localisation_features is None:
            probe = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
            features = nnx.eval_shape(lambda m, x: m(x), localisation, probe)
            localisation_features = math.prod(features.shape[1:])
        elif isinstance(localisation_features, bool) or not isinstance(localisation_features, int):
            raise TypeError(f"localisation_features must be an int, got {localisation_features!r}")
        self.localisation = localisation
        self.localisation_head = nnx.Linear(
            localisation_features,
            self.config.num_outputs,
            kernel_init=self.config.kernel_init(),
            bias_init=self.config.bias_init(),
            rngs=rngs,
        )

    def localise(self, inputs: jax.Array) -> jax.Array:
        """θ for ``inputs`` ``(B, *spatial, C)``: ``(B, N, *theta_shape)`` (all transformers)."""
        features = self.localisation(inputs)
        raw = self.localisation_head(features.reshape(features.shape[0], -1))
        return self.config.theta(raw, inputs.ndim - 2)

    def __call__(self, inputs: jax.Array):
        """Warps ``inputs`` ``(B, *spatial, C)``; returns the output, and θ if ``return_theta``."""
        inputs = jnp.asarray(inputs)
        out_shape = self.config.check_inputs(inputs)
        features = self.localisation(inputs)
        raw = self.localisation_head(features.reshape(features.shape[0], -1))
        out, theta = self.config.apply(inputs, raw, out_shape)
        if self.return_theta:
            return out, self.config.returned_theta(theta)
        return out
