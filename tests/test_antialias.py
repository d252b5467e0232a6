"""``sample(..., antialias=True)``: the filter against independent references, the promises
of the docstring (unchanged where the grid does not shrink, every dimension, jit/vmap/grad,
bfloat16, non-finite points), and the modules' option."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import stn_jax
from conftest import enable_x64
from stn_jax import _sampling_antialias as antialias
from stn_jax.linen import SpatialTransformer as LinenST
from stn_jax.nnx import SpatialTransformer as NNXST

# Jitted: one compilation per shape instead of one per operation (most of the time op by op).
sample = jax.jit(stn_jax.sample, static_argnames=("method", "padding", "align_corners", "antialias", "implementation"))


def _rng(*key) -> np.random.Generator:
    seed = zlib.crc32(repr(key).encode())
    print("seed", seed, "for", key)
    return np.random.default_rng(seed)


def _rotation_zoom(scale: float, degrees: float, shift=(0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _zone_plate(n: int) -> np.ndarray:
    """cos(pi k r^2): local frequency 2 k r cycles per pixel, 0.45 at the corners (below Nyquist)."""
    y, x = np.mgrid[0:n, 0:n] - n / 2 + 0.5
    k = 0.45 / (2 * (n / np.sqrt(2)) / 2)
    return np.cos(np.pi * k * (x**2 + y**2))[..., None].astype(np.float32)


def _box_average(image, theta, out_shape, per_pixel: int):
    """The bilinear image averaged over each output pixel's footprint by dense supersampling:
    ``per_pixel``**2 plain samples spread evenly over each output pixel."""
    h, w = out_shape
    fine = sample(image, stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), (h * per_pixel, w * per_pixel)))
    return np.asarray(fine).reshape(h, per_pixel, w, per_pixel, -1).mean(axis=(1, 3))


def _psnr(a, b, peak: float) -> float:
    return float(10 * np.log10(peak**2 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# -- the filter -----------------------------------------------------------------------


def _interpolant_average(row: np.ndarray, width: int, mode: str) -> np.ndarray:
    """Average over [i - width/2, i + width/2] of the piecewise-linear interpolant of the padded
    ``row`` (numpy's pad modes), by the midpoint rule on 64 points per pixel (exact up to the
    rule's error for a piecewise-linear function)."""
    pad = width + 2
    padded = np.pad(row, pad, mode=mode)
    steps = 64 * width
    t = (np.arange(steps) + 0.5) / steps * width - width / 2
    out = []
    for i in range(len(row)):
        out.append(np.interp(i + pad + t, np.arange(len(padded)), padded).mean())
    return np.array(out)


@pytest.mark.parametrize(
    "padding,align_corners,mode",
    [("zeros", False, "constant"), ("border", False, "edge"), ("reflection", False, "symmetric"),
     ("reflection", True, "reflect")],
)  # fmt: skip
def test_levels_average_the_bilinear_image_over_their_width(padding, align_corners, mode):
    rng = _rng("levels", padding, align_corners)
    image = rng.normal(size=(5, 13, 1)).astype(np.float32)
    stack = np.asarray(antialias.levels(jnp.asarray(image), padding=padding, align_corners=align_corners))
    assert stack.shape == (4, 5, 13, 1)  # widths 1, 2, 4, 8 for a largest side of 13
    np.testing.assert_array_equal(stack[0], image)
    for level in range(1, 4):
        width = 2**level
        rows = np.stack([_interpolant_average(r, width, mode) for r in image[..., 0]])
        expected = np.stack([_interpolant_average(c, width, mode) for c in rows.T]).T
        np.testing.assert_allclose(stack[level, ..., 0], expected, atol=2e-5, err_msg=f"level {level}")


def test_footprint_of_an_affine_grid_is_its_matrix_in_pixels():
    theta = np.array([[0.7, -0.4, 0.1], [0.3, 0.5, -0.2]])
    height, width, out = 40, 50, (8, 10)
    grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    coords, finite = antialias.reference.pixel_coordinates(grid, (width, height), padding=None, align_corners=False)
    columns = np.asarray(antialias.footprint(jnp.stack(coords, -1), finite))
    # One output step along x is 2/W_out in normalised units: theta's column times the pixel scale.
    pixels = np.array([width / 2, height / 2])
    np.testing.assert_allclose(
        columns[..., 0, :], np.broadcast_to(theta[:, 0] * 2 / out[1] * pixels, (*out, 2)), rtol=1e-5
    )
    np.testing.assert_allclose(
        columns[..., 1, :], np.broadcast_to(theta[:, 1] * 2 / out[0] * pixels, (*out, 2)), rtol=1e-5
    )


# -- quality ----------------------------------------------------------------------------


@pytest.mark.parametrize("zoom,degrees,gain", [(4, 0, 6), (4, 30, 6), (8, 30, 10)])
def test_zoom_out_of_a_zone_plate_beats_plain_bilinear(zoom, degrees, gain):
    n = 128
    image = _zone_plate(n)
    theta = _rotation_zoom(1.0, degrees)
    out = (n // zoom, n // zoom)
    grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    reference = _box_average(image, theta, out, per_pixel=4 * zoom)
    plain = _psnr(sample(image, grid), reference, 2.0)
    ours = _psnr(sample(image, grid, antialias=True), reference, 2.0)
    assert ours >= plain + gain, (plain, ours)


def test_anisotropic_shrink_beats_plain_bilinear():
    n = 128
    image = _zone_plate(n)
    theta = _rotation_zoom(1.0, 30)
    out = (n, n // 4)  # 4x along x only, rotated
    grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    reference = _box_average(image, theta, out, per_pixel=16)
    plain = _psnr(sample(image, grid), reference, 2.0)
    ours = _psnr(sample(image, grid, antialias=True), reference, 2.0)
    assert ours >= plain + 10, (plain, ours)
    # The probes along the long side are what does it: one isotropic read blurs the short side too.
    isotropic = antialias.sample(image, grid, sample(image, grid), padding="zeros", align_corners=False,
                                 dtype=jnp.float32, probes=1)  # fmt: skip
    assert ours >= _psnr(isotropic, reference, 2.0) + 3, (ours, _psnr(isotropic, reference, 2.0))


# -- unchanged where nothing shrinks ----------------------------------------------------


@pytest.mark.parametrize(
    "padding,implementation", [("zeros", None), ("border", None), ("reflection", None), ("zeros", "reference")]
)
def test_identity_and_upsampling_grids_are_unchanged_bit_for_bit(padding, implementation):
    rng = _rng("unchanged", padding, implementation)
    image = jnp.asarray(rng.normal(size=(12, 15, 3)), jnp.float32)
    for theta, out in [(_rotation_zoom(1.0, 0), (12, 15)), (_rotation_zoom(0.6, 25, (0.1, -0.2)), (20, 24))]:
        grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
        kw = dict(padding=padding, implementation=implementation)
        np.testing.assert_array_equal(sample(image, grid, antialias=True, **kw), sample(image, grid, **kw))


@pytest.mark.parametrize("ndim", [1, 3])
def test_other_dimensions(ndim):
    rng = _rng("dims", ndim)
    size = 32 if ndim == 1 else 12
    image = jnp.asarray(rng.normal(size=(size,) * ndim + (2,)), jnp.float32)
    theta = np.eye(ndim, ndim + 1)
    identity = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), (size,) * ndim)
    np.testing.assert_array_equal(sample(image, identity, antialias=True), sample(image, identity))
    # Shrinking by 4 along every axis: each output reads the 4-pixel average (level 2) at
    # the centre of its 4-pixel cell, i.e. the box average of the bilinear image over the cell.
    out = (size // 4,) * ndim
    shrunk = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    got = np.asarray(sample(image, shrunk, antialias=True, padding="border"))
    stack = np.asarray(antialias.levels(image, padding="border", align_corners=False))
    centres = np.asarray(sample(jnp.asarray(stack[2]), shrunk, padding="border"))
    np.testing.assert_allclose(got, centres, atol=1e-5)
    assert not np.allclose(got, np.asarray(sample(image, shrunk, padding="border")), atol=1e-3)


# -- transformations, dtypes, edge cases -------------------------------------------------


def test_gradients_match_finite_differences():
    rng = _rng("grads")
    with enable_x64():
        image = jnp.asarray(rng.normal(size=(16, 16, 2)))
        theta = jnp.asarray(_rotation_zoom(1.3, 20, (0.05, -0.1)))
        grid = stn_jax.affine_grid(theta, (5, 6)) + jnp.asarray(rng.normal(size=(5, 6, 2)) * 0.02)

        @jax.jit
        def warp(image, grid):
            return sample(image, grid, antialias=True, padding="border")

        check_grads(warp, (image, grid), order=1, modes=("fwd", "rev"), atol=1e-4, rtol=1e-4, eps=1e-6)
        # The footprint term: a neighbour's move changes this point's output.
        g = jax.grad(lambda grid: warp(image, grid)[2, 2].sum())(grid)
        assert np.abs(np.asarray(g[2, 3])).max() > 1e-4


def test_vmap_jit_and_bfloat16():
    rng = _rng("vmap")
    images = jnp.asarray(rng.normal(size=(3, 24, 24, 2)), jnp.float32)
    thetas = jnp.asarray(np.stack([_rotation_zoom(s, d) for s, d in [(1.0, 0), (1.5, 30), (0.8, -10)]]), jnp.float32)
    grids = jax.vmap(lambda t: stn_jax.affine_grid(t, (6, 8)))(thetas)
    batched = jax.jit(jax.vmap(lambda i, g: sample(i, g, antialias=True)))(images, grids)
    for b in range(3):
        np.testing.assert_allclose(batched[b], sample(images[b], grids[b], antialias=True), atol=1e-6)
    half = sample(images[1].astype(jnp.bfloat16), grids[1].astype(jnp.bfloat16), antialias=True)
    assert half.dtype == jnp.bfloat16
    full = sample(images[1], grids[1].astype(jnp.bfloat16).astype(jnp.float32), antialias=True)
    np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=0.05)


def test_non_finite_points_read_zero_and_leave_their_neighbours_finite():
    rng = _rng("nonfinite")
    image = jnp.asarray(rng.normal(size=(32, 32, 1)), jnp.float32)
    grid = stn_jax.affine_grid(jnp.asarray(_rotation_zoom(1.0, 10), jnp.float32), (8, 8))
    bad = grid.at[3, 4].set(jnp.array([jnp.nan, 0.0])).at[6, 1].set(jnp.array([jnp.inf, -jnp.inf]))
    out = sample(image, bad, antialias=True)
    assert float(out[3, 4, 0]) == 0 and float(out[6, 1, 0]) == 0
    assert bool(jnp.all(jnp.isfinite(out)))
    # Everywhere else nothing changes: the bad points' neighbours take their footprint from
    # their other neighbour (one-sided), which on an affine grid is the same. (6, 0) and (7, 1)
    # sit at the edge beside (6, 1): with no usable neighbour along one axis they take no
    # footprint along it (documented), so they are left out.
    clean = np.asarray(sample(image, grid, antialias=True))
    good = np.ones((8, 8), bool)
    good[3, 4] = good[6, 1] = good[6, 0] = good[7, 1] = False
    np.testing.assert_allclose(np.asarray(out)[good], clean[good], atol=1e-5)
    g_image, g_grid = jax.jit(jax.grad(lambda i, g: sample(i, g, antialias=True).sum(), argnums=(0, 1)))(image, bad)
    assert bool(jnp.all(jnp.isfinite(g_image))) and bool(jnp.all(jnp.isfinite(g_grid)))
    assert float(jnp.abs(g_grid[3, 4]).max()) == 0


def test_bad_options_are_refused():
    image, grid = jnp.ones((4, 4, 1)), jnp.zeros((2, 2, 2))
    with pytest.raises(ValueError, match="antialias=True needs method='bilinear'"):
        sample(image, grid, method="nearest", antialias=True)
    with pytest.raises(TypeError, match="antialias must be a Python bool"):
        sample(image, grid, antialias=1)
    with pytest.raises(ValueError, match="antialias=True needs method='bilinear'"):
        NNXST((8, 8, 1), method="bicubic", antialias=True, rngs=nnx.Rngs(0))


# -- the modules ------------------------------------------------------------------------


def test_modules_pass_antialias_to_the_sampler():
    rng = _rng("modules")
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 1)), jnp.float32)
    nnx_st = NNXST(
        (32, 32, 1), out_shape=(8, 8), antialias=True, theta_init="random", return_theta=True, rngs=nnx.Rngs(1)
    )
    out, theta = nnx.jit(lambda m, x: m(x))(nnx_st, images)
    expected = jax.vmap(lambda i, t: sample(i, stn_jax.affine_grid(t, (8, 8)), antialias=True))(images, theta)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    plain = jax.vmap(lambda i, t: sample(i, stn_jax.affine_grid(t, (8, 8))))(images, theta)
    assert not np.allclose(out, plain, atol=1e-3)

    linen_st = LinenST(out_shape=(8, 8), antialias=True, theta_init="random", return_theta=True)
    params = linen_st.init(jax.random.key(0), images)
    out, theta = jax.jit(linen_st.apply)(params, images)
    expected = jax.vmap(lambda i, t: sample(i, stn_jax.affine_grid(t, (8, 8)), antialias=True))(images, theta)
    np.testing.assert_allclose(out, expected, atol=1e-6)
