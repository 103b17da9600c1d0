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

import torch
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
            if needs.legrad and self._legrad_rows() is not None:
                for blk in self.model.blocks:
                    handles.append(blk.register_forward_pre_hook(
                        lambda _m, args: rec.block_in.append(args[0])))
                    handles.append(blk.attn.qkv.register_forward_hook(
                        lambda _m, _i, out: rec.qkv.append(out)))
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

    # ---- LeGrad fast path -------------------------------------------------------------------
    def _legrad_rows(self) -> tuple[int, ...] | None:
        """Token rows the head reads when it pools prefix tokens only (CLS; CLS + DIST for
        DeiT distilled), on timm's standard Block / Attention; None when the fast path does not
        apply (avg / map pooling, other block types) and the generic backward is used."""
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        m = self.model
        if getattr(m, "global_pool", None) != "token" or getattr(m, "attn_pool", None) is not None:
            return None
        if self.num_prefix_tokens < 1 or not all(
                type(b) is Block and type(b.attn) is Attention for b in m.blocks):
            return None
        return (0, 1) if hasattr(m, "head_dist") else (0,)

    def legrad_attention_grad(self, rec: Recorder, layer: int, targets: Tensor, pool: str
                              ) -> Tensor:
        """Same value as the generic partial backward, but only the read-out rows are recomputed.

        With token pooling the layer score reads rows ``R`` (CLS, or CLS + DIST) of block
        ``layer``'s output, and every operation after the attention product is per token, so
        ``ds/dA`` is zero outside rows ``R``. Recomputing ``z[R] = x[R] + ls1(proj(A[R] @ V))``
        and its MLP from the captured block input and ``qkv`` output costs |R| tokens instead of
        N (tested equal to the generic path)."""
        rows = self._legrad_rows()
        if pool != "model" or rows is None or len(rec.block_in) != self.depth:
            return super().legrad_attention_grad(rec, layer, targets, pool)
        blk = self.model.blocks[layer]
        at = blk.attn
        a = rec.attn[layer]
        b, _, n, _ = a.shape
        r = list(rows)
        with torch.enable_grad():
            x_in = rec.block_in[layer].detach()[:, r]
            v = rec.qkv[layer].detach().reshape(b, n, 3, at.num_heads, at.head_dim)[:, :, 2]
            a_r = a.detach()[:, :, r, :].requires_grad_(True)            # (B, H, |R|, N)
            o = torch.einsum("bhrn,bnhd->brhd", a_r, v).reshape(b, len(r), at.attn_dim)
            o = at.norm(o)
            if at.gate is not None:
                o = o * at.gate(blk.norm1(x_in)).sigmoid()
            x1 = x_in + blk.drop_path1(blk.ls1(at.proj_drop(at.proj(o))))
            z = x1 + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x1))))
            s = self.layer_score(z, "model").float()
            g = torch.autograd.grad(s.gather(1, targets[:, None]).sum(), a_r)[0]
        full = torch.zeros_like(a)
        full[:, :, r, :] = g.detach()
        return full
