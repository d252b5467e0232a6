"""The paper's distortions: identity settings, geometry against scipy, measured ranges, determinism.

Every batch has N = 128 float32 images so that `distort` compiles once per kind for the whole file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from train import distortions as d

N = 128


def _digits(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like uint8 images: a bright off-centre stroke plus faint noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, (n, 28, 28, 1), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(7, 15, 2)
        images[i, r : r + 10, c : c + 4] = 255
    return images, (np.arange(n) % 10).astype(np.int32)


def _blob(row: float = 13.5, col: float = 13.5, sigma: float = 2.0, side: int = 28) -> np.ndarray:
    r, c = np.mgrid[:side, :side]
    return np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2)).astype(np.float32)[..., None]


def _centroid(image) -> np.ndarray:
    """(row, col) centre of mass of an (H, W, C) image, in pixels from the image centre."""
    mass = np.asarray(image, np.float64).sum(-1)
    r, c = np.mgrid[: mass.shape[0], : mass.shape[1]]
    centre = (np.array(mass.shape) - 1) / 2
    return np.array([(r * mass).sum(), (c * mass).sum()]) / mass.sum() - centre


def _keys(n: int, seed: int = 0):
    return jax.random.split(jax.random.key(seed), n)


def _distort_copies(kind: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """N independently distorted copies of one float image, through the public batch API."""
    batch = np.broadcast_to(image, (N, *image.shape)).astype(np.float32)
    out, _ = d.distort(kind, jax.random.key(seed), batch, np.zeros(N, np.int32))
    return np.asarray(out)


# ---------------------------------------------------------------- identity settings
IDENTITIES = {
    "rotate": lambda k, x: d.rotate(k, x, max_degrees=0.0),
    "rts": lambda k, x: d.rotate_translate_scale(k, x, canvas=28, max_degrees=0.0, scale_range=(1.0, 1.0)),
    "projective": lambda k, x: d.projective(k, x, scale_range=(1.0, 1.0), sigma_px=0.0),
    "elastic": lambda k, x: d.elastic(k, x, scale_range=(1.0, 1.0), sigma_px=0.0),
    "clutter": lambda k, x: d.translate_clutter(k, x, jnp.zeros((0, 28, 28, 1)), canvas=28),
}


@pytest.mark.parametrize("name", sorted(IDENTITIES))
def test_identity_setting_returns_the_input(name):
    images, _ = _digits(3)
    x = jnp.asarray(images, jnp.float32) / 255
    out = jax.vmap(IDENTITIES[name])(_keys(3), x)
    np.testing.assert_allclose(out, x, atol=2e-5)


def test_kind_none_is_the_scaled_input():
    images, labels = _digits()
    out, out_labels = d.distort("none", jax.random.key(0), images, labels)
    np.testing.assert_allclose(out, images / np.float32(255), rtol=1e-6)
    np.testing.assert_array_equal(out_labels, labels)


# ---------------------------------------------------------------- geometry against scipy
def test_placement_matches_scipy_affine_transform():
    """_place (forward map y = A x + t on a larger canvas) against scipy's bilinear resampling."""
    image = np.random.default_rng(1).random((28, 28, 1)).astype(np.float32)
    angle, scale, shift = 0.4, 1.15, np.array([3.0, -5.5])  # shift in (x, y) pixels
    forward = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    ours = d._place(jnp.asarray(image), jnp.asarray(forward, jnp.float32), jnp.asarray(shift, jnp.float32), 42)
    # scipy maps output index o (row, col) to input index M o + offset; ours in (x, y) order.
    inverse = np.linalg.inv(forward)[::-1, ::-1]  # swap to (row, col)
    c_in, c_out = np.full(2, 13.5), np.full(2, 20.5)
    offset = c_in - inverse @ (c_out + shift[::-1])
    reference = scipy.ndimage.affine_transform(image[..., 0], inverse, offset, (42, 42), order=1, mode="grid-constant")
    np.testing.assert_allclose(ours[..., 0], reference, atol=1e-5)


def test_homography_maps_the_four_points():
    src = jnp.array([[-0.8, -0.9], [0.9, -0.7], [0.7, 0.95], [-0.85, 0.8]])
    dst = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    h = d._homography(src, dst)
    mapped = jnp.concatenate([src, jnp.ones((4, 1))], axis=1) @ h.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], dst, atol=1e-5)


# ---------------------------------------------------------------- measured ranges
def test_rotation_measured_back_spans_the_range():
    # A bar from the centre to the right: its centroid's angle is the rotation angle.
    bar = np.zeros((28, 28, 1), np.float32)
    bar[13:15, 17:26] = 1.0
    out = _distort_copies("R", bar)
    row, col = np.array([_centroid(o) for o in out]).T
    angles = np.degrees(np.arctan2(row, col))
    assert np.all(np.abs(angles) <= 90.5)
    assert angles.min() < -80 and angles.max() > 80  # uniform over [-90, 90]: the ends are reached
    assert abs(np.mean(angles)) < 12
    radius = np.hypot(row, col)
    np.testing.assert_allclose(radius, np.hypot(*_centroid(bar)), atol=0.3)  # a rotation keeps the radius


def test_rts_position_scale_and_rotation_stay_in_range():
    blob = _blob(sigma=2.0)
    out = _distort_copies("RTS", blob)
    assert out.shape == (N, 42, 42, 1)
    centres = np.array([_centroid(o) for o in out])
    assert np.all(np.abs(centres) <= 7.0 + 0.05) and np.abs(centres).max() > 6.0
    # The blob's spread scales with the digit: sqrt of its second moment, relative to the input.
    def spread(img):
        mass = img[..., 0].astype(np.float64)
        r, c = np.mgrid[: mass.shape[0], : mass.shape[1]]
        cr, cc = (r * mass).sum() / mass.sum(), (c * mass).sum() / mass.sum()
        return np.sqrt((((r - cr) ** 2 + (c - cc) ** 2) * mass).sum() / mass.sum())

    # Bilinear resampling blurs a little (adds ~1/6 px² of variance per axis): 0.03 of slack.
    scales = np.array([spread(o) for o in out]) / spread(blob)
    assert scales.min() > 0.7 - 0.03 and scales.max() < 1.2 + 0.03
    assert scales.min() < 0.75 and scales.max() > 1.15


def test_projective_and_elastic_shrink_and_warp_within_bounds():
    white = np.ones((28, 28, 1), np.float32)
    for kind, sigma in (("P", d.P_SIGMA_PX), ("E", d.E_SIGMA_PX)):
        out = _distort_copies(kind, white, seed=1)
        area = out.mean(axis=(1, 2, 3))
        # Scale s in [0.75, 1] covers s² of the canvas; the noise moves corners by a few σ.
        assert 0.15 < area.min() and area.max() <= 1.0
        # Noise leaves the mean area at E[s²] ≈ 0.77, less what is pushed off the canvas.
        assert 0.6 < area.mean() < np.mean(np.linspace(0.75, 1.0, 101) ** 2) + 0.02
        assert np.std(area) > 0.02  # random, not a fixed warp
        centres = np.array([_centroid(o) for o in out])
        assert np.all(np.abs(centres) < 3 * sigma)


def test_translated_clutter_copies_the_digit_and_adds_patches():
    images, labels = _digits()
    x = jnp.asarray(images, jnp.float32) / 255
    alone = np.asarray(jax.vmap(d.translate_clutter)(_keys(8), x[:8], jnp.zeros((8, 0, 28, 28, 1))))
    for digit, out in zip(np.asarray(x), alone):
        # An integer shift within ±16 px: the digit appears exactly, nothing else does.
        rows, cols = np.nonzero(out[..., 0] > 1e-4)
        top, left = rows.min() - np.nonzero(digit[..., 0].any(1))[0].min(), cols.min() - np.nonzero(digit[..., 0].any(0))[0].min()
        assert 0 <= top <= 32 and 0 <= left <= 32
        np.testing.assert_allclose(out[top : top + 28, left : left + 28], digit, atol=1e-5)
        assert np.isclose(out.sum(), digit.sum(), rtol=1e-5)
    cluttered, _ = d.distort("TC", jax.random.key(0), images, labels)
    cluttered = np.asarray(cluttered)
    assert cluttered.shape == (N, 60, 60, 1)
    clutter_mass = cluttered.sum(axis=(1, 2, 3)) - (x.sum(axis=(1, 2, 3)))
    assert np.all(clutter_mass > 0) and np.all(clutter_mass <= 6 * 36 + 1e-3)


def test_every_kind_has_its_documented_shape_range_and_labels():
    images, labels = _digits()
    for kind in d.KINDS:
        out, out_labels = d.distort(kind, jax.random.key(3), images, labels)
        assert out.shape == (N, *d.OUTPUT_SHAPES[kind]) and out.dtype == jnp.float32, kind
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6, kind
        assert out_labels.dtype == jnp.int32
        if kind == "addition":
            partners = np.asarray(out_labels) - labels
            assert all(p in np.delete(labels, i) for i, p in enumerate(partners))
            assert int(out_labels.max()) < d.NUM_CLASSES[kind]
            # Each channel holds one digit: both carry ink, neither is the other.
            ink = np.asarray(out).sum(axis=(1, 2))
            assert np.all(ink > 1.0)
        else:
            np.testing.assert_array_equal(out_labels, labels)


# ---------------------------------------------------------------- determinism and API
def test_distort_is_a_pure_function_of_the_key():
    images, labels = _digits()
    a, _ = d.distort("RTS", jax.random.key(5), images, labels)
    b, _ = d.distort("RTS", jax.random.key(5), images, labels)
    c, _ = d.distort("RTS", jax.random.key(6), images, labels)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # vmap of the per-image function equals a loop over images.
    keys = _keys(3)
    x = jnp.asarray(images[:3], jnp.float32) / 255
    batched = jax.vmap(d.elastic)(keys, x)
    single = jax.jit(d.elastic)
    # Batched and single TPS solves may order float32 sums differently (a few ulps of the grid).
    for i in range(3):
        np.testing.assert_allclose(batched[i], single(keys[i], x[i]), rtol=1e-5, atol=1e-5)


def test_fixed_seed_test_set_is_identical_across_runs(monkeypatch):
    monkeypatch.setattr(d, "TEST_CHUNK", 4)
    images, labels = _digits(10)
    first = d.test_set("R", images, labels, seed=0)
    second = d.test_set("R", images, labels, seed=0)
    other = d.test_set("R", images, labels, seed=1)
    assert first[0].shape == (10, 28, 28, 1) and isinstance(first[0], np.ndarray)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], labels)
    assert not np.allclose(first[0], other[0])
    # Chunks use different keys: the same digit in two chunks is distorted differently.
    same = np.concatenate([images[:4], images[:4]])
    twice = d.test_set("R", same, labels[:8], seed=0)[0]
    assert not np.allclose(twice[:4], twice[4:])


def test_bad_arguments_name_themselves():
    images, labels = _digits()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="kind must be one of"):
        d.distort("RST", key, images, labels)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 28, 28, C\)"):
        d.distort("R", key, images[..., 0], labels)
    with pytest.raises(ValueError, match="labels"):
        d.distort("R", key, images, labels.astype(np.float32))
    with pytest.raises(ValueError, match="one channel"):
        d.distort("addition", key, np.concatenate([images, images], -1), labels)
    with pytest.raises(TypeError, match="seed"):
        d.test_set("R", images, labels, seed=0.5)


def test_rotate_by_quarter_turns_equal_numpy_rot90():
    """rotate_by (the generalisation test sets) against np.rot90: clockwise as displayed, exact up to float."""
    images, _ = _digits()
    x = images[0].astype(np.float32) / 255.0
    for degrees, k in ((90, -1), (-90, 1), (180, 2), (0, 0)):
        np.testing.assert_allclose(d.rotate_by(jnp.asarray(x), degrees), np.rot90(x, k, axes=(0, 1)), atol=1e-5)
