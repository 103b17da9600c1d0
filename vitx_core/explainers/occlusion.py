"""Patch occlusion via captum's FeatureAblation, one feature per ViT patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..capture import Capture
from ..registry import Explainer, register_explainer
from ._perturb import apply_sign, baseline_like, patch_feature_mask


@register_explainer
class Occlusion(Explainer):
    """Occlusion, Zeiler & Fergus (arXiv 1311.2901): replace one ViT patch at a time by a
    baseline and record the drop of the target logit (Δlogit per patch). Model-agnostic and
    causal; ``gh·gw`` forwards per image, batched ``perturbations_per_eval`` at a time."""

    name = "occlusion"
    title = "Patch occlusion"
    paper_url = "https://arxiv.org/abs/1311.2901"
    kind = "model"
    on_demand = True

    @dataclass(frozen=True)
    class Params:
        baseline: Literal["mean", "zero", "blur"] = "mean"
        sign: Literal["positive", "absolute"] = "positive"
        perturbations_per_eval: int = 16
        blur_sigma: float = 0.0

    def validate(self) -> None:
        if self.params.perturbations_per_eval < 1:
            raise ValueError("occlusion: perturbations_per_eval must be >= 1")

    def compute(self, cap: Capture, adapter, x: Tensor):
        from captum.attr import FeatureAblation

        p = self.params
        gh, gw = cap.grid
        ph, pw = adapter.patch_size
        mask = patch_feature_mask(tuple(x.shape[-2:]), (ph, pw), (gh, gw), x.device)
        base = baseline_like(x, p.baseline, p.blur_sigma)
        with torch.no_grad():
            attr = FeatureAblation(adapter.forward_with_grad).attribute(
                x, baselines=base, target=cap.targets.to(x.device), feature_mask=mask,
                perturbations_per_eval=p.perturbations_per_eval)
        # every pixel of a patch carries that patch's Δlogit; read one pixel per patch
        raw = attr[:, 0, : gh * ph : ph, : gw * pw : pw].float().cpu()
        return apply_sign(raw, p.sign), {"signed": raw}
