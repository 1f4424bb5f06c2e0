"""Figures: grids of binary images (matplotlib, headless)."""

from __future__ import annotations

import math
import os

import torch

__all__ = ["image_shape", "figure_panels"]


def image_shape(d: int) -> tuple[int, int]:
    """Height and width for a flat image of d pixels: square when d is a square, else one row."""
    s = math.isqrt(d)
    return (s, s) if s * s == d else (1, d)


def _grid(images: torch.Tensor, shape: tuple[int, int], cols: int, order: str = "C") -> torch.Tensor:
    """(n, h·w) images -> one (rows·(h+1)−1, cols·(w+1)−1) canvas; separators are NaN (drawn light blue).
    ``order="F"``: the pixels are column-major (MATLAB)."""
    h, w = shape
    n = images.shape[0]
    rows = max(1, math.ceil(n / cols))
    canvas = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for i in range(n):
        r, c = divmod(i, cols)
        img = images[i].view(h, w) if order == "C" else images[i].view(w, h).t()
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return canvas


def figure_panels(panels: list[tuple[str, torch.Tensor]], path: str | os.PathLike, *, cols: int = 10,
                  shape: tuple[int, int] | None = None, title: str | None = None, order: str = "C") -> str:
    """Save a PNG with one row of images per panel.

    Args:
        panels: ``(caption, images)`` pairs; images (n, d) in [0, 1] (binary samples, or masked
            inputs with 0.5 for unobserved pixels).
        path: the PNG to write (parent folders are created).
        cols: images per row; shape: (h, w) of an image (default :func:`image_shape`); order: "F" for
            column-major pixels.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = shape or image_shape(panels[0][1].shape[1])
    if shape[0] * shape[1] != panels[0][1].shape[1]:
        raise ValueError(f"image shape {shape} does not hold {panels[0][1].shape[1]} pixels")
    grids = [(cap, _grid(x.detach().float().cpu(), shape, cols, order)) for cap, x in panels]
    heights = [g.shape[0] for _, g in grids]
    fig_w = 1.2 * cols
    fig, axes = plt.subplots(len(grids), 1, figsize=(fig_w, sum(heights) / grids[0][1].shape[1] * fig_w + 0.5 * len(grids)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="#cfe0f5")
    for ax, (cap, g) in zip(axes[:, 0], grids):
        ax.imshow(g.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(cap, fontsize=10, loc="left")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)
