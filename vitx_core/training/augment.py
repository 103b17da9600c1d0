"""Light, batch-wise augmentation of ``[0, 1]`` chest images (before mean / std normalisation).

Small affine (rotation, isotropic scale, translation), brightness / contrast, optional gamma and
noise. **No horizontal flip by default**: chest anatomy is lateralised (heart on the patient's
left), a mirrored film is not a plausible input. Every random draw comes from the
``torch.Generator`` passed in, so a seeded run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all symmetric around the identity).

    Attributes:
        rotate_deg: rotation in ``[-r, r]`` degrees.
        scale: isotropic zoom in ``[1 - s, 1 + s]``.
        translate: shift in ``[-t, t]`` of the image size (each axis).
        brightness: additive offset in ``[-b, b]`` (intensity units).
        contrast: gain around the image mean in ``[1 - c, 1 + c]``.
        gamma: exponent in ``[1 - g, 1 + g]`` (0 = off).
        noise: Gaussian noise std in ``[0, n]`` (0 = off).
        hflip: probability of a horizontal flip (0 = never, the default for chest films).
    """

    rotate_deg: float = 5.0
    scale: float = 0.05
    translate: float = 0.04
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.0
    noise: float = 0.0
    hflip: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in asdict(self).values())


def _uniform(n: int, r: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2.0 - 1.0) * r


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator,
                  dense: torch.Tensor | None = None) -> Any:
    """``(B, C, H, W)`` in [0, 1] -> augmented copy in [0, 1] (same shape).

    ``dense``: optional per-pixel targets ``(B, K, h, w)`` (e.g. mask coverage, any resolution
    covering the same field of view); they get the same geometric transform (zero outside) and
    ``(x, dense)`` is returned.
    """
    if not cfg.active:
        return x if dense is None else (x, dense)
    n = x.shape[0]
    out = x
    if cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0 or cfg.hflip > 0:
        ang = _uniform(n, math.radians(cfg.rotate_deg), g)
        s = 1.0 + _uniform(n, cfg.scale, g)
        t = torch.stack([_uniform(n, cfg.translate, g), _uniform(n, cfg.translate, g)], 1) * 2.0
        flip = (torch.rand(n, generator=g) < cfg.hflip).float() * -2.0 + 1.0
        h, w = x.shape[-2:]
        # affine_grid works in normalised coordinates; correct the rotation for the aspect ratio
        c, si = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = c * flip
        theta[:, 0, 1] = -si * (h / w)
        theta[:, 1, 0] = si * (w / h) * flip
        theta[:, 1, 1] = c
        theta[:, :, 2] = t
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if dense is not None:
            dg = F.affine_grid(theta.to(dense.dtype), list(dense.shape), align_corners=False)
            dense = F.grid_sample(dense, dg, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)
    if cfg.contrast > 0 or cfg.brightness > 0:
        k = (1.0 + _uniform(n, cfg.contrast, g)).view(n, 1, 1, 1).to(x.dtype)
        b = _uniform(n, cfg.brightness, g).view(n, 1, 1, 1).to(x.dtype)
        mu = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mu) * k + mu + b
    if cfg.gamma > 0:
        gam = (1.0 + _uniform(n, cfg.gamma, g)).view(n, 1, 1, 1).to(x.dtype)
        out = out.clamp(0.0, 1.0) ** gam
    if cfg.noise > 0:
        sd = (torch.rand(n, generator=g) * cfg.noise).view(n, 1, 1, 1).to(x.dtype)
        out = out + sd * torch.randn(out.shape, generator=g, dtype=x.dtype)
    out = out.clamp(0.0, 1.0)
    return out if dense is None else (out, dense)
