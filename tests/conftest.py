"""Shared fixtures: tiny offline models (timm and Hugging Face), seeded, never downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

import vitx_core as vx


def sharpen_attention(model: torch.nn.Module, factor: float = 3.0) -> torch.nn.Module:
    """Scale q/k projections so random-weight attention is not nearly uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.weight"):
                d = p.shape[0] // 3
                p[: 2 * d] *= factor
            elif name.endswith(("attention.q_proj.weight", "attention.k_proj.weight")):
                p *= factor
    return model


def tiny_timm(arch: str = "vit_tiny_patch16_224", *, img_size=(64, 48), num_classes: int = 3,
              seed: int = 0, depth: int = 3, **kw) -> torch.nn.Module:
    """A small timm ViT (random init, eval) with optional non-square input."""
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=img_size,
                          depth=depth, **kw)
    return sharpen_attention(m).eval()


def tiny_hf(*, image_size: int = 32, patch_size: int = 8, num_labels: int = 3, seed: int = 0,
            layers: int = 2):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                    intermediate_size=128, image_size=image_size, patch_size=patch_size,
                    num_labels=num_labels, id2label={i: f"finding_{i}" for i in range(num_labels)},
                    label2id={f"finding_{i}": i for i in range(num_labels)})
    m = ViTForImageClassification(cfg)
    with torch.no_grad():  # HF inits the classifier tiny; make logits / gradients informative
        torch.nn.init.normal_(m.classifier.weight, std=0.5)
    return sharpen_attention(m).eval()


LABELS = ["nodule", "effusion", "cardiomegaly"]


@pytest.fixture
def timm_adapter() -> vx.VitAdapter:
    """Non-square (64x48) ViT, 3 blocks, 3 heads, patch 16 -> 4x3 grid, multi-label."""
    return vx.adapter_from_module(tiny_timm(), labels=LABELS, multi_label=True)


@pytest.fixture
def hf_adapter() -> vx.VitAdapter:
    return vx.adapter_from_module(tiny_hf(), multi_label=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def xray(rng) -> np.ndarray:
    """A non-square grayscale 'radiograph' (smooth blobs + noise) in [0, 1], 90 x 70."""
    yy, xx = np.mgrid[0:90, 0:70]
    img = 0.3 + 0.5 * np.exp(-(((yy - 30) / 12.0) ** 2 + ((xx - 20) / 9.0) ** 2))
    img += 0.1 * rng.standard_normal((90, 70))
    return np.clip(img, 0, 1).astype(np.float32)
