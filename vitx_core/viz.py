"""Rendering heatmaps over images (NumPy / PIL / matplotlib colormaps only; no UI framework).

Geometry is sacred here too: every function keeps the image's own pixel grid. A heatmap must
already be on that grid (``Explanation.heatmap`` is); nothing is resized. :func:`overlay_figure`
adds its title bar and colour bar *outside* an overlay region of exactly ``H0 x W0`` pixels,
whose position is stored in ``figure.info["overlay_box"]`` as ``(x, y, w, h)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Background and text colours of the figure decorations (title bar, colour bar labels).
FIGURE_BG = (255, 255, 255)
FIGURE_FG = (0, 0, 0)


def get_cmap(cmap: Any = "jet"):
    """A matplotlib colormap by name from ``matplotlib.colormaps`` (or a ``Colormap`` as is)."""
    import matplotlib

    if not isinstance(cmap, str):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; e.g. jet, inferno, viridis, magma, turbo, "
                         "gray (any name in matplotlib.colormaps)") from None


def _check_2d(heatmap: Any) -> np.ndarray:
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    return np.nan_to_num(h.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)


def colorize(heatmap: Any, cmap: Any = "jet") -> np.ndarray:
    """Heatmap ``(H, W)`` with values in [0, 1] -> uint8 RGB ``(H, W, 3)`` through ``cmap``.

    Values are clipped to [0, 1] (NaN counts as 0); 0 maps to the colormap's first colour and
    1 to its last, exactly as ``matplotlib.colormaps[cmap](value, bytes=True)``.
    """
    h = _check_2d(heatmap)
    return np.ascontiguousarray(get_cmap(cmap)(h, bytes=True)[..., :3])


def to_uint8_rgb(pixels: Any) -> np.ndarray:
    """An image ``(H, W)``, ``(H, W, 1|3|4)`` -> uint8 RGB ``(H, W, 3)``.

    Floats are taken as [0, 1] intensities (clipped, NaN -> 0, rounded); unsigned integers are
    divided by their dtype's maximum (uint8 passes through unchanged); bools are 0 / 255.
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        u = a
    elif a.dtype == np.bool_:
        u = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.unsignedinteger):
        u = np.rint(a.astype(np.float64) * (255.0 / np.iinfo(a.dtype).max)).astype(np.uint8)
    else:
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        u = np.rint(f.clip(0.0, 1.0) * 255.0).astype(np.uint8)
    if u.ndim == 2:
        u = np.repeat(u[:, :, None], 3, axis=2)
    return np.ascontiguousarray(u)


def blend(image_pixels: Any, heatmap: Any, alpha: float | np.ndarray = 0.5, cmap: Any = "jet"
          ) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colormap(heatmap)`` -> uint8 RGB ``(H, W, 3)``.

    ``alpha`` is a number in [0, 1] or an ``(H, W)`` array (per-pixel opacity). ``alpha=0``
    returns :func:`to_uint8_rgb` of the image exactly and ``alpha=1`` :func:`colorize` exactly.
    The heatmap must already be on the image's grid (same ``H, W``); nothing is resized.
    """
    img = to_uint8_rgb(image_pixels)
    h = np.asarray(heatmap)
    if h.shape != img.shape[:2]:
        raise ValueError(f"heatmap shape {h.shape} does not match the image {img.shape[:2]}: "
                         "map it to the original grid first (Explanation.heatmap)")
    col = colorize(h, cmap)
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 2:
        if a.shape != img.shape[:2]:
            raise ValueError(f"alpha map shape {a.shape} does not match the image {img.shape[:2]}")
        a = a[:, :, None]
    elif a.ndim != 0:
        raise ValueError(f"alpha must be a number or an (H, W) array, got shape {a.shape}")
    if not (np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()):
        raise ValueError("alpha must lie in [0, 1]")
    out = (1.0 - a) * img.astype(np.float64) + a * col.astype(np.float64)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def mask_boundary(mask: Any) -> np.ndarray:
    """Boolean ``(H, W)``: pixels of ``mask`` with a 4-neighbour outside it (or on the border)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    p = np.pad(m, 1, constant_values=False)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def draw_contour(rgb: Any, mask: Any, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of uint8 ``rgb`` ``(H, W, 3)`` with the 1-px inner boundary of ``mask`` in ``color``."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got shape {out.shape}")
    edge = mask_boundary(mask)
    if edge.shape != out.shape[:2]:
        raise ValueError(f"mask shape {edge.shape} does not match the image {out.shape[:2]}")
    out[edge] = np.asarray(color, dtype=np.uint8)
    return out


def _font_file() -> str | None:
    """DejaVu Sans shipped inside matplotlib (wide glyph coverage, e.g. the em dash)."""
    import os

    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return path if os.path.isfile(path) else None


def _font(size: int) -> tuple[Any, bool]:
    """A font of ``size`` px and whether it has typographic glyphs (em dash)."""
    path = _font_file()
    if path is not None:
        try:
            return ImageFont.truetype(path, size), True
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size), False
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default(), False


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(np.ceil(right - min(left, 0))), int(np.ceil(bottom - min(top, 0)))


def overlay_figure(image_pixels: Any, heatmap: Any, title: str = "", alpha: float = 0.5,
                   cmap: Any = "jet", *, contour_mask: Any = None,
                   contour_color: tuple[int, int, int] = (255, 255, 255),
                   font_size: int | None = None) -> Image.Image:
    """The blended overlay with a title bar above it and a colour bar to its right.

    The overlay region is :func:`blend` of the image and heatmap, pixel for pixel, at the
    image's own resolution (``H0 x W0``, no resampling); it sits at ``info["overlay_box"] =
    (x, y, W0, H0)`` of the returned RGB image. ``contour_mask`` (optional ``(H0, W0)`` bool)
    draws its 1-px boundary onto the overlay (e.g. the region the model saw).

    Args:
        title: text of the title bar (widened canvas if the image is narrower than the text).
        font_size: default scales with the image (12-64 px).
    """
    over = blend(image_pixels, heatmap, alpha, cmap)
    if contour_mask is not None:
        over = draw_contour(over, contour_mask, contour_color)
    h0, w0 = over.shape[:2]
    fs = int(font_size or min(64, max(12, round(max(h0, w0) / 45))))
    font, rich = _font(fs)
    if not rich:  # Pillow's default font draws the dashes as boxes
        title = title.replace("\u2014", "-").replace("\u2013", "-")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, fs // 2)

    # colour bar: a vertical strip (1 at the top, 0 at the bottom) with "1" / "0" labels
    bar_w = max(8, fs)
    label_w = max(_text_size(probe, s, font)[0] for s in ("0", "1"))
    cbar_total = pad + bar_w + pad // 2 + label_w + pad
    title_w, title_h = _text_size(probe, title, font) if title else (0, 0)
    bar_h_title = title_h + 2 * pad if title else pad

    width = max(w0 + cbar_total, title_w + 2 * pad)
    x0 = (width - cbar_total - w0) // 2 if width > w0 + cbar_total else 0
    y0 = bar_h_title
    _, lh = _text_size(probe, "1", font)
    height = y0 + max(h0, lh) + pad
    fig = Image.new("RGB", (width, height), FIGURE_BG)
    fig.paste(Image.fromarray(over, mode="RGB"), (x0, y0))

    draw = ImageDraw.Draw(fig)
    if title:
        draw.text((pad, pad), title, fill=FIGURE_FG, font=font)
    ramp = np.linspace(1.0, 0.0, h0, dtype=np.float64)[:, None].repeat(bar_w, axis=1)
    bx = x0 + w0 + pad
    fig.paste(Image.fromarray(colorize(ramp, cmap), mode="RGB"), (bx, y0))
    lx = bx + bar_w + pad // 2
    draw.text((lx, y0), "1", fill=FIGURE_FG, font=font)
    draw.text((lx, y0 + max(0, h0 - lh)), "0", fill=FIGURE_FG, font=font)
    fig.info["overlay_box"] = (x0, y0, w0, h0)
    return fig


def overlay_region(fig: Image.Image) -> np.ndarray:
    """The ``(H0, W0, 3)`` overlay pixels of a figure made by :func:`overlay_figure`."""
    x, y, w, h = fig.info["overlay_box"]
    return np.asarray(fig.convert("RGB"))[y:y + h, x:x + w]
