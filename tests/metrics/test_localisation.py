"""Localisation metrics against hand-computed oracles, and every written NaN policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitx_core.metrics import (
    METRICS,
    Protocol,
    ThresholdRule,
    area_fraction,
    box_mask,
    chexlocalize_scores,
    dice,
    ebpg,
    enrichment,
    higher_is_better,
    hit,
    hit_rate,
    iou,
    pixel_auroc,
    pxap,
    rank_accuracy,
    score_map,
    top_k_intersection,
)


def rect(hw, y0, y1, x0, x1):
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---- IoU / Dice ----------------------------------------------------------------------------
def test_iou_of_two_known_rectangles():
    # A = rows 0-9 x cols 0-9 (100 px); B = rows 5-14 x cols 5-14 (100 px); overlap 5x5 = 25
    a = rect((20, 20), 0, 10, 0, 10)
    b = rect((20, 20), 5, 15, 5, 15)
    assert iou(a, b) == pytest.approx(25 / 175)
    assert dice(a, b) == pytest.approx(2 * 25 / 200)
    assert iou(a, a) == 1.0


def test_box_ground_truth_is_scored_as_a_filled_box():
    # box (x=2, y=3, w=4, h=5): pixel-centre rule -> cols 2..5, rows 3..7
    g = box_mask((2, 3, 4, 5), (10, 10))
    assert g.sum() == 20 and g[3:8, 2:6].all()
    pred = rect((10, 10), 3, 8, 2, 4)  # left half of the box
    assert iou(pred, g) == pytest.approx(0.5)


def test_iou_empty_policies():
    z = np.zeros((8, 8), dtype=bool)
    p = rect((8, 8), 0, 2, 0, 2)
    # TP-only (default): NaN unless both non-empty
    assert math.isnan(iou(p, z)) and math.isnan(iou(z, p)) and math.isnan(iou(z, z))
    # full mode: NaN only for an empty union; FP and FN score 0
    assert iou(p, z, tp_only=False) == 0.0
    assert iou(z, p, tp_only=False) == 0.0
    assert math.isnan(iou(z, z, tp_only=False))
    assert math.isnan(dice(z, z, tp_only=False)) and dice(p, z, tp_only=False) == 0.0


def test_shape_mismatch_and_bad_maps_raise():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="negative"):
        hit(-np.ones((3, 3)), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        ebpg(np.full((3, 3), np.nan), np.ones((3, 3), bool))


# ---- pointing game -------------------------------------------------------------------------
def test_hit_on_a_one_hot_map():
    g = rect((10, 12), 2, 5, 3, 7)
    h = np.zeros((10, 12))
    h[3, 4] = 1.0
    assert hit(h, g) == 1.0
    h2 = np.zeros((10, 12))
    h2[7, 10] = 1.0
    assert hit(h2, g) == 0.0
    # tolerance: (7, 10) is 3 rows / 4 cols from the nearest GT pixel (4, 6) -> distance 5
    assert hit(h2, g, tolerance_px=4.9) == 0.0
    assert hit(h2, g, tolerance_px=5.0) == 1.0


def test_hit_ties_share_and_first():
    g = rect((4, 4), 0, 2, 0, 4)  # top half: a = 0.5
    h = np.zeros((4, 4))
    h[0, 0] = h[3, 3] = h[3, 2] = h[1, 1] = 1.0  # 2 of 4 maxima inside
    assert hit(h, g) == pytest.approx(0.5)
    assert hit(h, g, ties="first") == 1.0  # (0, 0) first in row-major order
    # a constant map scores the area fraction (expected hit under a random tie-break)
    assert hit(np.ones((4, 4)), g) == pytest.approx(area_fraction(g))
    assert hit(np.zeros((4, 4)), g) == pytest.approx(0.5)


def test_empty_masks_are_never_hits_the_quantus_bug():
    """Quantus assigns NaN into a bool array (-> True): empty masks counted as hits. Here an
    empty mask is NaN, stays NaN in a float array and is excluded from the rate."""
    h = np.zeros((6, 6))
    h[0, 0] = 1.0
    empty = np.zeros((6, 6), dtype=bool)
    miss = rect((6, 6), 4, 6, 4, 6)
    v = hit(h, empty)
    assert isinstance(v, float) and math.isnan(v)
    assert math.isnan(hit(h, empty, ties="first")) and math.isnan(hit(h, empty, tolerance_px=3))
    rate, n, n_nan = hit_rate([h, h, h], [empty, miss, empty])
    assert (rate, n, n_nan) == (0.0, 1, 2)  # a bool cast would have given 2/3
    assert math.isnan(hit_rate([h], [empty])[0])
    arr = np.array([hit(h, empty), hit(h, miss)], dtype=np.float64)
    assert np.isnan(arr[0]) and arr[1] == 0.0


# ---- mass / rank ---------------------------------------------------------------------------
def test_ebpg_enrichment_and_uniform_map():
    g = rect((10, 10), 0, 5, 0, 2)  # 10 px, a = 0.1
    h = np.zeros((10, 10))
    h[0, 0], h[9, 9] = 3.0, 1.0
    assert ebpg(h, g) == pytest.approx(0.75)
    assert enrichment(h, g) == pytest.approx(7.5)
    assert ebpg(np.ones((10, 10)), g) == pytest.approx(0.1)  # uniform = a
    assert ebpg(np.zeros((10, 10)), g) == pytest.approx(0.1)  # all-zero: treated as uniform
    assert enrichment(np.ones((10, 10)), g) == pytest.approx(1.0)
    z = np.zeros((10, 10), dtype=bool)
    assert math.isnan(ebpg(h, z)) and math.isnan(enrichment(h, z))


def test_rank_accuracy_and_top_k():
    g = rect((4, 4), 0, 1, 0, 4)  # top row, |G| = 4
    h = np.arange(16, dtype=float)[::-1].reshape(4, 4)  # the 4 highest are the top row
    assert rank_accuracy(h, g) == 1.0
    assert rank_accuracy(h[::-1].copy(), g) == 0.0
    assert rank_accuracy(np.ones((4, 4)), g) == pytest.approx(0.25)  # ties: expected = a
    assert top_k_intersection(h, g, 2) == 1.0
    assert top_k_intersection(h, g, 8) == pytest.approx(0.5)
    assert top_k_intersection(h, g, 0.5) == pytest.approx(0.5)  # fraction -> 8 px
    z = np.zeros((4, 4), dtype=bool)
    assert math.isnan(rank_accuracy(h, z)) and math.isnan(top_k_intersection(h, z, 3))


# ---- threshold-free ------------------------------------------------------------------------
def test_pxap_and_auroc_equal_sklearn_including_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(3)
    for trial in range(6):
        h = rng.random((23, 17))
        if trial % 2:
            h = np.round(h * 5) / 5  # many ties
        g = rng.random((23, 17)) < 0.2
        assert pxap(h, g) == pytest.approx(average_precision_score(g.ravel(), h.ravel()), abs=1e-12)
        assert pixel_auroc(h, g) == pytest.approx(roc_auc_score(g.ravel(), h.ravel()), abs=1e-12)


def test_threshold_free_chance_and_nan_policies():
    g = rect((10, 10), 2, 4, 2, 7)  # a = 0.1
    u = np.ones((10, 10))
    assert pxap(u, g) == pytest.approx(0.1)
    assert pixel_auroc(u, g) == pytest.approx(0.5)
    assert pixel_auroc(g.astype(float), g) == 1.0 and pxap(g.astype(float), g) == 1.0
    z = np.zeros((10, 10), dtype=bool)
    full = np.ones((10, 10), dtype=bool)
    for f in (pxap, pixel_auroc):
        assert math.isnan(f(u, z)) and math.isnan(f(u, full))


# ---- CheXlocalize protocol and score_map ---------------------------------------------------
def test_chexlocalize_scores():
    g = rect((20, 20), 5, 15, 5, 15)
    h = np.zeros((20, 20))
    h[5:15, 5:15] = 1.0
    h[9:11, 9:11] = 0.0  # a hole: Otsu leaves it out, CheXlocalize fills it
    h[0, 0] = 1.0  # first argmax is outside the GT (CheXlocalize takes the first index)
    out = chexlocalize_scores(h, g)
    assert out["iou"] == pytest.approx(100 / 101)
    assert out["hit"] == 0.0
    e = chexlocalize_scores(h, np.zeros((20, 20), bool))
    assert math.isnan(e["iou"]) and math.isnan(e["hit"])


def test_score_map_rows_and_protocol():
    g = rect((16, 16), 4, 12, 4, 12)
    h = g.astype(float)
    p = Protocol(rules=(ThresholdRule("otsu"), ThresholdRule("fixed", 0.5)), tolerance_px=2.0,
                 dice=True)
    rows = score_map(h, g, p)
    got = {(s.metric, s.rule): s for s in rows}
    assert got[("iou", "otsu")].value == 1.0 and got[("iou", "fixed:0.5")].value == 1.0
    assert got[("iou", "fixed:0.5")].threshold == 0.5 and got[("iou", "otsu")].tp_only is True
    assert got[("dice", "otsu")].value == 1.0
    assert got[("hit", "")].tolerance_px == 2.0 and got[("hit", "")].value == 1.0
    assert got[("iou", "chexlocalize")].value == 1.0 and got[("hit", "chexlocalize")].value == 1.0
    assert got[("pxap", "")].value == 1.0 and got[("auroc", "")].value == 1.0
    # empty GT: every value is NaN (full-set scoring keeps the rows)
    empty = score_map(h, np.zeros_like(g), p)
    assert all(math.isnan(s.value) for s in empty)
    # tuned rule without an entry for this method x finding: no row
    pt = Protocol(rules=(ThresholdRule("tuned"),), threshold_free=False, chexlocalize=False)
    assert score_map(h, g, pt, method="m", finding="f", tuned={}) == []
    r = score_map(h, g, pt, method="m", finding="F", tuned={(None, "f"): 0.4})
    assert r[0].rule == "tuned" and r[0].threshold == 0.4 and r[0].value == 1.0


def test_metric_table():
    assert higher_is_better("iou") and not higher_is_better("deletion_auc")
    assert higher_is_better("something_new")
    assert METRICS["auroc"].chance == "0.5"
