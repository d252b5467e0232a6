"""Antialiased linear sampling from a mip pyramid: each output point reads the image averaged
over its footprint.

A plain sampler reads 2**n taps per output point; where the grid shrinks the image (points
more than a pixel apart in the input), everything between the taps is skipped and fine
detail folds into false patterns. Here each point reads a low-passed image instead:

* **Footprint.** How far apart neighbouring grid points land in the input, per output
  axis: the columns ``J_k`` of the grid's Jacobian in pixels, by central differences
  (one-sided at the edges and next to non-finite points; 0 along an axis of one point).
  It comes from the grid alone, so every transform (affine, projective, TPS, any grid) is
  served with no extra argument.
* **Pyramid.** Level 0 is the image; level ``l`` is level ``l - 1`` averaged over 2x2
  (2 in 1-D, 2x2x2 in 3-D) blocks, so each level has half the pixels of the one below per
  axis (``ceil``: an odd side is first padded by one pixel as ``padding`` says: zeros, the
  edge pixel, or its mirror). Levels stop when every side is one pixel (at least two
  levels): ``L = max(2, 1 + ceil(log2(largest side)))``, static, so it jits. Pixel ``i`` of
  level ``l`` covers pixels ``[i 2**l, (i + 1) 2**l)`` of the image, so a point at pixel
  coordinate ``x`` of the image sits at ``(x + 1/2) / 2**l - 1/2`` in level ``l``. All levels
  are packed in one flat ``(N, C)`` array. **Memory**: about 4/3 of the image in 2-D
  (``1 + 1/4 + 1/16 + ...``), 8/7 in 3-D and 2x in 1-D, plus up to one row or plane per
  level for odd sides; it is built in one pass over each level.
* **Probes.** The footprint's longest column ``J_major`` (length ``rho_major``) is covered
  by ``probes`` reads spaced evenly along it so that together they span it, each of width
  ``w = max(1, b rho_other, b rho_major / probes)`` (``rho_other``: the longest of the other
  columns; ``b = 2**LEVEL_BIAS``), at the continuous level ``lambda = log2(w)`` (at most
  ``L - 1``). ``probes=1`` is the isotropic variant (trilinear mipmapping); more probes
  follow an elongated footprint, as anisotropic texture filtering does.
* **Reads.** Each probe is one trilinear read: bilinear (linear, trilinear) in levels
  ``floor(lambda)`` and ``floor(lambda) + 1``, blended by the fractional level: ``2**(n+1)``
  taps into the flat pyramid, gathered one tap at a time for all points and accumulated
  (on XLA CPU the forward pass measured several times faster this way than as one gather
  of all taps and a contraction, whose index array has the taps on a short last axis).
  ``stn_jax.sampling`` passes the CPU kernels' ``read_rows`` where linear sampling runs
  them: under ``vmap`` it folds the batch into the rows, and its gradient adds every tap
  into one buffer (XLA CPU's own batched scatters cost about a third more here).
  Taps outside a level read 0 with ``padding="zeros"``; with ``"border"`` and
  ``"reflection"`` the probe's position is padded first, as the plain sampler pads, and
  the taps of coarser levels are clamped to the level's edge.
* **Level bias.** A bilinear read of a 2x2 box level is a wider filter (box of ``2**l``
  convolved with a tent of ``2**l``) than the average of the bilinear image over ``2**l``
  pixels (box of ``2**l`` with a tent of 1), so levels are read half a level finer
  (``LEVEL_BIAS = -0.5``, i.e. ``b = 1/sqrt(2)``): chosen on the zone plate of
  ``benchmarks/antialias.py`` among biases from -1 to 0 (the sweep is in BENCHMARKS.md).

Points whose biased footprint ``b rho_major`` is at most one pixel (level 0: no
minification) take the plain sampler's value, bit for bit, so identity, upsampling and
slight shrinking grids (up to ``sqrt(2)`` pixels apart) are unchanged.

Gradient: the image gradient is linear as usual (scattered back through the taps of both
levels and through the 2x2 averages). The grid gradient has, besides the usual term
through the point's own position, a term through the footprint: the level blend and the
probe offsets depend on the differences to the neighbouring grid points, so a point's
output also moves when its neighbours move (a grid that zooms out further reads a
blurrier blend), as in nvdiffrast's mip-mapped texture op. ``max`` passes the gradient to
the widest term only; the integer level has none.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from stn_jax import _sampling_reference as reference

PROBES = 2
# log2 of the footprint's scale before choosing the level (see the module's docstring).
LEVEL_BIAS = -0.5
# Biased footprints up to this length count as one pixel: an identity grid's spacing is 1 only
# up to rounding. Up to it the output is the plain sampler's.
ONE_PIXEL = 1 + 2.0**-10
_TINY = 1e-12  # keeps sqrt differentiable at a zero-length footprint


def level_count(sizes) -> int:
    """Number of levels: halve the largest side until it is 1 pixel; at least 2."""
    return max(2, 1 + (max(sizes) - 1).bit_length())


def level_shapes(shape) -> list[tuple[int, ...]]:
    """The spatial shape of every level of an image of spatial ``shape`` (``ceil`` halving)."""
    return [tuple(-(-n // 2**level) for n in shape) for level in range(level_count(shape))]


def _pad_mode(padding: str, align_corners: bool) -> str:
    if padding == "zeros":
        return "constant"
    if padding == "border":
        return "edge"
    # PyTorch's reflection mirrors about the outer pixel edges without align_corners (pixel
    # -1 is pixel 0) and about the outer pixel centres with it (pixel -1 is pixel 1).
    return "reflect" if align_corners else "symmetric"


def _halve(level: jax.Array, shape, mode: str) -> jax.Array:
    """``level`` (*spatial, C) averaged over 2x2 blocks into ``shape``, odd sides padded by one."""
    pad = [(0, 2 * n - m) for n, m in zip(shape, level.shape[:-1])]
    if any(after for _, after in pad):
        # `reflect` needs two pixels to mirror; a single pixel's mirror is itself.
        if mode == "reflect" and min(m for (_, after), m in zip(pad, level.shape[:-1]) if after) < 2:
            mode = "edge"
        level = jnp.pad(level, [*pad, (0, 0)], mode=mode)
    # A sum of the 2**n strided slices, not a mean over reshaped blocks: XLA CPU hands that
    # reduction to a library fusion several times slower than this elementwise sum.
    parts = [level[tuple(slice(c, None, 2) for c in corner)] for corner in itertools.product((0, 1), repeat=len(shape))]
    return sum(parts[1:], parts[0]) * (0.5 ** len(shape))


def pyramid(image: jax.Array, *, padding: str, align_corners: bool) -> jax.Array:
    """Every level of ``image`` (*spatial, C), flattened and packed in one ``(N, C)`` array,
    level 0 first, each level in row-major order (offsets: :func:`level_offsets`)."""
    shapes = level_shapes(image.shape[:-1])
    mode = _pad_mode(padding, align_corners)
    level, flats = image, [image.reshape(-1, image.shape[-1])]
    for shape in shapes[1:]:
        level = _halve(level, shape, mode)
        flats.append(level.reshape(-1, image.shape[-1]))
    return jnp.concatenate(flats)


def level_offsets(shapes) -> list[int]:
    """Where each level starts in :func:`pyramid`'s flat array."""
    sizes = [math.prod(shape) for shape in shapes]
    return [sum(sizes[:level]) for level in range(len(sizes))]


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
    # Written out: XLA CPU hands a reduce over the short last axis to a slower library fusion.
    squares = sum(columns[..., d] * columns[..., d] for d in range(columns.shape[-1]))
    return jnp.sqrt(squares + _TINY)


def _levels_read(level: jax.Array, shapes, dtype):
    """For the two levels a continuous ``level`` (*out,) in ``[0, L - 1]`` blends: each one's
    offset, axis sizes (x, y, z), scale from image pixels to its pixels, and weight."""
    count = len(shapes)
    lower = jnp.clip(jnp.floor(level), 0, count - 2)
    blend = level - lower  # in [0, 1]; reaches 1 only at the top level
    lower = lower.astype(jnp.int32)
    # Per level: offset, then the size of each axis in coordinate order (x, y, z).
    table = jnp.asarray([[offset, *shape[::-1]] for offset, shape in zip(level_offsets(shapes), shapes)], jnp.int32)
    reads = []
    for step in (0, 1):
        number = lower + step
        row = table[number]  # (*out, 1 + n): one small gather per point
        scale = jnp.exp2(-number.astype(dtype))  # exact for whole levels
        sizes = [row[..., 1 + d] for d in range(row.shape[-1] - 1)]
        reads.append((row[..., 0], sizes, scale, blend if step else 1 - blend))
    return reads


def _taps(at, reads, zeros: bool, dtype):
    """Flat indices, weights and in-level masks (lists of ``2**(n+1)`` arrays (*out,)) of a trilinear read
    at pixel coordinates ``at`` (x, y, z) from the two levels of ``reads`` (:func:`_levels_read`). A tap
    outside its level (zero padding) has weight 0 and is masked: its clamped read must not count, even
    where it is not finite (0 × inf is NaN)."""
    indices, weights, inside = [], [], []
    for offset, sizes, scale, level_weight in reads:
        axis_taps = []
        stride = jnp.ones_like(offset)
        for x, size in zip(at, sizes):
            u = (x + 0.5) * scale - 0.5
            low = jnp.floor(u)
            frac = u - low
            low = low.astype(jnp.int32)
            taps = []
            for k in (0, 1):
                index = low + k
                weight = frac if k else 1 - frac
                valid = (index >= 0) & (index < size) if zeros else jnp.ones(index.shape, bool)
                weight = jnp.where(valid, weight, jnp.zeros((), dtype))
                taps.append((jnp.clip(index, 0, size - 1) * stride, weight, valid))
            axis_taps.append(taps)
            stride = stride * size
        for combo in _product(axis_taps):
            index, weight, valid = offset, level_weight, True
            for axis_index, axis_weight, axis_valid in combo:
                index = index + axis_index
                weight = weight * axis_weight
                valid = valid & axis_valid
            indices.append(index)
            weights.append(weight)
            inside.append(valid)
    return indices, weights, inside


def _product(axis_taps):
    combos = [()]
    for taps in axis_taps:
        combos = [(*combo, tap) for combo in combos for tap in taps]
    return combos


def read_rows(flat: jax.Array, indices: list[jax.Array]) -> list[jax.Array]:
    """Rows ``indices[k]`` (*out) of ``flat`` (N, C), one gather per tap: the portable read."""
    return [flat.at[index].get(mode="promise_in_bounds") for index in indices]


def sample(
    image: jax.Array,
    grid: jax.Array,
    plain: jax.Array,
    *,
    padding: str,
    align_corners: bool,
    dtype,
    probes: int = PROBES,
    read=None,
) -> jax.Array:
    """Antialiased linear sampling of ``image`` (*spatial, C) at ``grid`` (*out, n) in ``dtype``.

    ``plain`` is the plain sampler's output at ``grid``, returned where the biased footprint
    is at most one pixel. The pyramid is read by ``probes * 2**(n+1)`` taps per point:
    ``read(flat, indices)`` returns the rows ``indices[k]`` of the flat pyramid, by default
    :func:`read_rows` (plain ``jnp``, differentiated by JAX).
    """
    read = read_rows if read is None else read
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
    bias = 2.0**LEVEL_BIAS
    rho_major, rho_other = bias * rho_major, bias * rho_other
    width = jnp.maximum(jnp.maximum(rho_other, rho_major / probes), 1)

    shapes = level_shapes(image.shape[:-1])
    flat = pyramid(image.astype(dtype), padding=padding, align_corners=align_corners)
    level = jnp.minimum(jnp.log2(width), len(shapes) - 1)
    spread = jnp.maximum(1 - width / rho_major, 0)  # of the major column left to the probes
    reads = _levels_read(level, shapes, dtype)
    indices, weights, inside = [], [], []
    for k in range(probes):
        # Probes of width `width` spaced evenly so that together they span the major column.
        at = coords + direction * (spread * (k / max(probes - 1, 1) - 0.5 * (probes > 1)))[..., None]
        at = [at[..., d] for d in range(len(sizes))]
        if padding != "zeros":
            at = [reference.pad_coordinate(c, size, padding, align_corners) for c, size in zip(at, sizes)]
        probe_indices, probe_weights, probe_inside = _taps(at, reads, padding == "zeros", dtype)
        indices += probe_indices
        weights += probe_weights
        inside += probe_inside
    # One gather per tap, accumulated: on XLA CPU several times faster than one gather of all
    # taps (whose index array has the taps on a short last axis) and a contraction.
    out = jnp.zeros((*grid.shape[:-1], image.shape[-1]), dtype)
    for value, weight, valid in zip(read(flat, indices), weights, inside):
        out = out + (weight / probes)[..., None] * jnp.where((valid & finite)[..., None], value, 0)
    shrinks = rho_major > ONE_PIXEL
    return jnp.where(shrinks[..., None], out, plain.astype(dtype))
