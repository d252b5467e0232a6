"""Demo: warp a synthetic image with every transform and save a PNG gallery.

python -m stn_jax.demo --out out/demo.png
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import stn_jax

__all__ = ["checkerboard", "gallery", "main"]


def checkerboard(size: int = 96, squares: int = 8) -> np.ndarray:
    """An RGB test card: checkerboard with a colour gradient, so warps are easy to read.

    Args:
      size: height and width in pixels.
      squares: squares along each side.

    Returns:
      ``(size, size, 3)`` float32 image in [0, 1].
    """
    y, x = np.mgrid[0:size, 0:size] / size
    board = ((np.floor(x * squares) + np.floor(y * squares)) % 2).astype(np.float32)
    return np.stack([board * x, board * (1 - y), 0.3 + 0.7 * board * y], axis=-1).astype(np.float32)


# θ of each transform in the gallery (an identity-like θ would show nothing).
_THETAS = {
    "affine": ("affine", [[0.9, -0.3, 0.1], [0.25, 0.8, -0.05]]),
    "attention": ("attention", [0.5, 0.3, -0.3]),
    "translation": ("translation", [0.3, -0.2]),
    "similarity": ("similarity", [1.1, 0.6, 0.0, 0.0]),
    "projective": ("projective", [[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.3, 0.4, 1.0]]),
}
# A rotation that also zooms out, so that the output reads outside the input (paddings differ there).
_ZOOM_OUT = [[1.2, -0.7, 0.2], [0.7, 1.2, 0.1]]


def _theta(transform: str) -> jax.Array:
    if transform == "tps":
        return jnp.asarray(np.random.default_rng(0).normal(0, 0.12, (16, 2)), jnp.float32)
    return jnp.asarray(_THETAS[transform][1], jnp.float32)


def gallery(image: np.ndarray, *, vary: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Labelled warps of ``image``, one per transform, sampling method or padding.

    Args:
      image: ``(H, W, C)`` float image, e.g. :func:`checkerboard`.
      vary: ``None``: the demo's row (the identity, then the affine, attention, similarity,
        projective and TPS warps); ``"transform"``: one warp per name of
        :data:`stn_jax.TRANSFORMS`; ``"method"``: one per :data:`stn_jax.METHODS` (the same
        rotation and zoom-out); ``"padding"``: one per :data:`stn_jax.PADDINGS` (idem).

    Returns:
      ``[(label, warped), ...]``, each ``warped`` an ``(H, W, C)`` NumPy array.

    Example:
      >>> from stn_jax import demo
      >>> [label for label, _ in demo.gallery(demo.checkerboard(16), vary="padding")]
      ['zeros', 'border', 'reflection']
    """
    shape = image.shape[:2]
    if vary is None:
        names = ["affine", "attention", "similarity", "projective", "tps"]
        warps = [("identity", "affine", stn_jax.identity_params("affine"), "bilinear", "zeros")]
        warps += [(name, name, _theta(name), "bilinear", "zeros") for name in names]
    elif vary == "transform":
        warps = [(name, name, _theta(name), "bilinear", "zeros") for name in stn_jax.TRANSFORMS]
    elif vary == "method":
        warps = [(name, "affine", jnp.array(_ZOOM_OUT), name, "zeros") for name in stn_jax.METHODS]
    elif vary == "padding":
        warps = [(name, "affine", jnp.array(_ZOOM_OUT), "bilinear", name) for name in stn_jax.PADDINGS]
    else:
        raise ValueError(f"vary must be None, 'transform', 'method' or 'padding', got {vary!r}")
    out = []
    for label, transform, theta, method, padding in warps:
        g = stn_jax.grid(theta, shape, transform=transform)
        out.append((label, np.asarray(stn_jax.sample(image, g, method=method, padding=padding))))
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m stn_jax.demo --out PATH`` writes the demo's row as one PNG.

    Args:
      argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
      The exit status, 0.
    """
    parser = argparse.ArgumentParser(description="Warp a synthetic image with every transform and save a PNG.")
    parser.add_argument("--out", default="out/demo.png", help="where to write the PNG")
    args = parser.parse_args(argv)
    from PIL import Image  # only the demo needs Pillow

    image = checkerboard()
    tiles = gallery(image)
    pad = 4
    row = np.ones((image.shape[0], len(tiles) * (image.shape[1] + pad) - pad, 3), np.float32)
    for k, (_, tile) in enumerate(tiles):
        row[:, k * (image.shape[1] + pad) : k * (image.shape[1] + pad) + image.shape[1]] = tile
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8)).save(path)
    print(f"wrote {path} ({', '.join(name for name, _ in tiles)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
