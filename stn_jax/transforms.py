"""Helpers around θ: compose, invert, build from and decompose into geometric parameters,
convert coordinates, and map points.

Every affine θ here is an ``(n, n+1)`` matrix mapping *output* normalised coordinates to
*input* normalised coordinates (the grid generator's backward mapping). To carry a
point of the input (a keypoint, a box corner) into the output, apply the inverse:
``transform_points(invert_affine(theta), p)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from stn_jax import _checks, _tps, grids

__all__ = [
    "AffineParams",
    "affine_from_params",
    "affine_to_params",
    "compose_affine",
    "invert_affine",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "transform_points",
]


def _check_matrix(name: str, theta) -> jax.Array:
    theta = _checks.as_float_array(name, theta)
    if theta.ndim != 2 or theta.shape[0] not in (1, 2, 3) or theta.shape[1] != theta.shape[0] + 1:
        raise ValueError(f"{name} must be an affine matrix of shape (n, n+1) with n in 1, 2, 3, got {theta.shape}")
    return theta


def _homogeneous(theta: jax.Array) -> jax.Array:
    n = theta.shape[0]
    bottom = jnp.zeros((1, n + 1), theta.dtype).at[0, n].set(1)
    return jnp.concatenate([theta, bottom], axis=0)


def compose_affine(outer: ArrayLike, inner: ArrayLike) -> jax.Array:
    """The affine map ``p ↦ outer(inner(p))``.

    Grids map output to input coordinates, so warping an image with ``outer``'s grid and
    then warping the result with ``inner``'s grid reads the original image at
    ``outer(inner(p))``: one warp with the composed θ (up to interpolation).

    Args:
      outer: ``(n, n+1)`` matrix applied second.
      inner: ``(n, n+1)`` matrix applied first.

    Returns:
      ``(n, n+1)`` matrix.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> shift = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
      >>> stn_jax.compose_affine(shift, shift)
      Array([[1., 0., 1.],
             [0., 1., 0.]], dtype=float32)
    """
    outer = _check_matrix("outer", outer)
    inner = _check_matrix("inner", inner)
    if outer.shape != inner.shape:
        raise ValueError(f"outer and inner must have the same shape, got {outer.shape} and {inner.shape}")
    product = jnp.matmul(_homogeneous(outer), _homogeneous(inner), precision=jax.lax.Precision.HIGHEST)
    return product[:-1]


def invert_affine(theta: ArrayLike) -> jax.Array:
    """The inverse affine map. A singular θ gives non-finite entries (no error under jit).

    Args:
      theta: ``(n, n+1)`` matrix.

    Returns:
      ``(n, n+1)`` matrix ``θ⁻¹`` with ``compose_affine(θ, θ⁻¹)`` the identity.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.invert_affine(jnp.array([[2.0, 0.0, 1.0], [0.0, 4.0, 0.0]]))
      Array([[ 0.5 ,  0.  , -0.5 ],
             [ 0.  ,  0.25,  0.  ]], dtype=float32)
    """
    theta = _check_matrix("theta", theta)
    n = theta.shape[0]
    linear_inv = jnp.linalg.inv(theta[:, :n])
    shift = -jnp.matmul(linear_inv, theta[:, n], precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([linear_inv, shift[:, None]], axis=1)


class AffineParams(NamedTuple):
    """A 2-D affine map as ``R(rotation) @ [[1, shear], [0, 1]] @ diag(scale)`` plus translation.

    Attributes:
      rotation: angle in radians (counter-clockwise in ``(x, y)`` with y pointing down the
        image rows, i.e. clockwise on screen).
      scale: ``(s_x, s_y)``; a reflection shows as a negative ``s_y``.
      shear: x-shear factor.
      translation: ``(t_x, t_y)`` in normalised coordinates.
    """

    rotation: jax.Array
    scale: jax.Array
    shear: jax.Array
    translation: jax.Array


def affine_from_params(
    *,
    rotation: ArrayLike = 0.0,
    scale: ArrayLike = 1.0,
    shear: ArrayLike = 0.0,
    translation: ArrayLike | tuple[float, float] = (0.0, 0.0),
) -> jax.Array:
    """Builds a 2-D affine θ from geometric parameters (see :class:`AffineParams`).

    Args:
      rotation: radians, scalar.
      scale: scalar (isotropic) or ``(s_x, s_y)``.
      shear: scalar x-shear.
      translation: ``(t_x, t_y)``.

    Returns:
      ``(2, 3)`` matrix.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.affine_from_params(scale=2.0, translation=(0.1, 0.2))
      Array([[2. , 0. , 0.1],
             [0. , 2. , 0.2]], dtype=float32)
    """
    rotation = _checks.as_float_array("rotation", rotation)
    shear = _checks.as_float_array("shear", shear)
    scale = _checks.as_float_array("scale", scale)
    translation = _checks.as_float_array("translation", translation)
    for name, value in (("rotation", rotation), ("shear", shear)):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    if scale.shape == ():
        scale = jnp.stack([scale, scale])
    if scale.shape != (2,):
        raise ValueError(f"scale must be a scalar or have shape (2,), got shape {scale.shape}")
    if translation.shape != (2,):
        raise ValueError(f"translation must have shape (2,), got shape {translation.shape}")
    dtype = jnp.result_type(rotation, shear, scale, translation)
    cos, sin = jnp.cos(rotation), jnp.sin(rotation)
    rot = jnp.array([[cos, -sin], [sin, cos]], dtype)
    upper = jnp.array([[scale[0], shear * scale[1]], [0.0, scale[1]]], dtype)
    linear = jnp.matmul(rot, upper, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([linear, translation.astype(dtype)[:, None]], axis=1)


def affine_to_params(theta: ArrayLike) -> AffineParams:
    """Decomposes a 2-D affine θ; the inverse of :func:`affine_from_params` for ``s_x > 0``.

    Args:
      theta: ``(2, 3)`` matrix.

    Returns:
      :class:`AffineParams`.

    Example:
      >>> import stn_jax
      >>> p = stn_jax.affine_to_params(stn_jax.affine_from_params(rotation=0.3, scale=(2.0, 0.5), shear=0.1))
      >>> [round(float(v), 5) for v in (p.rotation, *p.scale, p.shear)]
      [0.3, 2.0, 0.5, 0.1]
    """
    theta = _check_matrix("theta", theta)
    if theta.shape != (2, 3):
        raise ValueError(f"theta must have shape (2, 3), got {theta.shape}")
    a = theta[:, :2]
    scale_x = jnp.hypot(a[0, 0], a[1, 0])
    rotation = jnp.arctan2(a[1, 0], a[0, 0])
    cos, sin = jnp.cos(rotation), jnp.sin(rotation)
    # Rᵀ A = [[s_x, shear·s_y], [0, s_y]]
    shear_sy = cos * a[0, 1] + sin * a[1, 1]
    scale_y = -sin * a[0, 1] + cos * a[1, 1]
    return AffineParams(rotation, jnp.stack([scale_x, scale_y]), shear_sy / scale_y, theta[:, 2])


def normalized_to_pixel(points: ArrayLike, spatial_shape: Sequence[int], *, align_corners: bool = False) -> jax.Array:
    """Normalised ``[-1, 1]`` coordinates to pixel coordinates (pixel centres at integers).

    Args:
      points: ``(..., n)`` in ``(x, y[, z])`` order.
      spatial_shape: the image's spatial shape ``(W,)``, ``(H, W)`` or ``(D, H, W)``.
      align_corners: PyTorch's meaning.

    Returns:
      ``(..., n)`` pixel coordinates: x is the column, y the row.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.normalized_to_pixel(jnp.array([-1.0, 1.0]), (10, 4))
      Array([-0.5,  9.5], dtype=float32)
    """
    points, sizes = _check_points(points, spatial_shape, align_corners)
    if align_corners:
        return (points + 1) / 2 * (sizes - 1)
    return ((points + 1) * sizes - 1) / 2


def pixel_to_normalized(points: ArrayLike, spatial_shape: Sequence[int], *, align_corners: bool = False) -> jax.Array:
    """Pixel coordinates to normalised ``[-1, 1]`` coordinates; inverse of :func:`normalized_to_pixel`.

    Args:
      points: ``(..., n)`` pixel coordinates in ``(x, y[, z])`` order (x is the column, y the row;
        pixel centres at integers).
      spatial_shape: the image's spatial shape ``(W,)``, ``(H, W)`` or ``(D, H, W)``.
      align_corners: PyTorch's meaning.

    Returns:
      ``(..., n)`` normalised coordinates.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.pixel_to_normalized(jnp.array([0.0, 0.0]), (3, 5), align_corners=True)
      Array([-1., -1.], dtype=float32)
    """
    points, sizes = _check_points(points, spatial_shape, align_corners)
    if align_corners:
        # A size-1 axis has its single pixel at 0, PyTorch's choice.
        return jnp.where(sizes > 1, points * 2 / jnp.maximum(sizes - 1, 1) - 1, 0)
    return (points * 2 + 1) / sizes - 1


def _check_points(points, spatial_shape, align_corners):
    _checks.check_bool("align_corners", align_corners)
    spatial_shape = _checks.check_shape_tuple("spatial_shape", spatial_shape)
    points = _checks.as_float_array("points", points)
    n = len(spatial_shape)
    if points.ndim < 1 or points.shape[-1] != n:
        raise ValueError(
            f"points must have shape (..., {n}) to match spatial_shape {spatial_shape}, got shape {points.shape}"
        )
    sizes = jnp.asarray(spatial_shape[::-1], points.dtype)  # (x, y, z) order
    return points, sizes


def transform_points(
    theta: ArrayLike, points: ArrayLike, *, transform: str = "affine", projective_eps: float = 1e-6
) -> jax.Array:
    """Applies a transform to normalised points, exactly as :func:`stn_jax.grid` does to its grid.

    Args:
      theta: parameters as in :func:`stn_jax.grid` (affine family, ``projective`` or ``tps``).
      points: ``(..., n)`` normalised points in ``(x, y[, z])`` order.
      transform: transform name.
      projective_eps: smallest magnitude of the projective divisor.

    Returns:
      ``(..., n)`` mapped points.

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> stn_jax.transform_points(jnp.array([0.5, 0.2, 0.0]), jnp.array([[1.0, 1.0]]), transform="attention")
      Array([[0.7, 0.5]], dtype=float32)
    """
    _checks.check_option("transform", transform, grids.TRANSFORMS)
    points = _checks.as_float_array("points", points)
    theta = _checks.as_float_array("theta", theta)
    if points.ndim < 1 or points.shape[-1] not in (1, 2, 3):
        raise ValueError(f"points must have shape (..., n) with n in 1, 2, 3, got {points.shape}")
    n = points.shape[-1]
    if transform == "projective":
        if n != 2:
            raise ValueError(f"transform='projective' needs 2-D points, got shape {points.shape}")
        return grids._projective_map(grids._homography(theta), points, projective_eps)
    if transform == "tps":
        if n != 2:
            raise ValueError(f"transform='tps' needs 2-D points, got shape {points.shape}")
        return points + _tps_displacement(theta, points)
    matrix = grids.affine_matrix(theta, transform=transform, ndim=n)
    return points @ matrix[:, :n].T + matrix[:, n]


def _tps_displacement(theta: jax.Array, points: jax.Array) -> jax.Array:
    k = grids._check_tps_theta(theta)
    centres = jnp.asarray(_tps.control_points(k), points.dtype)
    inverse = jnp.asarray(_tps.inverse_system(k)[:, :k], points.dtype)
    return _tps.basis(points, centres, jnp) @ (inverse @ theta)
