"""Hugging Face ``ViTForImageClassification`` (transformers 5.x; 4.x module paths also handled).

Capture facts (EXPLAINERS.md §2.2): the default SDPA attention returns no weights, so
``instrument()`` switches the model to the eager implementation and restores the previous one on
exit; attentions come from ``output_attentions=True`` (grad-capable) and block outputs from
``output_hidden_states=True`` (``hidden_states[l + 1]`` = output of layer ``l``). Grad-CAM reads
the last layer's ``layernorm_before`` output through a forward hook. The classifier reads the CLS
token: ``classifier(layernorm(h)[:, 0])``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

from torch import Tensor, nn

from ..capture import Needs, Recorder
from .base import VitAdapter


def hf_layers(model: nn.Module) -> nn.ModuleList:
    vit = getattr(model, "vit", None)
    if vit is None:
        raise TypeError(f"{type(model).__name__} has no .vit backbone")
    layers = getattr(vit, "layers", None)  # transformers 5.x
    if layers is None:
        layers = vit.encoder.layer  # transformers 4.x
    return layers


def is_hf_vit(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return (cfg is not None and getattr(cfg, "model_type", None) in ("vit", "deit")
            and hasattr(model, "vit") and hasattr(model, "classifier"))


class HFAdapter(VitAdapter):
    family = "hf"

    def __init__(self, model: nn.Module, **kw) -> None:
        if not is_hf_vit(model):
            raise TypeError(f"{type(model).__name__} is not a Hugging Face ViTForImageClassification")
        self._layers = hf_layers(model)
        super().__init__(model, **kw)

    @property
    def config(self):
        return self.model.config

    @property
    def num_classes(self) -> int:
        return int(self.config.num_labels)

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def readout(self) -> Literal["cls", "patch_mean"]:
        return "cls"

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.config.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, (tuple, list)) else (int(p), int(p))

    @property
    def depth(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def grad_cam_layer(self) -> str:
        return f"vit.layers.{self.depth - 1}.layernorm_before"

    @property
    def _native_hw(self) -> tuple[int, int]:
        s = self.config.image_size
        return (int(s[0]), int(s[1])) if isinstance(s, (tuple, list)) else (int(s), int(s))

    def grid_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        ph, pw = self.patch_size
        return int(input_hw[0]) // ph, int(input_hw[1]) // pw

    def _kwargs(self, x: Tensor) -> dict:
        return {"interpolate_pos_encoding": tuple(x.shape[-2:]) != self._native_hw}

    def _forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x, **self._kwargs(x)).logits

    @contextlib.contextmanager
    def _instrument(self, needs: Needs, rec: Recorder) -> Iterator[None]:
        handles = []
        before = getattr(self.config, "_attn_implementation", None)
        self._needs = needs
        try:
            if (needs.attn or needs.attn_grad or needs.legrad) and before != "eager":
                self.model.set_attn_implementation("eager")
            if needs.feat:
                def _feat(_m, _i, out):
                    rec.feat = out
                handles.append(self._layers[-1].layernorm_before.register_forward_hook(_feat))
            yield
        finally:
            for h in handles:
                h.remove()
            if before is not None and getattr(self.config, "_attn_implementation", None) != before:
                self.model.set_attn_implementation(before)
            self._needs = None

    def _forward_recorded(self, x: Tensor, rec: Recorder) -> Tensor:
        needs: Needs = self._needs
        want_attn = needs.attn or needs.attn_grad or needs.legrad
        want_hidden = needs.block_out or needs.legrad
        out = self.model(pixel_values=x, output_attentions=want_attn,
                         output_hidden_states=want_hidden, **self._kwargs(x))
        if want_attn:
            att = list(out.attentions or ())
            if len(att) != self.depth or any(a is None for a in att):
                raise RuntimeError(
                    f"HF model returned {len(att)} attention maps for {self.depth} layers; the "
                    "attention implementation does not expose weights (need 'eager')")
            rec.attn.extend(att)
        if want_hidden:
            rec.block_out.extend(list(out.hidden_states)[1:])
        return out.logits

    def layer_score(self, tokens: Tensor, pool: str = "model") -> Tensor:
        """HF: ``classifier(layernorm(z)[:, 0])``; ``pool='mean'``: ``classifier(layernorm(mean(z)))``."""
        ln = self.model.vit.layernorm
        if pool == "model":
            return self.model.classifier(ln(tokens)[:, 0])
        if pool == "mean":
            return self.model.classifier(ln(tokens.mean(dim=1)))
        raise ValueError(f"unknown LeGrad pooling {pool!r}; use 'model' or 'mean'")
