"""Demo: warp a synthetic image with every transform and save a PNG gallery.

python -m stn_jax.demo --out out/demo.png
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np

import stn_jax

__all__ = ["checkerboard", "gallery", "main"]


def checkerboard(size: int = 96, squares: int = 8) -> np.ndarray:
    """An RGB test card: checkerboard with a colour gradient, so warps are easy to read."""
    y, x = np.mgrid[0:size, 0:size] / size
    board = ((np.floor(x * squares) + np.floor(y * squares)) % 2).astype(np.float32)
    return np.stack([board * x, board * (1 - y), 0.3 + 0.7 * board * y], axis=-1).astype(np.float32)


def gallery(image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    shape = image.shape[:2]
    rng = np.random.default_rng(0)
    warps = {
        "identity": ("affine", stn_jax.identity_params("affine")),
        "affine": ("affine", jnp.array([[0.9, -0.3, 0.1], [0.25, 0.8, -0.05]])),
        "attention": ("attention", jnp.array([0.5, 0.3, -0.3])),
        "similarity": ("similarity", jnp.array([1.1, 0.6, 0.0, 0.0])),
        "projective": ("projective", jnp.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.3, 0.4, 1.0]])),
        "tps": ("tps", jnp.asarray(rng.normal(0, 0.12, (16, 2)), jnp.float32)),
    }
    out = []
    for name, (transform, theta) in warps.items():
        g = stn_jax.grid(theta, shape, transform=transform)
        out.append((name, np.asarray(stn_jax.sample(image, g, padding="zeros"))))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
