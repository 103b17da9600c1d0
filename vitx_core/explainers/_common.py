"""Small tensor helpers shared by the attention explainers."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

HeadFusion = Literal["mean", "max", "min"]
Readout = Literal["auto", "cls", "dist", "patch_mean"]


def fuse_heads(a: Tensor, how: str) -> Tensor:
    """``(B, H, N, N)`` -> ``(B, N, N)`` by mean / max / min over heads."""
    if how == "mean":
        return a.mean(dim=1)
    if how == "max":
        return a.amax(dim=1)
    if how == "min":
        return a.amin(dim=1)
    raise ValueError(f"unknown head fusion {how!r}; use mean, max or min")


def layer_range(depth: int, start: int, end: int | None) -> range:
    """Blocks ``start .. end-1`` (negative indices allowed); raises on an empty range."""
    s = start + depth if start < 0 else start
    e = depth if end is None else (end + depth if end < 0 else end)
    if not 0 <= s < e <= depth:
        raise ValueError(f"layer range [{start}, {end}) is empty or outside 0..{depth}")
    return range(s, e)


def add_identity_and_normalise(a: Tensor) -> Tensor:
    """Residual re-weighting of rollout: ``(A + I) / rowsum(A + I)`` on ``(B, N, N)``."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a = a + eye
    return a / a.sum(dim=-1, keepdim=True)


def chain(mats: list[Tensor]) -> Tensor:
    """Left-multiplied product ``M_last @ ... @ M_first`` of ``(B, N, N)`` matrices."""
    out = mats[0]
    for m in mats[1:]:
        out = m @ out
    return out
