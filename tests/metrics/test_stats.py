"""Bootstrap CIs (width shrinks with n; CheXlocalize's index sequence), paired differences, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitx_core.metrics import (
    bootstrap_indices,
    bootstrap_p,
    bootstrap_weights,
    holm,
    paired_difference,
    percentile_ci,
    summarize,
)


def test_ci_width_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 80, 320):
        s = summarize(rng.random(n), n_boot=1000, seed=0)
        assert s["ci_low"] < s["mean"] < s["ci_high"]
        widths.append(s["ci_high"] - s["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.35)  # ~ 1 / sqrt(n)


def test_indices_follow_chexlocalize_sequence():
    idx = bootstrap_indices(7, 5, seed=0)
    np.random.seed(0)  # eval.py: np.random.seed(seed); one choice per replicate
    ref = np.stack([np.random.choice(7, size=7, replace=True) for _ in range(5)])
    assert (idx == ref).all()
    w = bootstrap_weights(idx, 7)
    assert (w.sum(axis=1) == 7).all() and w[0, idx[0, 0]] >= 1


def test_summarize_nan_policy_and_seed():
    v = np.array([1.0, np.nan, 0.0, 1.0, np.nan])
    s = summarize(v, n_boot=200, seed=1)
    assert s["mean"] == pytest.approx(2 / 3) and s["n"] == 3 and s["n_nan"] == 2
    assert s == summarize(v, n_boot=200, seed=1)  # seeded
    e = summarize([np.nan, np.nan])
    assert math.isnan(e["mean"]) and e["n"] == 0 and math.isnan(e["ci_low"])
    const = summarize([0.5] * 10, n_boot=100)
    assert const["ci_low"] == const["ci_high"] == 0.5


def test_chexlocalize_ci_convention():
    reps = np.arange(1000, dtype=float)
    lo, hi = percentile_ci(reps, 0.95, "chexlocalize")
    assert (lo, hi) == (24.0, 974.0)  # sorted[int(0.025 * 1000) - 1], sorted[int(0.975 * 1000) - 1]
    lo2, hi2 = percentile_ci(reps, 0.95)
    assert lo2 == pytest.approx(24.975) and hi2 == pytest.approx(974.025)


def test_paired_difference_is_tighter_than_unpaired():
    rng = np.random.default_rng(2)
    base = rng.random(60)
    a = base + 0.05 + rng.normal(0, 0.01, 60)  # a beats b on every case by ~0.05
    b = base
    d = paired_difference(a, b, n_boot=1000, seed=0)
    assert d["diff"] == pytest.approx(0.05, abs=0.01)
    assert d["ci_low"] > 0.04 and d["ci_high"] < 0.06 and d["p"] < 0.01
    sa, sb = summarize(a, seed=0), summarize(b, seed=0)
    assert sa["ci_low"] < sb["ci_high"]  # the marginal CIs overlap; the paired one excludes 0
    # undefined cases of one method: each mean over its own defined values
    a2 = a.copy()
    a2[:5] = np.nan
    d2 = paired_difference(a2, b, n_boot=100, seed=0)
    assert d2["diff"] == pytest.approx(np.nanmean(a2) - b.mean())
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_bootstrap_p_and_holm():
    assert bootstrap_p(np.array([1.0, 2.0, 3.0])) == 0.0
    assert bootstrap_p(np.array([-1.0, 1.0])) == 1.0
    assert math.isnan(bootstrap_p(np.array([np.nan])))
    adj = holm([0.01, 0.04, 0.03, np.nan])
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert adj[0] == pytest.approx(0.03) and adj[2] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06) and math.isnan(adj[3])
