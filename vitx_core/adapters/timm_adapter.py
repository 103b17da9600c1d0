"""timm VisionTransformer family (ViT, DeiT incl. distilled, DINOv2 with registers, ...).

Capture facts (EXPLAINERS.md §2.1): fused attention (SDPA) never materialises the attention
probabilities, so ``instrument()`` sets ``fused_attn = False`` on every module that has the flag
and restores the old values on exit. In ``eval()`` the ``attn_drop`` output *is* the softmax
output used in ``attn @ v``, so a forward hook on it gives ``A^l`` and gradients w.r.t. it are the
true ``dy/dA^l``. Grad-CAM reads the last block's ``norm1`` output (the last block's output patch
tokens never reach a CLS head).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from torch import Tensor, nn

from ..capture import Needs, Recorder
from .base import VitAdapter


def is_timm_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("blocks", "patch_embed", "num_prefix_tokens",
                                           "forward_head")) and len(model.blocks) > 0 and all(
        hasattr(b, "attn") and hasattr(b.attn, "attn_drop") and hasattr(b, "norm1")
        for b in model.blocks)


class TimmAdapter(VitAdapter):
    family = "timm"

    def __init__(self, model: nn.Module, **kw) -> None:
        if not is_timm_vit(model):
            raise TypeError(
                f"{type(model).__name__} is not a timm VisionTransformer-style model (needs "
                "blocks[i].attn.attn_drop, patch_embed, num_prefix_tokens, forward_head)")
        super().__init__(model, **kw)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def readout(self) -> Literal["cls", "patch_mean"]:
        pool = getattr(self.model, "global_pool", "token")
        if pool == "token" and self.num_prefix_tokens > 0:
            return "cls"
        return "patch_mean"

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.model.patch_embed.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, (tuple, list)) else (int(p), int(p))

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[0].attn.num_heads)

    @property
    def grad_cam_layer(self) -> str:
        return f"blocks.{self.depth - 1}.norm1"

    def grid_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        pe = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", True):
            gh, gw = pe.dynamic_feat_size(tuple(input_hw))
            return int(gh), int(gw)
        img = tuple(int(s) for s in pe.img_size)
        if tuple(input_hw) != img:
            raise ValueError(f"model input must be {img} (timm img_size), got {tuple(input_hw)}; "
                             "create the model with img_size=... or dynamic_img_size=True")
        gh, gw = pe.grid_size
        return int(gh), int(gw)

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @contextlib.contextmanager
    def _instrument(self, needs: Needs, rec: Recorder) -> Iterator[None]:
        handles = []
        fused_before = {}
        try:
            if needs.attn or needs.attn_grad or needs.legrad:
                for m in self.model.modules():
                    if hasattr(m, "fused_attn"):
                        fused_before[m] = m.fused_attn
                        m.fused_attn = False
                for blk in self.model.blocks:
                    handles.append(blk.attn.attn_drop.register_forward_hook(
                        lambda _m, _i, out: rec.attn.append(out)))
            if needs.block_out or needs.legrad:
                for blk in self.model.blocks:
                    handles.append(blk.register_forward_hook(
                        lambda _m, _i, out: rec.block_out.append(out)))
            if needs.feat:
                def _feat(_m, _i, out):
                    rec.feat = out
                handles.append(self.model.blocks[-1].norm1.register_forward_hook(_feat))
            yield
        finally:
            for h in handles:
                h.remove()
            for m, v in fused_before.items():
                m.fused_attn = v

    def layer_score(self, tokens: Tensor, pool: str = "model") -> Tensor:
        """timm: ``forward_head(norm(z))`` (token / avg / map pooling, DeiT's two heads);
        ``pool='mean'``: ``head(norm(mean_tokens(z)))``, norm after the mean (LeGrad's CLIP
        recipe, torchcam)."""
        m = self.model
        if pool == "model":
            return m.forward_head(m.norm(tokens))
        if pool == "mean":
            return m.head(m.fc_norm(m.norm(tokens.mean(dim=1, keepdim=True)))[:, 0])
        raise ValueError(f"unknown LeGrad pooling {pool!r}; use 'model' or 'mean'")
