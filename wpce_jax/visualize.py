"""Plots of what a trained model does, for notebooks: each function takes arrays and returns a matplotlib Figure.

No global state: figures are built with `matplotlib.figure.Figure` (not pyplot), so they work under any backend,
Agg included, and nothing stays open; a notebook shows a returned figure as the cell's value, a script saves it
with `fig.savefig(path)`.

    zeroshot_grid          images [N, H, W, 3] with predicted / true class  -> one panel per image
    retrieval_example      a text query, images [N, H, W, 3], scores [N]    -> the query's top-k images
    similarity_matrix      scores [R, C]                                    -> the matrix as an image, one colour bar
    image_weight_heatmaps  images [N, H, W, 3], weights [N, 1 + rows*cols]  -> each image over its patch weights
    text_weight_bars       tokens N x [L], weights [N, L]                   -> one bar per token position

Point weights can be negative (WPCE's weights are alpha * tanh(x / alpha)): the weight plots use a diverging
colormap with a symmetric norm centred at 0 (`weight_norm`), red above 0 and blue below, shared by all panels of a
figure so that their colours compare.
"""
from typing import Optional, Sequence

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure

WEIGHT_CMAP = "RdBu_r"      # diverging: blue < 0 < red, white at 0
SCORE_CMAP = "viridis"


def weight_norm(weights) -> colors.Normalize:
    """Normalize(-m, m) with m = max |weight| (1 if all are 0): centred at 0 (0 maps to 0.5), covering every
    weight, so that a negative weight always lands on the blue half of WEIGHT_CMAP and a positive one on the
    red half."""
    m = float(np.max(np.abs(np.asarray(weights, np.float64)))) if np.size(weights) else 0.0
    if not np.isfinite(m):
        raise ValueError("weights must be finite")
    m = m if m > 0 else 1.0
    return colors.Normalize(vmin=-m, vmax=m)


def _images(images) -> np.ndarray:
    """[N, H, W, 3] (or [N, H, W]) uint8 0-255 or float in [0, 1] -> what imshow takes."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"images must be [N, H, W, 3] or [N, H, W], got shape {images.shape}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images


def _show(ax, image) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255 if image.dtype == np.uint8 else 1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return -(-n // ncols), ncols


def zeroshot_grid(images, predicted, true, class_names: Sequence[str], ncols: int = 10,
                  panel: float = 1.1) -> Figure:
    """Zero-shot predictions: one panel per image, titled with the predicted class, green if right, red with the
    true class if wrong.

    images [N, H, W, 3] uint8 (or float in [0, 1]); predicted, true [N] int class indices into class_names.
    The figure has N axes, in row-major order, ncols per row; its suptitle gives the accuracy over these N.
    """
    images, predicted, true = _images(images), np.asarray(predicted), np.asarray(true)
    n = len(images)
    if predicted.shape != (n,) or true.shape != (n,):
        raise ValueError(f"predicted and true must be [N] = [{n}], got {predicted.shape} and {true.shape}")
    rows, cols = _grid(n, ncols)
    fig = Figure(figsize=(panel * cols, (panel + 0.25) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            fig.delaxes(ax)
            continue
        _show(ax, images[i])
        right = predicted[i] == true[i]
        label = class_names[predicted[i]] if right else f"{class_names[predicted[i]]} ({class_names[true[i]]})"
        ax.set_title(label, fontsize=8, color="tab:green" if right else "tab:red")
    fig.suptitle(f"zero-shot: {int(np.sum(predicted == true))} of these {n} right (wrong: predicted (true))",
                 fontsize=10)
    return fig


def retrieval_example(query_text: str, images, scores, k: int = 8, labels: Optional[Sequence[str]] = None,
                      panel: float = 1.3) -> Figure:
    """Text-to-image retrieval: the k images with the highest scores for one text query, best first.

    images [N, H, W, 3]; scores [N] (the query's similarity to each image); labels: N optional strings (e.g. the
    images' true classes) shown under the scores. The figure has k axes, titled "#rank score".
    """
    images, scores = _images(images), np.asarray(scores, np.float64)
    if scores.shape != (len(images),):
        raise ValueError(f"scores must be [N] = [{len(images)}], got {scores.shape}")
    k = min(k, len(images))
    order = np.argsort(-scores, kind="stable")[:k]
    fig = Figure(figsize=(panel * k, panel + 0.7), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False).ravel()
    for rank, (ax, i) in enumerate(zip(axes, order), start=1):
        _show(ax, images[i])
        ax.set_title(f"#{rank}  {scores[i]:.3f}", fontsize=8)
        if labels is not None:
            ax.set_xlabel(str(labels[i]), fontsize=8)
    fig.suptitle(f"query: {query_text!r}", fontsize=10)
    return fig


def similarity_matrix(scores, row_labels: Optional[Sequence[str]] = None,
                      col_labels: Optional[Sequence[str]] = None, title: str = "similarity",
                      annotate: Optional[bool] = None, cmap: str = SCORE_CMAP, size: float = 0.45) -> Figure:
    """A score matrix as an image: scores [R, C] drawn exactly (the image's array is `scores`), one colour bar,
    rows and columns labelled. annotate: write each value in its cell (default: when R, C <= 12).
    The figure has two axes: the matrix and its colour bar."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [R, C], got shape {scores.shape}")
    r, c = scores.shape
    for name, labels, n in (("row_labels", row_labels, r), ("col_labels", col_labels, c)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} must have {n} entries, got {len(labels)}")
    fig = Figure(figsize=(max(3.0, size * c + 1.8), max(2.5, size * r + 1.0)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(scores, cmap=cmap, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, shrink=0.9)
    ax.set_xticks(range(c), col_labels if col_labels is not None else range(c), rotation=60, ha="right",
                  fontsize=8)
    ax.set_yticks(range(r), row_labels if row_labels is not None else range(r), fontsize=8)
    if annotate if annotate is not None else max(r, c) <= 12:
        mid = (np.nanmin(scores) + np.nanmax(scores)) / 2
        for (i, j), v in np.ndenumerate(scores):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if v > mid else "white")
    ax.set_title(title, fontsize=10)
    return fig


def _patch_grid(num_points: int, patch_grid: Optional[tuple[int, int]]) -> tuple[int, int]:
    if patch_grid is None:
        side = int(round(np.sqrt(num_points - 1)))
        if side * side != num_points - 1:
            raise ValueError(f"{num_points} image points are not a class token plus a square patch grid; pass "
                             f"patch_grid=(rows, columns)")
        return side, side
    rows, cols = patch_grid
    if 1 + rows * cols != num_points:
        raise ValueError(f"patch_grid {patch_grid} needs 1 + {rows * cols} points per image, got {num_points}")
    return rows, cols


def image_weight_heatmaps(images, weights, patch_grid: Optional[tuple[int, int]] = None,
                          titles: Optional[Sequence[str]] = None, alpha: float = 0.55,
                          panel: float = 1.5) -> Figure:
    """The image points' weights over the image: one column per image, the image on top, below it the patch
    weights as a heatmap over the image (each patch's cell covers that patch's pixels).

    images [N, H, W, 3]; weights [N, 1 + rows * cols] (a tower's cloud weights: point 0 the class token, then the
    patches row-major; `LoadedModel.image_clouds(images).weights`); patch_grid (rows, cols), square by default.
    The class token's weight is written under its heatmap ("cls +0.12"). Colours: WEIGHT_CMAP through
    `weight_norm` of all weights in the figure (patches and class tokens), so negative weights are blue and
    every panel shares one scale. The figure has 2N axes (images, then heatmaps) and one colour bar axes.
    """
    images, weights = _images(images), np.asarray(weights, np.float64)
    n = len(images)
    if weights.ndim != 2 or weights.shape[0] != n:
        raise ValueError(f"weights must be [N, M] with N = {n}, got shape {weights.shape}")
    rows, cols = _patch_grid(weights.shape[1], patch_grid)
    norm = weight_norm(weights)
    height, width = images.shape[1:3]
    fig = Figure(figsize=(panel * n + 1.0, 2 * panel + 0.5), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    heat = None
    for i in range(n):
        _show(axes[0, i], images[i])
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=8)
        ax = axes[1, i]
        gray = images[i] if images[i].ndim == 2 else images[i].mean(-1)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1, interpolation="nearest")
        heat = ax.imshow(weights[i, 1:].reshape(rows, cols), cmap=WEIGHT_CMAP, norm=norm, alpha=alpha,
                         interpolation="nearest", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"cls {weights[i, 0]:+.2f}", fontsize=8,
                      color=heat.cmap(norm(weights[i, 0])) if abs(weights[i, 0]) > 0.3 * norm.vmax else "black")
    fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=0.8, label="point weight")
    fig.suptitle("image point weights (top: input; bottom: patch weights, blue < 0 < red)", fontsize=10)
    return fig


def text_weight_bars(tokens: Sequence[Sequence[str]], weights, panel_height: float = 1.6,
                     width: float = 7.0) -> Figure:
    """The text points' weights: one axes per text, one bar per token position, labelled with its token.

    tokens: N lists of L strings (`LoadedModel.token_strings(texts)`); weights [N, L] (`text_clouds(...).weights`).
    Bars are coloured with WEIGHT_CMAP through `weight_norm` of all weights (negative ones blue and below the zero
    line); every axes has the same y range, symmetric about 0. The figure has N axes and one colour bar axes.
    """
    weights = np.asarray(weights, np.float64)
    n = len(tokens)
    if weights.ndim != 2 or weights.shape[0] != n or any(len(t) != weights.shape[1] for t in tokens):
        raise ValueError(f"weights must be [N, L] with N = {n} texts of L tokens each, got shape {weights.shape} "
                         f"for token lists of lengths {[len(t) for t in tokens]}")
    norm = weight_norm(weights)
    mappable = cm.ScalarMappable(norm=norm, cmap=WEIGHT_CMAP)
    fig = Figure(figsize=(width, panel_height * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, toks, w in zip(axes, tokens, weights):
        x = np.arange(len(toks))
        ax.bar(x, w, color=mappable.to_rgba(w), edgecolor="0.3", linewidth=0.4)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylim(1.1 * norm.vmin, 1.1 * norm.vmax)
        ax.set_xlim(-0.6, len(toks) - 0.4)
        ax.set_xticks(x, list(toks), rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("weight", fontsize=8)
    fig.colorbar(mappable, ax=axes.tolist(), shrink=0.9, label="point weight")
    fig.suptitle("text point weights, one per token position (blue < 0 < red)", fontsize=10)
    return fig


__all__ = ["weight_norm", "zeroshot_grid", "retrieval_example", "similarity_matrix", "image_weight_heatmaps",
           "text_weight_bars", "WEIGHT_CMAP", "SCORE_CMAP"]
