"""The CPU kernels' window read / scatter-add pairs behind linear sampling, against NumPy loops."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from stn_jax import _sampling_cpu as kernels

SHAPES = [(7, 3), (6, 5, 2), (4, 5, 3, 2)]  # 1-D, 2-D and 3-D padded arrays, channels last


def _case(rng, shape, points=9):
    n = len(shape) - 1
    padded = rng.normal(size=shape).astype(np.float32)
    # Starts anywhere a whole window fits, with repeats so that the scatter must add.
    starts = np.stack([rng.integers(0, s - 1, size=points) for s in shape[:n]], axis=-1).astype(np.int32)
    starts[-1] = starts[0]
    windows = rng.normal(size=(points, *(2,) * n, shape[-1])).astype(np.float32)
    return padded, starts, windows


def _first(starts, shape):
    """Flat (pixel) index of each start in an array of ``shape`` (channels last)."""
    strides = np.cumprod((1, *shape[-2:0:-1]))[::-1]  # row-major strides of the spatial axes
    return sum(starts[..., d] * int(stride) for d, stride in enumerate(strides))


def _read(x, starts, taps=False, merged=False):
    """``read`` or ``read_taps`` of ``x``, as (N, 2, ..., 2, C) windows either way."""
    if not taps:
        return kernels.read_windows(x, starts, merged=merged)
    n = starts.shape[-1]
    stacked = jnp.stack(kernels.read_taps(x, _first(starts, x.shape)), axis=-2)  # (N, 2**n, C)
    return stacked.reshape(*stacked.shape[:-2], *(2,) * n, stacked.shape[-1])


def _add(windows, starts, shape, taps=False):
    """``add`` or ``add_taps`` of (N, 2, ..., 2, C) windows."""
    if not taps:
        return kernels.add_windows(windows, starts, shape)
    n = starts.shape[-1]
    flat = windows.reshape(*windows.shape[: -n - 1], 2**n, windows.shape[-1])
    return kernels.add_taps([flat[..., k, :] for k in range(2**n)], _first(starts, shape), shape)


def _read_loop(padded, starts):
    n = starts.shape[-1]
    windows = np.stack([padded[tuple(slice(i, i + 2) for i in start)] for start in starts])
    return windows.reshape(len(starts), *(2,) * n, padded.shape[-1])


def _add_loop(windows, starts, shape):
    out = np.zeros(shape, windows.dtype)
    for window, start in zip(windows, starts):
        out[tuple(slice(i, i + 2) for i in start)] += window
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("taps", [False, True])
def test_read_and_add_equal_numpy_loops(shape, taps):
    padded, starts, windows = _case(np.random.default_rng(0), shape)
    expected = _read_loop(padded, starts)
    np.testing.assert_array_equal(_read(padded, starts, taps), expected)
    if not taps:
        np.testing.assert_array_equal(_read(padded, starts, merged=True), expected)
    added = _add(windows, starts, shape, taps)
    np.testing.assert_allclose(added, _add_loop(windows, starts, shape), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("taps", [False, True])
def test_add_is_the_transpose_of_read(shape, taps):
    padded, starts, windows = _case(np.random.default_rng(1), shape)
    transpose = jax.linear_transpose(lambda x: _read(x, starts, taps), jnp.zeros(shape))
    (by_transpose,) = transpose(jnp.asarray(windows))
    np.testing.assert_allclose(by_transpose, _add_loop(windows, starts, shape), rtol=1e-6, atol=1e-6)
    # <read(x), w> == <x, add(w)>
    lhs = np.sum(_read_loop(padded, starts).astype(np.float64) * windows)
    rhs = np.sum(padded.astype(np.float64) * np.asarray(_add(windows, starts, shape, taps)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("taps", [False, True])
def test_gradients_numerically(shape, taps):
    padded, starts, windows = _case(np.random.default_rng(2), shape)
    for merged in (False, True) if not taps else (False,):
        read = functools.partial(_read, starts=starts, taps=taps, merged=merged)
        check_grads(read, (padded,), order=2, modes=("fwd", "rev"), eps=1e-2)
    add = functools.partial(_add, starts=starts, shape=shape, taps=taps)
    check_grads(add, (windows,), order=2, modes=("fwd", "rev"), eps=1e-2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch_array, batch_starts", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("taps", [False, True])
def test_vmap_equals_a_loop(shape, batch_array, batch_starts, taps):
    rng = np.random.default_rng(3)
    cases = [_case(rng, shape) for _ in range(3)]
    padded = np.stack([c[0] for c in cases]) if batch_array else cases[0][0]
    windows = np.stack([c[2] for c in cases]) if batch_array else cases[0][2]
    starts = np.stack([c[1] for c in cases]) if batch_starts else cases[0][1]
    axes = (0 if batch_array else None, 0 if batch_starts else None)

    def pick(x, batched, b):
        return x[b] if batched else x

    read = jax.jit(jax.vmap(lambda x, s: _read(x, s, taps), in_axes=axes))(padded, starts)
    if not taps:
        read_merged = jax.jit(jax.vmap(lambda x, s: _read(x, s, merged=True), in_axes=axes))(padded, starts)
        np.testing.assert_array_equal(read_merged, read)
    added = jax.jit(jax.vmap(lambda w, s: _add(w, s, shape, taps), in_axes=axes))(windows, starts)
    for b in range(3):
        s = pick(starts, batch_starts, b)
        np.testing.assert_array_equal(read[b], _read_loop(pick(padded, batch_array, b), s))
        expected = _add_loop(pick(windows, batch_array, b), s, shape)
        np.testing.assert_allclose(added[b], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("taps", [False, True])
def test_nested_vmap_and_batch_axis_not_first(taps):
    shape = (6, 5, 2)
    rng = np.random.default_rng(4)
    cases = [[_case(rng, shape) for _ in range(2)] for _ in range(3)]  # (3, 2) examples
    padded = np.stack([np.stack([c[0] for c in row]) for row in cases])
    starts = np.stack([np.stack([c[1] for c in row]) for row in cases])
    windows = np.stack([np.stack([c[2] for c in row]) for row in cases])
    # The outer vmap maps axis 1 of each operand, so the batch axis reaches the rules second.
    read = jax.vmap(jax.vmap(lambda x, s: _read(x, s, taps)), in_axes=1, out_axes=1)(padded, starts)
    add = jax.vmap(jax.vmap(lambda w, s: _add(w, s, shape, taps)), in_axes=1, out_axes=1)
    added = add(windows, starts)
    for i, j in itertools.product(range(3), range(2)):
        np.testing.assert_array_equal(read[i, j], _read_loop(padded[i, j], starts[i, j]))
        expected = _add_loop(windows[i, j], starts[i, j], shape)
        np.testing.assert_allclose(added[i, j], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("taps", [False, True])
def test_gradient_of_a_batched_read_is_a_batched_add(taps):
    shape = (6, 5, 2)
    rng = np.random.default_rng(5)
    cases = [_case(rng, shape) for _ in range(4)]
    padded = np.stack([c[0] for c in cases])
    starts = np.stack([c[1] for c in cases])
    cotangent = np.stack([c[2] for c in cases])
    read = jax.vmap(lambda x, s: _read(x, s, taps))
    grad = jax.grad(lambda x: jnp.sum(read(x, starts) * cotangent))(padded)
    for b in range(4):
        np.testing.assert_allclose(grad[b], _add_loop(cotangent[b], starts[b], shape), rtol=1e-6, atol=1e-6)


# -- rows: the antialiased sampler's taps at unrelated rows -----------------------------------------


def _rows_case(rng, examples=None, rows=11, channels=2, taps=3, points=(4, 3)):
    lead = () if examples is None else (examples,)
    array = rng.normal(size=(*lead, rows, channels)).astype(np.float32)
    index = rng.integers(0, rows, size=(*lead, taps, *points)).astype(np.int32)
    index[..., 0, 0, 0] = index[..., 1, 0, 0]  # repeats within and across taps: the adds must add
    values = rng.normal(size=(*lead, taps, *points, channels)).astype(np.float32)
    return array, index, values


def _rows_add_loop(values, index, rows):
    out = np.zeros((rows, values.shape[-1]), values.dtype)
    for k in range(index.shape[0]):
        for point in np.ndindex(index.shape[1:]):
            out[index[(k, *point)]] += values[(k, *point)]
    return out


def test_rows_read_and_add_equal_numpy_loops_and_are_transposes():
    array, index, values = _rows_case(np.random.default_rng(6))
    taps = list(index)
    read = kernels.read_rows(array, taps)
    for k in range(len(taps)):
        np.testing.assert_array_equal(read[k], array[index[k]])
    added = kernels.add_rows(list(values), taps, array.shape)
    np.testing.assert_allclose(added, _rows_add_loop(values, index, array.shape[0]), rtol=1e-6, atol=1e-6)
    # <read(x), v> = <x, add(v)>, and JAX's transposes of each are the other.
    lhs = sum(jnp.vdot(r, v) for r, v in zip(read, values))
    np.testing.assert_allclose(lhs, jnp.vdot(array, added), rtol=1e-5)
    grad = jax.grad(lambda x: sum(jnp.vdot(r, v) for r, v in zip(kernels.read_rows(x, taps), values)))(array)
    np.testing.assert_allclose(grad, added, rtol=1e-6, atol=1e-6)
    # Forward mode: both are linear, so a tangent goes through as the operation itself.
    _, tangent = jax.jvp(lambda x: kernels.read_rows(x, taps), (array,), (array,))
    np.testing.assert_array_equal(tangent[2], array[index[2]])
    _, tangent = jax.jvp(lambda v: kernels.add_rows(list(v), taps, array.shape), (values,), (2 * values,))
    np.testing.assert_allclose(tangent, 2 * added, rtol=1e-6, atol=1e-6)
    (back,) = jax.linear_transpose(lambda v: kernels.add_rows(list(v), taps, array.shape), values)(array)
    np.testing.assert_array_equal(back, np.stack([array[index[k]] for k in range(len(taps))]))


@pytest.mark.parametrize("batch_array, batch_index", [(True, True), (True, False), (False, True)])
def test_rows_under_vmap_and_their_gradient_equal_a_loop(batch_array, batch_index):
    array, index, values = _rows_case(np.random.default_rng(7), examples=3)
    array_axis, index_axis = (0 if batch_array else None), (0 if batch_index else None)
    pick_array = (lambda b: array[b]) if batch_array else (lambda b: array[0])
    pick_index = (lambda b: index[b]) if batch_index else (lambda b: index[0])
    read = jax.jit(jax.vmap(lambda x, i: kernels.read_rows(x, list(i)), in_axes=(array_axis, index_axis)))
    batched_index = index if batch_index else index[0]
    reads = read(array if batch_array else array[0], batched_index)
    added = jax.jit(
        jax.vmap(lambda v, i: kernels.add_rows(list(v), list(i), array.shape[1:]), in_axes=(0, index_axis))
    )(values, batched_index)
    for b in range(3):
        for k in range(index.shape[1]):
            np.testing.assert_array_equal(reads[k][b], pick_array(b)[pick_index(b)[k]])
        expected = _rows_add_loop(values[b], pick_index(b), array.shape[1])
        np.testing.assert_allclose(added[b], expected, rtol=1e-6, atol=1e-6)
    if batch_array:  # the gradient of a batched read is the batched add of the cotangents
        g = jax.grad(lambda x: sum(jnp.vdot(r, values[:, k]) for k, r in enumerate(read(x, batched_index))))(array)
        for b in range(3):
            np.testing.assert_allclose(g[b], _rows_add_loop(values[b], pick_index(b), array.shape[1]), atol=1e-6)
