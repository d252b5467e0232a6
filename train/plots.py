"""Figures of a run: test inputs beside the transformer's outputs, and the training curves."""

from __future__ import annotations

import io
import os

import numpy as np
from etils import epath

from train import storage


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _tile_channels(image: np.ndarray) -> np.ndarray:
    """(H, W, C) → displayable: RGB as is, otherwise channels side by side in grey."""
    if image.shape[-1] == 3:
        return np.clip(image, 0.0, 1.0)
    return np.concatenate([image[..., c] for c in range(image.shape[-1])], axis=1)


def save_transformed(
    path: os.PathLike | str, inputs: np.ndarray, outputs: np.ndarray, *, title: str = ""
) -> epath.Path:
    """A grid of rows ``input | transformer output`` for each example; returns the PNG's path."""
    plt = _figure()
    n = len(inputs)
    cols = 2 if n <= 8 else 4  # pairs per row
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.0 * cols * 1.6, rows * 1.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        for j, (image, label) in enumerate(((inputs[i], "input"), (outputs[i], "ST output"))):
            ax = axes[r, 2 * c + j]
            tile = _tile_channels(np.asarray(image, np.float32))
            ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", vmin=0.0, vmax=1.0)
            if r == 0:
                ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=80)


def save_curves(path: os.PathLike | str, records: list[dict], *, test_error: float | None = None) -> epath.Path:
    """Training loss and validation error against the step (from ``metrics.jsonl`` records)."""
    plt = _figure()
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    val = [r for r in records if r["split"] == "val"]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
        ax_err.plot([r["step"] for r in val], [100 * r["error"] for r in val], "o-", label="val error")
    if test_error is not None:
        last = max([r["step"] for r in records], default=0)
        ax_err.plot([last], [100 * test_error], "r*", markersize=10, label=f"test error {100 * test_error:.2f}%")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax_err.set(xlabel="step", ylabel="error (%)", title="classification error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def _save(fig, path: os.PathLike | str, *, dpi: int) -> epath.Path:
    """Writes ``fig`` as a PNG at ``path`` (local or ``gs://``, whole or not at all) and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _figure().close(fig)
    path = storage.path(path)
    storage.mkdir(path.parent)
    storage.write_bytes(path, buffer.getvalue())
    return path
