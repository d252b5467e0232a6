"""Read and scatter-add the 2×…×2 windows of linear interpolation, as a transpose pair.

``read(array, starts)`` returns, for each start, the window ``array[s0:s0+2, …, sn:sn+2, :]``;
``add(windows, starts, shape)`` is its transpose: zeros of ``shape`` with every window added
at its start. They are primitives, not plain ``lax.gather``/``lax.scatter_add``, for their
batching rule: ``vmap`` of a scatter gives XLA a scatter with batch dimensions, which XLA
CPU runs 2-6× slower than the same scatter with the batch folded into the first spatial
axis (each window stays inside its own example, since a start is at most size - 2). The
scatter also writes each window row as one ``2·C`` run of an ``(…, W·C)`` view.
Measurements: BENCHMARKS.md ("Sampler: what we tried").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

_read_p = jex_core.Primitive("stn_window_read")
_add_p = jex_core.Primitive("stn_window_add")


def read(array: jax.Array, starts: jax.Array, *, merged: bool = False) -> jax.Array:
    """(N, 2, …, 2, C): the 2**n neighbours of each start; ``starts`` (N, n) int32, axes in array order.

    ``merged=True`` reads the same numbers through the ``(…, W·C)`` view: a different gather,
    so that XLA does not merge two reads of one array (see ``sampling._interp_jvp``).
    """
    return _read_p.bind(jnp.asarray(array), jnp.asarray(starts), merged=merged)


def add(windows: jax.Array, starts: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Zeros of ``shape`` with each window of ``windows`` (N, 2, …, 2, C) added at its start."""
    return _add_p.bind(jnp.asarray(windows), jnp.asarray(starts), shape=tuple(shape))


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
    out = jax.lax.gather(
        array,
        starts,
        jax.lax.GatherDimensionNumbers(
            offset_dims=tuple(range(1, len(window) + 1)), collapsed_slice_dims=(), start_index_map=tuple(range(n))
        ),
        slice_sizes=window,
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    return out.reshape(starts.shape[0], *(2,) * n, -1)


def _add_impl(windows, starts, *, shape):
    # Scatter into the (..., W·C) view: each window row is one contiguous 2·C run.
    n = starts.shape[-1]
    view, starts = _merge(starts, shape)
    rows = windows.reshape(windows.shape[0], *(2,) * (n - 1), -1)
    out = jax.lax.scatter_add(
        jnp.zeros(view, windows.dtype),
        starts,
        rows,
        jax.lax.ScatterDimensionNumbers(
            update_window_dims=tuple(range(1, n + 1)), inserted_window_dims=(), scatter_dims_to_operand_dims=tuple(range(n))
        ),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    return out.reshape(shape)


_read_p.def_impl(_read_impl)
_add_p.def_impl(_add_impl)
_read_p.def_abstract_eval(
    lambda array, starts, *, merged: jax.core.ShapedArray(
        (starts.shape[0], *(2,) * starts.shape[-1], array.shape[-1]), array.dtype
    )
)
_add_p.def_abstract_eval(lambda windows, starts, *, shape: jax.core.ShapedArray(shape, windows.dtype))
mlir.register_lowering(_read_p, mlir.lower_fun(_read_impl, multiple_results=False))
mlir.register_lowering(_add_p, mlir.lower_fun(_add_impl, multiple_results=False))


def _read_jvp(primals, tangents, *, merged):
    array, starts = primals
    d_array, _ = tangents
    out = read(array, starts, merged=merged)
    if type(d_array) is ad.Zero:
        return out, ad.Zero.from_primal_value(out)
    return out, read(d_array, starts, merged=merged)


def _add_jvp(primals, tangents, *, shape):
    windows, starts = primals
    d_windows, _ = tangents
    out = add(windows, starts, shape)
    if type(d_windows) is ad.Zero:
        return out, ad.Zero.from_primal_value(out)
    return out, add(d_windows, starts, shape)


def _read_transpose(ct, array, starts, *, merged):
    if type(ct) is ad.Zero:
        return [ad.Zero(array.aval), None]
    return [add(ct, starts, array.aval.shape), None]


def _add_transpose(ct, windows, starts, *, shape):
    if type(ct) is ad.Zero:
        return [ad.Zero(windows.aval), None]
    return [read(ct, starts, merged=True), None]


ad.primitive_jvps[_read_p] = _read_jvp
ad.primitive_jvps[_add_p] = _add_jvp
ad.primitive_transposes[_read_p] = _read_transpose
ad.primitive_transposes[_add_p] = _add_transpose


def _fold(starts, starts_dim, size, first_axis):
    """Starts of every example as one (size·N, n) list into arrays stacked along axis 0."""
    if starts_dim is None:
        starts = jnp.broadcast_to(starts, (size, *starts.shape))
    else:
        starts = jnp.moveaxis(starts, starts_dim, 0)
    offsets = jnp.arange(size, dtype=starts.dtype)[:, None] * first_axis
    starts = starts.at[..., 0].add(offsets)
    return starts.reshape(-1, starts.shape[-1])


def _read_batch(args, dims, *, merged):
    array, starts = args
    array_dim, starts_dim = dims
    if array_dim is None:
        # One image, many start lists: read them all as one list.
        starts = jnp.moveaxis(starts, starts_dim, 0)
        out = read(array, starts.reshape(-1, starts.shape[-1]), merged=merged)
        return out.reshape(*starts.shape[:2], *out.shape[1:]), 0
    array = jnp.moveaxis(array, array_dim, 0)
    size, first = array.shape[:2]
    flat = read(array.reshape(size * first, *array.shape[2:]), _fold(starts, starts_dim, size, first), merged=merged)
    return flat.reshape(size, -1, *flat.shape[1:]), 0


def _add_batch(args, dims, *, shape):
    windows, starts = args
    windows_dim, starts_dim = dims
    size = windows.shape[windows_dim] if windows_dim is not None else starts.shape[starts_dim]
    if windows_dim is None:
        windows = jnp.broadcast_to(windows, (size, *windows.shape))
    else:
        windows = jnp.moveaxis(windows, windows_dim, 0)
    flat = add(
        windows.reshape(-1, *windows.shape[2:]),
        _fold(starts, starts_dim, size, shape[0]),
        (size * shape[0], *shape[1:]),
    )
    return flat.reshape(size, *shape), 0


batching.primitive_batchers[_read_p] = _read_batch
batching.primitive_batchers[_add_p] = _add_batch
