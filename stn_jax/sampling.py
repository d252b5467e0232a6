"""The differentiable sampler: read an image at the (normalised) points of a grid.

Numbers follow ``torch.nn.functional.grid_sample``: the same unnormalisation, padding
(``zeros``, ``border``, ``reflection``, including where PyTorch clips the gradient) and
interpolation kernels (bilinear with floor and fractional part; nearest with
round-half-to-even; bicubic with A = -0.75, whose taps are padded one by one).

Linear (1-D, bilinear, trilinear) sampling reads the 2**n taps of a point from a window
clipped into the image, giving no weight to taps outside it (no padded copy, no masks):
tap by tap for a few channels, as one window gather for many (``stn_jax._windows``).
Its derivative is written out (``_interp``) so that the image gradient is a scatter-add
of the weighted taps and the grid gradient one fused reduction over channels. Nearest
and bicubic read all taps of a point with one gather of rows. Measurements and what was
tried: BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir
from jax.typing import ArrayLike

from stn_jax import _checks, _windows

METHODS = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")

_CUBIC_A = -0.75
# Up to this many channels, linear sampling reads tap by tap (`_windows.read_taps`; measured
# in BENCHMARKS.md, attempt 10a), above it one window gather per point.
_TAPS_MAX_CHANNELS = 8


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
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
    flips = jnp.floor(coord / span)
    even = jnp.fmod(flips, 2) == 0
    return jnp.where(even, extra + low, span - extra + low)


def _pad_coordinate(coord: jax.Array, size: int, padding: str, align_corners: bool) -> jax.Array:
    if padding == "border":
        return _clip(coord, size)
    if padding == "reflection":
        # PyTorch clips after reflecting in both modes, so the gradient is 0 exactly on the edges.
        if align_corners:
            return _clip(_reflect(coord, 0, 2 * (size - 1)), size)
        return _clip(_reflect(coord, -1, 2 * size - 1), size)
    return coord


def _cubic_weights(t: jax.Array) -> list[jax.Array]:
    a = _CUBIC_A
    # Same float operations as PyTorch's get_cubic_upsample_coefficients.
    x0, x1, x2 = t + 1, t, 1 - t
    x3 = x2 + 1
    return [
        ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a,
        ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1,
        ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,
        ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a,
    ]


def _check_inputs(image, grid, method: str) -> tuple[jax.Array, jax.Array]:
    image = jnp.asarray(image)
    grid = jnp.asarray(grid)
    if grid.ndim < 2 or grid.shape[-1] not in (1, 2, 3):
        raise ValueError(
            f"grid must have shape (*out_spatial, n) with n = 1, 2 or 3 coordinates, got shape {grid.shape}"
        )
    n = grid.shape[-1]
    if grid.ndim != n + 1:
        raise ValueError(
            f"grid with {n} coordinates must have {n} spatial axes plus the coordinate axis, "
            f"i.e. rank {n + 1}, got shape {grid.shape}"
        )
    if image.ndim != n + 1:
        raise ValueError(
            f"image must have rank {n + 1} ({n} spatial axes then channels) to match a grid with {n} "
            f"coordinates, got image shape {image.shape} and grid shape {grid.shape}"
        )
    if any(s == 0 for s in image.shape):
        raise ValueError(f"image must not have empty axes, got shape {image.shape}")
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        raise TypeError(f"grid must have a floating dtype, got {grid.dtype}")
    if not jnp.issubdtype(image.dtype, jnp.floating):
        if method != "nearest" or jnp.issubdtype(image.dtype, jnp.complexfloating):
            raise TypeError(
                f"image must have a floating dtype for method={method!r} (integer images are "
                f"accepted only by method='nearest'), got {image.dtype}"
            )
    if method == "bicubic" and n != 2:
        raise ValueError(f"method='bicubic' needs a 2-D image and grid, got a grid with {n} coordinates")
    return image, grid


def sample(
    image: ArrayLike,
    grid: ArrayLike,
    *,
    method: str = "bilinear",
    padding: str = "zeros",
    align_corners: bool = False,
) -> jax.Array:
    """Samples ``image`` at the normalised points of ``grid`` (one example; vmap for batches).

    ``grid[..., 0]`` is x (the last spatial axis of ``image``), ``grid[..., 1]`` is y and
    ``grid[..., 2]`` is z, each in ``[-1, 1]`` with PyTorch's ``align_corners`` meaning.
    Every channel is warped by the same grid. The output spatial shape is the grid's,
    so the output may be smaller or larger than the input.

    Points with a non-finite coordinate (NaN or ±inf) read 0 whatever the padding, and
    pass a zero gradient back to the grid; this holds under ``jit`` too.

    Args:
      image: ``(W, C)``, ``(H, W, C)`` or ``(D, H, W, C)``. Floating, or any integer
        dtype with ``method="nearest"``.
      grid: ``(Wo, 1)``, ``(Ho, Wo, 2)`` or ``(Do, Ho, Wo, 3)``, floating.
      method: ``"bilinear"`` (linear/trilinear in 1-D/3-D), ``"nearest"`` or
        ``"bicubic"`` (2-D only).
      padding: value read outside the image: ``"zeros"``, ``"border"`` (nearest edge
        pixel) or ``"reflection"`` (mirrored at the edges).
      align_corners: PyTorch's meaning.

    Returns:
      ``(*grid.shape[:-1], C)`` in ``image``'s dtype (half precision accumulates in float32).

    Example:
      >>> import jax.numpy as jnp, stn_jax
      >>> image = jnp.arange(12.0).reshape(3, 4, 1)
      >>> flip = stn_jax.affine_grid(jnp.array([[-1.0, 0, 0], [0, 1, 0]]), (3, 4))
      >>> stn_jax.sample(image, flip)[..., 0]
      Array([[ 3.,  2.,  1.,  0.],
             [ 7.,  6.,  5.,  4.],
             [11., 10.,  9.,  8.]], dtype=float32)
    """
    method = _checks.check_option("method", method, METHODS)
    padding = _checks.check_option("padding", padding, PADDINGS)
    align_corners = _checks.check_bool("align_corners", align_corners)
    image, grid = _check_inputs(image, grid, method)

    n = grid.shape[-1]
    spatial = image.shape[:n]
    channels = image.shape[-1]
    out_spatial = grid.shape[:-1]
    if jnp.issubdtype(image.dtype, jnp.floating):
        dtype = jnp.promote_types(_checks.compute_dtype(image.dtype), _checks.compute_dtype(grid.dtype))
    else:
        dtype = _checks.compute_dtype(grid.dtype)

    grid = grid.astype(dtype)
    finite = jnp.all(jnp.isfinite(grid), axis=-1)
    # Image axes are (z, y, x); grid coordinates are (x, y, z).
    sizes = spatial[::-1]
    if method == "bilinear":
        # Non-finite points are given no weight by `_linear_window` itself.
        coords = [_unnormalize(grid[..., d], sizes[d], align_corners) for d in range(n)]
        coords = [_pad_coordinate(c, s, padding, align_corners) for c, s in zip(coords, sizes)]
        return _linear_window(image, coords, sizes, finite, dtype).astype(image.dtype)
    grid = jnp.where(finite[..., None], grid, 0)
    coords = [_unnormalize(grid[..., d], sizes[d], align_corners) for d in range(n)]
    # Nearest and bicubic work on the flat list of points.
    coords, finite = [c.reshape(-1) for c in coords], finite.reshape(-1)

    if method == "bicubic":
        taps, weights = _bicubic_taps(coords, sizes, padding, align_corners)
    else:
        coords = [_pad_coordinate(c, s, padding, align_corners) for c, s in zip(coords, sizes)]
        if method == "nearest":
            taps, weights = _nearest_taps(coords, sizes)
        else:
            taps, weights = _linear_taps(coords, sizes)

    # One gather for all taps: rows of the (pixels, C) image.
    strides = [1]
    for s in sizes[:-1]:
        strides.append(strides[-1] * s)
    flat_index = []
    for tap in taps:
        index, valid = tap
        flat = sum(i * st for i, st in zip(index, strides))
        flat_index.append((flat, valid))
    indices = jnp.concatenate([f for f, _ in flat_index])
    rows = image.reshape(-1, channels).at[indices].get(mode="promise_in_bounds")
    rows = rows.reshape(len(taps), -1, channels)

    if method == "nearest" and not jnp.issubdtype(image.dtype, jnp.floating):
        valid = flat_index[0][1] & finite
        out = jnp.where(valid[:, None], rows[0], jnp.zeros((), image.dtype))
        return out.reshape(*out_spatial, channels)

    masks = [(valid & finite).astype(dtype) for _, valid in flat_index]
    if method == "bicubic":
        # PyTorch reads out-of-bounds taps as 0 before weighting them.
        rows = rows.astype(dtype) * jnp.stack(masks)[:, :, None]
    else:
        rows = rows.astype(dtype)
        weights = [w * m for w, m in zip(weights, masks)]
    out = _combine(rows, weights, method)
    return out.reshape(*out_spatial, channels).astype(image.dtype)


def _combine(rows: jax.Array, weights: list, method: str) -> jax.Array:
    if method == "bicubic":
        # Interpolate each row in x, then the rows in y, as PyTorch's cubic_interp1d does.
        wx, wy = weights
        out = None
        for r in range(4):
            row = rows[4 * r] * wx[0][:, None]
            for c in range(1, 4):
                row = row + rows[4 * r + c] * wx[c][:, None]
            term = row * wy[r][:, None]
            out = term if out is None else out + term
        return out
    out = rows[0] * weights[0][:, None]
    for k in range(1, len(weights)):
        out = out + rows[k] * weights[k][:, None]
    return out


def _axis_index(coord: jax.Array, size: int):
    """Integer index (clipped into range, for the gather) and its in-bounds mask."""
    valid = (coord >= 0) & (coord <= size - 1)
    return jnp.clip(coord, 0, size - 1).astype(jnp.int32), valid


def _nearest_taps(coords, sizes):
    index, valid = [], True
    for c, s in zip(coords, sizes):
        i, v = _axis_index(jnp.round(c), s)
        index.append(i)
        valid = valid & v
    return [(index, valid)], [jnp.ones_like(coords[0])]


def _linear_taps(coords, sizes):
    per_axis = []
    for c, s in zip(coords, sizes):
        low = jnp.floor(c)
        frac = c - low
        per_axis.append([(*_axis_index(low, s), 1 - frac), (*_axis_index(low + 1, s), frac)])
    return _outer_taps(per_axis)


def _bicubic_taps(coords, sizes, padding, align_corners):
    """16 taps (y outer, x inner), each padded on its own; weights returned per axis."""
    per_axis, axis_weights = [], []
    for c, s in zip(coords, sizes):
        low = jnp.floor(c)
        axis_weights.append(_cubic_weights(c - low))
        low = jax.lax.stop_gradient(low)
        per_axis.append([_axis_index(_pad_coordinate(low + k - 1, s, padding, align_corners), s) for k in range(4)])
    (x_taps, y_taps) = per_axis
    taps = [([ix, iy], vx & vy) for (iy, vy) in y_taps for (ix, vx) in x_taps]
    return taps, axis_weights


def _outer_taps(per_axis):
    """All combinations of per-axis taps, slowest axis (z, then y) first."""
    taps, weights = [], []
    for combo in itertools.product(*per_axis[::-1]):
        combo = combo[::-1]  # back to (x, y, z)
        index = [i for i, _, _ in combo]
        valid = combo[0][1]
        weight = combo[0][2]
        for _, v, w in combo[1:]:
            valid = valid & v
            weight = weight * w
        taps.append((index, valid))
        weights.append(weight)
    return taps, weights


def _linear_window(image, coords, sizes, finite, dtype):
    """Linear interpolation of the points ``coords`` (per axis, any shape P): (*P, C).

    Each point reads the 2**n window starting at its lower tap ``x0``, clipped into the
    image (``start = clip(x0, 0, size - 2)``); ``offset = x0 - start`` says where its two
    taps fall in the window, so a tap outside the image simply gets no weight (zero
    padding): no padded copy of the image is made.
    """
    points = finite.shape
    if image.shape[-1] > _TAPS_MAX_CHANNELS:
        # One window gather per point reads a flat list of points.
        coords, finite = [c.reshape(-1) for c in coords], finite.reshape(-1)
    # An axis shorter than a window is padded with zeros to 2 (the only copy, for tiny axes).
    short = [(0, max(0, 2 - s)) for s in sizes[::-1]]
    if any(after for _, after in short):
        image = jnp.pad(image, short + [(0, 0)])
    starts, offsets, fracs = [], [], []
    for c, s in zip(coords, sizes):
        # Points with no tap in the image (or non-finite) get offset -2 or >= 2: no weight.
        c = jnp.where(finite, jnp.clip(c, -2, s + 1), -2)
        low = jnp.floor(c)
        x0 = low.astype(jnp.int32)
        start = jnp.clip(x0, 0, max(s, 2) - 2)
        starts.append(start)
        offsets.append(x0 - start)
        fracs.append(c - low)
    out = _interp(image, tuple(starts[::-1]), tuple(offsets), tuple(fracs), dtype)
    return out.reshape(*points, image.shape[-1])


def _axis_weights(offset, frac):
    """Weights of window positions 0 and 1 along one axis: tap x0 gets 1 - f, tap x0 + 1 gets f."""
    return [jnp.where(offset == j, 1 - frac, 0) + jnp.where(offset == j - 1, frac, 0) for j in (0, 1)]


def _axis_slopes(offset, frac):
    """d(weights)/df along one axis."""
    one = jnp.ones_like(frac)
    return [jnp.where(offset == j - 1, one, 0) - jnp.where(offset == j, one, 0) for j in (0, 1)]


def _contract(window, pairs):
    """Sums the window against per-axis weight pairs, from x (the last axis) to z: (N, C).

    ``window`` is one (N, 2, ..., 2, C) array, or its 2**n (N, C) taps in row-major order.
    """
    for w0, w1 in pairs:
        if isinstance(window, list):
            w0, w1 = w0[..., None], w1[..., None]
            window = [lo * w0 + hi * w1 for lo, hi in zip(window[0::2], window[1::2])]
        else:
            lo, hi = window[..., 0, :], window[..., 1, :]
            shape = w0.shape + (1,) * (lo.ndim - 1)
            window = lo * w0.reshape(shape) + hi * w1.reshape(shape)
    return window[0] if isinstance(window, list) else window


def _read(image, starts, dtype, *, merged=False):
    """The window at ``starts`` (per-axis (N,) arrays, array order) of each point: tap by tap
    for a few channels, one gather for many."""
    if image.shape[-1] <= _TAPS_MAX_CHANNELS:
        first = sum(s * math.prod(image.shape[d + 1 : -1]) for d, s in enumerate(starts))
        return [t.astype(dtype) for t in _windows.read_taps(image, first)]
    return _windows.read(image, jnp.stack(starts, axis=-1), merged=merged).astype(dtype)


def _tap_weights(pairs):
    """(N, 2, ..., 2) products of the per-axis weights, axes in (z, y, x) order."""
    weights = None
    for w0, w1 in pairs[::-1]:
        w = jnp.stack([w0, w1], axis=-1)
        if weights is None:
            weights = w
        else:
            weights = weights[..., None] * w.reshape(w.shape[:1] + (1,) * (weights.ndim - 1) + (2,))
    return weights


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _interp(image, starts, offsets, fracs, dtype):
    pairs = [_axis_weights(o, f) for o, f in zip(offsets, fracs)]
    return _contract(_read(image, starts, dtype), pairs)


@functools.partial(_interp.defjvp, symbolic_zeros=True)
def _interp_jvp(dtype, primals, tangents):
    # Written out so that the image tangent is one window read (its transpose one
    # scatter-add), a zero image tangent (grid-only gradients) costs nothing, and the
    # grid tangent goes through `_spread_p`, whose transpose is one fused reduction.
    image, starts, offsets, fracs = primals
    d_image, _, _, d_fracs = tangents
    pairs = [_axis_weights(o, f) for o, f in zip(offsets, fracs)]
    window = _read(image, starts, dtype)
    out = _contract(window, pairs)
    tangent = jnp.zeros_like(out)
    if not isinstance(d_image, SymbolicZero):
        d_window = _read(d_image, starts, dtype)
        if isinstance(d_window, list):
            corners = itertools.product(*pairs[::-1])  # row-major: z, y, x
            weights = [functools.reduce(jnp.multiply, ws) for ws in corners]
            tangent = tangent + sum(w[..., None] * t for w, t in zip(weights, d_window))
        else:
            # Weights times taps, then a sum: its transpose builds the scatter's updates in
            # one broadcast product.
            axes = tuple(range(1, len(fracs) + 1))
            tangent = tangent + jnp.sum(_tap_weights(pairs)[..., None] * d_window, axis=axes)
    if not all(isinstance(df, SymbolicZero) for df in d_fracs):
        d = jnp.stack([jnp.zeros_like(f) if isinstance(df, SymbolicZero) else df for f, df in zip(fracs, d_fracs)])
        if not isinstance(window, list):
            # The slopes read the same windows through the (..., W*C) view: a different
            # gather, which XLA cannot merge with the first, so each fuses into its own
            # consumer instead of the whole (N, 2, 2, C) window being written out (2x
            # faster grid gradients on feature maps).
            window = _read(image, starts, dtype, merged=True)
        slopes = []
        for k, (o, f) in enumerate(zip(offsets, fracs)):
            slope_pairs = [_axis_slopes(o, f) if j == k else pair for j, pair in enumerate(pairs)]
            slopes.append(_contract(window, slope_pairs))
        tangent = tangent + _spread_p.bind(jnp.stack(slopes), d)
    return out, tangent


# Two bilinear primitives, transposes of each other, so that reverse mode reduces the
# grid gradient over channels with one variadic reduce (XLA CPU hands a plain channel
# `reduce_sum` to its YNNPACK fusion, which materialises every input of the fusion
# and was 3-10x slower here). slopes: (K, *points, C); d: (K, *points); ct: (*points, C).
_spread_p = jex_core.Primitive("stn_spread")  # sum_k d[k, ..., None] * slopes[k]
_contract_p = jex_core.Primitive("stn_contract")  # sum_c slopes[k, ..., c] * ct[..., c]


def _spread_impl(slopes, d):
    out = d[0][..., None] * slopes[0]
    for k in range(1, slopes.shape[0]):
        out = out + d[k][..., None] * slopes[k]
    return out


def _contract_impl(slopes, ct):
    k = slopes.shape[0]
    terms = tuple(slopes[i] * ct for i in range(k))
    if ct.shape[-1] == 1:
        # XLA folds a reduce over one channel away, and then computes each of the K sums in
        # a separate pass of its consumer; over a zero-padded second channel the K sums stay
        # one multi-output loop (3x faster grid gradients for one-channel images).
        terms = tuple(jnp.pad(t, [(0, 0)] * (t.ndim - 1) + [(0, 1)]) for t in terms)
    zeros = tuple(jnp.zeros((), ct.dtype) for _ in range(k))
    sums = jax.lax.reduce(terms, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), (ct.ndim - 1,))
    return jnp.stack(sums)


_spread_p.def_impl(_spread_impl)
_contract_p.def_impl(_contract_impl)
_spread_p.def_abstract_eval(lambda slopes, d: jax.core.ShapedArray(slopes.shape[1:], slopes.dtype))
_contract_p.def_abstract_eval(lambda slopes, ct: jax.core.ShapedArray(slopes.shape[:-1], slopes.dtype))
mlir.register_lowering(_spread_p, mlir.lower_fun(_spread_impl, multiple_results=False))
mlir.register_lowering(_contract_p, mlir.lower_fun(_contract_impl, multiple_results=False))

ad.defbilinear(
    _spread_p,
    lambda ct, slopes, d: jnp.stack([d[k][..., None] * ct for k in range(jnp.shape(d)[0])]),
    lambda ct, slopes, d: _contract_p.bind(slopes, ct),
)
ad.defbilinear(
    _contract_p,
    lambda ct, slopes, c: jnp.stack([ct[k][..., None] * c for k in range(jnp.shape(ct)[0])]),
    lambda ct, slopes, c: _spread_p.bind(slopes, ct),
)


def _batch_rule(prim, lead):
    """Moves the batch axis behind the K axis (or to the front of a K-less operand)."""

    def rule(args, dims):
        size = next(a.shape[b] for a, b in zip(args, dims) if b is not None)
        moved = []
        for a, b, has_k in zip(args, dims, lead):
            where = 1 if has_k else 0
            if b is None:
                a = jnp.broadcast_to(jnp.expand_dims(a, where), a.shape[:where] + (size,) + a.shape[where:])
            else:
                a = jnp.moveaxis(a, b, where)
            moved.append(a)
        out = prim.bind(*moved)
        return out, (1 if prim is _contract_p else 0)

    return rule


batching.primitive_batchers[_spread_p] = _batch_rule(_spread_p, (True, True))
batching.primitive_batchers[_contract_p] = _batch_rule(_contract_p, (True, False))
