"""LeGrad (Bousselham et al., ICCV 2025) adapted to ViT classifiers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..capture import Capture, Needs
from ..registry import Explainer, register_explainer


def legrad_layer_map(layer_grad: Tensor, num_prefix: int) -> Tensor:
    """``ds^l/dA^l (B, H, N, N)`` -> ``(B, N - P)``: ReLU, mean over heads and query rows,
    prefix key columns dropped."""
    return layer_grad.float().relu().mean(dim=(1, 2))[:, num_prefix:]


@register_explainer
class LeGrad(Explainer):
    """LeGrad, Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
    Feature Formation Sensitivity" (arXiv 2404.03214).

    For each selected block ``l`` the classifier head is applied to that block's tokens
    (``s^l = head(norm(z^l))``) and ``s^l_c`` is differentiated w.r.t. the block's attention
    probabilities alone (a cheap partial backward on the kept graph). Positive gradients are
    averaged over heads and queries; layers are averaged. ``pool='mean'`` scores the mean token
    instead (the official CLIP code and torchcam). Preset ``official``: the last two blocks.
    """

    name = "legrad"
    title = "LeGrad"
    paper_url = "https://arxiv.org/abs/2404.03214"
    needs = Needs(attn=True, block_out=True, legrad=True)
    presets = {"official": {"layers": (-2, -1)}}

    @dataclass(frozen=True)
    class Params:
        layers: tuple[int, ...] | None = None
        pool: Literal["model", "mean"] = "model"

    def __init__(self, **params) -> None:
        if isinstance(params.get("layers"), list):
            params["layers"] = tuple(params["layers"])
        super().__init__(**params)

    def validate(self) -> None:
        if self.params.layers is not None and len(self.params.layers) == 0:
            raise ValueError("legrad: layers must name at least one block (or None for all)")

    def layer_indices(self, depth: int) -> list[int]:
        if self.params.layers is None:
            return list(range(depth))
        out = []
        for layer in self.params.layers:
            i = layer + depth if layer < 0 else layer
            if not 0 <= i < depth:
                raise ValueError(f"legrad: layer {layer} outside the model's {depth} blocks")
            out.append(i)
        return sorted(set(out))

    def compute(self, cap: Capture, adapter, x: Tensor):
        layers = self.layer_indices(len(cap.attn))
        maps = [legrad_layer_map(cap.layer_grad[(self.params.pool, i)], cap.num_prefix)
                for i in layers]
        return cap.to_grid(torch.stack(maps).mean(dim=0))
