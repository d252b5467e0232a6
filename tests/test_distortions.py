"""The paper's distortions: identity settings, geometry against scipy, measured ranges, determinism.

Every batch has N = 128 float32 images so that `distort` compiles once per kind for the whole file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import stn_jax
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


def _moments(image) -> tuple[np.ndarray, float, float]:
    """Centroid (row, col) from the image centre, spread (root of the total second central moment) and
    orientation of the principal axis (degrees from the column axis, in (-90, 90]) of an (H, W, C) image."""
    mass = np.asarray(image, np.float64).sum(-1)
    r, c = np.mgrid[: mass.shape[0], : mass.shape[1]] - (np.array(mass.shape)[:, None, None] - 1) / 2
    total = mass.sum()
    cr, cc = (r * mass).sum() / total, (c * mass).sum() / total
    vrr, vcc, vrc = (((r - cr) ** 2) * mass).sum(), (((c - cc) ** 2) * mass).sum(), ((r - cr) * (c - cc) * mass).sum()
    return np.array([cr, cc]), np.sqrt((vrr + vcc) / total), np.degrees(0.5 * np.arctan2(2 * vrc, vcc - vrr))


@pytest.mark.parametrize(
    "kind, canvas, max_degrees, scales, max_shift",
    [
        ("RTS", 42, 45, (0.7, 1.2), 7.0),  # the paper's: the 28×28 frame stays on the 42×42 canvas
        ("RTS28", 28, 45, (0.7, 1.3), 1.4),  # ±0.1 in normalised units
    ],
)
def test_rts_angle_scale_and_shift_are_each_measured_back(kind, canvas, max_degrees, scales, max_shift):
    """An elongated Gaussian at the centre: its principal axis gives the angle, its spread the scale and its
    centroid the shift, one per copy (smooth, so resampling moves them by under 0.04 px, 0.1° and 2%);
    each must span its documented range, independently of the others."""
    r, c = np.mgrid[:28, :28] - 13.5
    bar = np.exp(-(c**2 / (2 * 3.5**2) + r**2 / (2 * 1.2**2))).astype(np.float32)[..., None]
    out = _distort_copies(kind, bar, seed=2)
    assert out.shape == (N, canvas, canvas, 1)
    centres, spreads, angles = (np.array(v) for v in zip(*(_moments(o) for o in out)))
    # Angle: uniform in [-max, max] degrees (the bar is horizontal, so its axis is the angle).
    assert np.all(np.abs(angles) <= max_degrees + 1), angles
    assert angles.min() < -0.9 * max_degrees and angles.max() > 0.9 * max_degrees and abs(angles.mean()) < 8
    # Scale: the spread scales with the digit.
    ratios = spreads / _moments(bar)[1]
    assert (
        scales[0] - 0.01 < ratios.min() < scales[0] + 0.04 and scales[1] - 0.04 < ratios.max() < scales[1] * 1.02 + 0.01
    )
    # Shift: uniform in ±max_shift pixels on each axis, the two axes drawn independently.
    for axis in range(2):
        assert np.all(np.abs(centres[:, axis]) <= max_shift + 0.05), (axis, centres[:, axis])
        assert centres[:, axis].min() < -0.85 * max_shift and centres[:, axis].max() > 0.85 * max_shift, axis
    assert abs(np.corrcoef(centres.T)[0, 1]) < 0.3 and abs(np.corrcoef(angles, ratios)[0, 1]) < 0.3


AXIS = (2 * np.arange(28) + 1) / 28 - 1  # normalised centres of 28 pixels
CENTRES = np.stack(np.meshgrid(AXIS, AXIS), -1)  # (28, 28, 2) in (x, y) order


def _ramps(n: int) -> np.ndarray:
    """n copies of a 3-channel image holding, at each pixel, its centre's normalised x and y mapped to
    [0, 1], and 1. Bilinear sampling of a linear ramp is exact, so a distorted copy reads back the input
    point each output pixel came from, wherever channel 2 is 1 (all four taps inside the input)."""
    x, y = CENTRES[..., 0], CENTRES[..., 1]
    return np.broadcast_to(np.stack([(x + 1) / 2, (y + 1) / 2, np.ones_like(x)], -1), (n, 28, 28, 3)).astype(np.float32)


def _backward_maps(kind: str, n: int, seed: int):
    """For each of n distorted ramps: the output pixels read wholly from inside the input (a (28, 28) mask)
    and the input points p (P, 2) that they read, in (x, y) order."""
    out, _ = d.distort(kind, jax.random.key(seed), _ramps(n), np.zeros(n, np.int32))
    for o in np.asarray(out, np.float64):
        inside = o[..., 2] > 1 - 1e-5
        yield inside, 2 * o[inside][:, :2] - 1


def _scale_and_noise(points: np.ndarray, reference: np.ndarray):
    """points (n, K, 2) ≈ a·reference (K, 2) + noise: each sample's least-squares a, a's variance across samples
    less what the noise adds to it, and the residuals (n, K, 2) with the noise's σ (2K − 1 degrees of freedom)."""
    norm = (reference**2).sum()
    a = (points * reference).sum((1, 2)) / norm
    residual = points - a[:, None, None] * reference
    sigma = np.sqrt((residual**2).sum() / (len(points) * (residual[0].size - 1)))
    return a, a.var() - sigma**2 / norm, residual, sigma


def test_projective_scale_and_corner_noise_are_measured_back():
    """P: the four output corners are s·corner + N(0, σ²) with s ~ U[0.75, 1]; a homography fitted to each
    copy's backward map gives them back."""
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = []
    for inside, p in _backward_maps("P", 512, seed=3):
        u = CENTRES[inside]
        # p = H u / (H u)_z with h_22 = 1: linear least squares in the other 8 entries.
        ones, zeros = np.ones(len(u)), np.zeros((len(u), 3))
        rows = np.concatenate(
            [np.column_stack([u, ones, zeros, -u * p[:, :1]]), np.column_stack([zeros, u, ones, -u * p[:, 1:]])]
        )
        h = np.append(np.linalg.lstsq(rows, np.concatenate([p[:, 0], p[:, 1]]), rcond=None)[0], 1).reshape(3, 3)
        mapped = np.column_stack([u, ones]) @ h.T
        assert np.abs(mapped[:, :2] / mapped[:, 2:] - p).max() < 1e-4  # the map is a homography
        back = np.column_stack([corners, np.ones(4)]) @ np.linalg.inv(h).T
        moved.append(back[:, :2] / back[:, 2:])
    s, s_var, residual, sigma = _scale_and_noise(np.array(moved), corners)
    sigma_expected = d.P_SIGMA_PX * 2 / 28
    assert abs(sigma / sigma_expected - 1) < 0.06, (sigma, sigma_expected)
    assert np.all(np.abs(residual.std(0) / (sigma_expected * np.sqrt(7 / 8)) - 1) < 0.2)  # every corner, each axis
    assert abs(s.mean() - 0.875) < 0.02 and 0.003 < s_var < 0.0081  # U[0.75, 1]: mean 0.875, variance 1/192


def test_elastic_scale_and_control_point_noise_are_measured_back():
    """E: the input points of the 16 control points are (lattice + N(0, σ²)) / s with s ~ U[0.75, 1]; a
    thin-plate spline (stn_jax's basis) fitted to each copy's backward map gives them back."""
    basis = np.asarray(jax.jacfwd(lambda t: stn_jax.grid(t, (28, 28), transform="tps"))(jnp.zeros((16, 2))), np.float64)
    basis = basis.reshape(28, 28, 2, 32)
    lattice = np.linalg.lstsq(basis.reshape(-1, 32), CENTRES.ravel(), rcond=None)[0]  # M c = u: the control points
    points = []
    for inside, p in _backward_maps("E", 512, seed=4):
        rows = basis[inside].reshape(-1, 32)
        fit = np.linalg.lstsq(rows, p.ravel(), rcond=None)[0]
        assert np.abs(rows @ fit - p.ravel()).max() < 1e-4  # the map is a scaled spline
        points.append(fit.reshape(16, 2))
    inverse_scale, var, residual, sigma = _scale_and_noise(np.array(points), lattice.reshape(16, 2))
    # a = 1/s for s ~ U[0.75, 1]: mean 4 ln(4/3), variance 4/3 − (4 ln(4/3))²; the noise scales with a.
    mean_a, mean_a2 = 4 * np.log(4 / 3), 4 / 3
    sigma_expected = d.E_SIGMA_PX * 2 / 28 * np.sqrt(mean_a2)
    assert abs(sigma / sigma_expected - 1) < 0.06, (sigma, sigma_expected)
    assert np.all(
        np.abs((residual / inverse_scale[:, None, None]).std(0) / (sigma_expected / np.sqrt(mean_a2)) - 1) < 0.25
    )
    assert abs(inverse_scale.mean() - mean_a) < 0.02 and 0.007 < var < 0.0115, (inverse_scale.mean(), var)


def test_translated_clutter_copies_the_digit_and_adds_patches():
    images, labels = _digits()
    x = jnp.asarray(images, jnp.float32) / 255
    alone = np.asarray(jax.vmap(d.translate_clutter)(_keys(8), x[:8], jnp.zeros((8, 0, 28, 28, 1))))
    for digit, out in zip(np.asarray(x), alone):
        # An integer shift within ±16 px: the digit appears exactly, nothing else does.
        rows, cols = np.nonzero(out[..., 0] > 1e-4)
        top, left = (
            rows.min() - np.nonzero(digit[..., 0].any(1))[0].min(),
            cols.min() - np.nonzero(digit[..., 0].any(0))[0].min(),
        )
        assert 0 <= top <= 32 and 0 <= left <= 32
        np.testing.assert_allclose(out[top : top + 28, left : left + 28], digit, atol=1e-5)
        assert np.isclose(out.sum(), digit.sum(), rtol=1e-5)
    cluttered, _ = d.distort("TC", jax.random.key(0), images, labels)
    cluttered = np.asarray(cluttered)
    assert cluttered.shape == (N, 60, 60, 1)
    clutter_mass = cluttered.sum(axis=(1, 2, 3)) - (x.sum(axis=(1, 2, 3)))
    assert np.all(clutter_mass > 0) and np.all(clutter_mass <= 6 * 36 + 1e-3)


def test_clutter_shift_cut_and_paste_span_their_ranges():
    """TC per image, one clutter source: the digit (a marker pixel at its frame's corner) moves by an integer
    shift in ±16 px per axis; the 6×6 patch is cut anywhere in the source's central 20×20 and pasted anywhere
    on the 60×60 canvas. The source's pixels encode their own position, so the patch tells where it was cut."""
    digit = np.zeros((28, 28, 1), np.float32)
    digit[0, 0] = 1.0
    code = (0.05 + 0.9 * np.arange(784) / 784).astype(np.float32).reshape(1, 28, 28, 1)
    out = jax.vmap(lambda k: d.translate_clutter(k, jnp.asarray(digit), jnp.asarray(code)))(_keys(512, seed=5))
    shifts, cuts, pastes = [], [], []
    for o in np.asarray(out[..., 0], np.float64):
        shifts.append(np.argwhere(o > 0.99)[0] - 16)  # (row, col) of the marker, from its unshifted place
        patch = np.argwhere((o > 0.01) & (o < 0.99))  # the marker may hide one patch pixel, never a whole row
        pastes.append(patch.min(0))
        source = np.array(divmod(int(np.rint((o[tuple(patch[0])] - 0.05) * 784 / 0.9)), 28))
        cuts.append(source - (patch[0] - pastes[-1]))
    shifts, cuts, pastes = np.array(shifts), np.array(cuts), np.array(pastes)
    for axis in range(2):
        assert np.abs(shifts[:, axis]).max() <= 16 and shifts[:, axis].min() <= -14 and shifts[:, axis].max() >= 14
        assert (cuts[:, axis].min(), cuts[:, axis].max()) == (4, 18)
        assert pastes[:, axis].min() <= 1 and 53 <= pastes[:, axis].max() <= 54
    for values in (shifts, cuts, pastes):
        assert abs(np.corrcoef(values.T)[0, 1]) < 0.3  # the two axes are drawn independently


@pytest.mark.parametrize("kind", ["TC", "addition"])
def test_partners_are_random_other_examples(kind):
    """Each digit is a 20×20 block of its own grey level, so the levels in an output name the examples it
    was made from: TC's clutter patches and addition's second digit come from other examples, drawn at
    random (at many offsets in the batch), and addition's label is the sum of the two digits' labels."""
    levels = 0.3 + 0.6 * (np.arange(N) + 1) / (N + 1)
    images = np.zeros((N, 28, 28, 1), np.float32)
    images[:, 4:24, 4:24] = levels[:, None, None, None]
    labels = np.random.default_rng(6).integers(0, 10, N).astype(np.int32)
    out, out_labels = d.distort(kind, jax.random.key(7), images, labels)
    out, out_labels = np.asarray(out, np.float64), np.asarray(out_labels)

    def examples(values):  # the examples whose level appears among ``values``
        return set(np.rint((values[values > 0.2] - 0.3) / 0.6 * (N + 1) - 1).astype(int).tolist())

    if kind == "TC":
        np.testing.assert_array_equal(out_labels, labels)
        sources = [examples(o) for o in out]
        assert all(i in s for i, s in enumerate(sources))  # the digit itself
        others = [s - {i} for i, s in enumerate(sources)]
        assert all(others), "an example cluttered only with itself"
        assert np.mean([len(o) for o in others]) > 4  # 6 patches, each from its own random partner
        offsets = {(j - i) % N for i, o in enumerate(others) for j in o}
    else:
        assert [examples(o[..., 0].max(keepdims=True)) for o in out] == [{i} for i in range(N)]
        partners = np.array([examples(o[..., 1].max(keepdims=True)).pop() for o in out])
        assert np.all(partners != np.arange(N)), "a digit added to itself"
        np.testing.assert_array_equal(out_labels, labels + labels[partners])
        offsets = set(((partners - np.arange(N)) % N).tolist())
        # The two digits are distorted independently: their centroids differ.
        distance = [np.hypot(*(_centroid(o[..., :1]) - _centroid(o[..., 1:]))) for o in out]
        assert np.median(distance) > 3
    assert len(offsets) > N // 4, f"partners at only {len(offsets)} offsets in the batch"


def test_every_kind_has_its_documented_shape_range_and_labels():
    images, labels = _digits()
    for kind in d.KINDS:
        out, out_labels = d.distort(kind, jax.random.key(3), images, labels)
        assert out.shape == (N, *d.OUTPUT_SHAPES[kind]) and out.dtype == jnp.float32, kind
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6, kind
        assert out_labels.dtype == jnp.int32
        if kind != "addition":  # addition's labels: test_partners_are_random_other_examples
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
