"""The window read / scatter-add pair behind bilinear sampling, against NumPy loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from stn_jax import _windows

SHAPES = [(7, 3), (6, 5, 2), (4, 5, 3, 2)]  # 1-D, 2-D and 3-D padded arrays, channels last


def _case(rng, shape, points=9):
    n = len(shape) - 1
    padded = rng.normal(size=shape).astype(np.float32)
    # Starts anywhere a whole window fits, with repeats so that the scatter must add.
    starts = np.stack([rng.integers(0, s - 1, size=points) for s in shape[:n]], axis=-1).astype(np.int32)
    starts[-1] = starts[0]
    windows = rng.normal(size=(points, *(2,) * n, shape[-1])).astype(np.float32)
    return padded, starts, windows


def _read_loop(padded, starts):
    n = starts.shape[-1]
    return np.stack([padded[tuple(slice(i, i + 2) for i in start)] for start in starts]).reshape(
        len(starts), *(2,) * n, padded.shape[-1]
    )


def _add_loop(windows, starts, shape):
    out = np.zeros(shape, windows.dtype)
    for window, start in zip(windows, starts):
        out[tuple(slice(i, i + 2) for i in start)] += window
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_read_and_add_equal_numpy_loops(shape):
    padded, starts, windows = _case(np.random.default_rng(0), shape)
    np.testing.assert_array_equal(_windows.read(padded, starts), _read_loop(padded, starts))
    np.testing.assert_array_equal(_windows.read(padded, starts, merged=True), _read_loop(padded, starts))
    np.testing.assert_allclose(_windows.add(windows, starts, shape), _add_loop(windows, starts, shape), rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_is_the_transpose_of_read(shape):
    padded, starts, windows = _case(np.random.default_rng(1), shape)
    transpose = jax.linear_transpose(lambda x: _windows.read(x, starts), jnp.zeros(shape))
    (by_transpose,) = transpose(jnp.asarray(windows))
    np.testing.assert_allclose(by_transpose, _add_loop(windows, starts, shape), rtol=1e-6)
    # <read(x), w> == <x, add(w)>
    lhs = np.sum(_read_loop(padded, starts).astype(np.float64) * windows)
    rhs = np.sum(padded.astype(np.float64) * np.asarray(_windows.add(windows, starts, shape)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_numerically(shape):
    padded, starts, windows = _case(np.random.default_rng(2), shape)
    for merged in (False, True):
        check_grads(lambda x: _windows.read(x, starts, merged=merged), (padded,), order=2, modes=("fwd", "rev"), eps=1e-2)
    check_grads(lambda w: _windows.add(w, starts, shape), (windows,), order=2, modes=("fwd", "rev"), eps=1e-2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch_array, batch_starts", [(True, True), (True, False), (False, True)])
def test_vmap_equals_a_loop(shape, batch_array, batch_starts):
    rng = np.random.default_rng(3)
    cases = [_case(rng, shape) for _ in range(3)]
    padded = np.stack([c[0] for c in cases]) if batch_array else cases[0][0]
    windows = np.stack([c[2] for c in cases]) if batch_array else cases[0][2]
    starts = np.stack([c[1] for c in cases]) if batch_starts else cases[0][1]
    axes = (0 if batch_array else None, 0 if batch_starts else None)

    def pick(x, batched, b):
        return x[b] if batched else x

    read = jax.jit(jax.vmap(_windows.read, in_axes=axes))(padded, starts)
    read_merged = jax.jit(jax.vmap(lambda x, s: _windows.read(x, s, merged=True), in_axes=axes))(padded, starts)
    np.testing.assert_array_equal(read_merged, read)
    added = jax.jit(jax.vmap(lambda w, s: _windows.add(w, s, shape), in_axes=axes))(windows, starts)
    for b in range(3):
        s = pick(starts, batch_starts, b)
        np.testing.assert_array_equal(read[b], _read_loop(pick(padded, batch_array, b), s))
        np.testing.assert_allclose(added[b], _add_loop(pick(windows, batch_array, b), s, shape), rtol=1e-6)


def test_nested_vmap_and_batch_axis_not_first():
    shape = (6, 5, 2)
    rng = np.random.default_rng(4)
    cases = [[_case(rng, shape) for _ in range(2)] for _ in range(3)]  # (3, 2) examples
    padded = np.stack([np.stack([c[0] for c in row]) for row in cases])
    starts = np.stack([np.stack([c[1] for c in row]) for row in cases])
    windows = np.stack([np.stack([c[2] for c in row]) for row in cases])
    # The outer vmap maps axis 1 of each operand, so the batch axis reaches the rules second.
    read = jax.vmap(jax.vmap(_windows.read), in_axes=1, out_axes=1)(padded, starts)
    added = jax.vmap(jax.vmap(lambda w, s: _windows.add(w, s, shape)), in_axes=1, out_axes=1)(windows, starts)
    for i, j in itertools.product(range(3), range(2)):
        np.testing.assert_array_equal(read[i, j], _read_loop(padded[i, j], starts[i, j]))
        np.testing.assert_allclose(added[i, j], _add_loop(windows[i, j], starts[i, j], shape), rtol=1e-6)


def test_gradient_of_a_batched_read_is_a_batched_add():
    shape = (6, 5, 2)
    rng = np.random.default_rng(5)
    cases = [_case(rng, shape) for _ in range(4)]
    padded = np.stack([c[0] for c in cases])
    starts = np.stack([c[1] for c in cases])
    cotangent = np.stack([c[2] for c in cases])
    grad = jax.grad(lambda x: jnp.sum(jax.vmap(_windows.read)(x, starts) * cotangent))(padded)
    for b in range(4):
        np.testing.assert_allclose(grad[b], _add_loop(cotangent[b], starts[b], shape), rtol=1e-6)
