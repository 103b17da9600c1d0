"""Figures of the benchmark: overlays, threshold panels, per-layer attention GIF (Pillow only).

* :func:`overlay_with_gt` -- the heatmap overlay (``viz.overlay_figure``) with the ground-truth
  outline drawn on it.
* :func:`threshold_panel` -- one row of tiles: the image, the map, then one binarised map per
  threshold rule drawn over the ground truth (TP green, FP red, FN blue outline) with the IoU in
  each tile's title.
* :func:`attention_gif` -- raw attention of every block for one image, one frame per block,
  an animated GIF that loops forever (``loop=0``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..viz import colorize, draw_contour, overlay_figure, to_uint8_rgb

_BG = (255, 255, 255)
_FG = (20, 20, 20)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def overlay_with_gt(pixels: np.ndarray, heatmap: np.ndarray, gt: np.ndarray | None, title: str,
                    *, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Overlay figure (title + colour bar) with the GT outline in white."""
    return overlay_figure(pixels, heatmap, title, alpha=alpha, cmap=cmap,
                          contour_mask=gt if gt is not None and np.any(gt) else None)


def _mask_tile(pixels: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    base = to_uint8_rgb(pixels).astype(np.float32) * 0.6
    out = base.copy()
    g = np.zeros(pred.shape, dtype=bool) if gt is None else np.asarray(gt, dtype=bool)
    tp, fp = pred & g, pred & ~g
    for m, col in ((tp, (40, 200, 60)), (fp, (230, 50, 40))):
        out[m] = 0.35 * out[m] + 0.65 * np.asarray(col, dtype=np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if g.any():
        out = draw_contour(out, g, (60, 120, 255))
    return out


@dataclass(frozen=True)
class PanelTile:
    title: str
    rgb: np.ndarray


def _compose(tiles: Sequence[PanelTile], header: str = "", font_size: int | None = None
             ) -> Image.Image:
    h = max(t.rgb.shape[0] for t in tiles)
    fs = int(font_size or min(28, max(11, round(h / 22))))
    font = _font(fs)
    pad = max(4, fs // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def tsize(s: str) -> tuple[int, int]:
        if not s:
            return 0, 0
        x0, y0, x1, y1 = probe.textbbox((0, 0), s, font=font)
        return math.ceil(x1 - min(x0, 0)), math.ceil(y1 - min(y0, 0))

    widths = [max(t.rgb.shape[1], tsize(t.title)[0]) for t in tiles]
    th = max(tsize(t.title)[1] for t in tiles)
    hh = tsize(header)[1] + pad if header else 0
    W = sum(widths) + pad * (len(tiles) + 1)
    H = hh + pad + th + pad + h + pad
    fig = Image.new("RGB", (max(W, tsize(header)[0] + 2 * pad), H), _BG)
    d = ImageDraw.Draw(fig)
    if header:
        d.text((pad, pad), header, fill=_FG, font=font)
    x = pad
    for t, w in zip(tiles, widths):
        d.text((x, hh + pad), t.title, fill=_FG, font=font)
        fig.paste(Image.fromarray(t.rgb, mode="RGB"), (x + (w - t.rgb.shape[1]) // 2, hh + 2 * pad + th))
        x += w + pad
    return fig


def threshold_panel(pixels: np.ndarray, heatmap: np.ndarray, gt: np.ndarray | None,
                    binarised: Sequence[tuple[str, np.ndarray, float]], *, header: str = "",
                    cmap: str = "jet") -> Image.Image:
    """Image | map | one tile per rule (binarised map over the GT, IoU in its title).

    Args:
        binarised: ``(rule label, bool mask, IoU)`` per rule.
    """
    img = to_uint8_rgb(pixels)
    if gt is not None and np.any(gt):
        img = draw_contour(img, gt, (60, 120, 255))
    tiles = [PanelTile("image + GT", img), PanelTile("map", colorize(heatmap, cmap))]
    for label, mask, score in binarised:
        iou_txt = "n/a" if score is None or math.isnan(score) else f"{score:.3f}"
        tiles.append(PanelTile(f"{label}: IoU {iou_txt}", _mask_tile(pixels, np.asarray(mask, bool), gt)))
    return _compose(tiles, header)


def _pad_to(fig: Image.Image, size: tuple[int, int]) -> Image.Image:
    if fig.size == size:
        return fig
    out = Image.new("RGB", size, _BG)
    out.paste(fig, (0, 0))
    return out


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, *, duration_ms: int = 700
             ) -> Path:
    """Animated GIF (all frames padded to one size, ``loop=0`` = forever)."""
    if not frames:
        raise ValueError("no frames")
    size = (max(f.size[0] for f in frames), max(f.size[1] for f in frames))
    fr = [_pad_to(f.convert("RGB"), size) for f in frames]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fr[0].save(p, save_all=True, append_images=fr[1:], loop=0, duration=int(duration_ms),
               disposal=2, optimize=False)
    return p


def layer_attention_maps(adapter: Any, pixels: np.ndarray, *, head_fusion: str = "mean"
                         ) -> list[np.ndarray]:
    """Raw attention (read-out row, heads fused) of EVERY block for one image, in one forward:
    a list of ``(H0, W0)`` heatmaps in [0, 1] on the original grid."""
    from dataclasses import dataclass as _dc

    import torch

    from ..capture import Needs
    from ..engine import run_explainers
    from ..explainers.raw_attention import raw_attention
    from ..geometry import preprocess
    from ..registry import Explainer
    from ..results import normalise

    class _AllBlocks(Explainer):  # not registered: a one-off capture of every block
        name = "attention_all_blocks"
        title = "Raw attention, every block"
        needs = Needs(attn=True)

        @_dc(frozen=True)
        class Params:
            head_fusion: str = "mean"

        def compute(self, cap, adapter, x):
            w = cap.readout_weights("auto")
            per = [cap.to_grid(raw_attention(a, w, cap.num_prefix, self.params.head_fusion)[0])
                   for a in cap.attn]
            stack = torch.stack(per, dim=1)  # (B, L, gh, gw)
            return per[-1], {"layers": stack}

    x, geom = preprocess(pixels, adapter.preprocess)
    res = run_explainers(adapter, x[None], [_AllBlocks(head_fusion=head_fusion)], [None])
    layers = res.outputs[0]["attention_all_blocks"].extras["layers"][0].numpy()
    return [normalise(geom.grid_to_original(g, adapter.patch_size))[0] for g in layers]


def attention_gif(adapter: Any, pixels: np.ndarray, path: str | os.PathLike, *, title: str = "",
                  alpha: float = 0.5, cmap: str = "jet", duration_ms: int = 700) -> Path:
    """One frame per block: raw attention overlay titled ``block i / L``; saved as a looping GIF."""
    maps = layer_attention_maps(adapter, pixels)
    n = len(maps)
    frames = [overlay_figure(pixels, m, f"{title + ' - ' if title else ''}raw attention, block "
                             f"{i + 1}/{n}", alpha=alpha, cmap=cmap) for i, m in enumerate(maps)]
    return save_gif(frames, path, duration_ms=duration_ms)


__all__ = ["PanelTile", "attention_gif", "layer_attention_maps", "overlay_with_gt", "save_gif",
           "threshold_panel"]
