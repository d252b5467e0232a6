"""Grid generators: θ → normalised source coordinates for every output pixel.

Grids use PyTorch's convention: the last axis holds ``(x, y)`` (2-D), ``(x, y, z)``
(3-D) or ``(x,)`` (1-D) in ``[-1, 1]``; ``align_corners=False`` puts ±1 on the outer
edges of the border pixels, ``align_corners=True`` on the centres of the corner
pixels. A grid maps each *output* pixel to where it is read in the *input* (the
paper's backward mapping).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from stn_jax import _checks, _tps

__all__ = [
    "TRANSFORMS",
    "affine_grid",
    "affine_matrix",
    "grid",
    "identity_grid",
    "identity_params",
    "num_params",
    "tps_control_points",
]

#: Names of the transforms :func:`grid` takes as ``transform=``: ``"affine"``, ``"attention"`` and
#: ``"translation"`` in 1-D, 2-D and 3-D; ``"similarity"``, ``"projective"`` and ``"tps"`` in 2-D.
TRANSFORMS = ("affine", "attention", "translation", "similarity", "projective", "tps")

# Transforms that exist only in 2-D (the one list: the modules' checks use it too).
_PLANAR_ONLY = ("similarity", "projective", "tps")


@functools.lru_cache(maxsize=256)
def _base_axis(size: int, align_corners: bool, dtype_name: str) -> np.ndarray:
    """Normalised coordinates of ``size`` pixel centres, computed as PyTorch does.

    PyTorch's ``linspace`` fills the first half from the start and the second half from
    the end, and ``affine_grid`` then scales by ``(size - 1) / size`` when
    ``align_corners=False``; repeating those float operations makes the grids equal to
    the last bit rather than to within an ulp.
    """
    dt = np.dtype(dtype_name)
    if size <= 1:
        return np.zeros((size,), dt)
    step = np.float64(dt.type(2) / dt.type(size - 1))
    i = np.arange(size, dtype=np.float64)
    # PyTorch's kernel fuses the multiply-add; for float32 the float64 products are
    # exact, so one rounding at the end reproduces it.
    first = -1.0 + step * i
    second = 1.0 - step * (size - 1 - i)
    axis = np.where(i < size // 2, first, second).astype(dt)
    if not align_corners:
        axis = (axis * dt.type(size - 1)) / dt.type(size)
    return axis.astype(dt)


def identity_grid(
    out_shape: Sequence[int], *, align_corners: bool = False, dtype: DTypeLike = jnp.float32
) -> jax.Array:
    """The grid that samples every output pixel at its own position.

    Args:
      out_shape: ``(W,)``, ``(H, W)`` or ``(D, H, W)``.
      align_corners: PyTorch's meaning (see module docstring).
      dtype: floating dtype of the grid.

    Returns:
      ``(*out_shape, len(out_shape))`` grid, last axis in ``(x, y, z)`` order.

    Example:
      >>> import stn_jax
      >>> stn_jax.identity_grid((2, 3))[..., 0]
      Array([[-0.6666667,  0.       ,  0.6666667],
             [-0.6666667,  0.       ,  0.6666667]], dtype=float32)
    """
    out_shape = _checks.check_shape_tuple("out_shape", out_shape)
    align_corners = _checks.check_bool("align_corners", align_corners)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return jnp.asarray(_identity_grid_np(out_shape, align_corners, _checks.compute_dtype(dtype).name), dtype)


@functools.lru_cache(maxsize=64)
def _identity_grid_np(out_shape: tuple, align_corners: bool, dtype_name: str) -> np.ndarray:
    axes = [_base_axis(n, align_corners, dtype_name) for n in out_shape]
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per output axis, in (z, y, x) order
    return np.stack(mesh[::-1], axis=-1)


def _check_theta_shape(theta: jax.Array, expected: tuple, transform: str, flat: tuple | None = None):
    if theta.shape == expected or (flat is not None and theta.shape == flat):
        return
    allowed = f"{expected}" + (f" or {flat}" if flat is not None else "")
    raise ValueError(f"theta for transform={transform!r} must have shape {allowed}, got {theta.shape}")


def _apply_matrix(matrix: jax.Array, base: jax.Array) -> jax.Array:
    """``matrix`` (n, n+1) applied to base points (..., n): same summation order as PyTorch's bmm."""
    n = base.shape[-1]
    out = []
    for row in range(n):
        acc = base[..., 0] * matrix[row, 0]
        for col in range(1, n):
            acc = acc + base[..., col] * matrix[row, col]
        out.append(acc + matrix[row, n])
    return jnp.stack(out, axis=-1)


def affine_grid(theta: ArrayLike, out_shape: Sequence[int], *, align_corners: bool = False) -> jax.Array:
    """Affine grid, equal to ``torch.nn.functional.affine_grid`` for one example.

    Args:
      theta: ``(2, 3)`` for a 2-D ``out_shape=(H, W)``, ``(3, 4)`` for a 3-D
        ``out_shape=(D, H, W)``, ``(1, 2)`` for a 1-D ``out_shape=(W,)``. Maps output
        coordinates ``(x, y[, z], 1)`` to input coordinates.
      out_shape: spatial shape of the output.
      align_corners: PyTorch's meaning.

    Returns:
      ``(*out_shape, n)`` grid with ``n = len(out_shape)``, in ``theta``'s float dtype.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> zoom_out = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
      >>> stn_jax.affine_grid(zoom_out, (2, 2))[0]
      Array([[-1., -1.],
             [ 1., -1.]], dtype=float32)
    """
    out_shape = _checks.check_shape_tuple("out_shape", out_shape)
    align_corners = _checks.check_bool("align_corners", align_corners)
    theta = _checks.as_float_array("theta", theta)
    n = len(out_shape)
    _check_theta_shape(theta, (n, n + 1), "affine")
    dtype = _checks.compute_dtype(theta.dtype)
    base = jnp.asarray(_identity_grid_np(out_shape, align_corners, dtype.name))
    return _apply_matrix(theta.astype(dtype), base).astype(theta.dtype)


def affine_matrix(theta: ArrayLike, *, transform: str = "affine", ndim: int = 2) -> jax.Array:
    """The ``(ndim, ndim + 1)`` affine matrix of an affine-family parameter vector.

    Args:
      theta: parameters of ``transform``: ``"affine"`` ``(n, n+1)`` or flat; ``"attention"``
        ``(s, t_x[, t_y[, t_z]])`` (isotropic scale and translation: a crop);
        ``"translation"`` ``(t_x[, t_y[, t_z]])``; ``"similarity"`` (2-D only)
        ``(scale, rotation_radians, t_x, t_y)``.
      transform: one of the affine-family names above.
      ndim: spatial dimensions, 1, 2 or 3.

    Returns:
      ``(ndim, ndim + 1)`` matrix.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.affine_matrix(jnp.array([0.5, 0.1, -0.2]), transform="attention")
      Array([[ 0.5,  0. ,  0.1],
             [ 0. ,  0.5, -0.2]], dtype=float32)
    """
    _checks.check_option("transform", transform, ("affine", "attention", "translation", "similarity"))
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    if transform in _PLANAR_ONLY and ndim != 2:
        raise ValueError(f"transform={transform!r} is 2-D only, got ndim={ndim}")
    theta = _checks.as_float_array("theta", theta)
    n = ndim
    if transform == "affine":
        _check_theta_shape(theta, (n, n + 1), transform, flat=(n * (n + 1),))
        return theta.reshape(n, n + 1)
    eye = jnp.eye(n, dtype=theta.dtype)
    if transform == "attention":
        _check_theta_shape(theta, (n + 1,), transform)
        return jnp.concatenate([eye * theta[0], theta[1:, None]], axis=1)
    if transform == "translation":
        _check_theta_shape(theta, (n,), transform)
        return jnp.concatenate([eye, theta[:, None]], axis=1)
    _check_theta_shape(theta, (4,), transform)
    scale, angle, tx, ty = theta[0], theta[1], theta[2], theta[3]
    cos, sin = scale * jnp.cos(angle), scale * jnp.sin(angle)
    return jnp.stack([jnp.stack([cos, -sin, tx]), jnp.stack([sin, cos, ty])])


def _homography(theta: jax.Array) -> jax.Array:
    """θ of ``transform="projective"``, ``(3, 3)`` or its first 8 entries (``h_22 = 1``), as a ``(3, 3)`` matrix."""
    _check_theta_shape(theta, (3, 3), "projective", flat=(8,))
    if theta.shape == (8,):
        return jnp.concatenate([theta, jnp.ones((1,), theta.dtype)]).reshape(3, 3)
    return theta


def _projective_map(h: jax.Array, points: jax.Array, eps: float) -> jax.Array:
    """2-D points ``(..., 2)`` through the homography ``h`` ``(3, 3)``."""
    x, y = points[..., 0], points[..., 1]
    num_x = x * h[0, 0] + y * h[0, 1] + h[0, 2]
    num_y = x * h[1, 0] + y * h[1, 1] + h[1, 2]
    den = x * h[2, 0] + y * h[2, 1] + h[2, 2]
    # Keep |den| >= eps with its sign: points at (or beyond) the horizon land far
    # outside [-1, 1] and sample as padding, with finite values and gradients.
    safe = jnp.where(jnp.abs(den) < eps, jnp.where(den < 0, -eps, eps), den)
    return jnp.stack([num_x / safe, num_y / safe], axis=-1)


def _projective_grid(theta: jax.Array, out_shape: tuple, align_corners: bool, eps: float) -> jax.Array:
    dtype = _checks.compute_dtype(theta.dtype)
    h = _homography(theta).astype(dtype)
    base = jnp.asarray(_identity_grid_np(out_shape, align_corners, dtype.name))
    return _projective_map(h, base, eps).astype(theta.dtype)


def _check_tps_theta(theta: jax.Array) -> int:
    """K of a TPS θ ``(K, 2)``."""
    if theta.ndim != 2 or theta.shape[1] != 2:
        raise ValueError(f"theta for transform='tps' must have shape (K, 2), got {theta.shape}")
    _tps.lattice_side(theta.shape[0], name="the number of TPS control points K (theta.shape[0])")
    return theta.shape[0]


def _tps_grid(theta: jax.Array, out_shape: tuple, align_corners: bool) -> jax.Array:
    k = _check_tps_theta(theta)
    dtype = _checks.compute_dtype(theta.dtype)
    base = _identity_grid_np(out_shape, align_corners, dtype.name)
    points = np.ascontiguousarray(base.reshape(-1, 2), dtype=np.float64)
    m = jnp.asarray(_tps.offset_matrix(k, (points.shape, points.tobytes())), dtype)
    # base + M @ θ rather than M @ (lattice + θ): θ = 0 gives the identity grid exactly.
    displacement = jnp.matmul(m, theta.astype(dtype), precision=jax.lax.Precision.HIGHEST)
    return (jnp.asarray(base) + displacement.reshape(base.shape)).astype(theta.dtype)


def grid(
    theta: ArrayLike,
    out_shape: Sequence[int],
    *,
    transform: str = "affine",
    align_corners: bool = False,
    projective_eps: float = 1e-6,
) -> jax.Array:
    r"""Sampling grid of any supported transform, for one example.

    Transforms and their ``theta`` (``n = len(out_shape)``):

    =============== ===== ===============================================================
    transform       n     theta
    =============== ===== ===============================================================
    ``affine``      1,2,3 ``(n, n+1)`` matrix or its ``n(n+1)`` flat entries
    ``attention``   1,2,3 ``(s, t_x[, t_y[, t_z]])``: isotropic scale and translation
    ``translation`` 1,2,3 ``(t_x[, t_y[, t_z]])``
    ``similarity``  2     ``(scale, rotation_radians, t_x, t_y)``
    ``projective``  2     ``(3, 3)`` homography or its first 8 entries (``h_22 = 1``)
    ``tps``         2     ``(K, 2)`` offsets of a ``√K × √K`` control-point lattice
    =============== ===== ===============================================================

    Projective: each output point ``(x, y)`` maps to ``(x', y') / w'`` with
    ``(x', y', w') = H (x, y, 1)``. Where ``|w'| < projective_eps`` the divisor is
    replaced by ``±projective_eps`` (keeping its sign), so points at the horizon get large
    finite coordinates that sample as padding, and values and gradients stay finite.

    TPS: control points on a regular lattice over ``[-1, 1]²`` of the output; the
    spline maps them to ``lattice + theta`` in the input and interpolates with the
    radial basis ``r² log r²``. The system is solved once per lattice and output grid.

    Args:
      theta: parameters, see the table. Integer arrays promote to float.
      out_shape: spatial output shape ``(W,)``, ``(H, W)`` or ``(D, H, W)``.
      transform: a name from the table.
      align_corners: PyTorch's meaning.
      projective_eps: smallest magnitude of the projective divisor.

    Returns:
      ``(*out_shape, n)`` grid in ``(x, y[, z])`` order, in ``theta``'s float dtype
      (half precision is computed in float32).

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> g = stn_jax.grid(jnp.zeros((16, 2)), (4, 4), transform="tps")
      >>> bool(jnp.array_equal(g, stn_jax.identity_grid((4, 4))))
      True
    """
    transform = _checks.check_option("transform", transform, TRANSFORMS)
    out_shape = _checks.check_shape_tuple("out_shape", out_shape)
    align_corners = _checks.check_bool("align_corners", align_corners)
    eps = _checks.check_finite_scalar("projective_eps", projective_eps)
    if eps <= 0:
        raise ValueError(f"projective_eps must be positive, got {projective_eps!r}")
    theta = _checks.as_float_array("theta", theta)
    n = len(out_shape)
    if transform in _PLANAR_ONLY and n != 2:
        raise ValueError(f"transform={transform!r} needs a 2-D out_shape (H, W), got {out_shape}")
    if transform == "projective":
        return _projective_grid(theta, out_shape, align_corners, eps)
    if transform == "tps":
        return _tps_grid(theta, out_shape, align_corners)
    matrix = affine_matrix(theta, transform=transform, ndim=n)
    return affine_grid(matrix, out_shape, align_corners=align_corners)


def identity_params(
    transform: str = "affine", *, ndim: int = 2, num_control_points: int = 16, dtype: DTypeLike = jnp.float32
) -> jax.Array:
    """Parameters whose grid is exactly the identity grid.

    Args:
      transform: a name accepted by :func:`grid`.
      ndim: spatial dimensions (1, 2 or 3) for the affine family.
      num_control_points: K for ``"tps"`` (a perfect square).
      dtype: floating dtype of the result.

    Returns:
      ``(ndim, ndim+1)`` for affine, ``(3, 3)`` for projective, ``(K, 2)`` for tps, and
      the vectors of the other transforms.

    Example:
      >>> import stn_jax
      >>> stn_jax.identity_params("similarity")
      Array([1., 0., 0., 0.], dtype=float32)
    """
    transform = _checks.check_option("transform", transform, TRANSFORMS)
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    if transform in _PLANAR_ONLY and ndim != 2:
        raise ValueError(f"transform={transform!r} is 2-D only, got ndim={ndim}")
    if transform == "affine":
        return jnp.eye(ndim, ndim + 1, dtype=dtype)
    if transform == "attention":
        return jnp.zeros((ndim + 1,), dtype).at[0].set(1)
    if transform == "translation":
        return jnp.zeros((ndim,), dtype)
    if transform == "similarity":
        return jnp.array([1, 0, 0, 0], dtype)
    if transform == "projective":
        return jnp.eye(3, dtype=dtype)
    _tps.lattice_side(num_control_points)
    return jnp.zeros((num_control_points, 2), dtype)


def tps_control_points(num_control_points: int, *, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """The TPS control points in the output: θ = 0 of ``transform="tps"`` leaves them in place.

    A regular ``√K × √K`` lattice over ``[-1, 1]²``; a TPS θ ``(K, 2)`` moves control point
    ``k`` to ``tps_control_points(K)[k] + θ[k]`` in the input.

    Args:
      num_control_points: K, a perfect square >= 4.
      dtype: floating dtype of the result.

    Returns:
      ``(K, 2)`` normalised ``(x, y)`` points, row-major (y outer, x inner).

    Example:
      >>> import stn_jax
      >>> stn_jax.tps_control_points(4)
      Array([[-1., -1.],
             [ 1., -1.],
             [-1.,  1.],
             [ 1.,  1.]], dtype=float32)
    """
    _tps.lattice_side(num_control_points)
    return jnp.asarray(_tps.control_points(num_control_points), dtype)


def num_params(transform: str, *, ndim: int = 2, num_control_points: int = 16) -> int:
    """Number of scalars in ``identity_params(transform, ...)`` (the regression layer's width).

    Args:
      transform: a name accepted by :func:`grid`.
      ndim: spatial dimensions (1, 2 or 3) for the affine family.
      num_control_points: K for ``"tps"`` (a perfect square).

    Returns:
      the number of parameters, an ``int``.

    Example:
      >>> import stn_jax
      >>> stn_jax.num_params("affine"), stn_jax.num_params("tps", num_control_points=9)
      (6, 18)
    """
    return int(np.prod(identity_params(transform, ndim=ndim, num_control_points=num_control_points).shape))
