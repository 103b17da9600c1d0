"""GMAR: Gradient-Driven Multi-Head Attention Rollout (Jo et al., 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer
from ._common import Readout, add_identity_and_normalise, chain, layer_range


def head_weights(grad: Tensor, norm: str, eps: float = 1e-12) -> Tensor:
    """``dy/dA (B, H, N, N)`` -> head importances ``(B, H)`` summing to 1 per image.

    ``l1``: ``sum |G|``; ``l2``: ``sqrt(sum G^2)``. When every head's gradient is zero the weights
    fall back to uniform (plain rollout) instead of dividing by zero.
    """
    g = grad.float().flatten(2)
    if norm == "l1":
        s = g.abs().sum(dim=-1)
    elif norm == "l2":
        s = g.pow(2).sum(dim=-1).sqrt()
    else:
        raise ValueError(f"unknown GMAR norm {norm!r}; use l1 or l2")
    total = s.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(s, 1.0 / s.shape[-1])
    return torch.where(total > eps, s / total.clamp_min(eps), uniform)


def gmar(attns: list[Tensor], grads: list[Tensor], norm: str = "l1") -> Tensor:
    """Gradient-weighted head SUM per block, then ``0.5·Ā + 0.5·I`` rollout -> ``(B, N, N)``."""
    mats = []
    for a, g in zip(attns, grads, strict=True):
        w = head_weights(g, norm)
        fused = torch.einsum("bh,bhnm->bnm", w, a.float())
        mats.append(add_identity_and_normalise(fused))
    return chain(mats)


@register_explainer
class GMAR(Explainer):
    """GMAR, Jo et al., "Gradient-Driven Multi-Head Attention Rollout for Vision Transformer
    Interpretability" (arXiv 2504.19414). Head importance = L1 or L2 norm of the target logit's
    gradient w.r.t. each head's attention probabilities, normalised to sum to 1; a weighted
    *sum* over heads (row-stochastic) replaces rollout's head mean. The paper's exact residual
    form is not public as code; this follows its abstract with rollout's ``0.5·A + 0.5·I``.
    """

    name = "gmar"
    title = "GMAR (gradient-driven rollout)"
    paper_url = "https://arxiv.org/abs/2504.19414"
    needs = Needs(attn=True, attn_grad=True)

    @dataclass(frozen=True)
    class Params:
        norm: Literal["l1", "l2"] = "l1"
        start_layer: int = 0
        end_layer: int | None = None
        readout: Readout = "auto"

    def compute(self, cap: Capture, adapter, x: Tensor):
        p = self.params
        layers = layer_range(len(cap.attn), p.start_layer, p.end_layer)
        j = gmar([cap.attn[i] for i in layers], [cap.attn_grad[i] for i in layers], p.norm)
        return cap.read_rows(j, p.readout)
