"""Helpers around θ, with property tests (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import stn_jax
from conftest import enable_x64

finite = st.floats(-1.0, 1.0, allow_nan=False, width=32)


@st.composite
def well_conditioned_affine(draw, ndim=2):
    """Identity plus a perturbation small enough that the linear part stays invertible."""
    entries = draw(st.lists(finite, min_size=ndim * (ndim + 1), max_size=ndim * (ndim + 1)))
    perturbation = np.asarray(entries, np.float64).reshape(ndim, ndim + 1) * np.array([0.4] * ndim + [1.0])
    return np.eye(ndim, ndim + 1) + perturbation


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 3]).flatmap(well_conditioned_affine))
def test_composing_with_the_inverse_is_the_identity(theta):
    with enable_x64(True):
        inverse = stn_jax.invert_affine(theta)
        n = theta.shape[0]
        for product in (stn_jax.compose_affine(theta, inverse), stn_jax.compose_affine(inverse, theta)):
            np.testing.assert_allclose(product, np.eye(n, n + 1), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(well_conditioned_affine(), well_conditioned_affine())
def test_compose_agrees_with_applying_points_in_turn(outer, inner):
    points = np.random.default_rng(0).uniform(-1, 1, size=(10, 2))
    with enable_x64(True):
        composed = stn_jax.transform_points(stn_jax.compose_affine(outer, inner), points)
        in_turn = stn_jax.transform_points(outer, stn_jax.transform_points(inner, points))
        np.testing.assert_allclose(composed, in_turn, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(-3.0, 3.0),
    st.floats(0.2, 3.0),
    st.floats(0.2, 3.0).flatmap(lambda s: st.sampled_from([s, -s])),
    st.floats(-2.0, 2.0),
    st.tuples(finite, finite),
)
def test_params_round_trip(rotation, scale_x, scale_y, shear, translation):
    with enable_x64(True):
        theta = stn_jax.affine_from_params(
            rotation=rotation, scale=(scale_x, scale_y), shear=shear, translation=translation
        )
        p = stn_jax.affine_to_params(theta)
        rebuilt = stn_jax.affine_from_params(
            rotation=p.rotation, scale=p.scale, shear=p.shear, translation=p.translation
        )
        np.testing.assert_allclose(rebuilt, theta, atol=1e-9)
        np.testing.assert_allclose(p.scale, [scale_x, scale_y], rtol=1e-9)
        np.testing.assert_allclose(p.shear, shear, atol=1e-9)


# Jitted: one compilation per drawn shape rather than one per operation (eager dispatch).
_sample = jax.jit(stn_jax.sample, static_argnames=("padding", "align_corners"))


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(-4, 4),
    st.integers(-4, 4),
    st.sampled_from(["zeros", "border", "reflection"]),
    st.booleans(),
)
def test_integer_shifts_equal_rolling_with_the_paddings_fill(height, width, dy, dx, padding, align_corners):
    # With align_corners=True every normalised point of a size-1 axis is that one pixel: no shifts.
    assume(not (align_corners and min(height, width) == 1))
    image = np.arange(height * width * 2, dtype=np.float32).reshape(height, width, 2) + 1
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([cols + dx, rows + dy], axis=-1).astype(np.float32)
    grid = stn_jax.pixel_to_normalized(pixels, (height, width), align_corners=align_corners)
    out = _sample(image, grid, padding=padding, align_corners=align_corners)
    # Reference: pad with the padding's rule, then slice. PyTorch reflects about the pixel
    # edges without align_corners ('symmetric') and about the centres with it ('reflect').
    modes = {"zeros": "constant", "border": "edge", "reflection": "reflect" if align_corners else "symmetric"}
    padded = image
    for axis in (0, 1):
        widths = [(0, 0)] * 3
        widths[axis] = (4, 4)
        # Reflecting a size-1 axis about its single centre gives the pixel itself.
        mode = "edge" if modes[padding] == "reflect" and image.shape[axis] == 1 else modes[padding]
        padded = np.pad(padded, widths, mode=mode)
    expected = padded[4 + dy : 4 + dy + height, 4 + dx : 4 + dx + width]
    # The round trip through normalised coordinates leaves the points an ulp off the pixel.
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * image.max())


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_and_normalized_coordinates_are_inverse_and_match_the_sampler(align_corners):
    shape = (5, 8)
    pixels = jnp.array([[0.0, 0.0], [7.0, 4.0], [3.0, 2.0]])
    normalized = stn_jax.pixel_to_normalized(pixels, shape, align_corners=align_corners)
    np.testing.assert_allclose(
        stn_jax.normalized_to_pixel(normalized, shape, align_corners=align_corners), pixels, atol=1e-6
    )
    image = jnp.arange(40.0).reshape(5, 8, 1)
    values = stn_jax.sample(image, normalized[:, None, :], align_corners=align_corners)[:, 0, 0]
    np.testing.assert_allclose(values, [0.0, 39.0, 19.0], atol=1e-5)


@pytest.mark.parametrize(
    "transform,theta",
    [
        ("affine", np.array([[0.9, 0.2, 0.1], [-0.1, 1.1, 0.0]])),
        ("attention", np.array([0.6, 0.1, -0.2])),
        ("similarity", np.array([1.2, 0.4, 0.0, 0.1])),
        ("projective", np.array([[1.0, 0.1, 0.0], [0.05, 0.9, 0.1], [0.2, -0.1, 1.0]])),
        ("tps", np.random.default_rng(0).normal(scale=0.1, size=(16, 2))),
    ],
)
def test_transform_points_agrees_with_the_grid(transform, theta):
    theta = jnp.asarray(theta, jnp.float32)
    g = stn_jax.grid(theta, (6, 7), transform=transform)
    mapped = stn_jax.transform_points(theta, stn_jax.identity_grid((6, 7)), transform=transform)
    np.testing.assert_allclose(mapped, g, atol=2e-5)


def test_keypoints_follow_the_warp():
    # A bright pixel of the input must appear in the output where the inverse θ sends it.
    image = jnp.zeros((21, 21, 1)).at[5, 14, 0].set(1.0)
    theta = stn_jax.affine_from_params(rotation=0.5, scale=0.8, translation=(0.1, -0.05))
    out = stn_jax.sample(image, stn_jax.affine_grid(theta, (21, 21), align_corners=True), align_corners=True)
    spot = stn_jax.pixel_to_normalized(jnp.array([14.0, 5.0]), (21, 21), align_corners=True)
    where = stn_jax.normalized_to_pixel(
        stn_jax.transform_points(stn_jax.invert_affine(theta), spot), (21, 21), align_corners=True
    )
    row, col = np.unravel_index(np.argmax(out[..., 0]), (21, 21))
    assert abs(col - float(where[0])) <= 1 and abs(row - float(where[1])) <= 1


def test_bad_input():
    with pytest.raises(ValueError, match=r"theta must be an affine matrix of shape \(n, n\+1\)"):
        stn_jax.invert_affine(jnp.eye(3))
    with pytest.raises(ValueError, match="outer and inner must have the same shape"):
        stn_jax.compose_affine(jnp.eye(2, 3), jnp.eye(3, 4))
    with pytest.raises(ValueError, match="scale must be a scalar or have shape"):
        stn_jax.affine_from_params(scale=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., 2\)"):
        stn_jax.pixel_to_normalized(jnp.zeros((4, 3)), (5, 5))
    with pytest.raises(ValueError, match="transform must be one of"):
        stn_jax.transform_points(jnp.eye(2, 3), jnp.zeros((1, 2)), transform="warp")


def test_projective_points_are_the_grid_bit_for_bit_including_the_horizon():
    # One homography and one safe division for grid() and transform_points(): same bits, also where the
    # divisor w' = 1.5 x + 1 is clamped to ±eps (the horizon x = -2/3 crosses the grid).
    theta = jnp.array([[1.0, 0.1, 0.0], [0.05, 0.9, 0.1], [1.5, 0.0, 1.0]])
    points = stn_jax.identity_grid((6, 9), align_corners=True)
    assert bool(jnp.any(jnp.abs(1.5 * points[..., 0] + 1.0) < 0.2))  # some points are clamped
    for h in (theta, theta.reshape(-1)[:8]):
        g = stn_jax.grid(h, (6, 9), transform="projective", align_corners=True, projective_eps=0.2)
        mapped = stn_jax.transform_points(h, points, transform="projective", projective_eps=0.2)
        assert bool(jnp.array_equal(mapped, g))


@pytest.mark.parametrize("shape", [(9,), (2, 4), (1, 8)])
def test_projective_theta_shapes_are_those_of_the_grid(shape):
    theta = jnp.zeros(shape).reshape(-1).at[0].set(1.0).reshape(shape)
    match = r"theta for transform='projective' must have shape \(3, 3\) or \(8,\)"
    with pytest.raises(ValueError, match=match):
        stn_jax.grid(theta, (3, 3), transform="projective")
    with pytest.raises(ValueError, match=match):
        stn_jax.transform_points(theta, jnp.zeros((1, 2)), transform="projective")


def test_tps_control_points_move_by_theta():
    theta = jnp.asarray(np.random.default_rng(1).normal(scale=0.1, size=(9, 2)), jnp.float32)
    lattice = stn_jax.tps_control_points(9)
    np.testing.assert_allclose(stn_jax.transform_points(theta, lattice, transform="tps"), lattice + theta, atol=1e-5)
    for k, error in ((8, ValueError), (1, ValueError), (9.0, TypeError)):
        with pytest.raises(error, match="num_control_points"):
            stn_jax.tps_control_points(k)
