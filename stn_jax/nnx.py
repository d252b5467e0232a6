"""Spatial transformer as a Flax NNX module.

A thin wrapper: a localisation network (any module, or a small MLP), a regression
layer initialised to the identity transform, and :func:`stn_jax.grid` /
:func:`stn_jax.sample` vmapped over the batch. The options, their checks and their docs are
one list shared with :mod:`stn_jax.linen` (``TransformerConfig`` in ``stn_jax._config``); the
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

from stn_jax import _checks, _config, _theta, _warp
from stn_jax._theta import affine_constraints

try:
    from flax import nnx
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


class MLP(nnx.Module):
    """Fully connected layers: flatten, ``Linear → ReLU`` per hidden width, then an optional output layer.

    The default localisation network of :class:`SpatialTransformer` (``hidden`` widths, no output
    layer: the transformer's regression layer follows it) and the fully connected layers of
    :mod:`stn_jax.models` (its classifier heads, the FC layers of its localisation nets and of
    the SVHN network). :class:`stn_jax.linen.MLP` takes the same options (less ``in_features``)
    and names its parameters alike: ``dense_0``, ``dense_1``, ..., ``out``.

    Args:
      in_features: size of one flattened input example.
      hidden: widths of the hidden layers (may be empty).
      out_features: width of a linear output layer after the hidden ones (no ReLU); ``None``: no
        output layer (the last hidden layer's activations are the output).
      dropout: rate of the dropout after each hidden layer's ReLU (active with ``train=True``);
        ``None``: no dropout layer at all (it would take a key from ``rngs``).
      rngs: random streams for the initialisers (and the dropout).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from stn_jax.nnx import MLP
      >>> MLP(12, hidden=(8, 4), rngs=nnx.Rngs(0))(jnp.ones((2, 3, 4))).shape
      (2, 4)
      >>> MLP(12, hidden=(8,), out_features=10, dropout=0.5, rngs=nnx.Rngs(0))(jnp.ones((2, 12)), train=True).shape
      (2, 10)
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int],
        out_features: int | None = None,
        dropout: float | None = None,
        rngs: nnx.Rngs,
    ):
        in_features = _checks.check_int("in_features", in_features, minimum=1)
        hidden, out_features, dropout = _checks.check_mlp(hidden, out_features, dropout)
        self.num_layers: int = len(hidden)
        widths = (in_features, *hidden)
        for i in range(self.num_layers):
            setattr(self, f"dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
        self.out: nnx.Linear | None = (
            nnx.Linear(widths[-1], out_features, rngs=rngs) if out_features is not None else None
        )
        self.dropout: nnx.Dropout | None = nnx.Dropout(dropout, rngs=rngs) if dropout is not None else None

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """``(B, ...)``, flattened → ``(B, out_features)``; without an output layer, the last hidden
        layer's activations (or, with no layers at all, the flattened input)."""
        x = x.reshape(x.shape[0], -1)
        for i in range(self.num_layers):
            x = nnx.relu(getattr(self, f"dense_{i}")(x))
            if self.dropout is not None:
                x = self.dropout(x, deterministic=not train)
        return self.out(x) if self.out is not None else x


class SpatialTransformer(nnx.Module):
    """A spatial transformer layer (Jaderberg et al., 2015) for batched inputs.

    ``inputs`` ``(B, *spatial, C)`` → localisation net → regression layer → θ →
    ``grid(θ, out_shape)`` → ``sample(inputs, grid)``, all channels warped alike.

    Args:
      input_shape: one example's shape ``(W, C)``, ``(H, W, C)`` or ``(D, H, W, C)``.
      localisation: any callable module mapping the batched inputs to features
        ``(B, ...)`` (flattened before the regression layer); default
        :class:`MLP` with ``hidden`` widths.
      localisation_features: flattened feature size of ``localisation``; inferred with
        ``nnx.eval_shape`` when omitted.
      <options>
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
        localisation: Callable[[jax.Array], jax.Array] | None = None,
        localisation_features: int | None = None,
        rngs: nnx.Rngs,
        # The options of TransformerConfig (stn_jax/_config.py), written out for type checkers and IDEs;
        # tests/test_linen.py checks that they are exactly that list, with its defaults and types.
        out_shape: tuple[int, ...] | None = None,
        transform: str = "affine",
        hidden: tuple[int, ...] = (32, 32),
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
    ):
        arguments = locals()
        options = {name: arguments[name] for name in _config.OPTIONS}
        input_shape = _checks.check_shape_tuple("input_shape", input_shape, ranks=(2, 3, 4))
        spatial = input_shape[:-1]
        if out_shape is None:
            out_shape = spatial
        out_shape = _checks.check_shape_tuple("out_shape", out_shape)
        if len(out_shape) != len(spatial):
            raise ValueError(
                f"out_shape must have as many axes as the input's spatial shape {spatial}, got {out_shape!r}"
            )
        self.config: _config.TransformerConfig = _config.TransformerConfig(**{**options, "out_shape": out_shape})
        self.input_shape: tuple[int, ...] = input_shape
        self.return_theta: bool = self.config.return_theta
        if localisation is None:
            if localisation_features is not None:
                raise ValueError("localisation_features is only for a custom localisation network")
            localisation = MLP(math.prod(input_shape), hidden=self.config.hidden, rngs=rngs)
        if localisation_features is None:
            probe = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
            features = nnx.eval_shape(lambda m, x: m(x), localisation, probe)
            localisation_features = math.prod(features.shape[1:])
        elif isinstance(localisation_features, bool) or not isinstance(localisation_features, int):
            raise TypeError(f"localisation_features must be an int, got {localisation_features!r}")
        self.localisation: Callable[[jax.Array], jax.Array] = localisation
        ndim = len(spatial)
        self.localisation_head: nnx.Linear = nnx.Linear(
            localisation_features,
            _theta.num_outputs(self.config, ndim),
            kernel_init=_theta.kernel_init(self.config),
            bias_init=_theta.bias_init(self.config, ndim),
            rngs=rngs,
        )

    def _regression(self, inputs: jax.Array) -> jax.Array:
        """The regression layer's output for ``inputs``: ``(B, num_outputs)``."""
        features = self.localisation(inputs)
        return self.localisation_head(features.reshape(features.shape[0], -1))

    def localise(self, inputs: jax.Array) -> jax.Array:
        """θ for ``inputs`` ``(B, *spatial, C)``: ``(B, N, *theta_shape)`` (all transformers)."""
        return _theta.from_regression(self.config, self._regression(inputs), inputs.ndim - 2)

    def __call__(self, inputs: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Warps ``inputs`` ``(B, *spatial, C)``; returns the output, and θ if ``return_theta``."""
        inputs = jnp.asarray(inputs)
        out_shape = _warp.check_inputs(self.config, inputs)
        out, theta = _warp.apply(self.config, inputs, self._regression(inputs), out_shape)
        if self.return_theta:
            return out, _theta.as_returned(self.config, theta)
        return out


SpatialTransformer.__doc__ = _config.with_option_docs(SpatialTransformer.__doc__)
