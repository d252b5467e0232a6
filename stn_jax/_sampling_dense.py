"""Dense linear sampling: interpolation as per-axis weight matrices applied by matrix products.

For ``P`` output points of an ``(H, W, C)`` image, each axis gets a ``(P, W)`` (resp.
``(P, H)``) matrix whose row holds a point's two linear weights (``1 - frac`` at its
lower tap, ``frac`` at the next; 0 elsewhere, so taps outside the image simply have no
column: zero padding; ``border``/``reflection`` move the coordinate first, as the
reference does). The output is ``Σ_y Wy[p, y] Σ_x Wx[p, x] U[y, x, c]``: the x contraction
is one matrix product, the y contraction a batched one. No gather or scatter anywhere, so
the image gradient is a matrix product too (no scatter-add, hence no atomics and a
deterministic result on GPUs) and the work goes to matrix units, the form TPUs run well.

Cost, 2-D: weights ``P·(H + W)`` values, an intermediate of ``P·H·C``, and about
``2·P·H·W·C`` FLOPs (forward; the backward costs twice that). That is ``H·W`` times the
work of a gather, so this is for small images (MNIST-sized), not for 224×224 photos.
3-D adds a ``(P, D)`` matrix and an intermediate of ``P·D·H·C``.

Matrix products run at ``Precision.HIGHEST`` so that float32 keeps float32 accuracy on
accelerators whose default matmul rounds to bfloat16 or TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stn_jax import _sampling_reference as reference

_HIGHEST = jax.lax.Precision.HIGHEST


def _axis_matrix(coord: jax.Array, size: int, dtype) -> jax.Array:
    """(P, size): each point's linear weights along one axis of ``size`` pixels."""
    low = jnp.floor(coord)[:, None]
    frac = (coord[:, None] - low).astype(dtype)
    pixel = jnp.arange(size, dtype=coord.dtype)
    return jnp.where(pixel == low, 1 - frac, 0) + jnp.where(pixel == low + 1, frac, 0)


def sample(image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype) -> jax.Array:
    """As ``_sampling_reference.sample``, for ``method="bilinear"`` only."""
    if method != "bilinear":
        raise ValueError(f"implementation='dense' supports method='bilinear' only, got method={method!r}")
    sizes = image.shape[: grid.shape[-1]][::-1]
    coords, finite = reference.pixel_coordinates(grid, sizes, padding=padding, align_corners=align_corners)
    matrices = [_axis_matrix(c.reshape(-1), size, dtype) for c, size in zip(coords, sizes)]
    matrices[0] = matrices[0] * finite.reshape(-1, 1).astype(dtype)
    # x first: (P, W) @ (..., W, C) -> (P, ..., C); then y (and z), one axis at a time.
    out = jnp.einsum("pw,...wc->p...c", matrices[0], image.astype(dtype), precision=_HIGHEST)
    for matrix in matrices[1:]:
        out = jnp.einsum("p...kc,pk->p...c", out, matrix, precision=_HIGHEST)
    return out.reshape(*grid.shape[:-1], image.shape[-1])
