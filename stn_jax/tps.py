"""Thin-plate spline (TPS) grids on a regular lattice of control points.

The control points sit on a regular ``√K × √K`` lattice spanning ``[-1, 1]²`` of the
*output* image. θ holds their ``(K, 2)`` offsets in the input image (normalised
``(x, y)``), so θ = 0 is the identity. Because the lattice and the output grid are
fixed for a given ``(K, out_shape, align_corners)``, the TPS system is solved once in
float64 NumPy and cached: a call is then a single ``(H·W, K) @ (K, 2)`` product.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def lattice_side(num_control_points: int) -> int:
    """√K, or a ``ValueError`` naming the argument when K is not a square ≥ 4."""
    side = math.isqrt(num_control_points) if num_control_points >= 0 else 0
    if side * side != num_control_points or side < 2:
        raise ValueError(
            "the number of TPS control points K (theta.shape[0]) must be a perfect square >= 4 "
            f"(a regular sqrt(K) x sqrt(K) lattice), got K={num_control_points}"
        )
    return side


@functools.lru_cache(maxsize=None)
def control_points(num_control_points: int) -> np.ndarray:
    """The ``(K, 2)`` lattice in ``(x, y)`` order, row-major (y outer, x inner), in float64."""
    side = lattice_side(num_control_points)
    axis = np.linspace(-1.0, 1.0, side)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def _radial_basis(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """U(r) = r² log r², with U(0) = 0."""
    r2 = np.sum((points[:, None, :] - centres[None, :, :]) ** 2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0.0, r2 * np.log(r2), 0.0)


@functools.lru_cache(maxsize=64)
def inverse_system(num_control_points: int) -> np.ndarray:
    """Inverse of the ``(K+3, K+3)`` TPS system matrix ``[[U, P], [Pᵀ, 0]]``."""
    cp = control_points(num_control_points)
    k = cp.shape[0]
    p = np.concatenate([np.ones((k, 1)), cp], axis=1)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = _radial_basis(cp, cp)
    system[:k, k:] = p
    system[k:, :k] = p.T
    return np.linalg.inv(system)


@functools.lru_cache(maxsize=64)
def offset_matrix(num_control_points: int, points_key: tuple) -> np.ndarray:
    """``(N, K)`` matrix M with ``displacement(points) = M @ offsets`` (float64).

    ``points_key`` is ``(shape, bytes)`` of the ``(N, 2)`` float64 evaluation points,
    so the matrix is cached per output grid.
    """
    shape, raw = points_key
    points = np.frombuffer(raw, dtype=np.float64).reshape(shape)
    cp = control_points(num_control_points)
    k = cp.shape[0]
    basis = np.concatenate([_radial_basis(points, cp), np.ones((points.shape[0], 1)), points], axis=1)
    return basis @ inverse_system(num_control_points)[:, :k]
