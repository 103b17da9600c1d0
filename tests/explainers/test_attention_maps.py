"""Oracles for raw attention, GMAR, Chefer, LeGrad, Grad-CAM and attention flow."""

import numpy as np
import pytest
import torch

from tests.explainers._cap import make_capture, random_attention
from vitx_core.explainers.attention_flow import AttentionFlow, attention_flow
from vitx_core.explainers.chefer import CheferRelevance, chefer_relevance
from vitx_core.explainers.gmar import GMAR, gmar, head_weights
from vitx_core.explainers.grad_cam import GradCAM
from vitx_core.explainers.legrad import LeGrad
from vitx_core.explainers.raw_attention import RawAttention


def test_raw_attention_fusions_and_per_head():
    a = random_attention(1, 3, 5)
    cap = make_capture([random_attention(1, 3, 5, seed=9), a])
    rows = a[0, :, 0, 1:]  # (H, 4)
    for fusion, ref in (("mean", rows.mean(0)), ("max", rows.amax(0)), ("min", rows.amin(0))):
        g, extras = RawAttention(head_fusion=fusion, per_head=True).compute(cap, None, None)
        assert torch.allclose(g[0].flatten(), ref)
        assert torch.allclose(extras["per_head"][0].reshape(3, 4), rows)
    g0, _ = RawAttention(layer=0).compute(cap, None, None)
    assert torch.allclose(g0[0].flatten(), cap.attn[0][0, :, 0, 1:].mean(0))
    _, extras = RawAttention().compute(cap, None, None)
    assert torch.allclose(extras["patch_mass"], rows.mean(0).sum()[None])
    with pytest.raises(ValueError, match="layer"):
        RawAttention(layer=5).compute(cap, None, None)


def test_dist_readout_needs_two_prefix_tokens():
    cap = make_capture([random_attention(1, 2, 5)])
    with pytest.raises(ValueError, match="distillation"):
        RawAttention(readout="dist").compute(cap, None, None)
    cap2 = make_capture([random_attention(1, 2, 6)], num_prefix=2)
    g, _ = RawAttention(readout="dist").compute(cap2, None, None)
    assert torch.allclose(g[0].flatten(), cap2.attn[0][0, :, 1, 2:].mean(0))


def test_gmar_head_weights_hand_computed():
    g = torch.zeros(1, 2, 2, 2)
    g[0, 0] = torch.tensor([[1.0, -1.0], [0.0, 2.0]])  # l1 = 4, l2 = sqrt(6)
    g[0, 1] = torch.tensor([[0.0, 0.0], [0.0, -4.0]])  # l1 = 4, l2 = 4
    assert torch.allclose(head_weights(g, "l1"), torch.tensor([[0.5, 0.5]]))
    s6 = 6 ** 0.5
    assert torch.allclose(head_weights(g, "l2"), torch.tensor([[s6 / (s6 + 4), 4 / (s6 + 4)]]))
    assert torch.allclose(head_weights(torch.zeros(1, 4, 2, 2), "l1"), torch.full((1, 4), 0.25))


def test_gmar_is_weighted_sum_then_rollout():
    a = [random_attention(1, 2, 5, seed=s) for s in range(2)]
    g = [torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    j = gmar(a, g, "l1")
    assert torch.allclose(j.sum(-1), torch.ones(1, 5), atol=1e-6)
    ref = torch.eye(5)
    for al, gl in zip(a, g):
        w = gl.abs().sum(dim=(2, 3))[0]
        w = w / w.sum()
        fused = w[0] * al[0, 0] + w[1] * al[0, 1]
        ref = (0.5 * fused + 0.5 * torch.eye(5)) @ ref
    assert torch.allclose(j[0], ref, atol=1e-6)
    cap = make_capture(a, g)
    out = GMAR().compute(cap, None, None)
    assert torch.allclose(out[0].flatten(), ref[0, 1:], atol=1e-6)


def test_chefer_oracle():
    a = [random_attention(1, 2, 4, seed=s) for s in range(2)]
    g = [torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(10 + s)) for s in range(2)]
    r = torch.eye(4)
    for al, gl in zip(a, g):
        cam = (gl[0] * al[0]).clamp(min=0).mean(0)  # ReLU per head BEFORE the head mean
        r = r + cam @ r
    assert torch.allclose(chefer_relevance(a, g)[0], r, atol=1e-6)
    cap = make_capture(a, g, grid=(1, 3))
    out = CheferRelevance().compute(cap, None, None)
    assert torch.allclose(out[0].flatten(), r[0, 1:], atol=1e-6)
    # zero gradients -> identity relevance -> a zero map (no evidence)
    zero = CheferRelevance().compute(make_capture(a, [torch.zeros_like(x) for x in g], grid=(1, 3)),
                                     None, None)
    assert torch.equal(zero, torch.zeros(1, 1, 3))


def test_legrad_relu_mean_over_heads_queries_then_layers():
    g0 = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    g1 = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    cap = make_capture([random_attention(1, 2, 5), random_attention(1, 2, 5, seed=3)],
                       layer_grad={("model", 0): g0, ("model", 1): g1})
    ref = (g0.relu().mean(dim=(1, 2))[0, 1:] + g1.relu().mean(dim=(1, 2))[0, 1:]) / 2
    out = LeGrad().compute(cap, None, None)
    assert torch.allclose(out[0].flatten(), ref, atol=1e-7)
    out_last = LeGrad(layers=[-1]).compute(cap, None, None)
    assert torch.allclose(out_last[0].flatten(), g1.relu().mean(dim=(1, 2))[0, 1:])
    with pytest.raises(ValueError, match="layer"):
        LeGrad(layers=(7,)).layer_indices(2)


def test_gradcam_hand_computed():
    # 2 patches (1x2 grid) + CLS, 2 channels
    feat = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, -1.0]]])
    grad = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [3.0, 2.0]]])
    # alpha = mean over patches of grad = [2, 1]; cam = relu([1*2 + 2*1, 3*2 - 1*1]) = [4, 5]
    cap = make_capture([], feat=feat, feat_grad=grad, grid=(1, 2))
    out = GradCAM().compute(cap, None, None)
    assert torch.equal(out, torch.tensor([[[4.0, 5.0]]]))
    grad_neg = -grad
    out = GradCAM().compute(make_capture([], feat=feat, feat_grad=grad_neg, grid=(1, 2)), None, None)
    assert torch.equal(out, torch.zeros(1, 1, 2))  # ReLU


def test_attention_flow_on_a_chain_graph():
    # One block, 3 tokens. Â row 0 = [.5, .3, .2]: the CLS sends .3 and .2 to the patches, .5 stays.
    m = np.array([[[0.5, 0.3, 0.2], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    f = attention_flow(m, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(f, [0.5, 0.3, 0.2], atol=1e-6)
    # two blocks: flow is bounded by the bottleneck, unlike the rollout product
    m2 = np.stack([m[0], np.array([[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])])
    f2 = attention_flow(m2, np.array([1.0, 0.0, 0.0]))
    # top block (m2[1]): CLS -> CLS .1, CLS -> t1 .9; lower block (m[0]): CLS -> {.5, .3, .2}.
    # max flow from the top CLS to input CLS = min(.1, .5) = .1; to t1 = .9 + min(.1, .3) = 1.0;
    # to t2 = min(.1, .2) = .1; then normalised over all input tokens.
    raw = np.array([0.1, 1.0, 0.1])
    np.testing.assert_allclose(f2, raw / raw.sum(), atol=1e-5)


def test_attention_flow_explainer_runs_on_capture():
    a = [random_attention(1, 2, 5, seed=s) for s in range(2)]
    out = AttentionFlow().compute(make_capture(a), None, None)
    assert out.shape == (1, 2, 2) and (out >= 0).all()
    with pytest.raises(ValueError, match="max_tokens"):
        AttentionFlow(max_tokens=4).compute(make_capture(a), None, None)
