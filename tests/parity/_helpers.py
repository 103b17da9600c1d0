"""Shared helpers for the parity tests: tiny seeded models and difference measures.

Nothing here calls vitx maths: models are built with timm / transformers / torchvision directly
(random init, never downloaded) and differences are measured with plain torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from torch import nn


def record(name: str, value: float) -> float:
    """Print an observed difference (visible with ``pytest -s``) and return it."""
    print(f"[parity] {name}: {value:.3e}")
    return float(value)


def as_np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def max_abs(a, b) -> float:
    a, b = as_np(a), as_np(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def max_rel(a, b) -> float:
    """``max|a - b| / max|b|`` (``b`` is the reference); fails loudly on an all-zero reference."""
    a, b = as_np(a), as_np(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.abs(b).max())
    assert scale > 0, "reference map is identically zero: the comparison would be vacuous"
    return float(np.abs(a - b).max()) / scale


def assert_informative(grid, min_distinct: int = 3) -> None:
    """A map worth comparing: finite, not constant (at least ``min_distinct`` distinct values per
    image), so a parity pass cannot come from two all-zero or all-equal maps."""
    g = as_np(grid)
    assert np.isfinite(g).all()
    for b in range(g.shape[0]):
        vals = np.unique(np.round(g[b].ravel() / (np.abs(g[b]).max() + 1e-30), 9))
        assert len(vals) >= min_distinct, f"image {b}: map has only {len(vals)} distinct values"


def sharpen_qk(model: nn.Module, factor: float) -> nn.Module:
    """Scale the q and k projections so random-weight attention is far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.weight"):  # timm fused qkv: rows [q; k; v]
                d = p.shape[0] // 3
                p[: 2 * d] *= factor
            elif name.endswith("self_attention.in_proj_weight"):  # torchvision MHA, same order
                d = p.shape[0] // 3
                p[: 2 * d] *= factor
            elif name.endswith(("attention.q_proj.weight", "attention.k_proj.weight")):  # HF 5.x
                p *= factor
    return model


def timm_vit(arch: str = "vit_tiny_patch16_224", *, img_size=(64, 48), num_classes: int = 3,
             depth: int = 3, seed: int = 0, sharpen: float = 3.0, **kw) -> nn.Module:
    """A small random-init timm ViT in eval mode (``pretrained=False``)."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=img_size,
                          depth=depth, **kw)
    with torch.no_grad():  # informative logits / gradients
        head = m.head if isinstance(m.head, nn.Linear) else None
        if head is not None:
            nn.init.normal_(head.weight, std=0.5)
        if getattr(m, "head_dist", None) is not None and isinstance(m.head_dist, nn.Linear):
            nn.init.normal_(m.head_dist.weight, std=0.5)
    return sharpen_qk(m, sharpen).eval()


def seeded_input(shape, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def fused_flags(model: nn.Module) -> dict[str, bool]:
    return {n: bool(m.fused_attn) for n, m in model.named_modules() if hasattr(m, "fused_attn")}
