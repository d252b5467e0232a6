"""Thin-plate spline (TPS) maths on a regular lattice of control points.

The control points sit on a regular ``√K × √K`` lattice spanning ``[-1, 1]²`` of the
*output* image. θ holds their ``(K, 2)`` offsets in the input image (normalised
``(x, y)``), so θ = 0 is the identity. Because the lattice and the output grid are
fixed for a given ``(K, out_shape, align_corners)``, the TPS system is solved once in
float64 NumPy and cached: a grid is then a single ``(H·W, K) @ (K, 2)`` product.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from stn_jax import _checks


def lattice_side(num_control_points, *, name: str = "num_control_points") -> int:
    """√K, or an error naming ``name`` when K is not a perfect square >= 4."""
    k = _checks.check_int(name, num_control_points, minimum=0)
    side = math.isqrt(k)
    if side * side != k or side < 2:
        raise ValueError(
            f"{name} must be a perfect square >= 4 (a sqrt(K) x sqrt(K) lattice of TPS control points), "
            f"got {num_control_points!r}"
        )
    return side


@functools.cache
def control_points(num_control_points: int) -> np.ndarray:
    """The ``(K, 2)`` lattice in ``(x, y)`` order, row-major (y outer, x inner), in float64."""
    side = lattice_side(num_control_points)
    axis = np.linspace(-1.0, 1.0, side)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def basis(points, centres, xp=np):
    """``[U(|p - c|) for every centre c, 1, p]`` per point ``(..., 2)`` → ``(..., K + 3)``, with
    U(r) = r² log r² and U(0) = 0; ``xp`` is ``numpy`` or ``jax.numpy``."""
    r2 = xp.sum((points[..., None, :] - centres) ** 2, axis=-1)
    # log of 1 where r = 0: no warning in NumPy, and a finite gradient in JAX.
    radial = xp.where(r2 > 0, r2 * xp.log(xp.where(r2 > 0, r2, 1)), 0)
    return xp.concatenate([radial, xp.ones_like(points[..., :1]), points], axis=-1)


@functools.lru_cache(maxsize=64)
def inverse_system(num_control_points: int) -> np.ndarray:
    """Inverse of the ``(K+3, K+3)`` TPS system matrix ``[[U, P], [Pᵀ, 0]]``."""
    cp = control_points(num_control_points)
    k = cp.shape[0]
    system = np.zeros((k + 3, k + 3))
    system[:k] = basis(cp, cp)
    system[k:, :k] = system[:k, k:].T
    return np.linalg.inv(system)


@functools.lru_cache(maxsize=64)
def offset_matrix(num_control_points: int, points_key: tuple) -> np.ndarray:
    """``(N, K)`` matrix M with ``displacement(points) = M @ offsets`` (float64).

    ``points_key`` is ``(shape, bytes)`` of the ``(N, 2)`` float64 evaluation points,
    so the matrix is cached per output grid.
    """
    shape, raw = points_key
    points = np.frombuffer(raw, dtype=np.float64).reshape(shape)
    k = num_control_points
    return basis(points, control_points(k)) @ inverse_system(k)[:, :k]
