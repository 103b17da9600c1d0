"""Every registered explainer x every model family / token layout: the contract holds.

Shape (B, gh, gw), float32, finite, >= 0; capture count = depth; no hooks left; fused attention
flags and the HF attention implementation restored.
"""

import numpy as np
import pytest
import torch

import vitx_core as vx
from tests.conftest import LABELS, tiny_hf, tiny_timm

FAST_OPTS = {"occlusion": {"perturbations_per_eval": 16},
             "integrated_gradients": {"n_steps": 4, "internal_batch_size": 8}}


def _models():
    return {
        "timm-vit-nonsquare": lambda: tiny_timm(),
        "timm-deit-distilled": lambda: tiny_timm("deit_tiny_distilled_patch16_224", depth=2),
        "timm-dinov2-reg4": lambda: tiny_timm("vit_small_patch14_reg4_dinov2", img_size=(56, 42),
                                              depth=2, embed_dim=48, num_heads=2),
        "timm-patch32": lambda: tiny_timm("vit_base_patch32_224", img_size=(96, 64), depth=2,
                                          embed_dim=64, num_heads=2),
        "timm-avgpool-nocls": lambda: tiny_timm(class_token=False, global_pool="avg", depth=2),
        "hf-vit": lambda: tiny_hf(),
    }


EXPECTED = {  # (P, grid, readout)
    "timm-vit-nonsquare": (1, (4, 3), "cls"),
    "timm-deit-distilled": (2, (4, 3), "cls"),
    "timm-dinov2-reg4": (5, (4, 3), "cls"),
    "timm-patch32": (1, (3, 2), "cls"),
    "timm-avgpool-nocls": (0, (4, 3), "patch_mean"),
    "hf-vit": (1, (4, 4), "cls"),
}


@pytest.fixture(scope="module", params=list(_models()))
def model_case(request):
    m = _models()[request.param]()
    labels = LABELS if "hf" not in request.param else None
    return request.param, vx.adapter_from_module(m, labels=labels, multi_label=True)


def _fused_flags(model):
    return {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, "fused_attn")}


def test_token_layout(model_case):
    name, ad = model_case
    p, grid, readout = EXPECTED[name]
    assert ad.num_prefix_tokens == p
    assert ad.grid_size(ad.preprocess.size) == grid
    assert ad.readout == readout


@pytest.mark.parametrize("method", [i.name for i in vx.list_explainers()])
def test_contract(model_case, method, rng):
    name, ad = model_case
    fused_before = _fused_flags(ad.model)
    impl_before = getattr(getattr(ad.model, "config", None), "_attn_implementation", None)
    h, w = ad.preprocess.size
    x = torch.from_numpy(rng.standard_normal((2, 3, h, w)).astype(np.float32))
    ex = vx.get_explainer(method, **FAST_OPTS.get(method, {}))
    res = vx.run_explainers(ad, x, [ex], [torch.tensor([0, 2])])
    grid = res.outputs[0][method].grid
    gh, gw = EXPECTED[name][1]
    assert grid.shape == (2, gh, gw)
    assert grid.dtype == torch.float32
    assert torch.isfinite(grid).all() and (grid >= 0).all()
    assert grid.abs().sum() > 0, "an all-zero map on a random model means a broken capture"
    assert vx.count_hooks(ad.model) == 0
    assert _fused_flags(ad.model) == fused_before
    if impl_before is not None:
        assert ad.model.config._attn_implementation == impl_before


def test_all_one_pass_together_equal_each_alone(model_case, rng):
    """Sharing the pass changes nothing: every map equals the one computed alone."""
    _, ad = model_case
    h, w = ad.preprocess.size
    x = torch.from_numpy(rng.standard_normal((2, 3, h, w)).astype(np.float32))
    methods = vx.default_methods()
    together = vx.run_explainers(ad, x, [vx.get_explainer(m) for m in methods], [None])
    for m in methods:
        alone = vx.run_explainers(ad, x, [vx.get_explainer(m)], [None])
        torch.testing.assert_close(together.outputs[0][m].grid, alone.outputs[0][m].grid,
                                   rtol=1e-5, atol=1e-7)
