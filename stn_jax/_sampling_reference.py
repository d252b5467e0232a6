"""The reference sampler: the specification of ``stn_jax.sample`` in plain ``jnp``.

Every method, padding and dimension, differentiated by JAX itself (no custom rules), and
the default on every platform without a measured faster path. The tuned implementations
(``_sampling_cpu``, ``_sampling_dense``) are tested against it and against PyTorch.

Numbers follow ``torch.nn.functional.grid_sample``: the same unnormalisation, padding
(applied to the coordinates, including where PyTorch's gradient is 0 at the edges) and
kernels (linear with floor and fractional part, so the grid gradient is non-zero at
integer coordinates; nearest rounding half to even; bicubic with A = -0.75, each of its
taps padded on its own).

Every method reads its taps with one flat gather (``gather``): each tap's per-axis indices
(clamped into the image) make one row index into the image's ``(pixels, C)`` view, the
``K`` taps of every point (2**n linear, 1 nearest, 16 bicubic) are stacked on a leading
axis and read at once, so the image gradient is one scatter-add. A tap outside the image,
and every tap of a point with a non-finite coordinate, reads 0 (a ``where`` on the value
read, not a zero weight, so that a non-finite pixel on the edge does not reach the points
beyond it, as in PyTorch). On XLA CPU this layout (taps stacked first, sums written as
additions) made one gather faster than one gather per tap in the backward passes, though
slower forward with one channel (BENCHMARKS.md).

Coordinates are lists in grid order ``(x, y, z)``; image axes are ``(z, y, x, C)``.
"""

from __future__ import annotations

import functools
import itertools
import operator
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


def gather(image: jax.Array, taps, finite: jax.Array, take=take) -> tuple[jax.Array, jax.Array]:
    """The pixels at every tap of every point, read with one flat gather, and where they are inside.

    ``taps`` holds per axis, in grid order (x, y, z), a list of ``k`` arrays of integer-valued
    pixel indices ``(*P)``; the point's taps are all their combinations, ``K = k_x·k_y·k_z``,
    x fastest. The indices are clamped into the image for the read. Returns the values
    ``(K, *P, C)`` and whether each tap is inside the image (and its point ``finite``),
    ``(K, *P)``. The tap axis leads: XLA CPU slices taps out of the gather far faster then.
    """
    sizes = image.shape[:-1][::-1]
    rows, keeps = [], []
    for corner in itertools.product(*reversed(taps)):  # z slowest, x fastest
        flat, keep, stride = 0, finite, 1
        for index, size in zip(reversed(corner), sizes):  # the row of (x, y, z): x + W·(y + H·z)
            keep = keep & (index >= 0) & (index <= size - 1)
            flat = flat + stride * jnp.clip(index, 0, size - 1).astype(jnp.int32)
            stride *= size
        rows.append(flat)
        keeps.append(keep)
    return take(image.reshape(-1, image.shape[-1]), jnp.stack(rows)), jnp.stack(keeps)


def contract(values: jax.Array, keep: jax.Array, weights, dtype) -> jax.Array:
    """Σ over the taps of ``gather``'s values inside the image, each weighted by the product
    of its axes' weights (``weights``: per axis, in grid order, a list of ``k`` arrays ``(*P)``).

    A ``where`` on each value (not a zero weight) leaves out the taps outside the image, so
    a non-finite pixel on the edge does not reach points beyond it (0 × inf), as in PyTorch.
    The sum is written as additions, not ``jnp.sum``: XLA CPU runs a reduction over a tap
    axis several times slower (it hands reductions to YNNPACK, BENCHMARKS.md)."""
    out = 0
    for k, corner in enumerate(itertools.product(*reversed(weights))):
        weight = functools.reduce(operator.mul, corner)
        value = jnp.where(keep[k][..., None], values[k].astype(dtype), jnp.zeros((), dtype))
        out = out + value * weight[..., None]
    return cast(jax.Array, out)


def linear(image: jax.Array, coords, finite: jax.Array, dtype, take=take) -> jax.Array:
    """Linear, bilinear or trilinear interpolation: the 2**n corners of the cell around each
    point, weighted by ``1 - frac`` and ``frac`` along each axis."""
    lows = [jnp.floor(c) for c in coords]
    fracs = [(c - low).astype(dtype) for c, low in zip(coords, lows)]
    values, keep = gather(image, [[low, low + 1] for low in lows], finite, take)
    return contract(values, keep, [[1 - frac, frac] for frac in fracs], dtype)


def nearest(image: jax.Array, coords, finite: jax.Array, take=take) -> jax.Array:
    """The pixel nearest to each point (ties to even, as PyTorch), in ``image``'s dtype."""
    values, keep = gather(image, [[jnp.round(c)] for c in coords], finite, take)
    return jnp.where(keep[0][..., None], values[0], jnp.zeros((), image.dtype))


def bicubic(image: jax.Array, coords, finite: jax.Array, padding: str, align_corners: bool, dtype, take=take):
    """Bicubic convolution over the 4×4 taps around each (unpadded) point, each tap padded on
    its own (as PyTorch; the sum is over the 16 taps with product weights)."""
    sizes = image.shape[:-1][::-1]
    lows = [jnp.floor(c) for c in coords]
    taps = [
        [pad_coordinate(low + k - 1, size, padding, align_corners) for k in range(4)] for low, size in zip(lows, sizes)
    ]
    weights = [[w.astype(dtype) for w in cubic_weights(c - low)] for c, low in zip(coords, lows)]
    return contract(*gather(image, taps, finite, take), weights, dtype)


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
