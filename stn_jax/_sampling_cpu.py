# Typed loosely on purpose: jax.core, jax.interpreters.ad and jax.extend are JAX internals that its type
# information does not describe (nor keeps stable between releases), and the kernels pass ints and None
# where those internals accept them. pyright checks the rest of stn_jax strictly (basic mode).
# pyright: reportAttributeAccessIssue=false, reportOptionalSubscript=false, reportArgumentType=false
"""The CPU sampler kernels: linear (1-D, bilinear, trilinear) sampling tuned for XLA CPU.

The only module of ``stn_jax`` that uses JAX's internal and extension APIs
(``jax.interpreters``, ``jax.extend``, ``jax.core``): they change between releases, so
``stn_jax.sampling`` imports this module inside a ``try`` and falls back to the reference
sampler (``_sampling_reference``) when it fails. Nearest and bicubic sampling have no
kernel here: they are the reference's.

Every choice below was measured on a 2-core x86 CPU (BENCHMARKS.md, "Sampler: what we
tried"); none of it is known to help on other platforms:

* Each point reads the 2**n window starting at its lower tap clipped into the image
  (``start = clip(x0, 0, size - 2)``); ``offset = x0 - start`` says where its two taps
  fall in the window, so a tap outside the image gets no weight (no padded copy, no masks).
* The window is read tap by tap for a few channels (``read_taps``) and with one window
  gather for many (``read_windows``); both are primitives whose batching rule folds the
  batch into the first spatial axis, because XLA CPU runs scatters with batch dimensions
  2-6× slower than the same scatter without.
* The derivative is written out (``_interp``): the image tangent is one window read (its
  transpose one scatter-add), a zero image tangent costs nothing, and the grid tangent
  goes through ``_spread_p``, whose transpose ``_contract_p`` reduces over channels with
  one variadic reduce (XLA CPU hands a plain channel ``reduce_sum`` to YNNPACK, 3-10×
  slower here), over a zero-padded second channel when there is one channel.
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

from stn_jax import _sampling_reference as reference

# Up to this many channels, linear sampling reads tap by tap (`read_taps`; measured in
# BENCHMARKS.md, attempt 10a), above it one window gather per point.
TAPS_MAX_CHANNELS = 8


def sample(image: jax.Array, grid: jax.Array, *, method: str, padding: str, align_corners: bool, dtype) -> jax.Array:
    """As ``_sampling_reference.sample``; linear sampling through the kernels below."""
    if method != "bilinear":
        return reference.sample(image, grid, method=method, padding=padding, align_corners=align_corners, dtype=dtype)
    sizes = image.shape[: grid.shape[-1]][::-1]
    finite = jnp.all(jnp.isfinite(grid), axis=-1)
    # Non-finite points are given no weight by `_linear_window` itself (a `where` on the
    # interleaved grid before slicing x and y doubled the fused loop here).
    coords = [reference.unnormalize(grid[..., d], size, align_corners) for d, size in enumerate(sizes)]
    coords = [reference.pad_coordinate(c, size, padding, align_corners) for c, size in zip(coords, sizes)]
    return _linear_window(image, coords, sizes, finite, dtype)


# -- linear interpolation over windows ----------------------------------------------------------


def _linear_window(image, coords, sizes, finite, dtype):
    """Linear interpolation of the points ``coords`` (per axis, any shape P): (*P, C).

    Each point reads the 2**n window starting at its lower tap ``x0``, clipped into the
    image (``start = clip(x0, 0, size - 2)``); ``offset = x0 - start`` says where its two
    taps fall in the window, so a tap outside the image simply gets no weight (zero
    padding): no padded copy of the image is made.
    """
    points = finite.shape
    if image.shape[-1] > TAPS_MAX_CHANNELS:
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
    if image.shape[-1] <= TAPS_MAX_CHANNELS:
        first = sum(s * math.prod(image.shape[d + 1 : -1]) for d, s in enumerate(starts))
        return [t.astype(dtype) for t in read_taps(image, first)]
    return read_windows(image, jnp.stack(starts, axis=-1), merged=merged).astype(dtype)


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


# -- window reads and scatter-adds, as transpose pairs ------------------------------------------
#
# ``read_windows(array, starts)`` returns, for each start, the window
# ``array[s0:s0+2, …, sn:sn+2, :]`` as one ``(N, 2, …, 2, C)`` array; ``read_taps`` returns
# the same numbers as 2**n separate ``(N, C)`` taps. ``add_windows`` and ``add_taps`` are
# their transposes: zeros of ``shape`` with every window added at its start.

_PROMISE = jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS

_read_p = jex_core.Primitive("stn_window_read")
_add_p = jex_core.Primitive("stn_window_add")
_read_taps_p = jex_core.Primitive("stn_taps_read")
_read_taps_p.multiple_results = True
_add_taps_p = jex_core.Primitive("stn_taps_add")
_read_rows_p = jex_core.Primitive("stn_rows_read")
_read_rows_p.multiple_results = True
_add_rows_p = jex_core.Primitive("stn_rows_add")


def read_windows(array: jax.Array, starts: jax.Array, *, merged: bool = False) -> jax.Array:
    """(N, 2, …, 2, C): the 2**n neighbours of each start; ``starts`` (N, n) int32, axes in array order.

    ``merged=True`` reads the windows through the ``(…, W·C)`` view: a different gather,
    so that XLA does not merge two reads of one array (see ``_interp_jvp``).
    """
    return _read_p.bind(jnp.asarray(array), jnp.asarray(starts), merged=merged)


def add_windows(windows: jax.Array, starts: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Zeros of ``shape`` with each window of ``windows`` (N, 2, …, 2, C) added at its start."""
    return _add_p.bind(jnp.asarray(windows), jnp.asarray(starts), shape=tuple(shape))


def read_taps(array: jax.Array, first: jax.Array) -> list[jax.Array]:
    """The windows of :func:`read` as 2**n (*P, C) taps, in row-major window order.

    ``first`` (*P) int32 is each window's start as a row of the ``(pixels, C)`` view of
    ``array`` (the flat index of ``starts``), so the taps are rows ``first + corner``.
    Under ``vmap`` the points keep their batch axis (no reshape: XLA CPU pays integer
    divisions per element for reshapes inside a gather fusion).
    """
    return _read_taps_p.bind(jnp.asarray(array), jnp.asarray(first))


def add_taps(taps: list[jax.Array], first: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Zeros of ``shape`` with each point's taps added around ``first`` (the transpose of ``read_taps``)."""
    return _add_taps_p.bind(*map(jnp.asarray, taps), jnp.asarray(first), shape=tuple(shape))


def read_rows(array: jax.Array, rows: list[jax.Array]) -> list[jax.Array]:
    """Rows ``rows[k]`` (*P) int32 of ``array`` (N, C), each (*P, C): gathers at unrelated rows (the
    antialiased sampler's taps into its pyramid), with ``read_taps``' batching (the batch folded into
    the rows) and a transpose that adds every tap into one buffer (:func:`add_rows`)."""
    return _read_rows_p.bind(jnp.asarray(array), *map(jnp.asarray, rows))


def add_rows(values: list[jax.Array], rows: list[jax.Array], shape: tuple[int, ...]) -> jax.Array:
    """Zeros of ``shape`` (N, C) with ``values[k]`` (*P, C) added at rows ``rows[k]`` (the transpose of ``read_rows``)."""
    return _add_rows_p.bind(*map(jnp.asarray, values), *map(jnp.asarray, rows), shape=tuple(shape))


# -- implementations -------------------------------------------------------------------------


def _corners(n):
    """The 2**n corner offsets of a window, in row-major window order."""
    return list(itertools.product((0, 1), repeat=n))


def _tap_rows(first, shape):
    """Per window corner, the (N,) row of each point's tap in the (pixels, C) view of ``shape``."""
    strides = [math.prod(shape[d + 1 : -1]) for d in range(len(shape) - 1)]
    return [first + sum(c * st for c, st in zip(corner, strides)) for corner in _corners(len(strides))]


def _merge(starts, shape):
    """The ``(…, W·C)`` view of ``shape`` and the starts of 2·C-wide runs in it."""
    channels = shape[-1]
    return (*shape[:-2], shape[-2] * channels), starts.at[:, -1].multiply(channels)


def _read_impl(array, starts, *, merged):
    n = starts.shape[-1]
    window = (2,) * n + (array.shape[-1],)
    if merged:
        view, starts = _merge(starts, array.shape)
        array, window = array.reshape(view), (*window[:-2], 2 * window[-1])
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(1, len(window) + 1)), collapsed_slice_dims=(), start_index_map=tuple(range(n))
    )
    out = jax.lax.gather(array, starts, dims, slice_sizes=window, mode=_PROMISE)
    return out.reshape(starts.shape[0], *(2,) * n, -1)


def _add_impl(windows, starts, *, shape):
    # Scatter into the (..., W·C) view: each window row is one contiguous 2·C run.
    n = starts.shape[-1]
    view, starts = _merge(starts, shape)
    rows = windows.reshape(windows.shape[0], *(2,) * (n - 1), -1)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=tuple(range(1, n + 1)), inserted_window_dims=(), scatter_dims_to_operand_dims=tuple(range(n))
    )
    out = jax.lax.scatter_add(jnp.zeros(view, windows.dtype), starts, rows, dims, mode=_PROMISE)
    return out.reshape(shape)


def _read_taps_impl(array, first):
    # lax.gather, not `.at[].get`: no negative-index wrap per tap.
    rows = array.reshape(-1, array.shape[-1])
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(first.ndim,), collapsed_slice_dims=(0,), start_index_map=(0,))
    return [
        jax.lax.gather(rows, index[..., None], dims, slice_sizes=(1, rows.shape[1]), mode=_PROMISE)
        for index in _tap_rows(first, array.shape)
    ]


def _add_taps_impl(*args, shape):
    *taps, first = args
    # One scatter per tap, in place: concatenating the taps into one scatter's updates
    # costs more than the scatter itself.
    rows = jnp.zeros((math.prod(shape[:-1]), shape[-1]), taps[0].dtype)
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(first.ndim,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
    )
    for tap, index in zip(taps, _tap_rows(first, shape)):
        rows = jax.lax.scatter_add(rows, index[..., None], tap, dims, mode=_PROMISE)
    return rows.reshape(shape)


def _row_dims(index_ndim):
    return (
        jax.lax.GatherDimensionNumbers(offset_dims=(index_ndim,), collapsed_slice_dims=(0,), start_index_map=(0,)),
        jax.lax.ScatterDimensionNumbers(
            update_window_dims=(index_ndim,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
        ),
    )


def _read_rows_impl(array, *rows):
    gather_dims, _ = _row_dims(rows[0].ndim)
    slice_sizes = (1, array.shape[1])
    return [jax.lax.gather(array, r[..., None], gather_dims, slice_sizes=slice_sizes, mode=_PROMISE) for r in rows]


def _add_rows_impl(*args, shape):
    # One buffer the taps are added into one after the other: separate scatters summed
    # afterwards are merged by XLA CPU into one over concatenated operands, which costs more.
    values, rows = args[: len(args) // 2], args[len(args) // 2 :]
    _, scatter_dims = _row_dims(rows[0].ndim)
    out = jnp.zeros(shape, values[0].dtype)
    for value, r in zip(values, rows):
        out = jax.lax.scatter_add(out, r[..., None], value, scatter_dims, mode=_PROMISE)
    return out


# -- abstract evaluation, lowering, differentiation --------------------------------------------


def _read_aval(array, starts, *, merged):
    n = starts.shape[-1]
    return jax.core.ShapedArray((starts.shape[0], *(2,) * n, array.shape[-1]), array.dtype)


def _read_taps_aval(array, first):
    tap = jax.core.ShapedArray((*first.shape, array.shape[-1]), array.dtype)
    return [tap] * 2 ** (array.ndim - 1)


_read_p.def_abstract_eval(_read_aval)
_read_taps_p.def_abstract_eval(_read_taps_aval)
_add_p.def_abstract_eval(lambda windows, starts, *, shape: jax.core.ShapedArray(shape, windows.dtype))
_add_taps_p.def_abstract_eval(lambda *args, shape: jax.core.ShapedArray(shape, args[0].dtype))
_read_rows_p.def_abstract_eval(
    lambda array, *rows: [jax.core.ShapedArray((*r.shape, array.shape[-1]), array.dtype) for r in rows]
)
_add_rows_p.def_abstract_eval(lambda *args, shape: jax.core.ShapedArray(shape, args[0].dtype))
for _prim, _impl in (
    (_read_p, _read_impl),
    (_add_p, _add_impl),
    (_read_taps_p, _read_taps_impl),
    (_add_taps_p, _add_taps_impl),
    (_read_rows_p, _read_rows_impl),
    (_add_rows_p, _add_rows_impl),
):
    _prim.def_impl(_impl)
    mlir.register_lowering(_prim, mlir.lower_fun(_impl, multiple_results=_prim.multiple_results))


def _linear_jvp(prim, linear_count=lambda operands: operands - 1):
    """JVP of a primitive linear in its first ``linear_count(operands)`` operands; the rest are integer
    indices (the starts, or the rows)."""

    def jvp(primals, tangents, **params):
        count = linear_count(len(primals))
        indices = primals[count:]
        out = prim.bind(*primals, **params)
        if all(type(t) is ad.Zero for t in tangents[:count]):
            zero = (
                [ad.Zero.from_primal_value(o) for o in out] if prim.multiple_results else ad.Zero.from_primal_value(out)
            )
            return out, zero
        linear_tangents = [ad.instantiate_zeros(t) for t in tangents[:count]]
        return out, prim.bind(*linear_tangents, *indices, **params)

    return jvp


def _read_transpose(ct, array, starts, *, merged):
    if type(ct) is ad.Zero:
        return [ad.Zero(array.aval), None]
    return [add_windows(ct, starts, array.aval.shape), None]


def _add_transpose(ct, windows, starts, *, shape):
    if type(ct) is ad.Zero:
        return [ad.Zero(windows.aval), None]
    return [read_windows(ct, starts, merged=True), None]


def _read_taps_transpose(cts, array, first):
    if all(type(ct) is ad.Zero for ct in cts):
        return [ad.Zero(array.aval), None]
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    return [add_taps(cts, first, array.aval.shape), None]


def _add_taps_transpose(ct, *args, shape):
    *taps, first = args
    if type(ct) is ad.Zero:
        return [ad.Zero(t.aval) for t in taps] + [None]
    return [*read_taps(ct, first), None]


def _read_rows_transpose(cts, array, *rows):
    if all(type(ct) is ad.Zero for ct in cts):
        return [ad.Zero(array.aval)] + [None] * len(rows)
    return [add_rows([ad.instantiate_zeros(ct) for ct in cts], rows, array.aval.shape)] + [None] * len(rows)


def _add_rows_transpose(ct, *args, shape):
    half = len(args) // 2
    if type(ct) is ad.Zero:
        return [ad.Zero(v.aval) for v in args[:half]] + [None] * half
    return [*read_rows(ct, args[half:])] + [None] * half


ad.primitive_jvps[_read_rows_p] = _linear_jvp(_read_rows_p, lambda operands: 1)  # the array, then its rows
ad.primitive_jvps[_add_rows_p] = _linear_jvp(_add_rows_p, lambda operands: operands // 2)  # values, then rows
ad.primitive_transposes[_read_rows_p] = _read_rows_transpose
ad.primitive_transposes[_add_rows_p] = _add_rows_transpose
for _prim in (_read_p, _add_p, _read_taps_p, _add_taps_p):
    ad.primitive_jvps[_prim] = _linear_jvp(_prim)
ad.primitive_transposes[_read_p] = _read_transpose
ad.primitive_transposes[_add_p] = _add_transpose
ad.primitive_transposes[_read_taps_p] = _read_taps_transpose
ad.primitive_transposes[_add_taps_p] = _add_taps_transpose


# -- batching: fold the batch into the first spatial axis ---------------------------------------


def _batch_first(x, dim, size):
    return jnp.broadcast_to(x, (size, *x.shape)) if dim is None else jnp.moveaxis(x, dim, 0)


def _fold(starts, starts_dim, size, first_axis):
    """Window starts (N, n) of every example as one (size·N, n) list into arrays stacked along axis 0."""
    starts = _batch_first(starts, starts_dim, size)
    first = starts[..., 0] + jnp.arange(size, dtype=starts.dtype)[:, None] * first_axis
    return jnp.concatenate([first[..., None], starts[..., 1:]], axis=-1).reshape(-1, starts.shape[-1])


def _fold_first(first, first_dim, size, pixels):
    """Flat starts (size, *P) into arrays stacked along axis 0 (``pixels`` per example)."""
    first = _batch_first(first, first_dim, size)
    return first + (jnp.arange(size, dtype=first.dtype) * pixels).reshape(size, *(1,) * (first.ndim - 1))


def _batched_read(args, dims, *, merged):
    array, starts = args
    array_dim, starts_dim = dims
    if array_dim is None:
        # One array, many start lists: read them all as one list.
        starts = jnp.moveaxis(starts, starts_dim, 0)
        out = read_windows(array, starts.reshape(-1, starts.shape[-1]), merged=merged)
    else:
        array = jnp.moveaxis(array, array_dim, 0)
        size, first_axis = array.shape[:2]
        folded = array.reshape(size * first_axis, *array.shape[2:])
        out = read_windows(folded, _fold(starts, starts_dim, size, first_axis), merged=merged)
    return out.reshape(args[array_dim is None].shape[dims[array_dim is None]], -1, *out.shape[1:]), 0


def _batched_add(args, dims, *, shape):
    windows, starts = args
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    windows = _batch_first(windows, dims[0], size)
    folded = _fold(starts, dims[1], size, shape[0])
    out = add_windows(windows.reshape(-1, *windows.shape[2:]), folded, (size * shape[0], *shape[1:]))
    return out.reshape(size, *shape), 0


def _batched_read_taps(args, dims):
    array, first = args
    array_dim, first_dim = dims
    if array_dim is None:
        out = read_taps(array, jnp.moveaxis(first, first_dim, 0))
    else:
        array = jnp.moveaxis(array, array_dim, 0)
        size = array.shape[0]
        folded = array.reshape(size * array.shape[1], *array.shape[2:])
        out = read_taps(folded, _fold_first(first, first_dim, size, math.prod(array.shape[1:-1])))
    return out, [0] * len(out)


def _batched_add_taps(args, dims, *, shape):
    *taps, first = args
    *tap_dims, first_dim = dims
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    taps = [_batch_first(t, d, size) for t, d in zip(taps, tap_dims)]
    folded = _fold_first(first, first_dim, size, math.prod(shape[:-1]))
    out = add_taps(taps, folded, (size * shape[0], *shape[1:]))
    return out.reshape(size, *shape), 0


def _batched_read_rows(args, dims):
    array, *rows = args
    array_dim, *row_dims = dims
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    if array_dim is None:
        out = read_rows(array, [_batch_first(r, d, size) for r, d in zip(rows, row_dims)])
    else:
        array = jnp.moveaxis(array, array_dim, 0)
        folded = array.reshape(size * array.shape[1], array.shape[2])
        out = read_rows(folded, [_fold_first(r, d, size, array.shape[1]) for r, d in zip(rows, row_dims)])
    return out, [0] * len(out)


def _batched_add_rows(args, dims, *, shape):
    half = len(args) // 2
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    values = [_batch_first(v, d, size) for v, d in zip(args[:half], dims[:half])]
    rows = [_fold_first(r, d, size, shape[0]) for r, d in zip(args[half:], dims[half:])]
    out = add_rows(values, rows, (size * shape[0], shape[1]))
    return out.reshape(size, *shape), 0


batching.primitive_batchers[_read_rows_p] = _batched_read_rows
batching.primitive_batchers[_add_rows_p] = _batched_add_rows
batching.primitive_batchers[_read_p] = _batched_read
batching.primitive_batchers[_add_p] = _batched_add
batching.primitive_batchers[_read_taps_p] = _batched_read_taps
batching.primitive_batchers[_add_taps_p] = _batched_add_taps
