"""The options of a spatial transformer, written once, and what follows from them.

:class:`TransformerConfig`'s fields, each with its default and a one-line doc, are *the* option
list: the NNX and Linen ``SpatialTransformer`` modules take exactly these keyword arguments
(written out in ``stn_jax.nnx``'s ``__init__`` and as ``stn_jax.linen``'s fields, so that type
checkers see them; the tests check that both match this list) and document them with
:func:`with_option_docs`.
A new option is one field here (and what it does in the warp or the modules). ``hidden`` and
``return_theta`` belong to the modules rather than the warp: they are in the list all the same,
but out of the config's equality and hash (the jitted warp's cache key).

Building a config checks every option, so both modules fail at construction with a
``ValueError``/``TypeError`` that names the option. The config also knows θ's shape, the
constraint template, the regression layer's initialisers (zero kernel and identity bias by
default) and how raw regression output becomes θ. The warp itself is :mod:`stn_jax._warp`.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from stn_jax import _checks, _tps, grids, sampling

INITS = ("identity", "random")
COMBINES = ("concat", "list", "stack")


def check_hidden(value) -> tuple[int, ...]:
    """Widths of the default localisation network's hidden layers."""
    try:
        widths = tuple(value)
    except TypeError:
        raise TypeError(f"hidden must be a sequence of ints, got {value!r}") from None
    return tuple(_checks.check_int("hidden", w, minimum=1) for w in widths)


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


def _option(default, doc: str, *, warp: bool = True):
    """A field of the option list: its default and its doc. ``warp=False``: an option of the modules
    (not of the warp), left out of the config's equality and hash, so it costs no recompilation."""
    return dataclasses.field(default=default, compare=warp, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Validated options of a spatial transformer, shared by the NNX and Linen modules.

    Args:
      <options>

    Example:
      >>> from stn_jax._config import TransformerConfig
      >>> TransformerConfig(transform="tps", out_shape=(8, 8), num_control_points=9).num_outputs
      18
      >>> TransformerConfig(transform="warp")
      Traceback (most recent call last):
      ...
      ValueError: transform must be one of [...], got 'warp'
    """

    # The option list (order: as documented).
    out_shape: tuple[int, ...] | None = _option(
        None,
        "spatial output shape ``(W,)``, ``(H, W)`` or ``(D, H, W)`` (smaller: down-sampling, larger: "
        "over-sampling); ``None``: the input's spatial shape.",
    )
    transform: str = _option(
        "affine",
        'a name of :data:`stn_jax.TRANSFORMS` (``"affine"`` works in 1-D, 2-D and 3-D; '
        '``"projective"``, ``"tps"``, ``"similarity"`` are 2-D).',
    )
    hidden: tuple[int, ...] = _option(
        (32, 32), "widths of the default localisation network (:class:`MLPLocalisation`).", warp=False
    )
    num_control_points: int = _option(16, 'K for ``"tps"`` (a perfect square >= 4).')
    constraints: Any = _option(
        None,
        "fix entries of θ: ``None``, or a nested sequence of θ's shape with ``None`` for each regressed "
        "entry and a number for each fixed one (see :func:`affine_constraints`).",
    )
    theta_init: str = _option(
        "identity",
        '``"identity"`` (zero kernel, identity bias: the untrained transformer is the identity) or '
        '``"random"`` (LeCun-normal kernel, identity bias: a random input-dependent transform around '
        "the identity).",
    )
    num_transformers: int = _option(1, "transformers regressed in parallel by the one localisation net.")
    combine: str = _option(
        "concat",
        'how parallel outputs are returned: ``"concat"``-enated on channels, as a ``"list"``, or '
        '``"stack"``-ed on a new axis 1.',
    )
    method: str = _option("bilinear", "interpolation of :func:`stn_jax.sample`, a name of :data:`stn_jax.METHODS`.")
    padding: str = _option(
        "zeros", "reads outside the input, in :func:`stn_jax.sample`: a name of :data:`stn_jax.PADDINGS`."
    )
    align_corners: bool = _option(False, "PyTorch's meaning, for the grid and the sampler.")
    antialias: bool = _option(
        False,
        "``True``: the warp reads the input averaged over each output pixel's footprint, for "
        "transforms that shrink (bilinear only; see :func:`stn_jax.sample`).",
    )
    return_theta: bool = _option(
        False,
        "also return θ: ``(B, *theta_shape)``, or ``(B, N, *theta_shape)`` for ``num_transformers=N > 1``.",
        warp=False,
    )

    def __post_init__(self) -> None:
        _checks.check_option("transform", self.transform, grids.TRANSFORMS)
        if self.constraints is not None:
            object.__setattr__(self, "constraints", _as_nested_tuple(np.array(self.constraints, dtype=object).tolist()))
        if self.out_shape is not None:
            shape = _checks.check_shape_tuple("out_shape", self.out_shape)
            if self.transform in grids._PLANAR_ONLY and len(shape) != 2:
                raise ValueError(
                    f"out_shape must be 2-D (H, W) for transform={self.transform!r}, got {self.out_shape!r}"
                )
            object.__setattr__(self, "out_shape", shape)
        if self.transform == "tps":
            _tps.lattice_side(self.num_control_points)
        _checks.check_option("theta_init", self.theta_init, INITS)
        _checks.check_int("num_transformers", self.num_transformers, minimum=1)
        _checks.check_option("combine", self.combine, COMBINES)
        _checks.check_option("method", self.method, sampling.METHODS)
        _checks.check_option("padding", self.padding, sampling.PADDINGS)
        _checks.check_bool("align_corners", self.align_corners)
        if _checks.check_bool("antialias", self.antialias) and self.method != "bilinear":
            raise ValueError(f"antialias=True needs method='bilinear', got method={self.method!r}")
        if self.method == "bicubic" and self.out_shape is not None and len(self.out_shape) != 2:
            raise ValueError(f"method='bicubic' needs a 2-D out_shape, got {self.out_shape!r}")
        self._template(self._ndim(None))
        object.__setattr__(self, "hidden", check_hidden(self.hidden))
        _checks.check_bool("return_theta", self.return_theta)

    # -- shapes -----------------------------------------------------------------------
    def _template(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        shape = self.theta_shape(ndim)
        return _template(self.constraints, shape, self.transform)

    def theta_shape(self, ndim: int | None = None) -> tuple[int, ...]:
        """Shape of one transformer's θ for ``ndim`` spatial dimensions."""
        ndim = self._ndim(ndim)
        params = grids.identity_params(self.transform, ndim=ndim, num_control_points=self.num_control_points)
        return tuple(params.shape)

    def _ndim(self, ndim: int | None) -> int:
        if ndim is not None:
            return ndim
        if self.out_shape is not None:
            return len(self.out_shape)
        if self.constraints is not None:  # the constraints' shape tells the rank
            shape = np.array(self.constraints, dtype=object).shape
            for n in (2, 1, 3):
                if (n == 2 or self.transform not in grids._PLANAR_ONLY) and self.theta_shape(n) == shape:
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
    def kernel_init(self) -> Callable[..., jax.Array]:
        """Initialiser of the regression kernel: zeros, or LeCun normal for ``theta_init="random"``."""
        if self.theta_init == "identity":
            return jax.nn.initializers.zeros
        return jax.nn.initializers.lecun_normal()

    def bias_init(self, ndim: int | None = None) -> Callable[..., jax.Array]:
        """Initialiser of the regression bias: the identity transform's free entries, tiled."""
        free, _ = self._template(self._ndim(ndim))
        ndim = self._ndim(ndim)
        with jax.ensure_compile_time_eval():  # concrete even when called under jit
            identity = np.asarray(
                grids.identity_params(self.transform, ndim=ndim, num_control_points=self.num_control_points)
            )
        values = np.tile(identity[free], self.num_transformers)

        def init(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
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
        if self.transform in grids._PLANAR_ONLY and ndim != 2:
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

    def returned_theta(self, theta: jax.Array) -> jax.Array:
        """θ as returned to the user: ``(B, *theta_shape)`` for one transformer, else ``(B, N, ...)``."""
        return theta[:, 0] if self.num_transformers == 1 else theta


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
