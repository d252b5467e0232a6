"""`stn_jax.sample` against PyTorch's grid_sample, SciPy's map_coordinates, and its own promises.

Every implementation (``stn_jax.sampling.IMPLEMENTATIONS``) runs every test of the options
it supports; ``dense`` supports bilinear only, and ``pallas`` is tested on bilinear only (its
other methods are the reference's).
"""

import collections
import itertools
import re
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.test_util import check_grads

import stn_jax
from stn_jax import _sampling_cpu, sampling

METHODS_2D = ["bilinear", "nearest", "bicubic"]
PADDINGS = ["zeros", "border", "reflection"]
ALIGN = [False, True]
IMPLEMENTATIONS = list(sampling.IMPLEMENTATIONS)


def _supports(implementation, method):
    # pallas runs the reference for nearest and bicubic: tested as "reference" (pallas compiles slowly).
    return implementation not in ("dense", "pallas") or method == "bilinear"


# "pallas" is a custom VJP: reverse mode only, and once (its backward kernels have no derivative).
FORWARD_MODE = [impl for impl in IMPLEMENTATIONS if impl != "pallas"]


def _check_grads_options(implementation, order, modes):
    return dict(order=1, modes=["rev"]) if implementation == "pallas" else dict(order=order, modes=modes)


def _repeats(implementation):
    """Random cases per test: one for pallas, whose interpret-mode kernels take seconds to compile."""
    return 1 if implementation == "pallas" else 2


def _in_both_floats(cases):
    """Each case in float32 and float64, but pallas in float32 only: in interpret mode each case
    compiles for seconds (its float64 numbers are checked in test_sampling_pallas.py)."""
    return [(*c, d) for c in cases for d in (np.float32, np.float64) if d == np.float32 or c[0] != "pallas"]


def _cases(methods, *others):
    """(implementation, method, *other) for every implementation that supports the method."""
    return [
        (impl, method, *rest)
        for impl, method, *rest in itertools.product(IMPLEMENTATIONS, methods, *others)
        if _supports(impl, method)
    ]


def _seed(*parts) -> int:
    """A seed fixed by the test's parameters (``hash()`` of strings changes per process)."""
    return zlib.crc32(repr(parts).encode())


# Largest difference from PyTorch allowed, relative to the magnitude of the compared
# values: float32 kernels that sum in a different order differ by a few ulps; the
# gradient w.r.t. the grid is scaled by size/2, so it is compared relatively too.
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _batched_sample(images, grids, **kw):
    return jax.vmap(lambda u, g: stn_jax.sample(u, g, **kw))(images, grids)


def _torch_sample_and_grads(torch, images, grids, cotangent, **kw):
    """PyTorch's values and gradients for channels-last inputs, returned channels-last."""
    n = grids.shape[-1]
    to_first = (0, n + 1, *range(1, n + 1))
    to_last = (0, *range(2, n + 2), 1)
    image_t = torch.tensor(images).permute(*to_first).requires_grad_()
    grid_t = torch.tensor(grids).requires_grad_()
    out = torch.nn.functional.grid_sample(
        image_t, grid_t, mode=kw["method"], padding_mode=kw["padding"], align_corners=kw["align_corners"]
    )
    (out * torch.tensor(cotangent).permute(*to_first)).sum().backward()
    return (
        out.detach().permute(*to_last).numpy(),
        image_t.grad.permute(*to_last).numpy(),
        grid_t.grad.numpy(),
    )


def _ours_and_grads(images, grids, cotangent, **kw):
    @jax.jit
    def value_and_grads(u, g, ct):
        out, pullback = jax.vjp(lambda u, g: _batched_sample(u, g, **kw), u, g)
        return (out, *pullback(ct))

    return tuple(np.asarray(x) for x in value_and_grads(images, grids, cotangent))


def _assert_close(ours, ref, dtype, what):
    scale = max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL[dtype] * scale, err_msg=what)


def _random_case(rng, ndim, dtype, batch=2):
    in_spatial = tuple(int(s) for s in rng.integers(1, 9, size=ndim))
    out_spatial = tuple(int(s) for s in rng.integers(1, 8, size=ndim))
    channels = int(rng.integers(1, 4))
    images = rng.normal(size=(batch, *in_spatial, channels)).astype(dtype)
    grids = rng.uniform(-1.4, 1.4, size=(batch, *out_spatial, ndim)).astype(dtype)
    # Points exactly on pixel centres and on the image's edges, where kinks and
    # PyTorch's clipping choices live.
    size_x = in_spatial[-1]
    exact = np.array([-1.0, 1.0, 0.0, 2.0 / max(size_x, 1) - 1.0], dtype)
    grids.reshape(-1, ndim)[: exact.size, 0] = exact[: grids.reshape(-1, ndim).shape[0]]
    cotangent = rng.normal(size=(batch, *out_spatial, channels)).astype(dtype)
    return images, grids, cotangent


@pytest.mark.parametrize(
    "implementation,method,padding,align_corners,dtype", _in_both_floats(_cases(METHODS_2D, PADDINGS, ALIGN))
)
def test_2d_matches_torch_values_and_gradients(torch, x64, implementation, method, padding, align_corners, dtype):
    seed = _seed(implementation, method, padding, align_corners, dtype.__name__)
    rng = np.random.default_rng(seed)
    kw = dict(method=method, padding=padding, align_corners=align_corners, implementation=implementation)
    for _ in range(_repeats(implementation)):
        images, grids, cotangent = _random_case(rng, 2, dtype)
        ours = _ours_and_grads(images, grids, cotangent, **kw)
        ref = _torch_sample_and_grads(torch, images, grids, cotangent, **kw)
        for o, r, what in zip(ours, ref, ["value", "grad image", "grad grid"]):
            assert o.dtype == dtype
            _assert_close(o, r, dtype, f"{what} {kw} shapes {images.shape} {grids.shape} seed {seed}")


@pytest.mark.parametrize(
    "implementation,method,padding,align_corners,dtype",
    _in_both_floats(_cases(["bilinear", "nearest"], PADDINGS, ALIGN)),
)
def test_3d_matches_torch_values_and_gradients(torch, x64, implementation, method, padding, align_corners, dtype):
    seed = _seed(implementation, method, padding, align_corners, dtype.__name__, 3)
    rng = np.random.default_rng(seed)
    kw = dict(method=method, padding=padding, align_corners=align_corners, implementation=implementation)
    for _ in range(_repeats(implementation)):
        images, grids, cotangent = _random_case(rng, 3, dtype)
        ours = _ours_and_grads(images, grids, cotangent, **kw)
        ref = _torch_sample_and_grads(torch, images, grids, cotangent, **kw)
        for o, r, what in zip(ours, ref, ["value", "grad image", "grad grid"]):
            _assert_close(o, r, dtype, f"{what} {kw} seed {seed}")


@pytest.mark.parametrize(
    "implementation,ndim,padding,align_corners",
    [
        (impl, ndim, padding, align)
        for impl, ndim, (padding, align) in itertools.product(
            IMPLEMENTATIONS, [2, 3], itertools.product(PADDINGS, ALIGN)
        )
        if impl != "pallas" or (padding, align) == ("zeros", False)  # pallas: 16 channels, compiled slowly
    ],
)
def test_linear_sampling_of_wide_feature_maps_matches_torch(torch, x64, implementation, ndim, padding, align_corners):
    # Above _sampling_cpu.TAPS_MAX_CHANNELS channels, the CPU kernels read whole windows with
    # one gather instead of tap by tap: a second code path, checked here (the cases above have <= 3).
    channels = _sampling_cpu.TAPS_MAX_CHANNELS + 3
    rng = np.random.default_rng(ndim * 10 + len(padding) + align_corners)
    kw = dict(method="bilinear", padding=padding, align_corners=align_corners, implementation=implementation)
    images = rng.normal(size=(2, *(5,) * (ndim - 1), 6, channels))
    grids = rng.uniform(-1.3, 1.3, size=(2, *(4,) * (ndim - 1), 5, ndim))
    cotangent = rng.normal(size=(2, *(4,) * (ndim - 1), 5, channels))
    ours = _ours_and_grads(images, grids, cotangent, **kw)
    ref = _torch_sample_and_grads(torch, images, grids, cotangent, **kw)
    for o, r, what in zip(ours, ref, ["value", "grad image", "grad grid"]):
        _assert_close(o, r, np.float64, f"{what} {kw} C={channels}")
    # Both derivatives of the window path, numerically (grid points away from pixel edges).
    grid = np.round(grids[0] * 4) / 4 + 0.03
    if implementation != "pallas":  # reverse mode only, its gradients compared with torch's above
        check_grads(lambda u, g: stn_jax.sample(u, g, **kw), (images[0], grid), order=2, modes=("fwd", "rev"), eps=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("in_spatial", [(1, 5), (4, 1), (1, 1), (2, 2)])
@pytest.mark.parametrize("padding", PADDINGS)
def test_bilinear_on_images_narrower_than_a_window_matches_torch(torch, implementation, padding, in_spatial):
    # Axes of size 1 cannot hold a 2-tap window: the CPU kernels pad them; every other size reads in place.
    rng = np.random.default_rng(len(in_spatial) + in_spatial[0])
    kw = dict(method="bilinear", padding=padding, align_corners=False, implementation=implementation)
    images = rng.normal(size=(2, *in_spatial, 3)).astype(np.float32)
    grids = rng.uniform(-1.6, 1.6, size=(2, 5, 6, 2)).astype(np.float32)
    cotangent = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    ours = _ours_and_grads(images, grids, cotangent, **kw)
    ref = _torch_sample_and_grads(torch, images, grids, cotangent, **kw)
    for o, r, what in zip(ours, ref, ["value", "grad image", "grad grid"]):
        _assert_close(o, r, np.float32, f"{what} {kw} {in_spatial}")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("padding,align_corners", list(itertools.product(PADDINGS, ALIGN)))
def test_1d_equals_torch_on_a_one_row_image(torch, implementation, padding, align_corners):
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(3, 11, 2)).astype(np.float32)
    grid_1d = rng.uniform(-1.3, 1.3, size=(3, 17, 1)).astype(np.float32)
    cotangent = rng.normal(size=(3, 17, 2)).astype(np.float32)
    kw = dict(method="bilinear", padding=padding, align_corners=align_corners)
    ours = _ours_and_grads(signal, grid_1d, cotangent, implementation=implementation, **kw)
    # With align_corners=False a single row's y = 0 lands exactly on the row centre; with
    # True, y = -1 does. Either way only the x coordinate moves.
    y = np.full_like(grid_1d, -1.0 if align_corners else 0.0)
    grid_2d = np.concatenate([grid_1d, y], axis=-1)[:, None]
    ref = _torch_sample_and_grads(torch, signal[:, None], grid_2d, cotangent[:, None], **kw)
    _assert_close(ours[0], ref[0][:, 0], np.float32, "value")
    _assert_close(ours[1], ref[1][:, 0], np.float32, "grad signal")
    _assert_close(ours[2][..., 0], ref[2][:, 0, :, 0], np.float32, "grad grid")


@pytest.mark.parametrize(
    "padding,scipy_mode,align_corners",
    [
        ("zeros", "grid-constant", False),
        ("zeros", "grid-constant", True),
        ("border", "nearest", False),
        ("border", "nearest", True),
        ("reflection", "reflect", False),
        ("reflection", "mirror", True),
    ],
)
@pytest.mark.parametrize("implementation,method,order", _cases(["nearest", "bilinear"], [None]))
def test_matches_scipy_map_coordinates(padding, scipy_mode, align_corners, implementation, method, order):
    order = {"nearest": 0, "bilinear": 1}[method]
    rng = np.random.default_rng(2)
    image = rng.normal(size=(6, 9, 2))
    grid = rng.uniform(-1.5, 1.5, size=(5, 7, 2)).astype(np.float32)
    # Round-half cases differ between the two libraries' nearest; keep away from them.
    kw = dict(method=method, padding=padding, align_corners=align_corners, implementation=implementation)
    ours = np.asarray(stn_jax.sample(image.astype(np.float32), grid, **kw))
    pixels = np.asarray(stn_jax.normalized_to_pixel(grid, (6, 9), align_corners=align_corners), np.float64)
    for c in range(2):
        ref = scipy.ndimage.map_coordinates(
            image[..., c], [pixels[..., 1], pixels[..., 0]], order=order, mode=scipy_mode
        )
        np.testing.assert_allclose(ours[..., c], ref, atol=1e-5)


@pytest.mark.parametrize("implementation,method,padding", _cases(["bilinear", "bicubic"], PADDINGS))
def test_numerical_gradients(x64, implementation, method, padding):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(5, 6, 2))
    # Keep points away from pixel centres and edges, where the kernels have kinks.
    pixels = rng.integers(-1, 6, size=(4, 3, 2)) + rng.uniform(0.2, 0.8, size=(4, 3, 2))
    grid = stn_jax.pixel_to_normalized(pixels, (5, 6))
    kw = dict(method=method, padding=padding, implementation=implementation)
    options = _check_grads_options(implementation, 1, ["rev", "fwd"])
    check_grads(lambda u, g: stn_jax.sample(u, g, **kw), (image, grid), **options, eps=1e-6)


@pytest.mark.parametrize("implementation,method", _cases(METHODS_2D))
def test_per_example_gradients_equal_a_loop(x64, implementation, method):
    rng = np.random.default_rng(_seed("per-example", implementation, method))
    images = rng.normal(size=(3, 5, 6, 2))
    grids = rng.uniform(-1.2, 1.2, size=(3, 4, 3, 2))
    kw = dict(method=method, padding="border", implementation=implementation)
    loss = lambda u, g: jnp.sum(jnp.sin(stn_jax.sample(u, g, **kw)))
    batched = jax.jit(jax.vmap(jax.grad(loss, (0, 1))))(images, grids)
    for i in range(3):
        single = jax.grad(loss, (0, 1))(images[i], grids[i])
        for b, s in zip(batched, single):
            np.testing.assert_allclose(b[i], s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", FORWARD_MODE)
def test_bilinear_hessian_is_the_cell_cross_term(x64, implementation):
    image = jnp.asarray(np.random.default_rng(4).normal(size=(4, 5, 1)))
    pixel = jnp.array([1.3, 2.6])  # between columns 1, 2 and rows 2, 3

    def value(p):
        grid = stn_jax.pixel_to_normalized(p, (4, 5))[None, None]
        return stn_jax.sample(image, grid, implementation=implementation)[0, 0, 0]

    hessian = jax.hessian(value)(pixel)
    v = image[..., 0]
    cross = v[2, 1] - v[2, 2] - v[3, 1] + v[3, 2]
    # Bilinear is linear along each axis, so only the mixed derivative is non-zero.
    np.testing.assert_allclose(np.diag(hessian), 0, atol=1e-12)
    np.testing.assert_allclose(hessian[0, 1], cross, rtol=1e-12)


@pytest.mark.parametrize("implementation,method", _cases(METHODS_2D))
def test_identity_grid_reproduces_input_exactly(implementation, method):
    image = np.random.default_rng(5).normal(size=(7, 9, 3)).astype(np.float32)
    for align_corners in ALIGN:
        grid = stn_jax.identity_grid((7, 9), align_corners=align_corners)
        out = stn_jax.sample(image, grid, method=method, align_corners=align_corners, implementation=implementation)
        np.testing.assert_allclose(out, image, atol=2e-6, err_msg=f"{method} {align_corners}")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grid_gradient_is_nonzero_at_integer_coordinates(implementation):
    image = jnp.asarray(np.arange(20.0, dtype=np.float32).reshape(4, 5, 1))
    grid = stn_jax.identity_grid((4, 5))
    g = jax.grad(lambda g: jnp.sum(stn_jax.sample(image, g, implementation=implementation)))(grid)
    # The image is a ramp of slope 1 along x and 5 along y (pixels); d/dx_norm = W/2 · 1.
    interior = np.asarray(g[1:-1, 1:-1])
    np.testing.assert_allclose(interior[..., 0], 2.5, rtol=1e-6)
    np.testing.assert_allclose(interior[..., 1], 5 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("implementation,method", _cases(METHODS_2D))
def test_jit_equals_eager_and_vmap_equals_loop(implementation, method):
    rng = np.random.default_rng(6)
    images = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
    grids = rng.uniform(-1.2, 1.2, size=(3, 4, 7, 2)).astype(np.float32)
    kw = dict(method=method, padding="reflection", implementation=implementation)
    loop = np.stack([np.asarray(stn_jax.sample(u, g, **kw)) for u, g in zip(images, grids)])
    batched = jax.jit(lambda u, g: _batched_sample(u, g, **kw))(images, grids)
    # XLA may fuse the 16-tap bicubic sum into multiply-adds under jit: a few ulps.
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-5)


NON_FINITE_CASES = [
    (impl, method, padding, ndim)
    for impl, method, padding in _cases(METHODS_2D, PADDINGS)
    for ndim in (1, 2, 3)
    if method != "bicubic" or ndim == 2
]


@pytest.mark.parametrize("implementation,method,padding,ndim", NON_FINITE_CASES)
def test_non_finite_points_read_zero_with_zero_gradient(implementation, method, padding, ndim):
    image = jnp.ones((4,) * ndim + (2,))
    # Three points with a NaN, +inf or -inf coordinate, three finite ones at the centre.
    bad = jnp.zeros((3, ndim)).at[0, 0].set(jnp.nan).at[1, -1].set(jnp.inf).at[2, 0].set(-jnp.inf)
    grid = jnp.concatenate([bad, jnp.zeros((3, ndim))]).reshape((6,) + (1,) * (ndim - 1) + (ndim,))
    kw = dict(method=method, padding=padding, implementation=implementation)
    out, (g_image, g_grid) = jax.jit(
        lambda u, g: (
            stn_jax.sample(u, g, **kw),
            jax.grad(lambda u, g: jnp.sum(stn_jax.sample(u, g, **kw)), (0, 1))(u, g),
        )
    )(image, grid)
    np.testing.assert_array_equal(out[:3], 0.0)
    np.testing.assert_allclose(out[3:], 1.0, rtol=1e-6)
    assert np.all(np.isfinite(g_image)) and np.all(np.isfinite(g_grid))
    np.testing.assert_array_equal(g_grid[:3], 0.0)


@pytest.mark.parametrize("implementation,method", _cases(METHODS_2D))
def test_bfloat16_is_computed_in_float32(implementation, method):
    rng = np.random.default_rng(7)
    image = jnp.asarray(rng.normal(size=(8, 8, 3)), jnp.bfloat16)
    grid = jnp.asarray(rng.uniform(-1, 1, size=(5, 6, 2)), jnp.bfloat16)
    kw = dict(method=method, implementation=implementation)
    out = stn_jax.sample(image, grid, **kw)
    assert out.dtype == jnp.bfloat16
    ref = stn_jax.sample(image.astype(jnp.float32), grid.astype(jnp.float32), **kw)
    # The only rounding is the final cast to bfloat16 (8 bits of mantissa).
    np.testing.assert_array_equal(out, ref.astype(jnp.bfloat16))
    g = jax.grad(lambda u: jnp.sum(stn_jax.sample(u, grid, **kw).astype(jnp.float32)))(image)
    assert g.dtype == jnp.bfloat16


def test_integer_images_with_nearest():
    rng = np.random.default_rng(8)
    image = rng.integers(0, 255, size=(6, 7, 3)).astype(np.uint8)
    grid = rng.uniform(-1.3, 1.3, size=(4, 5, 2)).astype(np.float32)
    for padding in PADDINGS:
        out = stn_jax.sample(image, grid, method="nearest", padding=padding)
        assert out.dtype == np.uint8
        ref = stn_jax.sample(image.astype(np.float32), grid, method="nearest", padding=padding)
        np.testing.assert_array_equal(out, np.asarray(ref).astype(np.uint8))


def test_down_and_oversampling_shapes():
    image = jnp.ones((60, 60, 1))
    assert stn_jax.sample(image, stn_jax.identity_grid((30, 30))).shape == (30, 30, 1)
    assert stn_jax.sample(image, stn_jax.identity_grid((90, 120))).shape == (90, 120, 1)
    assert stn_jax.sample(jnp.ones((4, 5, 6, 2)), stn_jax.identity_grid((2, 3, 4))).shape == (2, 3, 4, 2)
    assert stn_jax.sample(jnp.ones((10, 2)), stn_jax.identity_grid((25,))).shape == (25, 2)


@pytest.mark.parametrize(
    "image_shape,grid_shape,kw,error,match",
    [
        ((4, 4), (3, 3, 2), {}, ValueError, "image must have rank 3"),
        ((4, 4, 1), (3, 3, 3), {}, ValueError, "grid with 3 coordinates must have 3 spatial axes"),
        ((4, 4, 4, 1), (3, 3, 2), {}, ValueError, "image must have rank 3"),
        ((4, 4, 1), (3, 3, 4), {}, ValueError, "grid must have shape"),
        ((4, 4, 1), (3, 3, 2), {"method": "cubic"}, ValueError, "method must be one of"),
        ((4, 4, 1), (3, 3, 2), {"padding": "wrap"}, ValueError, "padding must be one of"),
        ((4, 4, 1), (3, 3, 2), {"align_corners": 1}, TypeError, "align_corners must be a Python bool"),
        ((4, 4, 4, 1), (3, 3, 3, 3), {"method": "bicubic"}, ValueError, "bicubic"),
        ((4, 4, 1), (3, 3, 2), {"implementation": "gpu"}, ValueError, "implementation must be one of"),
        (
            (4, 4, 1),
            (3, 3, 2),
            {"implementation": "dense", "method": "nearest"},
            ValueError,
            "implementation='dense' supports method='bilinear' only, got method='nearest'",
        ),
    ],
)
def test_bad_input_raises_clear_errors(image_shape, grid_shape, kw, error, match):
    with pytest.raises(error, match=match):
        stn_jax.sample(jnp.ones(image_shape), jnp.zeros(grid_shape), **kw)


def test_non_float_grid_and_integer_bilinear_are_rejected():
    with pytest.raises(TypeError, match="grid must have a floating dtype"):
        stn_jax.sample(jnp.ones((4, 4, 1)), jnp.zeros((3, 3, 2), jnp.int32))
    with pytest.raises(TypeError, match="image must have a floating dtype for method='bilinear'"):
        stn_jax.sample(jnp.ones((4, 4, 1), jnp.int32), jnp.zeros((3, 3, 2)))


def _gradient_of_sample(implementation):
    def loss(image, grid):
        return jnp.sum(jax.vmap(lambda u, g: stn_jax.sample(u, g, implementation=implementation))(image, grid) ** 2)

    return jax.jit(jax.grad(loss, (0, 1)))


def _compute_ops(exported) -> dict[str, int]:
    """How many of each StableHLO op the module holds, leaving out the plumbing that
    ``platform_dependent`` adds (case, return, zero constants for the branch not taken)."""
    ops = re.findall(r"stablehlo\.(\w+)", exported.mlir_module())
    return dict(collections.Counter(op for op in ops if op not in ("case", "return", "constant", "broadcast_in_dim")))


def _compiled_ops(fn, args) -> dict[str, int]:
    """How many of each HLO instruction the program XLA compiles for this machine holds."""
    text = fn.lower(*args).compile().as_text()
    return dict(collections.Counter(re.findall(r"= \w+\[[^\]]*\][^ ]* (\w+)\(", text)))


def test_default_implementation_is_chosen_per_platform_when_lowering():
    from jax import export

    args = (jnp.ones((2, 9, 8, 3)), jnp.zeros((2, 5, 6, 2)))
    ops = {
        (impl, platform): _compute_ops(export.export(_gradient_of_sample(impl), platforms=[platform])(*args))
        for impl in (None, "reference", "cpu")
        for platform in ("cpu", "cuda", "tpu")
    }
    # The two paths differ; None takes the reference's on
    # accelerators and the CPU kernels' on CPU, whatever the platform tracing it.
    assert ops["reference", "cpu"] != ops["cpu", "cpu"]
    for platform in ("cuda", "tpu"):
        assert ops[None, platform] == ops["reference", platform], platform
    # On CPU, the program XLA compiles: the lowered text also holds helpers outlined for the branch not
    # taken (a convert and a select of the reference's), which the compiler drops.
    compiled = {impl: _compiled_ops(_gradient_of_sample(impl), args) for impl in (None, "cpu", "reference")}
    assert compiled[None] == compiled["cpu"] != compiled["reference"]
    assert sampling.default_implementation("cpu") == "cpu"
    assert sampling.default_implementation("cuda") == sampling.default_implementation("tpu") == "reference"
    # One module for several platforms holds both paths and runs the CPU one here.
    both = export.export(_gradient_of_sample(None), platforms=["cuda", "cpu"])(*args)
    rng = np.random.default_rng(9)
    values = (rng.normal(size=(2, 9, 8, 3)).astype(np.float32), rng.uniform(-1, 1, (2, 5, 6, 2)).astype(np.float32))
    for got, want in zip(both.call(*values), _gradient_of_sample("cpu")(*values)):
        np.testing.assert_array_equal(got, want)


def test_cpu_default_is_the_cpu_kernels_bit_for_bit():
    rng = np.random.default_rng(10)
    images = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    grids = rng.uniform(-1.2, 1.2, size=(2, 4, 5, 2)).astype(np.float32)
    for got, want in zip(_gradient_of_sample(None)(images, grids), _gradient_of_sample("cpu")(images, grids)):
        np.testing.assert_array_equal(got, want)


def test_without_jax_internals_the_package_imports_and_cpu_uses_the_reference():
    # A JAX whose internal APIs moved: hide one of the modules the CPU kernels import (JAX
    # itself imports it first, so it is removed from the package and blocked for later imports).
    script = """
import sys, warnings
import jax.interpreters
del jax.interpreters.batching
sys.modules["jax.interpreters.batching"] = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import jax, jax.numpy as jnp, numpy as np, stn_jax
    from stn_jax import sampling
assert sampling.cpu_kernels is None
assert [str(w.message) for w in caught if "CPU sampler kernels" in str(w.message)], caught
assert sampling.default_implementation("cpu") == "reference"
image, grid = jnp.arange(12.0).reshape(3, 4, 1), jnp.array([[[0.1, -0.3]]])
np.testing.assert_array_equal(stn_jax.sample(image, grid), stn_jax.sample(image, grid, implementation="reference"))
try:
    stn_jax.sample(image, grid, implementation="cpu")
except ValueError as err:
    assert "implementation='cpu' is unavailable" in str(err), err
else:
    raise AssertionError("implementation='cpu' did not raise")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# -- implementation="deterministic" ---------------------------------------------------------------


def _image_gradient(implementation, method, padding="zeros"):
    def loss(images, grids, cotangent):
        out = _batched_sample(images, grids, method=method, padding=padding, implementation=implementation)
        return jnp.sum(out * cotangent)

    return jax.jit(jax.grad(loss))


@pytest.mark.parametrize("method", METHODS_2D)
def test_deterministic_image_gradient_is_bit_identical_across_runs_and_compiles(method):
    # 2 × 40 × 50 points read a 3×4 image: each pixel is a tap of hundreds of points.
    rng = np.random.default_rng(_seed("deterministic", method))
    images = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
    grids = rng.uniform(-1.2, 1.2, size=(2, 40, 50, 2)).astype(np.float32)
    cotangent = rng.normal(size=(2, 40, 50, 2)).astype(np.float32)
    first = np.asarray(_image_gradient("deterministic", method)(images, grids, cotangent))
    for _ in range(3):  # a new jitted function each time: compiled again, then run
        np.testing.assert_array_equal(_image_gradient("deterministic", method)(images, grids, cotangent), first)
    reference = _image_gradient("reference", method)(images, grids, cotangent)
    np.testing.assert_allclose(first, reference, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(reference))))


@pytest.mark.parametrize("ndim,method", [(1, "bilinear"), (2, "bilinear"), (2, "bicubic"), (3, "nearest")])
def test_deterministic_image_gradient_writes_each_pixel_once(ndim, method):
    # On a GPU a scatter-add whose indices repeat adds with atomics, in no fixed order; one whose
    # indices are unique writes each element once (bit-reproducible whatever the order). The
    # image gradient of "deterministic", as lowered for CUDA, may only hold the latter; the
    # reference's is one scatter-add with repeated indices.
    from jax import export

    images = jnp.ones((2, *(5,) * ndim, 3))
    grids = jnp.zeros((2, *(4,) * ndim, ndim))
    cotangent = jnp.ones((2, *(4,) * ndim, 3))

    def scatters(implementation):
        exported = export.export(_image_gradient(implementation, method), platforms=["cuda"])
        return re.findall(r"stablehlo\.scatter.*", exported(images, grids, cotangent).mlir_module())

    assert scatters("reference") and not any("unique_indices = true" in s for s in scatters("reference"))
    assert scatters("deterministic") and all("unique_indices = true" in s for s in scatters("deterministic"))


def test_deterministic_with_antialias_is_refused():
    with pytest.raises(ValueError, match="implementation='deterministic' cannot be combined with antialias=True"):
        stn_jax.sample(jnp.ones((4, 4, 1)), jnp.zeros((3, 3, 2)), antialias=True, implementation="deterministic")
