"""Raw attention of one block (the read-out row of ``A^l``), head-fused or per head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer
from ._common import HeadFusion, Readout


def raw_attention(attn: Tensor, readout_w: Tensor, num_prefix: int, head_fusion: str
                  ) -> tuple[Tensor, Tensor]:
    """``A (B, H, N, N)`` -> (fused ``(B, N - P)``, per-head ``(B, H, N - P)``) read-out rows."""
    per_head = torch.einsum("n,bhnm->bhm", readout_w.to(attn), attn)[:, :, num_prefix:]
    if head_fusion == "mean":
        fused = per_head.mean(dim=1)
    elif head_fusion == "max":
        fused = per_head.amax(dim=1)
    elif head_fusion == "min":
        fused = per_head.amin(dim=1)
    else:
        raise ValueError(f"unknown head fusion {head_fusion!r}")
    return fused, per_head


@register_explainer
class RawAttention(Explainer):
    """Raw attention of block ``layer``: ``A^l[r, P:]`` fused over heads (Chefer's
    ``last_layer_attn`` baseline; fusion names as in jacobgil/vit-explain)."""

    name = "attention"
    title = "Raw attention"
    paper_url = "https://arxiv.org/abs/2012.09838"
    needs = Needs(attn=True)

    @dataclass(frozen=True)
    class Params:
        layer: int = -1
        head_fusion: HeadFusion = "mean"
        readout: Readout = "auto"
        per_head: bool = False

    def compute(self, cap: Capture, adapter, x: Tensor):
        p = self.params
        depth = len(cap.attn)
        if not -depth <= p.layer < depth:
            raise ValueError(f"attention: layer {p.layer} outside the model's {depth} blocks")
        a = cap.attn[p.layer]
        w = cap.readout_weights(p.readout)
        fused, per_head = raw_attention(a, w, cap.num_prefix, p.head_fusion)
        extras = {"patch_mass": fused.sum(dim=-1)}
        if p.per_head:
            extras["per_head"] = cap.to_grid(per_head)
        return cap.to_grid(fused), extras
