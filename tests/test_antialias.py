"""``sample(..., antialias=True)``: the filter against independent references, the promises
of the docstring (unchanged where the grid does not shrink, every dimension, jit/vmap/grad,
bfloat16, non-finite points), and the modules' option."""

import functools
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
mip_sample = jax.jit(
    functools.partial(antialias.sample, dtype=jnp.float32), static_argnames=("padding", "align_corners", "probes")
)


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


def _block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (*spatial, C) zero-padded at the high end to a multiple of ``factor`` per axis and
    averaged over ``factor``-pixel blocks along every spatial axis (an independent reference for
    the zero-padded pyramid: halving ``l`` times with zero padding is one block of ``2**l``)."""
    spatial = image.ndim - 1
    shape = [-(-n // factor) for n in image.shape[:-1]]
    padded = np.pad(image, [(0, factor * n - m) for n, m in zip(shape, image.shape[:-1])] + [(0, 0)])
    blocks = padded.reshape([d for n in shape for d in (n, factor)] + [image.shape[-1]])
    return blocks.mean(axis=tuple(range(1, 2 * spatial, 2)))


def _numpy_halvings(image: np.ndarray, count: int, mode: str) -> list[np.ndarray]:
    """Levels by repeated 2x2 averages in NumPy, odd sides padded by one with numpy's ``mode``."""
    out = [image]
    for _ in range(count - 1):
        level = out[-1]
        pad = [(0, n % 2) for n in level.shape[:-1]] + [(0, 0)]
        level = np.pad(level, pad, mode=mode if min(level.shape[:-1]) > 1 or mode != "reflect" else "edge")
        out.append(_block_average(level, 2))
    return out


def _unpack(flat: np.ndarray, shape) -> list[np.ndarray]:
    shapes = antialias.level_shapes(shape)
    offsets = antialias.level_offsets(shapes)
    return [flat[o : o + int(np.prod(s))].reshape(*s, -1) for o, s in zip(offsets, shapes)]


def test_pyramid_is_2x2_block_averages_packed_in_4_thirds_of_the_image():
    rng = _rng("pyramid")
    image = rng.normal(size=(5, 13, 2)).astype(np.float32)
    assert antialias.level_shapes((5, 13)) == [(5, 13), (3, 7), (2, 4), (1, 2), (1, 1)]
    flat = np.asarray(antialias.pyramid(jnp.asarray(image), padding="zeros", align_corners=False))
    assert flat.shape == (65 + 21 + 8 + 2 + 1, 2)
    levels = _unpack(flat, (5, 13))
    for level, got in enumerate(levels):
        np.testing.assert_allclose(got, _block_average(image, 2**level), atol=1e-6, err_msg=f"level {level}")
    # Memory: 1 + 1/4 + 1/16 + ... of the image in 2-D, 1 + 1/8 + ... in 3-D, 1 + 1/2 + ... in 1-D
    # (the sum down to the 1-pixel level is that ratio of the image less one pixel).
    for shape, channels, ratio in [((64, 64), 3, 4 / 3), ((16, 16, 16), 1, 8 / 7), ((256,), 2, 2)]:
        size = antialias.pyramid(jnp.zeros((*shape, channels)), padding="zeros", align_corners=False).size
        assert size == sum(int(np.prod(s)) for s in antialias.level_shapes(shape)) * channels
        assert np.prod(shape) * channels * ratio - channels <= size <= np.prod(shape) * channels * ratio


@pytest.mark.parametrize(
    "padding,align_corners,mode",
    [("border", False, "edge"), ("reflection", False, "symmetric"), ("reflection", True, "reflect")],
)
def test_pyramid_pads_odd_sides_as_padding_says(padding, align_corners, mode):
    rng = _rng("pyramid", padding, align_corners)
    image = rng.normal(size=(3, 11, 1)).astype(np.float32)
    flat = np.asarray(antialias.pyramid(jnp.asarray(image), padding=padding, align_corners=align_corners))
    expected = _numpy_halvings(image, antialias.level_count((3, 11)), mode)
    for level, (got, want) in enumerate(zip(_unpack(flat, (3, 11)), expected)):
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"level {level}")


def _numpy_mip_read(levels, x: np.ndarray, y: np.ndarray, level: np.ndarray, padding: str) -> np.ndarray:
    """One trilinear read per point, written out point by point: bilinear in levels floor(level)
    and floor(level) + 1 (floor at most L - 2) at ``(x + 1/2) / 2**l - 1/2``, blended linearly.
    Taps outside a level read 0 (zeros) or the nearest edge pixel (border)."""
    out = []
    for xi, yi, li in zip(x.ravel(), y.ravel(), level.ravel()):
        lower = min(int(np.floor(li)), len(levels) - 2)
        value = np.zeros(levels[0].shape[-1])
        for lv, blend in ((lower, 1 - (li - lower)), (lower + 1, li - lower)):
            data = levels[lv]
            u, v = (xi + 0.5) / 2**lv - 0.5, (yi + 0.5) / 2**lv - 0.5
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            for du, wu in ((0, 1 - (u - u0)), (1, u - u0)):
                for dv, wv in ((0, 1 - (v - v0)), (1, v - v0)):
                    iu, iv = u0 + du, v0 + dv
                    inside = 0 <= iu < data.shape[1] and 0 <= iv < data.shape[0]
                    if padding == "zeros" and not inside:
                        continue
                    iu, iv = min(max(iu, 0), data.shape[1] - 1), min(max(iv, 0), data.shape[0] - 1)
                    value = value + blend * wu * wv * data[iv, iu]
        out.append(value)
    return np.array(out).reshape(*x.shape, -1)


@pytest.mark.parametrize("padding,align_corners", [("zeros", False), ("border", True), ("zeros", True)])
def test_isotropic_read_is_a_trilinear_read_at_the_biased_level(padding, align_corners):
    # A rotated zoom-out by 3 (partly off the image): a similarity, so every point's footprint
    # is about 3 pixels along both output axes and its level log2(3 * 2**LEVEL_BIAS) ~ 1.1, a
    # blend of levels 1 and 2, against a NumPy read written out point by point.
    rng = _rng("trilinear", padding, align_corners)
    image = rng.normal(size=(30, 36, 2)).astype(np.float32)
    out = (12, 10)
    theta = np.array([[np.cos(0.4), -np.sin(0.4), 0.1], [np.sin(0.4), np.cos(0.4), -0.05]])
    theta[:, :2] *= np.array([[3 * out[1] / 36, 3 * out[0] / 30]])
    grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    plain = sample(image, grid, padding=padding, align_corners=align_corners)
    got = mip_sample(jnp.asarray(image), grid, plain, padding=padding, align_corners=align_corners, probes=1)
    # Pixel coordinates and the (exact) footprint of the affine map, in NumPy.
    g = np.asarray(grid, np.float64)
    size = np.array([36, 30])
    pixels = (g + 1) * (size - 1) / 2 if align_corners else (g + 1) * size / 2 - 0.5
    columns = [theta[:, k] * (2 / out[1 - k]) * ((size - 1) / 2 if align_corners else size / 2) for k in (0, 1)]
    rho = max(np.linalg.norm(c) for c in columns)
    assert 2.8 < rho < 3.2
    level = np.full(out, np.log2(rho * 2**antialias.LEVEL_BIAS))
    x, y = pixels[..., 0], pixels[..., 1]
    if padding == "border":
        x, y = np.clip(x, 0, 35), np.clip(y, 0, 29)
    levels = _unpack(np.asarray(antialias.pyramid(jnp.asarray(image), padding=padding, align_corners=False)), (30, 36))
    np.testing.assert_allclose(got, _numpy_mip_read(levels, x, y, level, padding), atol=2e-5)


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
    isotropic = mip_sample(image, grid, sample(image, grid), padding="zeros", align_corners=False, probes=1)
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


def test_level_zero_is_plain_sampling_bit_for_bit():
    # Footprints of 1.3 pixels: above one pixel, but the level bias (2**-0.5) brings them below,
    # so no minification, and every padding returns the plain sampler's value exactly.
    rng = _rng("level zero")
    image = jnp.asarray(rng.normal(size=(26, 26, 2)), jnp.float32)
    grid = stn_jax.affine_grid(jnp.asarray(_rotation_zoom(1.3, 15, (0.05, 0.1)), jnp.float32), (26, 26))
    for padding in ("zeros", "border", "reflection"):
        np.testing.assert_array_equal(
            sample(image, grid, antialias=True, padding=padding), sample(image, grid, padding=padding)
        )
    # Just above the level-0 bound (1.5 pixels: biased 1.06) the filter is on.
    grid = stn_jax.affine_grid(jnp.asarray(_rotation_zoom(1.5, 15), jnp.float32), (26, 26))
    assert np.abs(np.asarray(sample(image, grid, antialias=True) - sample(image, grid))).max() > 1e-3


def test_zoom_out_by_2_is_no_worse_than_plain():
    image = _zone_plate(128)
    for degrees in (0, 30):
        theta = _rotation_zoom(1.0, degrees)
        grid = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), (64, 64))
        reference = _box_average(image, theta, (64, 64), per_pixel=8)
        plain = _psnr(sample(image, grid), reference, 2.0)
        assert _psnr(sample(image, grid, antialias=True), reference, 2.0) >= plain - 1e-6, degrees


def test_footprints_beyond_the_pyramid_read_its_top_level():
    # An 8x8 image onto 2x2 points 32 pixels apart: the level would be log2(32 / sqrt(2)) = 4.5,
    # beyond the top (3, one pixel: the image's mean), which is what every point reads.
    rng = _rng("top")
    image = jnp.asarray(rng.normal(size=(8, 8, 1)), jnp.float32)
    grid = stn_jax.affine_grid(jnp.asarray(_rotation_zoom(8.0, 0), jnp.float32), (2, 2))
    got = np.asarray(sample(image, grid, antialias=True, padding="border"))
    np.testing.assert_allclose(got, np.full((2, 2, 1), float(image.mean())), atol=1e-6)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_axis_aligned_shrink_by_4_is_the_4_pixel_block_average(ndim):
    rng = _rng("dims", ndim)
    size = {1: 32, 2: 16, 3: 12}[ndim]
    image = jnp.asarray(rng.normal(size=(size,) * ndim + (2,)), jnp.float32)
    theta = np.eye(ndim, ndim + 1)
    identity = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), (size,) * ndim)
    np.testing.assert_array_equal(sample(image, identity, antialias=True), sample(image, identity))
    # Shrinking by 4 along every axis: output i sits at pixel 4i + 1.5, i.e. at pixel i + 1/4 of
    # level 2 and on the line between pixels 2i and 2i + 1 of level 1, each the 4-pixel block's
    # average: whatever the blend, the output is the block average (biased level 1.5).
    out = (size // 4,) * ndim
    shrunk = stn_jax.affine_grid(jnp.asarray(theta, jnp.float32), out)
    got = np.asarray(sample(image, shrunk, antialias=True, padding="border"))
    np.testing.assert_allclose(got, _block_average(np.asarray(image), 4), atol=1e-5)
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


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_a_non_finite_pixel_reaches_only_the_points_a_huge_finite_one_reaches(padding):
    """A tap outside its level weighs 0 and must not count even when the pixel it is clamped to is inf
    (0 × inf would be NaN): inf exactly where 1e30 shows, every other value as with 1e30."""
    grid = stn_jax.affine_grid(jnp.array([[4.0, 0.3, 0.1], [-0.2, 4.0, 0.0]]), (8, 8))
    ones = jnp.ones((32, 32, 1))
    inf = np.asarray(stn_jax.sample(ones.at[0, 0, 0].set(jnp.inf), grid, padding=padding, antialias=True))
    big = np.asarray(stn_jax.sample(ones.at[0, 0, 0].set(1e30), grid, padding=padding, antialias=True))
    reached = big > 1e20
    assert reached.any() and not np.isnan(inf).any()
    np.testing.assert_array_equal(np.isinf(inf), reached)
    np.testing.assert_array_equal(inf[~reached], big[~reached])


@pytest.mark.parametrize("padding", ["zeros", "reflection"])
def test_the_cpu_kernels_read_the_pyramid_as_the_portable_gathers_do(padding):
    """On a CPU ``antialias=True`` reads its taps through the CPU kernels (batch folded into the rows under
    ``vmap``, one buffer for the image gradient); values and both gradients equal the portable reads'."""
    rng = _rng("cpu reads", padding)
    images = jnp.asarray(rng.normal(size=(3, 20, 24, 2)), jnp.float32)
    thetas = jnp.asarray(np.stack([_rotation_zoom(s, d) for s, d in [(1.6, 20), (2.5, -35), (3.5, 5)]]), jnp.float32)
    grids = jax.vmap(lambda t: stn_jax.affine_grid(t, (7, 9)))(thetas)
    cot = jnp.asarray(rng.normal(size=(3, 7, 9, 2)), jnp.float32)

    def run(implementation):
        def warp(i, g):
            return stn_jax.sample(i, g, padding=padding, antialias=True, implementation=implementation)

        out, pullback = jax.vjp(jax.jit(jax.vmap(warp)), images, grids)
        return (out, *pullback(cot))

    portable = run("reference")
    for implementation in ("cpu", None):
        for got, want in zip(run(implementation), portable):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
