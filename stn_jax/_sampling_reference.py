"""The reference sampler: the specification of ``stn_jax.sample`` in plain ``jnp``.

Every method, padding and dimension, differentiated by JAX itself (no custom rules), and
the default on every platform without a measured faster path. The tuned implementations
(``_sampling_cpu``, ``_sampling_dense``) are tested against it and against PyTorch.

Numbers follow ``torch.nn.functional.grid_sample``: the same unnormalisation, padding
(applied to the coordinates, including where PyTorch's gradient is 0 at the edges) and
kernels (linear with floor and fractional part, so the grid gradient is non-zero at
integer coordinates; nearest rounding half to even; bicubic with A = -0.75, each of its
taps padded on its own).

Every method reads its taps with one flat gather (``gather``): the per-axis tap indices
(clamped into the image) make one row index into the image's ``(pixels, C)`` view, so a
point's 2**n (linear), 1 (nearest) or 16 (bicubic) taps come in one read and its image
gradient is one scatter-add. A tap outside the image, and every tap of a point with a
non-finite coordinate, reads 0 (a ``where`` on the values read, not a zero weight, so that
a non-finite pixel on the edge does not reach the points outside it, as in PyTorch).

Coordinates are lists in grid order ``(x, y, z)``; image axes are ``(z, y, x, C)``.
"""

from __future__ import annotations

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


def take(rows: jax.Array, index: jax.Array) -> jax.Array:
    """``rows[index]``: the rows of a ``(pixels, C)`` view at in-bounds flat indices, ``(*index.shape, C)``.

    The one gather of every method. JAX differentiates it into one scatter-add onto the
    image; ``_sampling_deterministic`` passes its own ``take`` instead.
    """
    return rows.at[index].get(mode="promise_in_bounds")


def gather(image: jax.Array, taps, finite: jax.Array, take=take) -> jax.Array:
    """The pixels at the taps of every point, read with one flat gather; 0 outside the image.

    ``taps`` holds per axis, in grid order (x, y, z), a ``(*P, k)`` array of integer-valued
    pixel indices. They are clamped into the image for the read, and the taps that were
    outside it (every tap of a point that is not ``finite``) read 0. Returns
    ``(*P, k_z, k_y, k_x, C)``: the taps of each axis on an axis of their own, x last.
    """
    sizes = image.shape[:-1][::-1]
    n = len(taps)
    flat, keep = 0, finite.reshape(finite.shape + (1,) * n)
    for d in reversed(range(n)):  # z, y, x: the row of (x, y, z) is x + W·(y + H·z)
        index = taps[d]
        shape = index.shape[:-1] + (1,) * (n - 1 - d) + index.shape[-1:] + (1,) * d
        keep = keep & ((index >= 0) & (index <= sizes[d] - 1)).reshape(shape)
        flat = flat * sizes[d] + jnp.clip(index, 0, sizes[d] - 1).astype(jnp.int32).reshape(shape)
    flat = cast(jax.Array, flat)
    points, counts = flat.shape[:-n], flat.shape[-n:]
    rows = take(image.reshape(-1, image.shape[-1]), flat.reshape(*points, -1))
    rows = rows.reshape(*points, *counts, image.shape[-1])
    return jnp.where(keep[..., None], rows, jnp.zeros((), image.dtype))


def contract(values: jax.Array, weights) -> jax.Array:
    """Σ over the taps of ``gather``'s values: x first, then y, then z (as PyTorch's bicubic).

    ``weights`` holds per axis, in grid order, the ``(*P, k)`` weights of its taps."""
    for d, weight in enumerate(weights):
        n_left = len(weights) - 1 - d  # tap axes not yet contracted, before this one
        weight = weight.reshape(weight.shape[:-1] + (1,) * n_left + weight.shape[-1:] + (1,))
        values = jnp.sum(values * weight, axis=-2)
    return values


def linear(image: jax.Array, coords, finite: jax.Array, dtype, take=take) -> jax.Array:
    """Linear, bilinear or trilinear interpolation: the 2**n corners of the cell around each
    point, weighted by ``1 - frac`` and ``frac`` along each axis."""
    taps, weights = [], []
    for coord in coords:
        low = jnp.floor(coord)[..., None]
        index = low + jnp.arange(2, dtype=low.dtype)
        frac = (coord[..., None] - low).astype(dtype)
        taps.append(index)
        weights.append(jnp.where(index == low, 1 - frac, frac))
    return contract(gather(image, taps, finite, take).astype(dtype), weights)


def nearest(image: jax.Array, coords, finite: jax.Array, take=take) -> jax.Array:
    """The pixel nearest to each point (ties to even, as PyTorch), in ``image``'s dtype."""
    taps = [jnp.round(c)[..., None] for c in coords]
    return gather(image, taps, finite, take).reshape(*finite.shape, image.shape[-1])


def bicubic(image: jax.Array, coords, finite: jax.Array, padding: str, align_corners: bool, dtype, take=take):
    """Bicubic convolution over the 4×4 taps around each (unpadded) point; each tap is padded
    on its own and the rows are combined in x, then in y, as PyTorch does."""
    sizes = image.shape[:-1][::-1]
    taps, weights = [], []
    for coord, size in zip(coords, sizes):
        low = jnp.floor(coord)
        taps.append(pad_coordinate(low[..., None] + jnp.arange(-1, 3, dtype=low.dtype), size, padding, align_corners))
        weights.append(jnp.stack(cubic_weights(coord - low), axis=-1).astype(dtype))
    return contract(gather(image, taps, finite, take).astype(dtype), weights)


def sample(
    image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype, take=take
) -> jax.Array:
    """``image`` (*spatial, C) at ``grid`` (*out, n) in ``dtype`` (``image``'s for integer nearest).

    ``take`` reads the rows of the flat image (see ``take``)."""
    sizes = image.shape[: grid.shape[-1]][::-1]
    pad = None if method == "bicubic" else padding
    coords, finite = pixel_coordinates(grid, sizes, padding=pad, align_corners=align_corners)
    if method == "bilinear":
        return linear(image, coords, finite, dtype, take)
    if method == "nearest":
        out = nearest(image, coords, finite, take)
        return out.astype(dtype) if jnp.issubdtype(image.dtype, jnp.floating) else out
    return bicubic(image, coords, finite, padding, align_corners, dtype, take)
