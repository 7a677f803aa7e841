"""Prediction overlays for the eye of a reader: image, ground truth and prediction side by side, as one PNG.

Bundles write a few of these while validating or evaluating (e.g. into ``<output_dir>/overlays``) and
``common.tracking.MLflowRunRecorder(overlay_dir=...)`` logs them as MLflow artifacts; ``common.report`` shows them.
Drawn with matplotlib's object API (``Figure`` + Agg canvas), so no GUI backend or global pyplot state is involved,
and written atomically through :func:`common.io.atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.io import save_figure

# label colours (tab10 without its grey), label 0 = background is transparent
_COLOURS = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b"]


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _display_image(image: Any) -> tuple[np.ndarray, str | None]:
    """A 2D grey image (percentile-windowed to [0, 1]) or an HxWx3 RGB image; also the colour map to use."""
    img = np.squeeze(_as_numpy(image)).astype(np.float32)
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (3, 4):
        img = np.moveaxis(img, 0, -1)  # channel-first RGB -> channel-last
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3]
        if img.max() > 1.0:
            img = img / 255.0 if img.max() <= 255.0 else img / img.max()
        return np.clip(img, 0.0, 1.0), None
    if img.ndim != 2:
        raise ValueError(f"overlay image must be 2D (H, W) or RGB (H, W, 3), got shape {img.shape}")
    finite = img[np.isfinite(img)]
    low, high = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if high <= low:
        low, high = float(finite.min()) if finite.size else 0.0, (float(finite.max()) if finite.size else 1.0)
    scaled = (img - low) / (high - low) if high > low else np.zeros_like(img)
    return np.clip(np.nan_to_num(scaled), 0.0, 1.0), "gray"


def _is_label_map(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return True
    finite = array[np.isfinite(array)]
    return bool(finite.size == 0 or np.all(finite == np.round(finite)))


def _draw_map(ax: Any, overlay: np.ndarray, class_names: Mapping[int, str], alpha: float, legend: list) -> Any:
    """Draw a label map (colour per label, background transparent) or a probability/heat map; return a mappable."""
    from matplotlib.colors import ListedColormap

    if _is_label_map(overlay):
        labels = overlay.astype(np.int64)
        present = [v for v in np.unique(labels).tolist() if v != 0]
        rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
        for value in present:
            colour = _COLOURS[(value - 1) % len(_COLOURS)] if value > 0 else "#ffffff"
            rgba[labels == value] = (*_hex_rgb(colour), alpha)
            legend.append((value, class_names.get(value, f"label {value}"), colour))
        ax.imshow(rgba, interpolation="nearest")
        return None
    heat = np.ma.masked_invalid(overlay.astype(np.float32))
    return ax.imshow(heat, cmap=ListedColormap(_heat_colours()), alpha=alpha, vmin=0.0,
                     vmax=max(1.0, float(np.nanmax(overlay)) if overlay.size else 1.0), interpolation="nearest")


def _heat_colours() -> list:
    from matplotlib import colormaps

    return [colormaps["inferno"](i) for i in np.linspace(0.0, 1.0, 256)]


def _hex_rgb(colour: str) -> tuple[float, float, float]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def save_overlay_png(
    image2d: Any,
    label2d: Any | None,
    pred2d: Any,
    path: str | os.PathLike,
    title: str = "",
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    alpha: float = 0.45,
    dpi: int = 100,
) -> str:
    """Write ``image | image + ground truth | image + prediction`` side by side as one PNG, atomically.

    Args:
        image2d: the image, (H, W) grey (windowed to the 1st-99th percentile) or (H, W, 3) / (3, H, W) RGB.
        label2d: the ground-truth label map (H, W), or None (no ground truth, e.g. inference): then two panels.
        pred2d: the prediction, an integer label map (H, W) or a probability/heat map in [0, 1] (e.g. Grad-CAM).
        path: the PNG to write.
        title: the figure title (say which case and slice).
        class_names: label value -> name for the legend (a sequence is indexed by label value; 0 = background).
        alpha: opacity of the overlays.
        dpi: resolution of the figure.

    Returns:
        the path written, as a string.

    Raises:
        ValueError: the image, label and prediction shapes disagree, or the image is not 2D/RGB.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img, cmap = _display_image(image2d)
    pred = np.squeeze(_as_numpy(pred2d))
    label = None if label2d is None else np.squeeze(_as_numpy(label2d))
    for name, array in (("prediction", pred), ("ground truth", label)):
        if array is not None and array.shape != img.shape[:2]:
            raise ValueError(f"overlay {name} shape {array.shape} does not match the image shape {img.shape[:2]}")
    if isinstance(class_names, Sequence) and not isinstance(class_names, str):
        class_names = dict(enumerate(class_names))
    names = dict(class_names or {})

    panels = [("image", None)] + ([("ground truth", label)] if label is not None else []) + [("prediction", pred)]
    height, width = img.shape[:2]
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * len(panels), panel_w * height / max(width, 1) + 0.9), dpi=dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    legend: list = []
    mappable = None
    for ax, (name, overlay) in zip(axes, panels):
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        if overlay is not None:
            drawn = _draw_map(ax, overlay, names, alpha, legend)
            mappable = drawn if drawn is not None else mappable
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    unique = {value: (text, colour) for value, text, colour in legend}
    if unique:
        handles = [Patch(facecolor=colour, edgecolor="black", label=text)
                   for _, (text, colour) in sorted(unique.items())]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=list(axes), fraction=0.025, pad=0.02)
        bar.set_label("predicted probability", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.92 if mappable is not None else 0.98, top=0.85 if title else 0.92,
                        bottom=0.12 if unique else 0.03, wspace=0.05)
    return save_figure(fig, path, dpi=dpi)


def middle_slice(volume: Any, axis: int = -1, mask: Any | None = None) -> int:
    """The slice index to show along ``axis``: where ``mask`` has the most foreground, else the middle one."""
    vol = _as_numpy(volume)
    axis = axis % vol.ndim
    if mask is not None:
        m = _as_numpy(mask) != 0
        other = tuple(i for i in range(m.ndim) if i != axis)
        counts = m.sum(axis=other)
        if counts.max() > 0:
            return int(np.argmax(counts))
    return vol.shape[axis] // 2
