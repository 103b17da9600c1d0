"""Deletion / insertion (oracle on a stub model) and model-parameter randomisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vitx_core as vx
from vitx_core.metrics.faithfulness import (
    baseline_image,
    cascade_stages,
    deletion_insertion,
    parameter_groups,
    patch_order,
    randomisation_check,
    randomize_model,
    spearman,
)


class StubAdapter:
    """'Model' whose logit is the mean of channel 0 over patch (row 0, col 1) only."""

    patch_size = (8, 8)
    multi_label = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, 0:8, 8:16].mean(dim=(1, 2))
        return torch.stack([s, -s], dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def test_patch_order_is_stable_on_ties():
    assert list(patch_order(np.array([[1.0, 3.0], [3.0, 0.0]]))) == [1, 2, 0, 3]
    assert list(patch_order(np.zeros((2, 2)))) == [0, 1, 2, 3]


def test_deletion_insertion_oracle():
    x = torch.ones(3, 16, 24)  # grid 2 x 3 of 8-px patches
    good = np.zeros((2, 3))
    good[0, 1] = 1.0  # the one patch the stub looks at, ranked first
    bad = np.ones((2, 3))
    bad[0, 1] = 0.0  # ranked last
    a = StubAdapter()
    cg = deletion_insertion(a, x, good, 0, steps=6, baseline="mean")
    cb = deletion_insertion(a, x, bad, 0, steps=6, baseline="mean")
    # mean baseline of an all-ones image is ones: no change -> normalisation undefined
    assert math.isnan(cg["deletion"].nauc)
    x = torch.zeros(3, 16, 24)
    x[0, 0:8, 8:16] = 6.0  # channel-0 mean = 1: intact score 6, all-baseline score 1
    cg = deletion_insertion(a, x, good, 0, steps=6, baseline="mean")
    cb = deletion_insertion(a, x, bad, 0, steps=6, baseline="mean")
    d, i = cg["deletion"], cg["insertion"]
    assert d.fractions[0] == 0 and d.fractions[-1] == 1 and len(d.scores) == 7
    assert d.scores[0] == pytest.approx(6.0) and d.scores[-1] == pytest.approx(1.0)
    assert i.scores[0] == pytest.approx(1.0) and i.scores[-1] == pytest.approx(6.0)
    # the right patch first: the score collapses at step 1 -> deletion nAUC 1/12, insertion 11/12
    assert d.nauc == pytest.approx(1 / 12) and i.nauc == pytest.approx(11 / 12)
    assert cb["deletion"].nauc == pytest.approx(11 / 12) and cb["insertion"].nauc == pytest.approx(1 / 12)
    assert d.auc == pytest.approx(np.trapezoid(d.scores, d.fractions))


def test_baseline_images():
    x = torch.rand(3, 20, 16)
    m = baseline_image(x, "mean")
    assert torch.allclose(m[:, 0, 0], x.mean(dim=(1, 2)))
    b = baseline_image(x, "blur", sigma=2.0)
    assert b.shape == x.shape and b.std() < x.std()
    with pytest.raises(ValueError):
        baseline_image(x, "noise")  # type: ignore[arg-type]


@pytest.fixture
def small_model():
    from tests.conftest import tiny_timm

    return tiny_timm(img_size=(32, 32), depth=2, num_classes=3)


def test_parameter_groups_and_stages(small_model):
    groups = dict(parameter_groups(small_model))
    assert list(groups)[:3] == ["head", "block1", "block0"] and "embed" in groups
    assert "head.weight" in groups["head"] and "norm.weight" in groups["head"]
    assert "cls_token" in groups["embed"] and all(n.startswith("blocks.1.") for n in groups["block1"])
    assert cascade_stages(small_model) == ["head", "top1", "top2", "all"]


def test_randomize_model_cascading(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    r = randomize_model(small_model, "top1", seed=0)
    after = r.state_dict()
    assert all(torch.equal(before[k], v) for k, v in small_model.state_dict().items())  # untouched
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "head.weight" in changed and "blocks.1.attn.qkv.weight" in changed
    assert not any(k.startswith("blocks.0.") for k in changed) and "pos_embed" not in changed
    full = randomize_model(small_model, "all", seed=0).state_dict()
    assert not torch.equal(full["pos_embed"], before["pos_embed"])
    again = randomize_model(small_model, "top1", seed=0).state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)  # seeded
    with pytest.raises(ValueError):
        randomize_model(small_model, "sideways")


def test_spearman_policies():
    a = np.arange(12.0).reshape(3, 4)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones((3, 4))))


def test_randomisation_check_runs_per_method(small_model):
    adapter = vx.adapter_from_module(small_model, labels=["a", "b", "c"], multi_label=True)
    ex = vx.build_explainers(["rollout", "gradcam"])
    x = torch.rand(1, 3, 32, 32)
    out = randomisation_check(adapter, x, ex, [1], stages=("head", "all"))
    assert set(out) == {(s, m, 1) for s in ("head", "all") for m in ("rollout", "gradcam")}
    # rollout does not use the head: randomising only the head leaves it unchanged
    assert out[("head", "rollout", 1)] == pytest.approx(1.0)
    assert all(-1.0 <= v <= 1.0 for v in out.values() if not math.isnan(v))
