"""The distorted MNIST variants of the STN paper (Jaderberg et al. 2015, sec. 4.1), generated with stn_jax.

Public API (all pure JAX; per-image functions are jit/vmap-able, keyed by a PRNG key)::

    KINDS = ("none", "R", "RTS", "P", "E", "TC", "addition", "RTS28")
    OUTPUT_SHAPES[kind] -> (H, W, C):  none/R/P/E/RTS28 (28, 28, 1), RTS (42, 42, 1),
                                       TC (60, 60, 1), addition (42, 42, 2)
    NUM_CLASSES[kind]   -> 10, or 19 for "addition" (label = sum of two digits)
    P_SIGMA_PX = 3.0    # σ of the Gaussian corner noise of P, in pixels of the 28×28 image
    E_SIGMA_PX = 2.0    # σ of the Gaussian TPS control-point noise of E, in pixels

    distort(kind, key, images, labels) -> (images float32 (N, *OUTPUT_SHAPES[kind]) in [0, 1],
                                           labels int32 (N,))
        images: (N, 28, 28, 1) uint8 (0..255) or float (0..1); labels: (N,) integer.
        Jitted (``kind`` static); call it every training step with a fresh key.
    test_set(kind, images, labels, *, seed) -> (np.ndarray float32 (N, *OUTPUT_SHAPES[kind]),
                                                np.ndarray int32 (N,))
        Distorted once, in chunks of TEST_CHUNK examples keyed by fold_in(key(seed), chunk):
        the same seed gives bit-identical test sets in every run.

    Per image (image: (28, 28, C) float32, output float32):
    rotate(key, image, *, max_degrees=90.0) -> (28, 28, C)
    rotate_by(image, degrees) -> (28, 28, C)     (exactly that angle; clockwise as displayed, rows down)
    rotate_translate_scale(key, image, *, canvas=42, max_degrees=45.0, scale_range=(0.7, 1.2),
                           max_shift=None) -> (canvas, canvas, C)
    projective(key, image, *, scale_range=(0.75, 1.0), sigma_px=P_SIGMA_PX) -> (28, 28, C)
    elastic(key, image, *, scale_range=(0.75, 1.0), sigma_px=E_SIGMA_PX,
            num_control_points=16) -> (28, 28, C)
    translate_clutter(key, image, others, *, canvas=60, patch=6) -> (canvas, canvas, C)
        others: (K, 28, 28, C) digits to cut the K clutter patches from.
    add_pair(key, image_a, image_b) -> (42, 42, 2)

Conventions: transforms are described forwards (how the digit moves) and turned into
stn_jax's backward grids (output pixel → input point); ``align_corners=False``, bilinear,
zero padding. Pixel distances are in pixels of the 28×28 input.

RTS28 is not the paper's: it is the training distortion of the generalisation experiment
(``benchmarks/generalisation.py``): rotation in ±45°, scale in [0.7, 1.3] and a shift of
±0.1 in normalised units (1.4 px) per axis, on the 28×28 frame. Setting a range to a
single point and σ to 0 gives the identity (tested).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import stn_jax

SIDE = 28
KINDS = ("none", "R", "RTS", "P", "E", "TC", "addition", "RTS28")
OUTPUT_SHAPES = {
    "none": (28, 28, 1),
    "R": (28, 28, 1),
    "RTS": (42, 42, 1),
    "P": (28, 28, 1),
    "E": (28, 28, 1),
    "TC": (60, 60, 1),
    "addition": (42, 42, 2),
    "RTS28": (28, 28, 1),
}
NUM_CLASSES = {kind: 19 if kind == "addition" else 10 for kind in KINDS}
# The paper gives no σ. These were chosen by eye from `train.show_data`'s PNGs: P tilts
# and foreshortens visibly, E bends strokes, and the digit mostly stays on the canvas.
P_SIGMA_PX = 3.0
E_SIGMA_PX = 2.0
TC_PATCHES = 6
TEST_CHUNK = 1000


def _rotation(angle: jax.Array) -> jax.Array:
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])


def _place(image: jax.Array, forward: jax.Array, shift_px: jax.Array, canvas: int) -> jax.Array:
    """Warps ``image`` by the forward map ``y = forward @ x + shift_px`` onto a ``canvas``² output.

    ``x`` and ``y`` are pixel offsets from the centres of the input and the canvas.
    Backward in normalised units (1 unit = half the side in pixels):
    ``u_in = (canvas / side) A⁻¹ u_out − (2 / side) A⁻¹ shift``.
    """
    side = image.shape[0]
    inverse = jnp.linalg.inv(forward)
    theta = jnp.concatenate([inverse * (canvas / side), (inverse @ shift_px * (-2.0 / side))[:, None]], axis=1)
    return stn_jax.sample(image, stn_jax.grid(theta, (canvas, canvas)))


def _uniform(key: jax.Array, low, high, shape=()) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def rotate(key: jax.Array, image: jax.Array, *, max_degrees: float = 90.0) -> jax.Array:
    """R: rotation by an angle uniform in ``[-max_degrees, max_degrees]`` about the centre."""
    angle = jnp.deg2rad(_uniform(key, -max_degrees, max_degrees))
    return _place(image, _rotation(angle), jnp.zeros(2), image.shape[0])


def rotate_by(image: jax.Array, degrees) -> jax.Array:
    """Rotation by exactly ``degrees`` about the centre (the generalisation experiment's test sets)."""
    return _place(image, _rotation(jnp.deg2rad(jnp.asarray(degrees, jnp.float32))), jnp.zeros(2), image.shape[0])


def rotate_translate_scale(
    key: jax.Array,
    image: jax.Array,
    *,
    canvas: int = 42,
    max_degrees: float = 45.0,
    scale_range: Sequence[float] = (0.7, 1.2),
    max_shift: float | None = None,
) -> jax.Array:
    """RTS: rotate, scale, and put the digit at a random position on a ``canvas``² image.

    The centre moves by a shift uniform in ``[-max_shift, max_shift]`` pixels per axis;
    the default ``(canvas - 28) / 2`` keeps the unscaled 28×28 frame on the canvas.
    """
    if max_shift is None:
        max_shift = (canvas - image.shape[0]) / 2
    k_angle, k_scale, k_shift = jax.random.split(key, 3)
    angle = jnp.deg2rad(_uniform(k_angle, -max_degrees, max_degrees))
    scale = _uniform(k_scale, scale_range[0], scale_range[1])
    shift = _uniform(k_shift, -max_shift, max_shift, (2,))
    return _place(image, scale * _rotation(angle), shift, canvas)


def _homography(src: jax.Array, dst: jax.Array) -> jax.Array:
    """The (3, 3) homography with ``h22 = 1`` mapping 4 points ``src`` (4, 2) to ``dst`` (4, 2)."""
    u, v = src[:, 0], src[:, 1]
    x, y = dst[:, 0], dst[:, 1]
    zero, one = jnp.zeros(4), jnp.ones(4)
    rows_x = jnp.stack([u, v, one, zero, zero, zero, -u * x, -v * x], axis=1)
    rows_y = jnp.stack([zero, zero, zero, u, v, one, -u * y, -v * y], axis=1)
    h = jnp.linalg.solve(jnp.concatenate([rows_x, rows_y]), jnp.concatenate([x, y]))
    return jnp.append(h, 1.0).reshape(3, 3)


# NumPy, not jnp: a module-level jnp array would start the JAX backend at import time,
# before the CLI has chosen the devices.
_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], np.float32)


def projective(
    key: jax.Array,
    image: jax.Array,
    *,
    scale_range: Sequence[float] = (0.75, 1.0),
    sigma_px: float = P_SIGMA_PX,
) -> jax.Array:
    """P: scale uniform in ``scale_range``, then move each image corner by N(0, σ²) pixels.

    The homography maps the four moved corners (output) back to the original corners
    (input), so the image inside them is warped projectively.
    """
    k_scale, k_noise = jax.random.split(key)
    side = image.shape[0]
    scale = _uniform(k_scale, scale_range[0], scale_range[1])
    noise = jax.random.normal(k_noise, (4, 2)) * (sigma_px * 2.0 / side)
    moved = _CORNERS * scale + noise
    grid = stn_jax.grid(_homography(moved, _CORNERS), (side, side), transform="projective")
    return stn_jax.sample(image, grid)


def elastic(
    key: jax.Array,
    image: jax.Array,
    *,
    scale_range: Sequence[float] = (0.75, 1.0),
    sigma_px: float = E_SIGMA_PX,
    num_control_points: int = 16,
) -> jax.Array:
    """E: scale uniform in ``scale_range``, then a thin-plate-spline warp whose
    ``num_control_points`` (a 4×4 lattice) move by N(0, σ²) pixels each."""
    k_scale, k_noise = jax.random.split(key)
    side = image.shape[0]
    scale = _uniform(k_scale, scale_range[0], scale_range[1])
    offsets = jax.random.normal(k_noise, (num_control_points, 2)) * (sigma_px * 2.0 / side)
    # Backward: undo the spline, then the scale (the digit shrinks by `scale`).
    grid = stn_jax.grid(offsets, (side, side), transform="tps") / scale
    return stn_jax.sample(image, grid)


def translate_clutter(
    key: jax.Array, image: jax.Array, others: jax.Array, *, canvas: int = 60, patch: int = 6
) -> jax.Array:
    """TC: the digit at a random position on a ``canvas``² image, plus one ``patch``² clutter
    patch cut from each of ``others`` (K, 28, 28, C) at a random place.

    The digit's 28×28 frame stays on the canvas (integer shift up to ±(canvas−28)/2 px,
    so it is copied without blur, up to float rounding of ~1e-6). Patches are cut from the central 20×20 of a digit, where the
    strokes are, and pasted anywhere; overlaps keep the brighter pixel.
    """
    side = image.shape[0]
    k_shift, k_cut, k_paste = jax.random.split(key, 3)
    half = (canvas - side) // 2
    shift = jax.random.randint(k_shift, (2,), -half, half + 1).astype(jnp.float32)
    out = _place(image, jnp.eye(2), shift, canvas)
    count = others.shape[0]
    cuts = jax.random.randint(k_cut, (count, 2), 4, side - 4 - patch + 1)
    pastes = jax.random.randint(k_paste, (count, 2), 0, canvas - patch + 1)
    channels = image.shape[-1]
    for i in range(count):  # K is small and static: unrolled
        piece = jax.lax.dynamic_slice(others[i], (cuts[i, 0], cuts[i, 1], 0), (patch, patch, channels))
        layer = jax.lax.dynamic_update_slice(jnp.zeros_like(out), piece, (pastes[i, 0], pastes[i, 1], 0))
        out = jnp.maximum(out, layer)
    return out


def add_pair(key: jax.Array, image_a: jax.Array, image_b: jax.Array) -> jax.Array:
    """Addition: two single-channel digits, each RTS-distorted independently, as 2 channels of 42×42."""
    k_a, k_b = jax.random.split(key)
    return jnp.concatenate([rotate_translate_scale(k_a, image_a), rotate_translate_scale(k_b, image_b)], axis=-1)


def _partners(key: jax.Array, n: int, shape: tuple[int, ...]) -> jax.Array:
    """Indices of *other* examples of the batch (the example itself only when n == 1)."""
    if n == 1:
        return jnp.zeros(shape, jnp.int32)
    own = jnp.arange(n).reshape((n,) + (1,) * (len(shape) - 1))
    return (own + jax.random.randint(key, shape, 1, n)) % n


@functools.partial(jax.jit, static_argnames=("kind",))
def _distort(kind: str, key: jax.Array, images: jax.Array, labels: jax.Array):
    n = images.shape[0]
    k_each, k_partner = jax.random.split(key)
    keys = jax.random.split(k_each, n)
    if kind == "none":
        return images, labels
    if kind == "TC":
        others = images[_partners(k_partner, n, (n, TC_PATCHES))]
        return jax.vmap(translate_clutter)(keys, images, others), labels
    if kind == "addition":
        partner = _partners(k_partner, n, (n,))
        return jax.vmap(add_pair)(keys, images, images[partner]), labels + labels[partner]
    rts28 = functools.partial(rotate_translate_scale, canvas=SIDE, scale_range=(0.7, 1.3), max_shift=0.1 * SIDE / 2)
    single = {"R": rotate, "RTS": rotate_translate_scale, "P": projective, "E": elastic, "RTS28": rts28}[kind]
    return jax.vmap(single)(keys, images), labels


def _check(kind: str, images, labels) -> tuple[jax.Array, jax.Array]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    if images.ndim != 4 or images.shape[1:3] != (SIDE, SIDE):
        raise ValueError(f"images must have shape (N, 28, 28, C), got {images.shape}")
    if kind == "addition" and images.shape[3] != 1:
        raise ValueError(f"images for kind='addition' must have one channel, got shape {images.shape}")
    if labels.shape != images.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}")
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(jnp.float32) / 255.0  # uint8 digits → [0, 1]
    elif jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    else:
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
    return images, labels.astype(jnp.int32)


def distort(kind: str, key: jax.Array, images, labels) -> tuple[jax.Array, jax.Array]:
    """Distorts a batch of 28×28 digits (see the module docstring for shapes and kinds)."""
    images, labels = _check(kind, images, labels)
    return _distort(kind, key, images, labels)


def test_set(kind: str, images, labels, *, seed: int, first_chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed distorted test set: chunk ``i`` uses ``fold_in(key(seed), i)``.

    ``images`` may also be whole chunks of a larger split, from chunk ``first_chunk`` on (rows
    ``first_chunk * TEST_CHUNK`` onwards): they come out as they do in the whole split's set."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    images, labels = np.asarray(images), np.asarray(labels)
    _check(kind, images[:1], labels[:1])
    root = jax.random.key(int(seed))
    out_images, out_labels = [], []
    for i, start in enumerate(range(0, len(images), TEST_CHUNK)):
        chunk = slice(start, start + TEST_CHUNK)
        x, y = distort(kind, jax.random.fold_in(root, first_chunk + i), images[chunk], labels[chunk])
        out_images.append(np.asarray(x))
        out_labels.append(np.asarray(y))
    if not out_images:
        return np.zeros((0, *OUTPUT_SHAPES[kind]), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(out_images), np.concatenate(out_labels)
