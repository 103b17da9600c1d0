"""Helpers for the model-kind explainers (captum): patch masks, baselines, pooling to patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_feature_mask(input_hw: tuple[int, int], patch: tuple[int, int], grid: tuple[int, int],
                       device: torch.device) -> Tensor:
    """``(1, 1, H, W)`` long mask: the index of the ViT patch each input pixel belongs to.

    Pixels beyond ``grid * patch`` (inputs that are not a multiple of the patch) join the last
    row / column of patches.
    """
    (h, w), (ph, pw), (gh, gw) = input_hw, patch, grid
    rows = torch.clamp(torch.arange(h, device=device) // ph, max=gh - 1)
    cols = torch.clamp(torch.arange(w, device=device) // pw, max=gw - 1)
    return (rows[:, None] * gw + cols[None, :])[None, None]


def pool_to_patches(values: Tensor, patch: tuple[int, int], grid: tuple[int, int],
                    reduce: str = "sum") -> Tensor:
    """``(B, H, W)`` pixel values -> ``(B, gh, gw)`` per-patch sum or mean."""
    (ph, pw), (gh, gw) = patch, grid
    v = values[:, : gh * ph, : gw * pw]
    pooled = F.avg_pool2d(v[:, None], kernel_size=(ph, pw), stride=(ph, pw))[:, 0]
    return pooled * (ph * pw) if reduce == "sum" else pooled


def baseline_like(x: Tensor, kind: str, blur_sigma: float) -> Tensor:
    """Reference input for perturbation methods, in the model's normalised input space.

    ``mean``: each image's per-channel mean; ``zero``: 0 after normalisation (the dataset mean);
    ``blur``: Gaussian blur with ``blur_sigma`` input pixels (default: 1/16 of the short side).
    """
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "blur":
        sigma = blur_sigma if blur_sigma > 0 else min(x.shape[-2:]) / 16.0
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        y = F.pad(y, (0, 0, radius, radius), mode="replicate")
        return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    raise ValueError(f"unknown baseline {kind!r}; use mean, zero or blur")


def apply_sign(raw: Tensor, sign: str) -> Tensor:
    if sign == "positive":
        return raw.clamp_min(0)
    if sign == "absolute":
        return raw.abs()
    raise ValueError(f"unknown sign {sign!r}; use positive or absolute")
