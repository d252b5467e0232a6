"""Write one PNG grid of samples per distortion: what the model sees.

Usage::

    python -m train.show_data --data_dir DIR --out OUT_DIR [--split test] [--count 64] [--seed 0]

Reads the first ``count`` digits of a prepared MNIST split, distorts them with every kind
of :mod:`train.distortions` and writes ``OUT_DIR/<kind>.png`` (label above each sample;
the two digits of "addition" are drawn in red and green).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import jax
import numpy as np

from train import distortions, input_pipeline


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1 or 2) in [0, 1] → (N, H, W, 3); two channels become red and green."""
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return np.concatenate([images, np.zeros_like(images[..., :1])], axis=-1)


def save_grid(path: os.PathLike | str, images: np.ndarray, labels: np.ndarray, *, title: str) -> None:
    """Saves ``images`` (N, H, W, C) in [0, 1] as a square grid PNG with the labels as captions."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.2 + 0.4), squeeze=False)
    rgb = np.clip(_as_rgb(images), 0.0, 1.0)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(rgb[i], interpolation="nearest")
            ax.set_title(str(int(labels[i])), fontsize=8, pad=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.show_data", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data dir with a prepared mnist")
    parser.add_argument("--out", required=True, help="directory for the PNGs")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be positive, got {args.count}")
    images, labels = input_pipeline.load_split(
        "mnist", f"{args.split}[:{args.count}]", data_dir=args.data_dir, shard_index=0, shard_count=1
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    for kind in distortions.KINDS:
        x, y = distortions.distort(kind, jax.random.fold_in(key, distortions.KINDS.index(kind)), images, labels)
        h, w, _ = distortions.OUTPUT_SHAPES[kind]
        save_grid(out / f"{kind}.png", np.asarray(x), np.asarray(y), title=f"{kind}: {h}x{w}, seed {args.seed}")
        print(out / f"{kind}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
