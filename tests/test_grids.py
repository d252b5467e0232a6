"""Grid generators against PyTorch's affine_grid, SciPy's thin-plate spline, and NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.interpolate
from jax.test_util import check_grads

import stn_jax

SHAPES_2D = [(1, 1), (1, 5), (4, 1), (3, 7), (8, 8), (13, 6)]
SHAPES_3D = [(1, 1, 1), (2, 3, 4), (5, 1, 3)]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("out_shape", SHAPES_2D + SHAPES_3D)
def test_affine_grid_matches_torch(torch, align_corners, out_shape):
    n = len(out_shape)
    rng = np.random.default_rng(sum(out_shape))
    thetas = rng.normal(size=(4, n, n + 1)).astype(np.float32)
    ours = jax.vmap(lambda t: stn_jax.affine_grid(t, out_shape, align_corners=align_corners))(thetas)
    ref = torch.nn.functional.affine_grid(torch.tensor(thetas), (4, 1, *out_shape), align_corners=align_corners)
    # Same linspace and same summation order: equal up to the last bit or one rounding of the sum.
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=4e-7 * np.abs(thetas).max() * 3)


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_affine_grid_is_bitwise_torchs(torch, align_corners):
    for shape in SHAPES_2D:
        ours = stn_jax.affine_grid(stn_jax.identity_params("affine"), shape, align_corners=align_corners)
        ref = torch.nn.functional.affine_grid(torch.eye(2, 3)[None], (1, 1, *shape), align_corners=align_corners)
        np.testing.assert_array_equal(ours, ref[0].numpy())


@pytest.mark.parametrize("transform", stn_jax.TRANSFORMS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_give_the_identity_grid_exactly(transform, align_corners):
    theta = stn_jax.identity_params(transform)
    g = stn_jax.grid(theta, (5, 7), transform=transform, align_corners=align_corners)
    np.testing.assert_array_equal(g, stn_jax.identity_grid((5, 7), align_corners=align_corners))


@pytest.mark.parametrize("ndim", [1, 3])
@pytest.mark.parametrize("transform", ["affine", "attention", "translation"])
def test_identity_params_in_1d_and_3d(transform, ndim):
    shape = (9,) if ndim == 1 else (3, 4, 5)
    theta = stn_jax.identity_params(transform, ndim=ndim)
    np.testing.assert_array_equal(stn_jax.grid(theta, shape, transform=transform), stn_jax.identity_grid(shape))


def test_parametric_transforms_equal_their_affine_matrices():
    shape = (6, 9)
    cases = {
        "attention": (jnp.array([0.5, 0.2, -0.1]), [[0.5, 0, 0.2], [0, 0.5, -0.1]]),
        "translation": (jnp.array([0.3, -0.4]), [[1, 0, 0.3], [0, 1, -0.4]]),
        "similarity": (
            jnp.array([2.0, 0.5, 0.1, 0.2]),
            [[2 * np.cos(0.5), -2 * np.sin(0.5), 0.1], [2 * np.sin(0.5), 2 * np.cos(0.5), 0.2]],
        ),
    }
    for transform, (theta, matrix) in cases.items():
        ours = stn_jax.grid(theta, shape, transform=transform)
        ref = stn_jax.affine_grid(jnp.asarray(matrix, jnp.float32), shape)
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=transform)
    flat = stn_jax.grid(jnp.arange(6.0), shape)
    np.testing.assert_array_equal(flat, stn_jax.affine_grid(jnp.arange(6.0).reshape(2, 3), shape))


def test_projective_matches_a_numpy_loop_and_reduces_to_affine():
    rng = np.random.default_rng(0)
    h = np.eye(3) + rng.normal(scale=0.2, size=(3, 3))
    ours = np.asarray(stn_jax.grid(jnp.asarray(h, jnp.float32), (4, 5), transform="projective"))
    base = np.asarray(stn_jax.identity_grid((4, 5)))
    for i in range(4):
        for j in range(5):
            x, y, w = h @ np.array([base[i, j, 0], base[i, j, 1], 1.0])
            np.testing.assert_allclose(ours[i, j], [x / w, y / w], rtol=1e-5, atol=1e-6)
    affine = np.array([[1.1, 0.2, 0.1, -0.3, 0.9, 0.05, 0.0, 0.0]], np.float32)[0]
    np.testing.assert_allclose(
        stn_jax.grid(affine, (4, 5), transform="projective"), stn_jax.grid(affine[:6], (4, 5)), atol=1e-6
    )


def test_projective_horizon_is_finite_and_samples_as_padding():
    # The divisor x vanishes on the middle column of a 5-wide grid, where y + 0.5 does not.
    h = jnp.array([[1.0, 0, 0], [0, 1, 0.5], [1.0, 0, 0]])
    g = jax.jit(lambda t: stn_jax.grid(t, (3, 5), transform="projective"))(h)
    assert np.all(np.isfinite(g))
    out = stn_jax.sample(jnp.ones((3, 5, 1)), g)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    grad = jax.grad(
        lambda t: jnp.sum(stn_jax.sample(jnp.ones((3, 5, 1)), stn_jax.grid(t, (3, 5), transform="projective")))
    )(h)
    assert np.all(np.isfinite(grad))


def test_projective_divisor_is_clamped_to_eps_with_its_sign():
    # w' = 1.5 x + 1 crosses 0 inside the grid; |w'| < eps becomes ±eps with w''s sign (+eps at 0).
    h = np.array([[1.0, 0.1, 0.0], [0.05, 0.9, 0.1], [1.5, 0.0, 1.0]])
    eps = 0.3
    base = np.asarray(stn_jax.identity_grid((4, 9), align_corners=True), np.float64)
    x, y = base[..., 0], base[..., 1]
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    assert np.any((np.abs(den) < eps) & (den < 0)) and np.any((np.abs(den) < eps) & (den > 0))
    safe = np.where(np.abs(den) < eps, np.where(den < 0, -eps, eps), den)
    expected = np.stack([(h[r, 0] * x + h[r, 1] * y + h[r, 2]) / safe for r in (0, 1)], axis=-1)
    theta = jnp.asarray(h, jnp.float32)
    g = stn_jax.grid(theta, (4, 9), transform="projective", align_corners=True, projective_eps=eps)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [4, 9, 16, 25])
def test_tps_matches_scipy_thin_plate_spline(x64, k):
    rng = np.random.default_rng(k)
    offsets = rng.normal(scale=0.1, size=(k, 2))
    ours = np.asarray(stn_jax.grid(jnp.asarray(offsets), (7, 9), transform="tps"))
    side = int(np.sqrt(k))
    axis = np.linspace(-1, 1, side)
    lattice = np.stack(np.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    # SciPy's kernel r² log r differs from r² log r² by a factor 2, which the fit absorbs.
    spline = scipy.interpolate.RBFInterpolator(lattice, lattice + offsets, kernel="thin_plate_spline", degree=1)
    points = np.asarray(stn_jax.identity_grid((7, 9), dtype=jnp.float64)).reshape(-1, 2)
    np.testing.assert_allclose(ours.reshape(-1, 2), spline(points), atol=1e-10)


def test_tps_interpolates_its_control_points():
    offsets = jnp.asarray(np.random.default_rng(1).normal(scale=0.2, size=(16, 2)), jnp.float32)
    # With align_corners=True a 4×4 output grid sits exactly on the 4×4 lattice.
    g = stn_jax.grid(offsets, (4, 4), transform="tps", align_corners=True)
    lattice = stn_jax.identity_grid((4, 4), align_corners=True).reshape(16, 2)
    np.testing.assert_allclose(g.reshape(16, 2), lattice + offsets, atol=1e-5)


@pytest.mark.parametrize(
    "transform,theta,shape",
    [
        ("affine", np.eye(2, 3) + 0.1, (3, 4)),
        ("affine", np.eye(3, 4) + 0.1, (2, 3, 2)),
        ("affine", np.array([[1.2, 0.1]]), (5,)),
        ("attention", np.array([0.7, 0.1, 0.2]), (3, 4)),
        ("similarity", np.array([0.9, 0.3, 0.1, 0.2]), (3, 4)),
        ("projective", np.eye(3) + 0.05, (3, 4)),
        ("tps", np.full((9, 2), 0.05), (3, 4)),
    ],
)
def test_grid_gradients_match_finite_differences(x64, transform, theta, shape):
    check_grads(lambda t: stn_jax.grid(t, shape, transform=transform), (jnp.asarray(theta),), order=1, eps=1e-6)


def test_dtypes():
    theta = stn_jax.identity_params("affine")
    assert stn_jax.grid(theta.astype(jnp.bfloat16), (3, 3)).dtype == jnp.bfloat16
    assert stn_jax.grid(jnp.zeros((16, 2), jnp.bfloat16), (3, 3), transform="tps").dtype == jnp.bfloat16
    # Integer θ promotes to float.
    assert stn_jax.grid(np.array([[1, 0, 0], [0, 1, 0]]), (3, 3)).dtype == jnp.float32


def test_float64_grid(x64):
    g = stn_jax.grid(jnp.eye(2, 3, dtype=jnp.float64), (3, 3))
    assert g.dtype == jnp.float64


def test_tps_system_is_solved_once_per_lattice():
    from stn_jax import _tps as tps

    before = tps.inverse_system.cache_info().misses
    for _ in range(3):
        stn_jax.grid(jnp.zeros((36, 2)), (5, 5), transform="tps")
        stn_jax.grid(jnp.zeros((36, 2)), (6, 6), transform="tps")
    assert tps.inverse_system.cache_info().misses - before <= 1


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: stn_jax.grid(jnp.zeros((2, 3)), (3, 3), transform="shear"), ValueError, "transform must be one of"),
        (
            lambda: stn_jax.grid(jnp.zeros((3, 3)), (3, 3)),
            ValueError,
            r"theta for transform='affine' must have shape \(2, 3\)",
        ),
        (lambda: stn_jax.affine_grid(jnp.zeros((2, 3)), (3, 3, 3)), ValueError, r"must have shape \(3, 4\)"),
        (lambda: stn_jax.grid(jnp.zeros((15, 2)), (3, 3), transform="tps"), ValueError, "perfect square"),
        (lambda: stn_jax.grid(jnp.zeros((16, 3)), (3, 3), transform="tps"), ValueError, r"\(K, 2\)"),
        (lambda: stn_jax.grid(jnp.zeros(8), (3, 3, 3), transform="projective"), ValueError, "2-D out_shape"),
        (lambda: stn_jax.grid(jnp.zeros(4), (3, 3), transform="attention"), ValueError, "attention"),
        (lambda: stn_jax.grid(jnp.eye(2, 3), (3, 3, 3, 3)), ValueError, "out_shape must have length"),
        (lambda: stn_jax.grid(jnp.eye(2, 3), (3, 0)), ValueError, "positive"),
        (lambda: stn_jax.grid(jnp.eye(2, 3), (3.0, 3)), TypeError, "out_shape must contain Python ints"),
        (lambda: stn_jax.grid(jnp.eye(2, 3), (3, 3), align_corners="yes"), TypeError, "align_corners"),
        (
            lambda: stn_jax.grid(jnp.eye(3), (3, 3), transform="projective", projective_eps=float("nan")),
            ValueError,
            "projective_eps must be finite",
        ),
        (lambda: stn_jax.identity_params("tps", num_control_points=10), ValueError, "perfect square"),
        (lambda: stn_jax.identity_params("similarity", ndim=3), ValueError, "2-D only"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_finite_theta_under_jit_does_not_crash():
    theta = jnp.array([[jnp.nan, 0, 0], [0, jnp.inf, 0]])
    f = jax.jit(lambda t: stn_jax.sample(jnp.ones((4, 4, 1)), stn_jax.grid(t, (4, 4))))
    out = f(theta)
    # Every point has a non-finite coordinate, so every point reads 0 (documented in `sample`).
    np.testing.assert_array_equal(out, 0.0)
