"""The reference sampler: the specification of ``stn_jax.sample`` in plain ``jnp``.

Every method, padding and dimension, differentiated by JAX itself (no custom rules), and
the default on every platform without a measured faster path. The tuned implementations
(``_sampling_cpu``, ``_sampling_dense``) are tested against it and against PyTorch.

Numbers follow ``torch.nn.functional.grid_sample``: the same unnormalisation, padding
(applied to the coordinates, including where PyTorch's gradient is 0 at the edges) and
kernels (linear with floor and fractional part, so the grid gradient is non-zero at
integer coordinates; nearest rounding half to even; bicubic with A = -0.75, each of its
taps padded on its own). Taps outside the image read 0.

Coordinates are lists in grid order ``(x, y, z)``; image axes are ``(z, y, x, C)``.
"""

from __future__ import annotations

import itertools
from typing import cast

import jax
import jax.numpy as jnp

CUBIC_A = -0.75


def unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """Normalised [-1, 1] coordinate -> pixel coordinate along an axis of ``size`` pixels."""
    if align_corners:
        return (coord + 1) * ((size - 1) / 2)
    return (coord + 1) * (size / 2) - 0.5


def _clip(coord: jax.Array, size: int) -> jax.Array:
    # Nested `where` rather than `clip`: at the limits PyTorch's gradient is 0, and the
    # selected branch of `where` is a constant there.
    limit = size - 1
    return jnp.where(coord <= 0, jnp.zeros_like(coord), jnp.where(coord >= limit, limit, coord).astype(coord.dtype))


def _reflect(coord: jax.Array, twice_low: int, twice_high: int) -> jax.Array:
    if twice_low == twice_high:
        return jnp.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    coord = coord - low
    coord = jnp.where(coord < 0, -coord, coord)
    extra = jnp.fmod(coord, span)
    even = jnp.fmod(jnp.floor(coord / span), 2) == 0
    return jnp.where(even, extra + low, span - extra + low)


def pad_coordinate(coord: jax.Array, size: int, padding: str, align_corners: bool) -> jax.Array:
    """Moves a pixel coordinate into the image for ``border``/``reflection`` padding."""
    if padding == "border":
        return _clip(coord, size)
    if padding == "reflection":
        # PyTorch clips after reflecting in both modes, so the gradient is 0 exactly on the edges.
        if align_corners:
            return _clip(_reflect(coord, 0, 2 * (size - 1)), size)
        return _clip(_reflect(coord, -1, 2 * size - 1), size)
    return coord


def cubic_weights(t: jax.Array) -> list[jax.Array]:
    """Weights of the taps at -1, 0, 1, 2 for a fractional position ``t``."""
    a = CUBIC_A
    # Same float operations as PyTorch's get_cubic_upsample_coefficients.
    x0, x1, x2 = t + 1, t, 1 - t
    x3 = x2 + 1
    return [
        ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a,
        ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1,
        ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,
        ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a,
    ]


def pixel_coordinates(grid: jax.Array, sizes, *, padding: str | None, align_corners: bool):
    """Per-axis pixel coordinates of a grid's finite points (non-finite ones moved to 0), and
    the finite mask. ``padding=None`` leaves them unpadded (bicubic pads each tap instead)."""
    finite = jnp.all(jnp.isfinite(grid), axis=-1)
    grid = jnp.where(finite[..., None], grid, 0)
    coords = [unnormalize(grid[..., d], size, align_corners) for d, size in enumerate(sizes)]
    if padding is not None:
        coords = [pad_coordinate(c, size, padding, align_corners) for c, size in zip(coords, sizes)]
    return coords, finite


def _read(image: jax.Array, index, valid: jax.Array) -> jax.Array:
    """``image`` at integer-valued float pixel indices (x, y, z), 0 where not ``valid``: (*P, C)."""
    sizes = image.shape[:-1][::-1]
    index = [jnp.clip(i, 0, size - 1).astype(jnp.int32) for i, size in zip(index, sizes)]
    value = image.at[tuple(index[::-1])].get(mode="promise_in_bounds")
    return jnp.where(valid[..., None], value, jnp.zeros((), image.dtype))


def _inside(index, sizes) -> jax.Array:
    return jnp.all(jnp.stack([(i >= 0) & (i <= size - 1) for i, size in zip(index, sizes)]), axis=0)


def linear(image: jax.Array, coords, finite: jax.Array, dtype) -> jax.Array:
    """Linear, bilinear or trilinear interpolation: the 2**n corners of the cell around each
    point, weighted by the products of ``1 - frac`` and ``frac`` along each axis."""
    sizes = image.shape[:-1][::-1]
    lows = [jnp.floor(c) for c in coords]
    fracs = [c - low for c, low in zip(coords, lows)]
    out = 0
    for corner in itertools.product((0, 1), repeat=len(coords)):
        index = [low + k for low, k in zip(lows, corner)]
        weight = finite.astype(dtype)
        for frac, k in zip(fracs, corner):
            weight = weight * (frac if k else 1 - frac)
        out = out + weight[..., None] * _read(image, index, finite & _inside(index, sizes)).astype(dtype)
    return cast(jax.Array, out)  # a sum of arrays (out starts as the int 0)


def nearest(image: jax.Array, coords, finite: jax.Array) -> jax.Array:
    """The pixel nearest to each point (ties to even, as PyTorch), in ``image``'s dtype."""
    index = [jnp.round(c) for c in coords]
    return _read(image, index, finite & _inside(index, image.shape[:-1][::-1]))


def bicubic(image: jax.Array, coords, finite: jax.Array, padding: str, align_corners: bool, dtype) -> jax.Array:
    """Bicubic convolution over the 4×4 taps around each (unpadded) point; each tap is padded
    on its own and the rows are combined in x, then in y, as PyTorch does."""
    sizes = image.shape[:-1][::-1]
    lows = [jnp.floor(c) for c in coords]
    (wx, wy) = [cubic_weights(c - low) for c, low in zip(coords, lows)]
    taps = [[pad_coordinate(low + k - 1, size, padding, align_corners) for k in range(4)]
            for low, size in zip(lows, sizes)]  # fmt: skip
    out = 0
    for ky, iy in enumerate(taps[1]):
        row = 0
        for kx, ix in enumerate(taps[0]):
            value = _read(image, [ix, iy], finite & _inside([ix, iy], sizes)).astype(dtype)
            row = row + value * wx[kx][..., None]
        out = out + row * wy[ky][..., None]
    return cast(jax.Array, out)


def sample(image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype) -> jax.Array:
    """``image`` (*spatial, C) at ``grid`` (*out, n) in ``dtype`` (``image``'s for integer nearest)."""
    sizes = image.shape[: grid.shape[-1]][::-1]
    pad = None if method == "bicubic" else padding
    coords, finite = pixel_coordinates(grid, sizes, padding=pad, align_corners=align_corners)
    if method == "bilinear":
        return linear(image, coords, finite, dtype)
    if method == "nearest":
        out = nearest(image, coords, finite)
        return out.astype(dtype) if jnp.issubdtype(image.dtype, jnp.floating) else out
    return bicubic(image, coords, finite, padding, align_corners, dtype)
