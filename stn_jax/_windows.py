"""Read and scatter-add the 2×…×2 neighbourhoods of linear interpolation, as transpose pairs.

``read(array, starts)`` returns, for each start, the window ``array[s0:s0+2, …, sn:sn+2, :]``
as one ``(N, 2, …, 2, C)`` array; ``read_taps`` returns the same numbers as 2**n separate
``(N, C)`` taps. ``add`` and ``add_taps`` are their transposes: zeros of ``shape`` with every
window added at its start.

They are primitives, not plain ``lax.gather``/``lax.scatter_add``, for their batching rule:
``vmap`` of a scatter gives XLA a scatter with batch dimensions, which XLA CPU runs 2-6×
slower than the same scatter with the batch folded into the first spatial axis (a window
stays inside its own example, since a start is at most size - 2). Which form is faster
depends on C: one window gather for wide feature maps, tap by tap for a few channels
(XLA CPU's window gather is slow per point). Measurements: BENCHMARKS.md ("Sampler: what
we tried").
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

_PROMISE = jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS

_read_p = jex_core.Primitive("stn_window_read")
_add_p = jex_core.Primitive("stn_window_add")
_read_taps_p = jex_core.Primitive("stn_taps_read")
_read_taps_p.multiple_results = True
_add_taps_p = jex_core.Primitive("stn_taps_add")


def read(array: jax.Array, starts: jax.Array, *, merged: bool = False) -> jax.Array:
    """(N, 2, …, 2, C): the 2**n neighbours of each start; ``starts`` (N, n) int32, axes in array order.

    ``merged=True`` reads the windows through the ``(…, W·C)`` view: a different gather,
    so that XLA does not merge two reads of one array (see ``sampling._interp_jvp``).
    """
    return _read_p.bind(jnp.asarray(array), jnp.asarray(starts), merged=merged)


def add(windows: jax.Array, starts: jax.Array, shape: tuple[int, ...]) -> jax.Array:
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
for _prim, _impl in ((_read_p, _read_impl), (_add_p, _add_impl), (_read_taps_p, _read_taps_impl),
                     (_add_taps_p, _add_taps_impl)):  # fmt: skip
    _prim.def_impl(_impl)
    mlir.register_lowering(_prim, mlir.lower_fun(_impl, multiple_results=_prim.multiple_results))


def _linear_jvp(prim):
    """JVP of a primitive linear in every operand but the last (the integer starts)."""

    def jvp(primals, tangents, **params):
        *linear, starts = primals
        out = prim.bind(*linear, starts, **params)
        if all(type(t) is ad.Zero for t in tangents[:-1]):
            zero = [ad.Zero.from_primal_value(o) for o in out] if prim.multiple_results else ad.Zero.from_primal_value(out)
            return out, zero
        linear_tangents = [ad.instantiate_zeros(t) for t in tangents[:-1]]
        return out, prim.bind(*linear_tangents, starts, **params)

    return jvp


def _read_transpose(ct, array, starts, *, merged):
    if type(ct) is ad.Zero:
        return [ad.Zero(array.aval), None]
    return [add(ct, starts, array.aval.shape), None]


def _add_transpose(ct, windows, starts, *, shape):
    if type(ct) is ad.Zero:
        return [ad.Zero(windows.aval), None]
    return [read(ct, starts, merged=True), None]


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
        out = read(array, starts.reshape(-1, starts.shape[-1]), merged=merged)
    else:
        array = jnp.moveaxis(array, array_dim, 0)
        size, first_axis = array.shape[:2]
        folded = array.reshape(size * first_axis, *array.shape[2:])
        out = read(folded, _fold(starts, starts_dim, size, first_axis), merged=merged)
    return out.reshape(args[array_dim is None].shape[dims[array_dim is None]], -1, *out.shape[1:]), 0


def _batched_add(args, dims, *, shape):
    windows, starts = args
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    windows = _batch_first(windows, dims[0], size)
    folded = _fold(starts, dims[1], size, shape[0])
    out = add(windows.reshape(-1, *windows.shape[2:]), folded, (size * shape[0], *shape[1:]))
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


batching.primitive_batchers[_read_p] = _batched_read
batching.primitive_batchers[_add_p] = _batched_add
batching.primitive_batchers[_read_taps_p] = _batched_read_taps
batching.primitive_batchers[_add_taps_p] = _batched_add_taps
