"""Pictures people would rather see than read: loss curves and image grids."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def save_loss_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "training loss") -> None:
    """Train and validation loss per epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train")
    val = [h.get("val_loss") for h in history]
    if any(v is not None for v in val):
        ax.plot(epochs, [np.nan if v is None else v for v in val], marker="o", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid(rows: Sequence[np.ndarray], pad: int = 2, labels: Sequence[str] | None = None) -> Image.Image:
    """Stack rows of (N, S, S, 3) uint8 images into one picture, one row each."""
    n = max(len(r) for r in rows)
    s = rows[0].shape[1]
    label_w = 90 if labels else 0
    grid = Image.new("RGB", (label_w + n * (s + pad) + pad, len(rows) * (s + pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = pad + r * (s + pad)
        if labels:
            draw.text((4, y + s // 2 - 5), labels[r], fill=(230, 230, 230))
        for c, img in enumerate(row):
            grid.paste(Image.fromarray(img), (label_w + pad + c * (s + pad), y))
    return grid


def to_uint8_images(batch) -> np.ndarray:
    """(N, 3, H, W) float tensor in [0, 1] -> (N, H, W, 3) uint8 array."""
    arr = batch.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(arr)
