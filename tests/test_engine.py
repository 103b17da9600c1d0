"""The one-pass engine: capture counts, hook removal (also on error), grad modes, targets."""

import numpy as np
import pytest
import torch

import vitx_core as vx
from vitx_core.capture import Needs
from vitx_core.registry import Explainer


def _x(ad, b=1, seed=0):
    h, w = ad.preprocess.size
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((b, 3, h, w)).astype(np.float32))


def test_capture_count_equals_depth_and_flags_restored(timm_adapter):
    ad = timm_adapter
    flags = [m.fused_attn for m in ad.model.modules() if hasattr(m, "fused_attn")]
    assert all(flags), "timm builds fused attention by default on torch 2.x"
    with ad.instrument(Needs(attn=True, block_out=True, feat=True)) as rec:
        assert not any(m.fused_attn for m in ad.model.modules() if hasattr(m, "fused_attn"))
        ad._forward_recorded(_x(ad), rec)
    assert len(rec.attn) == ad.depth and len(rec.block_out) == ad.depth and rec.feat is not None
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for a in rec.attn)
    assert [m.fused_attn for m in ad.model.modules() if hasattr(m, "fused_attn")] == flags
    assert vx.count_hooks(ad.model) == 0


def test_fused_attention_regression_fails_loudly(timm_adapter, monkeypatch):
    """If the adapter stopped disabling fused attention, hooks would capture nothing."""
    ad = timm_adapter
    import contextlib

    orig = type(ad)._instrument

    @contextlib.contextmanager
    def broken(self, needs, rec):
        with orig(self, needs, rec):
            for m in self.model.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = True
            yield

    monkeypatch.setattr(type(ad), "_instrument", broken)
    with pytest.raises(RuntimeError, match="fused"):
        vx.run_explainers(ad, _x(ad), [vx.get_explainer("rollout")])
    assert vx.count_hooks(ad.model) == 0


class _Boom(Explainer):
    name = "_boom_test"
    title = "boom"
    needs = Needs(attn=True, attn_grad=True, feat=True)

    def compute(self, cap, adapter, x):
        raise ZeroDivisionError("boom")


def test_hooks_removed_after_an_explainer_raises(timm_adapter):
    ad = timm_adapter
    with pytest.raises(ZeroDivisionError):
        vx.run_explainers(ad, _x(ad), [vx.get_explainer("legrad"), _Boom()])
    assert vx.count_hooks(ad.model) == 0
    assert all(m.fused_attn for m in ad.model.modules() if hasattr(m, "fused_attn"))


def test_hooks_removed_after_forward_raises(timm_adapter):
    ad = timm_adapter
    bad = torch.zeros(1, 3, 32, 32)  # wrong input size: timm raises inside the forward
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        vx.run_explainers(ad, bad, [vx.get_explainer(m) for m in vx.default_methods()])
    assert vx.count_hooks(ad.model) == 0
    assert all(m.fused_attn for m in ad.model.modules() if hasattr(m, "fused_attn"))


def test_hf_attention_implementation_restored_after_error(hf_adapter):
    ad = hf_adapter
    before = ad.model.config._attn_implementation
    with pytest.raises(ZeroDivisionError):
        vx.run_explainers(ad, _x(ad), [_Boom()])
    assert ad.model.config._attn_implementation == before
    assert vx.count_hooks(ad.model) == 0


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_works_under_callers_no_grad_and_inference_mode(timm_adapter, ctx):
    ad = timm_adapter
    ex = [vx.get_explainer(m) for m in ["gmar", "legrad", "gradcam", "chefer"]]
    ref = vx.run_explainers(ad, _x(ad), ex)
    with ctx():
        out = vx.run_explainers(ad, _x(ad), ex)
    for m in ref.outputs[0]:
        torch.testing.assert_close(out.outputs[0][m].grid, ref.outputs[0][m].grid)
        assert out.outputs[0][m].grid.abs().sum() > 0


def test_frozen_parameters_still_give_gradients(timm_adapter):
    ad = timm_adapter
    ref = vx.run_explainers(ad, _x(ad), [vx.get_explainer("gradcam"), vx.get_explainer("chefer")])
    for p in ad.model.parameters():
        p.requires_grad_(False)
    out = vx.run_explainers(ad, _x(ad), [vx.get_explainer("gradcam"), vx.get_explainer("chefer")])
    for m in ("gradcam", "chefer"):
        torch.testing.assert_close(out.outputs[0][m].grid, ref.outputs[0][m].grid)


def test_training_mode_is_refused(timm_adapter):
    ad = timm_adapter
    ad.model.train()
    with pytest.raises(RuntimeError, match="eval"):
        vx.run_explainers(ad, _x(ad), [vx.get_explainer("rollout")])
    ad.model.eval()


def test_targets_none_is_argmax_and_batch_items_independent(timm_adapter):
    ad = timm_adapter
    x = _x(ad, b=2)
    ex = [vx.get_explainer("gradcam"), vx.get_explainer("chefer")]
    res = vx.run_explainers(ad, x, ex, [None, 1])
    assert torch.equal(res.targets[0], res.logits.argmax(-1))
    assert torch.equal(res.targets[1], torch.tensor([1, 1]))
    # batch item 1 alone gives the same map as inside the batch
    alone = vx.run_explainers(ad, x[1:], ex, [1])
    for m in ("gradcam", "chefer"):
        torch.testing.assert_close(res.outputs[1][m].grid[1], alone.outputs[0][m].grid[0],
                                   rtol=1e-4, atol=1e-6)


def test_several_targets_share_one_forward(timm_adapter, monkeypatch):
    ad = timm_adapter
    calls = {"n": 0}
    orig = ad._forward_recorded

    def counting(x, rec):
        calls["n"] += 1
        return orig(x, rec)

    monkeypatch.setattr(ad, "_forward_recorded", counting)
    res = vx.run_explainers(ad, _x(ad), [vx.get_explainer("chefer")], [0, 1, 2])
    assert calls["n"] == 1
    grids = [res.outputs[k]["chefer"].grid for k in range(3)]
    assert not torch.allclose(grids[0], grids[1])  # targets really differ
    single = vx.run_explainers(ad, _x(ad), [vx.get_explainer("chefer")], [2])
    torch.testing.assert_close(grids[2], single.outputs[0]["chefer"].grid)


def test_gradient_maps_depend_on_target_attention_maps_do_not(timm_adapter):
    ad = timm_adapter
    ex = [vx.get_explainer(m) for m in ("attention", "rollout", "gradcam", "legrad")]
    res = vx.run_explainers(ad, _x(ad), ex, [0, 1])
    for m in ("attention", "rollout"):
        torch.testing.assert_close(res.outputs[0][m].grid, res.outputs[1][m].grid)
    for m in ("gradcam", "legrad"):
        assert not torch.allclose(res.outputs[0][m].grid, res.outputs[1][m].grid)


def test_legrad_last_layer_equals_final_logit_gradient(timm_adapter):
    """At the last block LeGrad's layer score IS the model's logit (forward_head(norm(z)))."""
    ad = timm_adapter
    x = _x(ad)
    with ad.instrument(Needs(attn=True, block_out=True)) as rec, torch.enable_grad():
        logits = ad._forward_recorded(x, rec)
        s = ad.layer_score(rec.block_out[-1])
    torch.testing.assert_close(s, logits)


def test_duplicate_method_in_one_run_is_refused(timm_adapter):
    with pytest.raises(ValueError, match="once"):
        vx.run_explainers(timm_adapter, _x(timm_adapter),
                          [vx.get_explainer("rollout"), vx.get_explainer("rollout")])


@pytest.mark.parametrize(("arch", "kw"), [
    ("vit_tiny_patch16_224", {}),
    ("deit_tiny_distilled_patch16_224", {}),                       # rows CLS + DIST
    ("vit_small_patch14_reg4_dinov2", {"img_size": (56, 42), "embed_dim": 48, "num_heads": 2}),
])
def test_legrad_fast_rows_path_equals_generic_backward(arch, kw):
    """The timm fast path (recompute only the read-out rows) gives the generic partial
    backward's gradients, including LayerScale and register tokens."""
    from tests.conftest import tiny_timm
    from vitx_core.adapters.base import VitAdapter

    ad = vx.adapter_from_module(tiny_timm(arch, depth=3, **kw), labels=["a", "b", "c"])
    assert ad._legrad_rows() is not None
    x = _x(ad, b=2)
    t = torch.tensor([0, 2])
    with ad.instrument(Needs(attn=True, block_out=True, legrad=True)) as rec, torch.enable_grad():
        ad._forward_recorded(x, rec)
        for layer in range(ad.depth):
            fast = ad.legrad_attention_grad(rec, layer, t, "model")
            slow = VitAdapter.legrad_attention_grad(ad, rec, layer, t, "model")
            assert slow.abs().sum() > 0
            # float32: relative to the largest entry (different summation order)
            assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
            assert torch.equal(fast != 0, slow != 0) or (slow[fast == 0].abs().max() < 1e-9)
    assert vx.count_hooks(ad.model) == 0


def test_legrad_fast_path_not_used_for_avg_pooling():
    from tests.conftest import tiny_timm

    ad = vx.adapter_from_module(tiny_timm(class_token=False, global_pool="avg", depth=2))
    assert ad._legrad_rows() is None
    res = vx.run_explainers(ad, _x(ad), [vx.get_explainer("legrad")])
    assert res.outputs[0]["legrad"].grid.abs().sum() > 0
