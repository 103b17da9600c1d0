"""LeGrad parity: torchcam 0.5.0 ``LeGrad`` on a torchvision ViT vs vitx ``legrad`` on its timm port.

Recipe (EXPLAINERS.md §3.5, §6 recipe 3): a small torchvision ``VisionTransformer`` (random init,
classifier head re-initialised because torchvision zero-inits it) is ported weight by weight into
a timm ``VisionTransformer``; logits must agree first. torchcam scores every selected block with
``heads(encoder.ln(tokens.mean(1)))`` and differentiates each layer's score w.r.t. that layer's
attention probabilities; vitx's ``pool='mean'`` option is the same score. Maps are compared raw
(``normalized=False``), batch 2 with a different target per image.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitx_core as vx
from tests.parity._helpers import (
    assert_informative,
    max_abs,
    max_rel,
    record,
    seeded_input,
    sharpen_qk,
)

pytestmark = pytest.mark.parity

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("torchcam")
from torchcam.methods import LeGrad as TorchcamLeGrad  # noqa: E402

IMG, PATCH, DEPTH, HEADS, DIM, MLP, CLASSES = 32, 8, 3, 2, 64, 128, 4
TOL_REL = 1e-4


def build_torchvision_vit(seed: int = 0) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    tv = VisionTransformer(image_size=IMG, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
                           hidden_dim=DIM, mlp_dim=MLP, num_classes=CLASSES)
    with torch.no_grad():
        assert float(tv.heads.head.weight.abs().max()) == 0.0  # torchvision zero-inits the head
        nn.init.normal_(tv.heads.head.weight, std=0.5)
        nn.init.normal_(tv.heads.head.bias, std=0.1)
        # positional / class embeddings are tiny or zero at init; make tokens distinguishable
        nn.init.normal_(tv.class_token, std=0.5)
    # moderate sharpening only: with very sharp random attention torchvision's fused and
    # need_weights paths disagree on their own (EXPLAINERS.md §3.5)
    return sharpen_qk(tv, 2.0).eval()


def port_to_timm(tv: nn.Module) -> nn.Module:
    """torchvision ViT -> timm VisionTransformer with identical weights (strict load)."""
    from timm.models.vision_transformer import VisionTransformer

    tm = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                           num_heads=HEADS, mlp_ratio=MLP / DIM, num_classes=CLASSES, qkv_bias=True)
    src = tv.state_dict()
    sd = {
        "patch_embed.proj.weight": src["conv_proj.weight"],
        "patch_embed.proj.bias": src["conv_proj.bias"],
        "cls_token": src["class_token"],
        "pos_embed": src["encoder.pos_embedding"],
        "norm.weight": src["encoder.ln.weight"],
        "norm.bias": src["encoder.ln.bias"],
        "head.weight": src["heads.head.weight"],
        "head.bias": src["heads.head.bias"],
    }
    pairs = {  # torchvision encoder_layer_i.<a> -> timm blocks.i.<b> (q/k/v order identical)
        "ln_1": "norm1",
        "self_attention.in_proj_": "attn.qkv.",
        "self_attention.out_proj.": "attn.proj.",
        "ln_2": "norm2",
        "mlp.0.": "mlp.fc1.",
        "mlp.3.": "mlp.fc2.",
    }
    for i in range(DEPTH):
        pre = f"encoder.layers.encoder_layer_{i}."
        for k, v in src.items():
            if not k.startswith(pre):
                continue
            rest = k[len(pre):]
            for a, b in pairs.items():
                if rest.startswith(a):
                    sd[f"blocks.{i}.{b}{rest[len(a):]}".replace("..", ".")] = v
                    break
            else:
                raise AssertionError(f"unmapped torchvision key {k}")
    assert len(sd) == len(src), "every torchvision tensor must be used exactly once"
    tm.load_state_dict(sd, strict=True)
    return tm.eval()


@pytest.fixture(scope="module")
def models():
    tv = build_torchvision_vit()
    tm = port_to_timm(tv)
    return tv, tm


def test_port_is_exact(models) -> None:
    tv, tm = models
    # LayerNorm eps: torchvision partial(nn.LayerNorm, eps=1e-6); timm ViT default 1e-6.
    tv_eps = {m.eps for m in tv.modules() if isinstance(m, nn.LayerNorm)}
    tm_eps = {m.eps for m in tm.modules() if isinstance(m, nn.LayerNorm)}
    assert tv_eps == {1e-6} and tm_eps == {1e-6}, (tv_eps, tm_eps)
    assert sum(isinstance(m, nn.LayerNorm) for m in tv.modules()) == 2 * DEPTH + 1
    assert sum(isinstance(m, nn.LayerNorm) for m in tm.modules()) == 2 * DEPTH + 1
    x = seeded_input((2, 3, IMG, IMG), seed=5)
    with torch.no_grad():
        a, b = tv(x), tm(x)
    d = record("legrad port logits max abs", max_abs(b, a))
    assert d <= 1e-5
    assert float(a.std()) > 0.1  # the head is informative, not near-zero


def torchcam_legrad(tv: nn.Module, x: torch.Tensor, layers: list[int], targets: list[int]
                    ) -> torch.Tensor:
    blocks = [tv.encoder.layers[i] for i in layers]
    with TorchcamLeGrad(tv, blocks, prefix_tokens=1) as cam_extractor:
        scores = tv(x)
        cams = cam_extractor(targets, scores, normalized=False)
    assert len(cams) == 1  # LeGrad averages the layers into one map
    assert vx.count_hooks(tv) == 0, "torchcam left hooks"
    return cams[0].detach()


@pytest.mark.parametrize("layers", [[0, 1, 2], [1, 2]], ids=["all_layers", "last_two"])
def test_legrad_matches_torchcam(models, layers: list[int]) -> None:
    tv, tm = models
    x = seeded_input((2, 3, IMG, IMG), seed=7)
    targets = [3, 1]
    ref = torchcam_legrad(tv, x, layers, targets)
    assert ref.shape == (2, IMG // PATCH, IMG // PATCH)
    assert_informative(ref)

    ad = vx.adapter_from_module(tm, labels=[f"c{i}" for i in range(CLASSES)], multi_label=False)
    res = vx.run_explainers(ad, x, [vx.get_explainer("legrad", layers=layers, pool="mean")],
                            target_sets=[torch.tensor(targets)])
    assert vx.count_hooks(tm) == 0
    ours = res.outputs[0]["legrad"].grid
    d = record(f"legrad[{'-'.join(map(str, layers))}] max rel", max_rel(ours, ref))
    assert d <= TOL_REL

    # Negative indices name the same blocks (the "official" preset uses (-2, -1)).
    neg = [i - DEPTH for i in layers]
    res_neg = vx.run_explainers(ad, x, [vx.get_explainer("legrad", layers=neg, pool="mean")],
                                target_sets=[torch.tensor(targets)])
    assert max_abs(res_neg.outputs[0]["legrad"].grid, ours) == 0.0

    # Discrimination: the CLS-token score (pool='model') is a different LeGrad; it must not pass.
    res_cls = vx.run_explainers(ad, x, [vx.get_explainer("legrad", layers=layers, pool="model")],
                                target_sets=[torch.tensor(targets)])
    assert max_rel(res_cls.outputs[0]["legrad"].grid, ref) > 1e-2


def test_legrad_official_preset_is_last_two(models) -> None:
    tv, tm = models
    x = seeded_input((1, 3, IMG, IMG), seed=11)
    ref = torchcam_legrad(tv, x, [DEPTH - 2, DEPTH - 1], [2])
    ad = vx.adapter_from_module(tm, multi_label=False)
    from vitx_core.registry import get_explainer_class

    ex = get_explainer_class("legrad").from_preset("official", pool="mean")
    res = vx.run_explainers(ad, x, [ex], target_sets=[torch.tensor([2])])
    d = record("legrad[official preset] max rel", max_rel(res.outputs[0]["legrad"].grid, ref))
    assert d <= TOL_REL
