"""Grad-CAM for ViTs on the last block's pre-attention norm (pytorch-grad-cam's recipe)."""

from __future__ import annotations

from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer


def grad_cam(feat: Tensor, grad: Tensor, num_prefix: int) -> Tensor:
    """``F, dy/dF (B, N, C)`` -> ``(B, N - P)``: ``relu(sum_k mean_patches(dy/dF_k) F_k)``."""
    f = feat[:, num_prefix:].float()
    alpha = grad[:, num_prefix:].float().mean(dim=1)  # (B, C): channel weights
    return (f * alpha[:, None, :]).sum(dim=-1).relu()


@register_explainer
class GradCAM(Explainer):
    """Grad-CAM, Selvaraju et al. (arXiv 1610.02391), on the patch tokens of the last block's
    ``norm1`` (timm) / ``layernorm_before`` (HF): the last block's *output* patch tokens never
    reach a CLS head, so their gradient is zero."""

    name = "gradcam"
    title = "Grad-CAM"
    paper_url = "https://arxiv.org/abs/1610.02391"
    needs = Needs(feat=True)

    def compute(self, cap: Capture, adapter, x: Tensor):
        return cap.to_grid(grad_cam(cap.feat, cap.feat_grad, cap.num_prefix))
