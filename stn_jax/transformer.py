"""What the NNX and Linen ``SpatialTransformer`` modules share, framework-free.

A spatial transformer module is three things glued together: a localisation network
(any Flax module), a *regression layer* that maps its features to the raw parameters
of the transform, and the pure functions :func:`stn_jax.grid` and :func:`stn_jax.sample`
vmapped over the batch. Everything here is the glue, written once for both Flax APIs:

* :class:`TransformerConfig` — the validated options (transform, output shape,
  sampler, θ constraints, number of parallel transformers); building one raises the
  ``ValueError``/``TypeError`` of a bad option, so both modules fail at construction.
* the regression layer's initialisers (zero kernel + identity bias by default);
* raw regression output → θ (with the fixed entries of a constraint filled in);
* the batched warp;
* :func:`localisation_labels` and :func:`with_localisation_lr`, to train the
  localisation network at a smaller learning rate with ``optax.multi_transform``
  (the paper used 0.1×).

Parameter naming convention (both APIs): inside a spatial transformer the
localisation network is the submodule ``localisation`` and the regression layer is
``localisation_head``. :func:`localisation_labels` labels every parameter whose path
has a key starting with ``"localisation"``.

Example — a 0.1× learning rate for the localisation net of a Linen model:

  >>> import jax, jax.numpy as jnp, optax
  >>> from stn_jax import linen as stn_linen
  >>> from stn_jax.transformer import localisation_labels, with_localisation_lr
  >>> st = stn_linen.SpatialTransformer(hidden=(8,))
  >>> params = st.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))["params"]
  >>> sorted(set(jax.tree.leaves(localisation_labels(params))))
  ['localisation']
  >>> tx = optax.multi_transform(
  ...     {"default": optax.sgd(1.0), "localisation": optax.sgd(0.1)}, localisation_labels)
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, _ = tx.update(grads, state, params)
  >>> float(updates["localisation_head"]["bias"][0])
  -0.1
  >>> updates2, _ = with_localisation_lr(optax.sgd(1.0), multiplier=0.1).update(
  ...     grads, with_localisation_lr(optax.sgd(1.0)).init(params), params)
  >>> float(updates2["localisation_head"]["bias"][0])
  -0.1
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import stn_jax
from stn_jax import _checks

#: Prefix of the attribute names that hold the localisation network and its regression layer.
LOCALISATION_PREFIX = "localisation"
INITS = ("identity", "random")
COMBINES = ("concat", "list", "stack")
_PLANAR_ONLY = ("similarity", "projective", "tps")


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_num_control_points(value) -> int:
    """K for a TPS: a perfect square >= 4 (a ``√K × √K`` lattice)."""
    k = _check_int("num_control_points", value, minimum=0)
    side = math.isqrt(k)
    if side * side != k or side < 2:
        raise ValueError(
            f"num_control_points must be a perfect square >= 4 (a sqrt(K) x sqrt(K) lattice of TPS "
            f"control points), got {value!r}"
        )
    return k


def check_hidden(value) -> tuple[int, ...]:
    """Widths of the default localisation network's hidden layers."""
    try:
        widths = tuple(value)
    except TypeError:
        raise TypeError(f"hidden must be a sequence of ints, got {value!r}") from None
    return tuple(_check_int("hidden", w, minimum=1) for w in widths)


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
      >>> from stn_jax.transformer import affine_constraints
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


def _template(constraints, theta_shape: tuple, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(free mask, fixed values) of ``theta_shape`` from a nested None/number template."""
    if transform == "affine" and constraints is not None:
        flat = np.array(constraints, dtype=object)
        if flat.shape != theta_shape:
            raise ValueError(
                f"constraints for transform={transform!r} must be a nested sequence of shape {theta_shape} "
                f"(None = regressed, number = fixed), got shape {flat.shape}"
            )
    elif constraints is not None:
        flat = np.array(constraints, dtype=object)
        if flat.shape != theta_shape:
            raise ValueError(
                f"constraints for transform={transform!r} must have theta's shape {theta_shape}, got {flat.shape}"
            )
    else:
        flat = np.full(theta_shape, None, dtype=object)
        if transform == "projective":
            flat[2, 2] = 1.0  # 8 degrees of freedom: h_22 = 1, as in the paper
    free = np.vectorize(lambda v: v is None, otypes=[bool])(flat)
    fixed = np.zeros(theta_shape, np.float32)
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


def _as_nested_tuple(value):
    return tuple(_as_nested_tuple(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Validated options of a spatial transformer (shared by the NNX and Linen modules).

    Args:
      transform: a name of :data:`stn_jax.TRANSFORMS`.
      out_shape: spatial output shape ``(W,)``, ``(H, W)`` or ``(D, H, W)``, or ``None``
        for the input's spatial shape (decided at call time).
      num_control_points: K for ``"tps"``, a perfect square.
      constraints: ``None`` or a nested sequence of θ's shape with ``None`` for each
        regressed entry and a number for each fixed entry (see :func:`affine_constraints`).
      theta_init: ``"identity"`` (zero kernel, identity bias: the untrained transformer is the
        identity) or ``"random"`` (the usual LeCun-normal kernel, identity bias: a
        random input-dependent transform around the identity).
      num_transformers: transformers regressed in parallel by one localisation net.
      combine: how parallel outputs are returned: ``"concat"`` on channels,
        ``"list"`` or ``"stack"`` (new axis 1).
      method, padding, align_corners, antialias: options of :func:`stn_jax.sample`
        (``antialias=True``: the warp reads the input averaged over each output pixel's
        footprint, for transforms that shrink; bilinear only).

    Example:
      >>> from stn_jax.transformer import TransformerConfig
      >>> TransformerConfig(transform="tps", out_shape=(8, 8), num_control_points=9).num_outputs
      18
      >>> TransformerConfig(transform="warp")
      Traceback (most recent call last):
      ...
      ValueError: transform must be one of [...], got 'warp'
    """

    transform: str = "affine"
    out_shape: tuple[int, ...] | None = None
    num_control_points: int = 16
    constraints: Any = None
    theta_init: str = "identity"
    num_transformers: int = 1
    combine: str = "concat"
    method: str = "bilinear"
    padding: str = "zeros"
    align_corners: bool = False
    antialias: bool = False

    def __post_init__(self):
        _checks.check_option("transform", self.transform, stn_jax.TRANSFORMS)
        if self.constraints is not None:
            object.__setattr__(self, "constraints", _as_nested_tuple(np.array(self.constraints, dtype=object).tolist()))
        if self.out_shape is not None:
            shape = _checks.check_shape_tuple("out_shape", self.out_shape)
            if self.transform in _PLANAR_ONLY and len(shape) != 2:
                raise ValueError(
                    f"out_shape must be 2-D (H, W) for transform={self.transform!r}, got {self.out_shape!r}"
                )
            object.__setattr__(self, "out_shape", shape)
        if self.transform == "tps":
            check_num_control_points(self.num_control_points)
        _checks.check_option("theta_init", self.theta_init, INITS)
        _check_int("num_transformers", self.num_transformers, minimum=1)
        _checks.check_option("combine", self.combine, COMBINES)
        _checks.check_option("method", self.method, stn_jax.METHODS)
        _checks.check_option("padding", self.padding, stn_jax.PADDINGS)
        _checks.check_bool("align_corners", self.align_corners)
        if _checks.check_bool("antialias", self.antialias) and self.method != "bilinear":
            raise ValueError(f"antialias=True needs method='bilinear', got method={self.method!r}")
        if self.method == "bicubic" and self.out_shape is not None and len(self.out_shape) != 2:
            raise ValueError(f"method='bicubic' needs a 2-D out_shape, got {self.out_shape!r}")
        self._template(self._ndim(None))

    # -- shapes -----------------------------------------------------------------------
    def _template(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = self.theta_shape(ndim)
        return _template(self.constraints, shape, self.transform)

    def theta_shape(self, ndim: int | None = None) -> tuple[int, ...]:
        """Shape of one transformer's θ for ``ndim`` spatial dimensions."""
        ndim = self._ndim(ndim)
        params = stn_jax.identity_params(self.transform, ndim=ndim, num_control_points=self.num_control_points)
        return tuple(params.shape)

    def _ndim(self, ndim: int | None) -> int:
        if ndim is not None:
            return ndim
        if self.out_shape is not None:
            return len(self.out_shape)
        if self.constraints is not None:  # the constraints' shape tells the rank
            shape = np.array(self.constraints, dtype=object).shape
            for n in (2, 1, 3):
                if n == 2 or self.transform not in _PLANAR_ONLY:
                    if self.theta_shape(n) == shape:
                        return n
        return 2

    def free_params(self, ndim: int | None = None) -> int:
        """Regressed scalars of one transformer."""
        return int(self._template(self._ndim(ndim))[0].sum())

    @property
    def num_outputs(self) -> int:
        """Width of the regression layer (all parallel transformers)."""
        return self.num_transformers * self.free_params()

    def outputs_for(self, ndim: int) -> int:
        return self.num_transformers * self.free_params(ndim)

    # -- initialisers -------------------------------------------------------------------
    def kernel_init(self):
        """Initialiser of the regression kernel: zeros, or LeCun normal for ``theta_init="random"``."""
        if self.theta_init == "identity":
            return jax.nn.initializers.zeros
        return jax.nn.initializers.lecun_normal()

    def bias_init(self, ndim: int | None = None):
        """Initialiser of the regression bias: the identity transform's free entries, tiled."""
        free, _ = self._template(self._ndim(ndim))
        ndim = self._ndim(ndim)
        with jax.ensure_compile_time_eval():  # concrete even when called under jit
            identity = np.asarray(
                stn_jax.identity_params(self.transform, ndim=ndim, num_control_points=self.num_control_points)
            )
        values = np.tile(identity[free], self.num_transformers)

        def init(key, shape, dtype=jnp.float32):
            del key
            if tuple(shape) != values.shape:
                raise ValueError(f"regression bias must have shape {values.shape}, got {tuple(shape)}")
            return jnp.asarray(values, dtype)

        return init

    # -- forward ------------------------------------------------------------------------
    def check_inputs(self, inputs: jax.Array) -> tuple[int, ...]:
        """Checks ``(B, *spatial, C)`` against the options; returns the output spatial shape."""
        if inputs.ndim not in (3, 4, 5):
            raise ValueError(
                f"inputs must be batched (B, W, C), (B, H, W, C) or (B, D, H, W, C), got shape {inputs.shape}"
            )
        ndim = inputs.ndim - 2
        if self.out_shape is not None and len(self.out_shape) != ndim:
            raise ValueError(
                f"inputs with {ndim} spatial axes (shape {inputs.shape}) do not match out_shape={self.out_shape}"
            )
        if self.transform in _PLANAR_ONLY and ndim != 2:
            raise ValueError(f"transform={self.transform!r} needs 2-D inputs (B, H, W, C), got {inputs.shape}")
        return self.out_shape if self.out_shape is not None else tuple(inputs.shape[1:-1])

    def theta(self, raw: jax.Array, ndim: int) -> jax.Array:
        """Regression output ``(B, num_outputs)`` → θ ``(B, num_transformers, *theta_shape)``."""
        free, fixed = self._template(ndim)
        batch = raw.shape[0]
        raw = raw.reshape(batch, self.num_transformers, -1)
        full = jnp.broadcast_to(jnp.asarray(fixed, raw.dtype), (batch, self.num_transformers, *fixed.shape))
        full = full.reshape(batch, self.num_transformers, -1)
        full = full.at[:, :, np.flatnonzero(free.ravel())].set(raw)
        return full.reshape(batch, self.num_transformers, *fixed.shape)

    def warp(self, inputs: jax.Array, theta: jax.Array, out_shape: tuple[int, ...]):
        """Warps ``inputs`` ``(B, *spatial, C)`` by θ ``(B, N, ...)``; combined per ``combine``."""

        def one(image, th):
            g = stn_jax.grid(th, out_shape, transform=self.transform, align_corners=self.align_corners)
            return stn_jax.sample(
                image, g, method=self.method, padding=self.padding, align_corners=self.align_corners,
                antialias=self.antialias,
            )

        out = jax.vmap(jax.vmap(one, in_axes=(None, 0)))(inputs, theta)  # (B, N, *out, C)
        return self.combine_outputs(out)

    def combine_outputs(self, out: jax.Array):
        if self.num_transformers == 1:
            return out[:, 0]
        if self.combine == "stack":
            return out
        if self.combine == "list":
            return [out[:, i] for i in range(self.num_transformers)]
        moved = jnp.moveaxis(out, 1, -2)  # (B, *out, N, C)
        return moved.reshape(*moved.shape[:-2], -1)

    def apply(self, inputs: jax.Array, raw: jax.Array, out_shape: tuple[int, ...]):
        """Regression output → (warped output, θ ``(B, N, ...)``), as one jitted computation.

        Jitting here (config and ``out_shape`` static) makes an eager call one compiled
        computation rather than dozens of op-by-op dispatches; under an outer ``jit``
        it is simply inlined.
        """
        return _apply(self, inputs, raw, tuple(out_shape))

    def returned_theta(self, theta: jax.Array) -> jax.Array:
        """θ as returned to the user: ``(B, *theta_shape)`` for one transformer, else ``(B, N, ...)``."""
        return theta[:, 0] if self.num_transformers == 1 else theta


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(config: TransformerConfig, inputs: jax.Array, raw: jax.Array, out_shape: tuple[int, ...]):
    theta = config.theta(raw, inputs.ndim - 2)
    return config.warp(inputs, theta, out_shape), theta


def _key_name(key) -> str | None:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            value = getattr(key, attr)
            return value if isinstance(value, str) else None
    return key if isinstance(key, str) else None


def is_localisation_path(path: Sequence[Any]) -> bool:
    """Whether a pytree path (of ``jax.tree_util`` keys or strings) lies in a localisation net."""
    return any((name := _key_name(k)) is not None and name.startswith(LOCALISATION_PREFIX) for k in path)


def localisation_labels(params: Any) -> Any:
    """Labels ``"localisation"`` / ``"default"`` for every leaf of ``params``.

    Works on Linen parameter dicts and on NNX ``State`` objects (``nnx.state(model,
    nnx.Param)``, which is what ``nnx.Optimizer`` hands to optax), so it can be given as
    ``param_labels`` to ``optax.multi_transform`` directly. A leaf is in the localisation
    group when a key of its path starts with ``"localisation"`` (the attribute names of
    the localisation net and its regression layer in both modules).

    Args:
      params: any pytree of parameters.

    Returns:
      the same tree structure with a string per leaf.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: LOCALISATION_PREFIX if is_localisation_path(path) else "default", params
    )


def with_localisation_lr(tx: optax.GradientTransformation, *, multiplier: float = 0.1):
    """``tx`` for every parameter, with the localisation net's updates scaled by ``multiplier``.

    For optimizers whose update is proportional to the learning rate (SGD, momentum,
    Adam, AdamW, ...) scaling the update equals scaling the learning rate; the two
    groups keep separate optimizer states, as ``optax.multi_transform`` does.

    Args:
      tx: the optimizer of the whole model.
      multiplier: learning-rate factor of the localisation nets (the paper: 0.1).

    Returns:
      an ``optax.GradientTransformation`` to use in place of ``tx``.
    """
    multiplier = _checks.check_finite_scalar("multiplier", multiplier)
    return optax.multi_transform(
        {"default": tx, LOCALISATION_PREFIX: optax.chain(tx, optax.scale(multiplier))}, localisation_labels
    )
