"""Cross-family parity: one tiny ViT as timm and as Hugging Face ``ViTForImageClassification``.

The timm weights are converted key by key into an HF model (transformers 5.x layout); with
``layer_norm_eps=1e-6`` and exact GELU both compute the same function, so every one-pass explainer
must give the same raw grid through the timm adapter (fused-attention flags, ``attn_drop`` hooks)
and the HF adapter (eager attention switch, ``output_attentions`` / ``output_hidden_states``).
This checks the two capture paths against each other, including the Grad-CAM layer choice
(timm ``blocks[-1].norm1`` == HF ``layers[-1].layernorm_before``) and LeGrad's layer scores.
"""

from __future__ import annotations

import numpy as np
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
    timm_vit,
)

pytestmark = pytest.mark.parity

IMG, PATCH, DEPTH, HEADS, DIM, CLASSES = 32, 8, 2, 2, 64, 3
LABELS = ["atelectasis", "effusion", "pneumothorax"]
RTOL, ATOL = 1e-4, 1e-6


def make_timm() -> nn.Module:
    m = timm_vit("vit_tiny_patch16_224", img_size=(IMG, IMG), num_classes=CLASSES, depth=DEPTH,
                 patch_size=PATCH, embed_dim=DIM, num_heads=HEADS, mlp_ratio=2.0, seed=4)
    with torch.no_grad():  # non-trivial embeddings (timm inits pos_embed with std 0.02)
        nn.init.normal_(m.cls_token, std=0.5)
        nn.init.normal_(m.pos_embed, std=0.5)
    return m


def timm_to_hf(tm: nn.Module):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                    intermediate_size=2 * DIM, image_size=IMG, patch_size=PATCH, num_channels=3,
                    qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu", num_labels=CLASSES,
                    id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                    problem_type="multi_label_classification")
    hf = ViTForImageClassification(cfg)
    src = tm.state_dict()
    sd = {
        "vit.embeddings.cls_token": src["cls_token"],
        "vit.embeddings.position_embeddings": src["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
        "vit.layernorm.weight": src["norm.weight"],
        "vit.layernorm.bias": src["norm.bias"],
        "classifier.weight": src["head.weight"],
        "classifier.bias": src["head.bias"],
    }
    for i in range(DEPTH):
        t, h = f"blocks.{i}.", f"vit.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = src[f"{t}attn.qkv.{kind}"].chunk(3, dim=0)  # timm rows: [q; k; v]
            sd[f"{h}attention.q_proj.{kind}"] = q
            sd[f"{h}attention.k_proj.{kind}"] = k
            sd[f"{h}attention.v_proj.{kind}"] = v
            sd[f"{h}attention.o_proj.{kind}"] = src[f"{t}attn.proj.{kind}"]
            sd[f"{h}layernorm_before.{kind}"] = src[f"{t}norm1.{kind}"]
            sd[f"{h}layernorm_after.{kind}"] = src[f"{t}norm2.{kind}"]
            sd[f"{h}mlp.fc1.{kind}"] = src[f"{t}mlp.fc1.{kind}"]
            sd[f"{h}mlp.fc2.{kind}"] = src[f"{t}mlp.fc2.{kind}"]
    hf_keys = set(hf.state_dict())
    assert set(sd) == hf_keys, (sorted(hf_keys - set(sd)), sorted(set(sd) - hf_keys))
    n_src_used = len(src) + 2 * DEPTH * 2  # qkv weight and bias each split into three
    assert len(sd) == n_src_used, "every timm tensor must be used"
    hf.load_state_dict(sd, strict=True)
    return hf.eval()


@pytest.fixture(scope="module")
def pair():
    tm = make_timm()
    hf = timm_to_hf(tm)
    return tm, hf


def test_conversion_is_exact(pair) -> None:
    tm, hf = pair
    assert {m.eps for m in tm.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert {m.eps for m in hf.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert hf.config._attn_implementation != "eager"  # SDPA default: the adapter must switch
    x = seeded_input((2, 3, IMG, IMG), seed=2)
    with torch.no_grad():
        a = tm(x)
        b = hf(pixel_values=x).logits
    d = record("hf<->timm logits max abs", max_abs(b, a))
    assert d <= 1e-5
    assert float(a.std()) > 0.1


def _run(ad, x, targets):
    methods = vx.default_methods()
    return vx.run_explainers(ad, x, [vx.get_explainer(m) for m in methods],
                             target_sets=[torch.tensor(targets), None])


def _assert_same_maps(res_a, res_b, tag: str) -> None:
    assert len(res_a.outputs) == len(res_b.outputs)
    for k, (oa, ob) in enumerate(zip(res_a.outputs, res_b.outputs)):
        assert set(oa) == set(ob)
        for name in oa:
            ga, gb = oa[name].grid, ob[name].grid
            assert_informative(gb, min_distinct=2)
            record(f"{tag}[{name}] max rel", max_rel(ga, gb))
            torch.testing.assert_close(ga, gb, rtol=RTOL, atol=ATOL, msg=f"{tag} {name} set {k}")
        assert torch.equal(res_a.targets[k], res_b.targets[k])


def test_default_methods_equal_across_families(pair) -> None:
    tm, hf = pair
    assert set(vx.default_methods()) == {"attention", "rollout", "gmar", "legrad", "gradcam",
                                         "chefer"}
    ad_t = vx.adapter_from_module(tm, labels=LABELS, multi_label=True)
    ad_h = vx.adapter_from_module(hf)
    assert ad_h.labels == LABELS and ad_h.multi_label
    assert ad_t.grid_size((IMG, IMG)) == ad_h.grid_size((IMG, IMG)) == (IMG // PATCH,) * 2
    assert ad_t.num_prefix_tokens == ad_h.num_prefix_tokens == 1
    impl_before = hf.config._attn_implementation
    x = seeded_input((2, 3, IMG, IMG), seed=9)
    res_t = _run(ad_t, x, [1, 2])
    res_h = _run(ad_h, x, [1, 2])
    assert hf.config._attn_implementation == impl_before
    assert vx.count_hooks(tm) == 0 and vx.count_hooks(hf) == 0
    assert max_abs(res_t.logits, res_h.logits) <= 1e-5
    _assert_same_maps(res_t, res_h, "hf-module")

    # LeGrad's alternative pooling and GMAR's l2 norm too (other layer_score / weight paths).
    extra = [vx.get_explainer("legrad", pool="mean"), vx.get_explainer("gmar", norm="l2")]
    et = vx.run_explainers(ad_t, x, extra, target_sets=[torch.tensor([0, 2])])
    eh = vx.run_explainers(ad_h, x, extra, target_sets=[torch.tensor([0, 2])])
    _assert_same_maps(et, eh, "hf-module-options")


def test_saved_hf_directory(pair, tmp_path) -> None:
    tm, hf = pair
    hf.save_pretrained(tmp_path)
    ad_h = vx.load_model(f"hf:{tmp_path}")
    assert ad_h.family == "hf"
    assert ad_h.labels == LABELS  # from id2label
    assert ad_h.multi_label  # from problem_type
    impl_before = ad_h.model.config._attn_implementation
    assert impl_before != "eager"

    ad_t = vx.adapter_from_module(tm, labels=LABELS, multi_label=True)
    x = seeded_input((2, 3, IMG, IMG), seed=13)
    res_t = _run(ad_t, x, [2, 0])
    res_h = _run(ad_h, x, [2, 0])
    assert ad_h.model.config._attn_implementation == impl_before
    assert vx.count_hooks(ad_h.model) == 0
    _assert_same_maps(res_t, res_h, "hf-dir")

    # Through the public explain() with one preprocessing spec for both: same grids, heatmaps.
    pre = vx.PreprocessSpec(size=(IMG, IMG), interpolation="bilinear")
    ad_t2 = vx.adapter_from_module(tm, labels=LABELS, multi_label=True, preprocess=pre)
    ad_h2 = vx.load_model(f"hf:{tmp_path}", preprocess=pre)
    impl_before = ad_h2.model.config._attn_implementation
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:45, 0:38]
    img = 0.4 + 0.4 * np.exp(-(((yy - 15) / 8.0) ** 2 + ((xx - 25) / 6.0) ** 2))
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)
    methods = vx.default_methods()
    rt = vx.explain(ad_t2, img, methods=methods, target="effusion")
    rh = vx.explain(ad_h2, img, methods=methods, target="effusion")
    assert ad_h2.model.config._attn_implementation == impl_before
    assert rt.target == rh.target == 1
    for name in methods:
        et, eh = rt.explanations[name], rh.explanations[name]
        torch.testing.assert_close(torch.as_tensor(et.grid), torch.as_tensor(eh.grid),
                                   rtol=RTOL, atol=ATOL, msg=name)
        assert et.heatmap.shape == eh.heatmap.shape == (45, 38)
        d = record(f"explain heatmap[{name}] max abs", max_abs(et.heatmap, eh.heatmap))
        assert d <= 1e-3  # min-max stretched maps: a relative 1e-4 grid difference at most
