"""Formula parity: reference formulas restated here, on an independent capture, vs vitx's grids.

The capture in this file does not use vitx: fused attention is switched off by hand, forward
hooks on ``blocks[i].attn.attn_drop`` record ``A^l`` (post-softmax probabilities, eval mode),
forward hooks on ``blocks[i]`` record the block outputs, and gradients come from
``torch.autograd.grad`` of ONE image's raw logit ``y[b, c_b]`` at a time (vitx differentiates the
batch sum in one backward). The formulas (EXPLAINERS.md §3) are written as plain float64 numpy
loops:

* raw attention: last block, mean over heads, read-out row, patch columns (Chefer's
  ``last_layer_attn`` baseline);
* rollout (Abnar & Zuidema 2020): ``Â = 0.5·mean_h A + 0.5·I``, rows renormalised,
  ``J_l = Â_l @ J_{l-1}``, map ``J[r, P:]``;
* jacobgil/vit-explain rollout at ``discard_ratio = 0`` (as shipped: ``a / a.sum(-1)`` without
  keepdim, ``mask / max``);
* Chefer et al. ICCV 2021: ``R = I; R += mean_h relu(∇A ⊙ A) @ R``, map ``R[r, P:]``;
* GMAR: per-layer head weights ``|∇A|_1`` or ``|∇A|_2`` normalised to sum 1, weighted SUM of
  heads, then ``0.5·Ā + 0.5·I`` rollout;
* LeGrad with the model's own head: ``relu(∂s^l/∂A^l)`` mean over heads and queries, prefix
  columns dropped, mean over layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitx_core as vx
from tests.parity._helpers import assert_informative, max_rel, record, seeded_input, timm_vit
from vitx_core.registry import get_explainer_class

pytestmark = pytest.mark.parity

TOL = 1e-5
TARGETS = [2, 0]

MODELS = {
    # CLS only, non-square 64x48 at patch 8 -> 8x6 grid, N = 49
    "vit": dict(arch="vit_tiny_patch16_224", img_size=(64, 48), patch_size=8),
    # DeiT distilled: P = 2 ([cls, dist, patches]), 48x64 at patch 8 -> 6x8 grid, N = 50
    "deit_distilled": dict(arch="deit_tiny_distilled_patch16_224", img_size=(48, 64), patch_size=8),
}


# ---- independent capture -------------------------------------------------------------------

class Reference:
    """Everything the formulas need, captured without vitx, as float64 numpy arrays."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> None:
        model.eval()
        self.P = int(model.num_prefix_tokens)
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        attn_mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
        old = [m.fused_attn for m in attn_mods]
        attns: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        handles = []
        try:
            for m in attn_mods:
                m.fused_attn = False
            for blk in model.blocks:
                handles.append(blk.attn.attn_drop.register_forward_hook(
                    lambda _m, _i, o: attns.append(o)))
                handles.append(blk.register_forward_hook(lambda _m, _i, o: outs.append(o)))
            with torch.enable_grad():
                logits = model(x)
                L = len(model.blocks)
                assert len(attns) == L and len(outs) == L, "capture failed (fused attention?)"
                b_sz = x.shape[0]
                self.attn = np.stack([a.detach().double().numpy() for a in attns], 1)  # (B,L,H,N,N)
                self.grad = np.zeros_like(self.attn)
                self.legrad_grad = np.zeros_like(self.attn)
                for b, c in enumerate(targets):  # one image, one raw logit at a time
                    gs = torch.autograd.grad(logits[b, c], attns, retain_graph=True)
                    for g in gs:  # other images' gradients are exactly zero (no batch coupling)
                        assert float(g[[i for i in range(b_sz) if i != b]].abs().sum()) == 0.0
                    self.grad[b] = np.stack([g[b].double().numpy() for g in gs])
                    for layer in range(L):  # LeGrad: block-l score = the model's head on z^l
                        s = model.forward_head(model.norm(outs[layer]))[b, c]
                        g = torch.autograd.grad(s, attns[layer], retain_graph=True)[0]
                        self.legrad_grad[b, layer] = g[b].double().numpy()
            self.logits = logits.detach().double().numpy()
        finally:
            for h in handles:
                h.remove()
            for m, v in zip(attn_mods, old):
                m.fused_attn = v
        rows = self.attn.sum(-1)
        assert np.allclose(rows, 1.0, atol=1e-5), "captured tensors are not softmax probabilities"

    @property
    def batch(self) -> int:
        return self.attn.shape[0]

    @property
    def n(self) -> int:
        return self.attn.shape[-1]

    def to_grid(self, row: np.ndarray) -> np.ndarray:
        gh, gw = self.grid
        assert row.shape == (self.n,) and self.n - self.P == gh * gw
        return row[self.P:].reshape(gh, gw)


# ---- reference formulas (plain loops, float64) ---------------------------------------------

def ref_raw_attention(ref: Reference, row: int = 0, layer: int = -1) -> np.ndarray:
    out = []
    for b in range(ref.batch):
        a = ref.attn[b, layer]  # (H, N, N)
        fused = sum(a[h] for h in range(a.shape[0])) / a.shape[0]
        out.append(ref.to_grid(fused[row]))
    return np.stack(out)


def _half_residual(mat: np.ndarray) -> np.ndarray:
    """``0.5·M + 0.5·I`` with rows renormalised to 1."""
    m = 0.5 * mat + 0.5 * np.eye(mat.shape[0])
    return m / m.sum(axis=1, keepdims=True)


def ref_rollout_abnar(ref: Reference, row: int = 0) -> np.ndarray:
    out = []
    for b in range(ref.batch):
        joint = np.eye(ref.n)
        for layer in range(ref.attn.shape[1]):
            a_bar = ref.attn[b, layer].mean(axis=0)
            joint = _half_residual(a_bar) @ joint  # left-multiply: later layers on the left
        out.append(ref.to_grid(joint[row]))
    return np.stack(out)


def ref_rollout_vit_explain(ref: Reference, head_fusion: str, keepdim: bool) -> np.ndarray:
    """jacobgil/vit-explain ``rollout`` at ``discard_ratio = 0`` (nothing discarded), one image at
    a time (the original handles batch element 0 only); ``keepdim=False`` is the shipped code."""
    out = []
    for b in range(ref.batch):
        result = np.eye(ref.n)[None]
        for layer in range(ref.attn.shape[1]):
            att = ref.attn[b:b + 1, layer]  # (1, H, N, N)
            fused = {"mean": att.mean(axis=1), "max": att.max(axis=1), "min": att.min(axis=1)}[
                head_fusion]
            a = (fused + np.eye(ref.n)) / 2
            a = a / (a.sum(axis=-1, keepdims=True) if keepdim else a.sum(axis=-1))
            result = a @ result
        mask = result[0, 0, 1:]  # vit-explain reads row 0, every column after the first
        assert ref.P == 1, "vit-explain assumes a single prefix token"
        mask = mask / mask.max()
        out.append(mask.reshape(ref.grid))
    return np.stack(out)


def ref_chefer(ref: Reference, row: int = 0) -> np.ndarray:
    out = []
    for b in range(ref.batch):
        rel = np.eye(ref.n)
        for layer in range(ref.attn.shape[1]):
            a, g = ref.attn[b, layer], ref.grad[b, layer]
            cam = np.maximum(g * a, 0.0).mean(axis=0)  # ReLU per head, then the head mean
            rel = rel + cam @ rel  # no row normalisation
        out.append(ref.to_grid(rel[row]))
    return np.stack(out)


def ref_gmar(ref: Reference, norm: str, row: int = 0) -> np.ndarray:
    out = []
    for b in range(ref.batch):
        joint = np.eye(ref.n)
        for layer in range(ref.attn.shape[1]):
            a, g = ref.attn[b, layer], ref.grad[b, layer]
            heads = a.shape[0]
            if norm == "l1":
                imp = np.array([np.abs(g[h]).sum() for h in range(heads)])
            else:
                imp = np.array([np.sqrt((g[h] ** 2).sum()) for h in range(heads)])
            w = imp / imp.sum()
            weighted = sum(w[h] * a[h] for h in range(heads))  # a weighted SUM, not a mean
            assert np.allclose(weighted.sum(axis=1), 1.0, atol=1e-6)
            joint = (0.5 * weighted + 0.5 * np.eye(ref.n)) @ joint
        out.append(ref.to_grid(joint[row]))
    return np.stack(out)


def ref_legrad(ref: Reference, layers: list[int]) -> np.ndarray:
    out = []
    for b in range(ref.batch):
        maps = []
        for layer in layers:
            g = np.maximum(ref.legrad_grad[b, layer], 0.0)  # ReLU on every entry first
            e = g.mean(axis=0).mean(axis=0)  # heads, then query rows -> (N,) over keys
            maps.append(ref.to_grid(e))
        out.append(np.mean(maps, axis=0))
    return np.stack(out)


# ---- the tests -------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    spec = dict(MODELS[request.param])
    arch = spec.pop("arch")
    model = timm_vit(arch, num_classes=3, depth=3, seed=21, **spec)
    h, w = spec["img_size"]
    x = seeded_input((2, 3, h, w), seed=17)
    ref = Reference(model, x, TARGETS)
    ad = vx.adapter_from_module(model, labels=["a", "b", "c"], multi_label=True)
    return request.param, model, x, ref, ad


def _vitx(ad, x, explainers) -> dict[str, torch.Tensor]:
    res = vx.run_explainers(ad, x, explainers, target_sets=[torch.tensor(TARGETS)])
    assert vx.count_hooks(ad.model) == 0
    return {k: v.grid for k, v in res.outputs[0].items()}


def _check(tag: str, ours: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(ours.shape) == expected.shape
    assert_informative(expected)
    d = record(tag, max_rel(ours, expected))
    assert d <= TOL, f"{tag}: max relative difference {d:.3e}"


def test_capture_is_independent_and_complete(setup) -> None:
    name, model, x, ref, ad = setup
    assert ref.attn.shape[1] == len(model.blocks)
    assert ref.n == ref.P + ref.grid[0] * ref.grid[1]
    assert ref.P == (2 if name == "deit_distilled" else 1)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))  # restored
    res = vx.run_explainers(ad, x, [vx.get_explainer("attention")], target_sets=[None])
    d = record(f"formula[{name}] logits vitx-vs-own-capture max abs",
               float(np.abs(res.logits.double().numpy() - ref.logits).max()))
    assert d <= 1e-5


def test_raw_attention(setup) -> None:
    name, _, x, ref, ad = setup
    got = _vitx(ad, x, [vx.get_explainer("attention")])["attention"]
    _check(f"formula[{name}] raw attention (last, mean, row 0)", got, ref_raw_attention(ref))
    if ref.P == 2:  # DeiT: the distillation-token row on request
        got = _vitx(ad, x, [vx.get_explainer("attention", readout="dist")])["attention"]
        _check(f"formula[{name}] raw attention (dist row)", got, ref_raw_attention(ref, row=1))
    for layer in (0, 1):
        got = _vitx(ad, x, [vx.get_explainer("attention", layer=layer)])["attention"]
        _check(f"formula[{name}] raw attention (block {layer})", got,
               ref_raw_attention(ref, layer=layer))


def test_rollout_abnar(setup) -> None:
    name, _, x, ref, ad = setup
    got = _vitx(ad, x, [vx.get_explainer("rollout")])["rollout"]
    _check(f"formula[{name}] rollout (Abnar, row 0)", got, ref_rollout_abnar(ref))
    if ref.P == 2:
        got = _vitx(ad, x, [vx.get_explainer("rollout", readout="dist")])["rollout"]
        _check(f"formula[{name}] rollout (dist row)", got, ref_rollout_abnar(ref, row=1))


def test_rollout_vit_explain_discard0(setup) -> None:
    name, _, x, ref, ad = setup
    if ref.P != 1:
        pytest.skip("vit-explain reads columns 1: (one prefix token only)")
    # mean fusion: rows of (Ā + I)/2 already sum to 1, so the shipped no-keepdim division is a
    # no-op and vit-explain == Abnar == vitx default rollout (up to vit-explain's / max).
    got = _vitx(ad, x, [vx.get_explainer("rollout")])["rollout"]
    got = got / got.flatten(1).amax(1)[:, None, None]
    _check(f"formula[{name}] vit-explain mean d=0 (shipped)", got,
           ref_rollout_vit_explain(ref, "mean", keepdim=False))

    # max fusion (the vit-explain preset), discard overridden to 0: equal to vit-explain with its
    # row normalisation fixed (keepdim), which is what vitx documents for the preset.
    ex = get_explainer_class("rollout").from_preset("vit-explain", discard_ratio=0.0)
    assert ex.params.head_fusion == "max" and ex.params.discard_ratio == 0.0
    got = _vitx(ad, x, [ex])["rollout"]
    got = got / got.flatten(1).amax(1)[:, None, None]
    fixed = ref_rollout_vit_explain(ref, "max", keepdim=True)
    _check(f"formula[{name}] vit-explain max d=0 (keepdim fixed)", got, fixed)
    # ...and NOT to the shipped code: with max fusion the rows of (F + I)/2 do not sum to 1, so
    # the missing keepdim (dividing column j by row-sum j, vit-explain #16) changes the map even
    # at discard 0. Recorded so a regression towards the buggy form is caught.
    shipped = ref_rollout_vit_explain(ref, "max", keepdim=False)
    d = record(f"formula[{name}] vit-explain max d=0 shipped-vs-fixed (bug size)",
               max_rel(shipped, fixed))
    assert d > 1e-4


def test_chefer(setup) -> None:
    name, _, x, ref, ad = setup
    got = _vitx(ad, x, [vx.get_explainer("chefer")])["chefer"]
    _check(f"formula[{name}] chefer ICCV'21 (row 0)", got, ref_chefer(ref))
    if ref.P == 2:
        got = _vitx(ad, x, [vx.get_explainer("chefer", readout="dist")])["chefer"]
        _check(f"formula[{name}] chefer (dist row)", got, ref_chefer(ref, row=1))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_gmar(setup, norm: str) -> None:
    name, _, x, ref, ad = setup
    got = _vitx(ad, x, [vx.get_explainer("gmar", norm=norm)])["gmar"]
    expected = ref_gmar(ref, norm)
    _check(f"formula[{name}] gmar {norm}", got, expected)
    # the head weighting matters: plain rollout is a different map
    assert max_rel(ref_rollout_abnar(ref), expected) > 1e-4


def test_legrad_model_head(setup) -> None:
    name, model, x, ref, ad = setup
    depth = len(model.blocks)
    for layers in (list(range(depth)), [depth - 2, depth - 1]):
        got = _vitx(ad, x, [vx.get_explainer("legrad", layers=layers)])["legrad"]
        _check(f"formula[{name}] legrad pool=model layers={layers}", got, ref_legrad(ref, layers))


def test_one_pass_bundle_equals_single_runs(setup) -> None:
    """All one-pass methods together (one forward, one shared backward) == the formulas."""
    name, _, x, ref, ad = setup
    grids = _vitx(ad, x, [vx.get_explainer(m) for m in vx.default_methods()])
    depth = ref.attn.shape[1]
    expected = {
        "attention": ref_raw_attention(ref),
        "rollout": ref_rollout_abnar(ref),
        "gmar": ref_gmar(ref, "l1"),
        "legrad": ref_legrad(ref, list(range(depth))),
        "chefer": ref_chefer(ref),
    }
    for k, e in expected.items():
        _check(f"formula[{name}] bundle {k}", grids[k], e)
