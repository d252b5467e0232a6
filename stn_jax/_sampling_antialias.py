"""Antialiased linear sampling: each output point reads the image averaged over its footprint.

A plain sampler reads 2**n taps per output point; where the grid shrinks the image (points
more than a pixel apart in the input), everything between the taps is skipped and fine
detail folds into false patterns. Here each point reads a low-passed image instead:

* **Footprint.** How far apart neighbouring grid points land in the input, per output
  axis: the columns ``J_k`` of the grid's Jacobian in pixels, by central differences
  (one-sided at the edges and next to non-finite points; 0 along an axis of one point).
  It comes from the grid alone, so every transform (affine, projective, TPS, any grid) is
  served with no extra argument.
* **Levels.** A stack of the image box-filtered to widths ``1, 2, 4, ..., 2**(L-1)`` pixels
  along every spatial axis, at full resolution (no decimation, so the filter is
  shift-invariant and a level is read like any image). The width-``2**l`` filter is the
  exact average of the *bilinear* image over ``2**l`` pixels: the trapezoid rule, i.e.
  taps ``[1/2, 1, ..., 1, 1/2] / 2**l``, built level from level by
  ``0.5 * (shift(-2**(l-2)) + shift(+2**(l-2)))``. The image is padded as ``padding``
  says before filtering, so the edges average what the plain sampler would read there.
  ``L = 1 + floor(log2(largest spatial size))``: static, so it jits.
* **Probes.** The footprint's longest column ``J_major`` (length ``rho_major``) is covered
  by ``probes`` reads spaced evenly along it, each from the level of width
  ``w = max(1, rho_other, rho_major / probes)`` (``rho_other``: the longest of the other
  columns), taken at the continuous level ``log2(w)``: linear in the level between the
  two nearest widths. ``probes=1`` is the isotropic variant (one read at width
  ``rho_major``), as trilinear mipmapping; more probes follow an elongated footprint, as
  anisotropic texture filtering does.

Points whose footprint is at most one pixel along every output axis take the plain
sampler's value, bit for bit, so identity and upsampling grids are unchanged.

Gradient: the image gradient is linear as usual (each probe's 2**(n+1) taps). The grid
gradient has, besides the usual term through the point's own position, a term through
the footprint: the level and the probe offsets depend on the differences to the
neighbouring grid points, so a point's output also moves when its neighbours move (a
grid that zooms out further reads a blurrier level). ``max`` passes the gradient to the
widest term only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stn_jax import _sampling_reference as reference

PROBES = 2
# Footprints up to this length count as one pixel: an identity grid's spacing is 1 only up to
# rounding. Up to it the output is the plain sampler's; just above it the antialiased value
# differs from that by at most log2(ONE_PIXEL) = 0.14% of the first two levels' difference.
ONE_PIXEL = 1 + 2.0**-10
_TINY = 1e-12  # keeps sqrt differentiable at a zero-length footprint


def level_count(sizes) -> int:
    """Number of levels: widths 1, 2, 4, ... up to the largest power of two <= the largest size."""
    return 1 + math.floor(math.log2(max(sizes)))


def _pad_mode(padding: str, align_corners: bool) -> str:
    if padding == "zeros":
        return "constant"
    if padding == "border":
        return "edge"
    # PyTorch's reflection mirrors about the outer pixel edges without align_corners (pixel
    # -1 is pixel 0) and about the outer pixel centres with it (pixel -1 is pixel 1).
    return "reflect" if align_corners else "symmetric"


def _shift_average(x: jax.Array, axis: int, shift: int) -> jax.Array:
    """``0.5 * (x[i - shift] + x[i + shift])`` along ``axis``; the result is ``2*shift`` shorter."""
    n = x.shape[axis]
    low = jax.lax.slice_in_dim(x, 0, n - 2 * shift, axis=axis)
    high = jax.lax.slice_in_dim(x, 2 * shift, n, axis=axis)
    return 0.5 * (low + high)


def _tent(x: jax.Array, axis: int) -> jax.Array:
    """``[1/4, 1/2, 1/4]`` along ``axis``: the average of the linear interpolant over 2 pixels."""
    n = x.shape[axis]
    middle = jax.lax.slice_in_dim(x, 1, n - 1, axis=axis)
    return 0.5 * (_shift_average(x, axis, 1) + middle)


def levels(image: jax.Array, *, padding: str, align_corners: bool) -> jax.Array:
    """``(L, *spatial, C)``: level ``l`` is ``image`` averaged over ``2**l`` pixels per axis."""
    spatial = image.ndim - 1
    count = level_count(image.shape[:-1])
    if count == 1:
        return image[None]
    reach = 2 ** (count - 2)  # half-width of the widest filter
    pad = [(reach, reach)] * spatial + [(0, 0)]
    current = jnp.pad(image, pad, mode=_pad_mode(padding, align_corners))
    out = [image]
    for level in range(1, count):
        for axis in range(spatial):
            current = _tent(current, axis) if level == 1 else _shift_average(current, axis, 2 ** (level - 2))
        margin = reach - 2 ** (level - 1)  # what is left of the padding at this level
        out.append(current[tuple(slice(margin, margin + size) for size in image.shape[:-1])])
    return jnp.stack(out)


def _axis_differences(coords: jax.Array, finite: jax.Array, axis: int) -> jax.Array:
    """Central differences of ``coords`` (*out, n) along output ``axis``, one-sided at the edges
    and beside non-finite points, 0 where neither neighbour is usable."""
    n = coords.shape[axis]
    if n == 1:
        return jnp.zeros_like(coords)
    step = jnp.diff(coords, axis=axis)
    both = (jax.lax.slice_in_dim(finite, 0, n - 1, axis=axis) & jax.lax.slice_in_dim(finite, 1, n, axis=axis))[
        ..., None
    ]
    step = jnp.where(both, step, 0)
    pad_before = [(0, 0)] * coords.ndim
    pad_after = [(0, 0)] * coords.ndim
    pad_before[axis] = (1, 0)
    pad_after[axis] = (0, 1)
    backward, backward_ok = jnp.pad(step, pad_before), jnp.pad(both, pad_before)
    forward, forward_ok = jnp.pad(step, pad_after), jnp.pad(both, pad_after)
    count = backward_ok.astype(coords.dtype) + forward_ok.astype(coords.dtype)
    return (backward + forward) / jnp.maximum(count, 1)


def footprint(coords: jax.Array, finite: jax.Array) -> jax.Array:
    """The Jacobian columns ``(*out, n_out_axes, n)`` of pixel coordinates ``(*out, n)``.

    Output axis ``k`` of the result is grid axis ``-2 - k`` (x first, as the coordinates).
    """
    spatial = coords.ndim - 1
    columns = [_axis_differences(coords, finite, spatial - 1 - k) for k in range(spatial)]
    return jnp.stack(columns, axis=-2)


def _lengths(columns: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(columns * columns, axis=-1) + _TINY)


def sample(
    image: jax.Array,
    grid: jax.Array,
    plain: jax.Array,
    *,
    padding: str,
    align_corners: bool,
    dtype,
    probes: int = PROBES,
) -> jax.Array:
    """Antialiased linear sampling of ``image`` (*spatial, C) at ``grid`` (*out, n) in ``dtype``.

    ``plain`` is the plain sampler's output at ``grid``, returned where the grid does not shrink.
    The levels are read by ``reference.linear`` (one trilinear read per probe: position and
    level) on every platform: the CPU kernels' windows do not suit reads that jump between
    levels (measured slower under ``vmap``).
    """
    sizes = image.shape[:-1][::-1]
    coords, finite = reference.pixel_coordinates(grid, sizes, padding=None, align_corners=align_corners)
    coords = jnp.stack(coords, axis=-1)
    columns = footprint(coords, finite)
    lengths = [_lengths(columns[..., k, :]) for k in range(columns.shape[-2])]
    # The longest column and the longest of the others, by selects (no gather under vmap).
    rho_major, direction, rho_other = lengths[0], columns[..., 0, :], jnp.zeros_like(lengths[0])
    for k in range(1, len(lengths)):
        longer = lengths[k] > rho_major
        rho_other = jnp.where(longer, rho_major, jnp.maximum(rho_other, lengths[k]))
        direction = jnp.where(longer[..., None], columns[..., k, :], direction)
        rho_major = jnp.where(longer, lengths[k], rho_major)
    width = jnp.maximum(jnp.maximum(rho_other, rho_major / probes), 1)

    stack = levels(image.astype(dtype), padding=padding, align_corners=align_corners)
    level = jnp.clip(jnp.log2(width), 0, stack.shape[0] - 1)
    spread = jnp.maximum(1 - width / rho_major, 0)  # of the major column left to the probes
    reads = []
    for k in range(probes):
        # Probes of width `width` spaced evenly so that together they span the major column.
        at = coords + direction * (spread * (k / max(probes - 1, 1) - 0.5 * (probes > 1)))[..., None]
        at = [at[..., d] for d in range(len(sizes))]
        at = [reference.pad_coordinate(c, size, padding, align_corners) for c, size in zip(at, sizes)]
        reads.append(reference.linear(stack, [*at, level], finite, dtype))
    while len(reads) > 1:  # pairwise, so equal reads average exactly
        reads = [reads[i] + reads[i + 1] if i + 1 < len(reads) else reads[i] for i in range(0, len(reads), 2)]
    out = reads[0] / probes
    shrinks = rho_major > ONE_PIXEL
    return jnp.where(shrinks[..., None], out, plain.astype(dtype))
