"""Binarisation rules: Otsu oracle (bimodal maps, brute force), fixed, top-k, constant maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitx_core.metrics import ThresholdRule, binarize, load_tuned_thresholds, otsu_threshold, tuned_threshold
from vitx_core.metrics.thresholds import otsu_level_u8, quantise_u8


def brute_otsu(q: np.ndarray) -> int:
    """Direct between-class variance for every split (first maximum), as OpenCV."""
    best, arg = -1.0, 0
    v = q.ravel().astype(float)
    for t in range(256):
        a, b = v[v <= t], v[v > t]
        if a.size == 0 or b.size == 0:
            continue
        s = a.size / v.size * b.size / v.size * (a.mean() - b.mean()) ** 2
        if s > best + 1e-12:
            best, arg = s, t
    return arg


def test_otsu_on_a_bimodal_map():
    h = np.full((10, 10), 0.2)
    h[:, 6:] = 0.8
    # any split between the two levels separates them; the first maximum is at floor(255 * 0.2)
    assert otsu_level_u8(quantise_u8(h)) == 51
    assert otsu_threshold(h) == pytest.approx(51 / 255)
    mask, thr = binarize(h, "otsu")
    assert (mask == (h > 0.5)).all() and thr == pytest.approx(51 / 255)


def test_otsu_noisy_bimodal_threshold_in_the_valley():
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.normal(0.25, 0.05, 3000), rng.normal(0.75, 0.05, 2000)])
    truth = (np.arange(5000) >= 3000).reshape(50, 100)
    h = np.clip(h, 0, 1).reshape(50, 100)
    assert 0.35 < otsu_threshold(h) < 0.65
    assert (binarize(h, "otsu")[0] == truth).mean() > 0.999


def test_otsu_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = (rng.beta(2, 5, (30, 20)) * 255).astype(np.uint8)
        assert otsu_level_u8(q) == brute_otsu(q)


def test_constant_maps_give_empty_masks():
    for rule in ("otsu", "fixed:0.0", "top_k:0.5", "chexlocalize", "gt_area"):
        for v in (0.0, 0.7):
            m, thr = binarize(np.full((5, 5), v), rule, gt=np.ones((5, 5), bool))
            assert not m.any() and math.isnan(thr), rule
    assert math.isnan(otsu_threshold(np.zeros((3, 3))))


def test_fixed_top_k_gt_area_and_fill():
    h = np.linspace(0, 1, 20).reshape(4, 5)
    m, t = binarize(h, 0.5)
    assert t == 0.5 and (m == (h > 0.5)).all()  # strictly above
    m, t = binarize(h, "top_k:0.25")
    assert m.sum() == 5 and m.ravel()[-5:].all()
    g = np.zeros((4, 5), bool)
    g[0, :3] = True
    m, _ = binarize(h, "gt_area", gt=g)
    assert m.sum() == 3
    ring = np.zeros((7, 7))
    ring[1:6, 1:6] = 1.0
    ring[3, 3] = 0.0
    assert not binarize(ring, "otsu")[0][3, 3]
    assert binarize(ring, "chexlocalize")[0][3, 3]  # hole filled (contours drawn filled)


def test_rule_parsing_and_validation():
    assert ThresholdRule.parse("fixed:0.3").label == "fixed:0.3"
    assert ThresholdRule.parse(0.7) == ThresholdRule("fixed", 0.7)
    assert ThresholdRule.parse("0.5") == ThresholdRule("fixed", 0.5)
    assert ThresholdRule.parse("OTSU").label == "otsu"
    assert ThresholdRule.parse("top_k:0.1").label == "top_k:0.1"
    for bad in ("fixed:1.5", "top_k:0", "otsu:0.3", "nonsense"):
        with pytest.raises(ValueError):
            ThresholdRule.parse(bad)
    with pytest.raises(ValueError, match="gt"):
        binarize(np.eye(3), "gt_area")
    with pytest.raises(ValueError, match="tuned"):
        binarize(np.eye(3), "tuned")


def test_tuned_threshold_csv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("Threshold,Task,Explainer\n0.4,Effusion,\n0.6,effusion,gradcam\n0.2,Nodule,\n")
    t = load_tuned_thresholds(p)
    assert tuned_threshold(t, "gradcam", "EFFUSION") == 0.6
    assert tuned_threshold(t, "rollout", "effusion") == 0.4
    assert tuned_threshold(t, "rollout", "cardiomegaly") is None
    bad = tmp_path / "b.csv"
    bad.write_text("thr,task\n0.4,x\n")
    with pytest.raises(ValueError, match="threshold"):
        load_tuned_thresholds(bad)
