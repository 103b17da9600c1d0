"""Preprocessing and its geometry: original image pixels <-> model input pixels <-> patch grid.

Coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``, so its centre is ``i + 0.5``.
A :class:`Geometry` is an axis-aligned affine map ``dst = scale * src + offset`` from the
original image (``src_hw``) to the model input (``dst_hw``). Every heatmap leaves vitx in the
original image's pixel grid through :meth:`Geometry.grid_to_original`, which performs a single
bilinear sampling straight from the patch grid (never grid -> input size -> original).

Modes (:class:`PreprocessSpec.mode`):

* ``resize`` (default): the whole image is resized to the input size; aspect may change.
* ``letterbox``: aspect kept, scaled to fit, padded symmetrically with ``pad_value``.
* ``center_crop``: timm's evaluation transform (shortest edge to ``size / crop_pct``, then a
  centre crop). Only for parity with timm; pixels outside the crop are *not seen* by the model
  and are reported by :meth:`Geometry.seen_mask`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Mode = Literal["resize", "letterbox", "center_crop"]
Interp = Literal["bilinear", "bicubic", "nearest"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input. Stored with the weights (model card).

    Attributes:
        size: model input ``(H, W)``.
        mean, std: per-channel normalisation applied to ``[0, 1]`` RGB values.
        mode: ``resize`` | ``letterbox`` | ``center_crop`` (see module docstring).
        interpolation: resampling of the image itself; must match training.
        pad_value: letterbox fill, in ``[0, 1]`` intensity units (before mean/std).
        crop_pct: only for ``center_crop``.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mode: Mode = "resize"
    interpolation: Interp = "bicubic"
    pad_value: float = 0.0
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"PreprocessSpec.size must be (H, W) > 0, got {self.size!r}")
        object.__setattr__(self, "size", size)
        for name in ("mean", "std"):
            vals = tuple(float(v) for v in getattr(self, name))
            if len(vals) == 1:
                vals = vals * 3
            if len(vals) != 3:
                raise ValueError(f"PreprocessSpec.{name} needs 1 or 3 values, got {vals!r}")
            object.__setattr__(self, name, vals)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"PreprocessSpec.std must be > 0, got {self.std!r}")
        if self.mode not in ("resize", "letterbox", "center_crop"):
            raise ValueError(f"unknown preprocessing mode {self.mode!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def geometry(self, src_hw: tuple[int, int]) -> Geometry:
        """The geometry this spec applies to an image of size ``src_hw`` = ``(H0, W0)``."""
        h0, w0 = int(src_hw[0]), int(src_hw[1])
        if h0 <= 0 or w0 <= 0:
            raise ValueError(f"image size must be positive, got {src_hw!r}")
        H, W = self.size
        if self.mode == "resize":
            return Geometry((h0, w0), (H, W), (H / h0, W / w0), (0.0, 0.0), (H, W))
        if self.mode == "letterbox":
            s = min(H / h0, W / w0)
            nh, nw = max(1, min(H, round(h0 * s))), max(1, min(W, round(w0 * s)))
            ty, tx = (H - nh) // 2, (W - nw) // 2
            return Geometry((h0, w0), (H, W), (nh / h0, nw / w0), (float(ty), float(tx)), (nh, nw))
        # center_crop (timm eval): shortest edge -> floor(size / crop_pct), centre crop to size.
        scale_size = math.floor(min(H, W) / self.crop_pct)
        s = scale_size / min(h0, w0)
        rh, rw = max(H, round(h0 * s)), max(W, round(w0 * s))
        top, left = round((rh - H) / 2), round((rw - W) / 2)
        return Geometry((h0, w0), (H, W), (rh / h0, rw / w0), (-float(top), -float(left)),
                        (rh, rw))


def _axis_weights(n_src: int, n_grid: int, patch: int, scale: float, offset: float) -> np.ndarray:
    """(n_src, n_grid) bilinear weights from grid cells to original pixel centres.

    Pixel centre ``x + 0.5`` -> input coordinate ``u = s (x + 0.5) + t`` -> grid coordinate
    ``g = u / patch - 0.5`` (cell ``k`` has its centre at ``g = k``) -> linear interpolation
    between the two nearest cells, clamped at the border (as ``align_corners=False``).
    """
    g = ((np.arange(n_src, dtype=np.float64) + 0.5) * scale + offset) / patch - 0.5
    g = np.clip(g, 0.0, n_grid - 1)
    lo = np.floor(g).astype(np.int64)
    hi = np.minimum(lo + 1, n_grid - 1)
    frac = g - lo
    w = np.zeros((n_src, n_grid), dtype=np.float64)
    rows = np.arange(n_src)
    np.add.at(w, (rows, lo), 1.0 - frac)
    np.add.at(w, (rows, hi), frac)
    return w


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of a plain bilinear resize (half-pixel centres, border clamp)."""
    return _axis_weights(n_out, n_in, 1, n_in / n_out, 0.0)


def resize_bilinear(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` -> ``hw`` float64, equal to ``F.interpolate(mode="bilinear",
    align_corners=False)`` without antialiasing."""
    a = np.asarray(a, dtype=np.float64)
    return bilinear_weights(a.shape[0], int(hw[0])) @ a @ bilinear_weights(a.shape[1], int(hw[1])).T


@dataclass(frozen=True)
class Geometry:
    """Affine map between the original image and the model input.

    Attributes:
        src_hw: original ``(H0, W0)``.
        dst_hw: model input ``(H, W)``.
        scale: ``(sy, sx)``; ``dst = scale * src + offset``.
        offset: ``(ty, tx)``.
        resized_hw: size the whole image is resampled to before padding / cropping.
    """

    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]
    resized_hw: tuple[int, int] = field(default=(0, 0))

    # ---- points and boxes -------------------------------------------------------------
    def forward_points(self, xy: np.ndarray) -> np.ndarray:
        """Original ``(..., 2)`` ``(x, y)`` continuous coordinates -> model input coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        (sy, sx), (ty, tx) = self.scale, self.offset
        return np.stack([xy[..., 0] * sx + tx, xy[..., 1] * sy + ty], axis=-1)

    def inverse_points(self, uv: np.ndarray) -> np.ndarray:
        """Model input ``(..., 2)`` ``(u, v)`` coordinates -> original coordinates."""
        uv = np.asarray(uv, dtype=np.float64)
        (sy, sx), (ty, tx) = self.scale, self.offset
        return np.stack([(uv[..., 0] - tx) / sx, (uv[..., 1] - ty) / sy], axis=-1)

    def forward_box(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        """``(x, y, w, h)`` in original pixels -> ``(x, y, w, h)`` in model-input pixels."""
        x, y, w, h = box
        (sy, sx), (ty, tx) = self.scale, self.offset
        return (x * sx + tx, y * sy + ty, w * sx, h * sy)

    def inverse_box(self, box: tuple[float, float, float, float]) -> tuple[float, ...]:
        x, y, w, h = box
        (sy, sx), (ty, tx) = self.scale, self.offset
        return ((x - tx) / sx, (y - ty) / sy, w / sx, h / sy)

    # ---- grids ------------------------------------------------------------------------
    def grid_to_original(self, grid: np.ndarray | torch.Tensor, patch: tuple[int, int] | int,
                         *, mode: Literal["bilinear", "nearest"] = "bilinear") -> np.ndarray:
        """Patch grid ``(gh, gw)`` (or ``(B, gh, gw)``) -> original pixels ``(H0, W0)``.

        One separable bilinear sampling (or nearest patch for display). In ``resize`` mode
        with ``H = gh * p`` this equals ``F.interpolate(grid, size=(H0, W0),
        mode="bilinear", align_corners=False)``.
        """
        if isinstance(grid, torch.Tensor):
            grid = grid.detach().cpu().numpy()
        g = np.asarray(grid, dtype=np.float64)
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        gh, gw = g.shape[-2:]
        h0, w0 = self.src_hw
        (sy, sx), (ty, tx) = self.scale, self.offset
        if mode == "nearest":
            ys = ((np.arange(h0) + 0.5) * sy + ty) // ph
            xs = ((np.arange(w0) + 0.5) * sx + tx) // pw
            ys = np.clip(ys, 0, gh - 1).astype(np.int64)
            xs = np.clip(xs, 0, gw - 1).astype(np.int64)
            out = g[..., ys, :][..., :, xs]
        else:
            wy = _axis_weights(h0, gh, ph, sy, ty)
            wx = _axis_weights(w0, gw, pw, sx, tx)
            out = np.einsum("yi,...ij,xj->...yx", wy, g, wx, optimize=True)
        return out.astype(np.float32)

    def seen_mask(self) -> np.ndarray:
        """Boolean ``(H0, W0)``: original pixels whose centre lands inside the model input."""
        h0, w0 = self.src_hw
        H, W = self.dst_hw
        (sy, sx), (ty, tx) = self.scale, self.offset
        v = (np.arange(h0) + 0.5) * sy + ty
        u = (np.arange(w0) + 0.5) * sx + tx
        return ((v >= 0) & (v < H))[:, None] & ((u >= 0) & (u < W))[None, :]

    def grid_extent(self, grid_hw: tuple[int, int], patch: tuple[int, int] | int
                    ) -> tuple[float, float, float, float]:
        """Where the patch grid lies over the original image: ``(x0, y0, dx, dy)``.

        ``x0, y0`` are the original coordinates of the top-left corner of cell (0, 0) and
        ``dx, dy`` a cell's size in original pixels (for Plotly ``x0``/``dx`` heatmaps).
        """
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        (sy, sx), (ty, tx) = self.scale, self.offset
        return (-tx / sx, -ty / sy, pw / sx, ph / sy)

    @property
    def covers_whole_image(self) -> bool:
        return bool(self.seen_mask().all())


def _to_chw_float(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, C)`` array in [0, 1] -> ``(3, H, W)`` float32 tensor."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)


def _resample(x: torch.Tensor, size: tuple[int, int], interpolation: Interp) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x[None], size=size, mode="nearest-exact")[0]
    out = F.interpolate(x[None], size=size, mode=interpolation, align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> tuple[torch.Tensor, Geometry]:
    """Image ``(H0, W0[, 3])`` with values in [0, 1] -> model input ``(3, H, W)`` + geometry."""
    x = _to_chw_float(image)
    geom = spec.geometry(tuple(x.shape[-2:]))
    H, W = spec.size
    x = _resample(x, geom.resized_hw, spec.interpolation)
    if spec.mode == "letterbox":
        ty, tx = int(geom.offset[0]), int(geom.offset[1])
        canvas = torch.full((3, H, W), float(spec.pad_value), dtype=x.dtype)
        canvas[:, ty:ty + x.shape[1], tx:tx + x.shape[2]] = x
        x = canvas
    elif spec.mode == "center_crop":
        top, left = int(-geom.offset[0]), int(-geom.offset[1])
        x = x[:, top:top + H, left:left + W]
    mean = torch.tensor(spec.mean, dtype=x.dtype)[:, None, None]
    std = torch.tensor(spec.std, dtype=x.dtype)[:, None, None]
    return ((x - mean) / std).contiguous(), geom
