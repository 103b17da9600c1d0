"""Chefer et al. (ICCV 2021) generic attention-model explainability (gradient rollout)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer
from ._common import Readout, layer_range


def chefer_relevance(attns: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``R = I; R += mean_h relu(dA ⊙ A) @ R`` per block (no row normalisation) -> ``(B, N, N)``."""
    b, _, n, _ = attns[0].shape
    r = torch.eye(n, dtype=torch.float32, device=attns[0].device).expand(b, n, n).clone()
    for a, g in zip(attns, grads, strict=True):
        cam = (g.float() * a.float()).clamp_min(0).mean(dim=1)  # ReLU per head, then head mean
        r = r + cam @ r
    return r


@register_explainer
class CheferRelevance(Explainer):
    """Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers" (arXiv 2103.15679), ViT recipe: relevance ``R`` accumulated
    with gradient-weighted attention ``mean_h relu(∇A ⊙ A)``; map = ``R[r, P:]``."""

    name = "chefer"
    title = "Chefer gradient rollout"
    paper_url = "https://arxiv.org/abs/2103.15679"
    needs = Needs(attn=True, attn_grad=True)

    @dataclass(frozen=True)
    class Params:
        start_layer: int = 0
        readout: Readout = "auto"

    def compute(self, cap: Capture, adapter, x: Tensor):
        p = self.params
        layers = layer_range(len(cap.attn), p.start_layer, None)
        r = chefer_relevance([cap.attn[i] for i in layers], [cap.attn_grad[i] for i in layers])
        return cap.read_rows(r, p.readout)
