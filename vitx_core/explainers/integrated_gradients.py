"""Integrated gradients via captum, pooled to ViT patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..capture import Capture
from ..registry import Explainer, register_explainer
from ._perturb import apply_sign, baseline_like, pool_to_patches


@register_explainer
class IntegratedGradientsExplainer(Explainer):
    """Integrated Gradients, Sundararajan et al. (arXiv 1703.01365), target = raw logit.

    Gauss-Legendre quadrature with ``n_steps`` points from a blurred baseline (a black image is
    out of distribution for radiographs). Attributions are made non-negative (``absolute``:
    ``|attr|`` summed over channels, the default; ``positive``: the positive part of the channel
    sum) and summed over each ViT patch so the map lives on
    the same grid as the attention methods. The completeness gap is returned as
    ``convergence_delta``.
    """

    name = "integrated_gradients"
    title = "Integrated gradients"
    paper_url = "https://arxiv.org/abs/1703.01365"
    kind = "model"
    on_demand = True

    @dataclass(frozen=True)
    class Params:
        n_steps: int = 50
        method: Literal["gausslegendre", "riemann_trapezoid", "riemann_middle",
                        "riemann_left", "riemann_right"] = "gausslegendre"
        baseline: Literal["blur", "mean", "zero"] = "blur"
        blur_sigma: float = 0.0
        sign: Literal["absolute", "positive"] = "absolute"
        internal_batch_size: int = 16

    def validate(self) -> None:
        if self.params.n_steps < 2:
            raise ValueError("integrated_gradients: n_steps must be >= 2")
        if self.params.internal_batch_size < 1:
            raise ValueError("integrated_gradients: internal_batch_size must be >= 1")

    def compute(self, cap: Capture, adapter, x: Tensor):
        from captum.attr import IntegratedGradients

        p = self.params
        base = baseline_like(x, p.baseline, p.blur_sigma)
        with torch.enable_grad():
            attr, delta = IntegratedGradients(adapter.forward_with_grad).attribute(
                x, baselines=base, target=cap.targets.to(x.device), n_steps=p.n_steps,
                method=p.method, internal_batch_size=p.internal_batch_size,
                return_convergence_delta=True)
        attr = attr.detach().float().cpu()
        # absolute: |attr| summed over channels (no cancellation between colour channels)
        pix = attr.abs().sum(dim=1) if p.sign == "absolute" else apply_sign(attr.sum(dim=1), p.sign)
        grid = pool_to_patches(pix, adapter.patch_size, cap.grid)
        signed = pool_to_patches(attr.sum(dim=1), adapter.patch_size, cap.grid)
        return grid, {"signed": signed, "convergence_delta": delta.detach().float().cpu()}
