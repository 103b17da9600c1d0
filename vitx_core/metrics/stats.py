"""Aggregation: NaN-aware means, percentile bootstrap CIs, paired differences, Holm.

Resampling unit = the **case**. :func:`bootstrap_indices` draws the case indices once; every
method (and model) is then re-aggregated on the same resampled cases, so differences between
explainers get *paired* CIs. Replicate ``r`` draws ``RandomState(seed).choice(n, n)`` in order,
exactly as CheXlocalize's ``eval.py`` (``np.random.seed(0)``; one ``choice`` per replicate).

NaN policy: a replicate's statistic is the NaN-aware mean over the defined values of the resampled
cases (cases with no defined value carry no weight); a replicate with no defined value is NaN and
ignored by the percentiles. ``n`` (defined values) and ``n_nan`` are always reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

CIMethod = Literal["percentile", "chexlocalize"]


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` int32 case indices drawn with replacement (CheXlocalize's sequence)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rs = np.random.RandomState(seed)
    out = np.empty((n_boot, n), dtype=np.int32)
    for r in range(n_boot):
        out[r] = rs.choice(n, size=n, replace=True) if n else []
    return out


def bootstrap_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices ``(B, n)`` -> multiplicity of each case per replicate ``(B, n)`` float64."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def replicate_means(sums: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of a NaN-aware mean for many columns at once.

    Args:
        sums: ``(n, C)`` per case, the sum of the defined values of each column.
        counts: ``(n, C)`` per case, the number of defined values.
        weights: ``(B, n)`` case multiplicities (:func:`bootstrap_weights`).

    Returns:
        ``(B, C)``; NaN where a replicate holds no defined value.
    """
    num = weights @ sums
    den = weights @ counts
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def percentile_ci(reps: np.ndarray, ci: float = 0.95, method: CIMethod = "percentile",
                  axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds over bootstrap replicates (NaN replicates dropped).

    ``percentile``: ``numpy.nanquantile`` at ``(1 - ci) / 2`` and ``(1 + ci) / 2``.
    ``chexlocalize``: sorted replicates at indices ``int(α/2 · B) - 1`` and
    ``int((1 - α/2) · B) - 1`` (CheXlocalize ``compute_cis``).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    r = np.moveaxis(np.asarray(reps, dtype=np.float64), axis, 0)
    alpha = round(1.0 - ci, 12)  # 1 - 0.95 = 0.05000000000000004 would shift the index rule
    if method == "percentile":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(r, [alpha / 2, 1 - alpha / 2], axis=0)
        return lo, hi
    if method != "chexlocalize":
        raise ValueError(f"unknown CI method {method!r}")
    lo = np.full(r.shape[1:], np.nan)
    hi = np.full(r.shape[1:], np.nan)
    flat_lo, flat_hi = lo.reshape(-1), hi.reshape(-1)
    cols = r.reshape(r.shape[0], -1)
    for j in range(cols.shape[1]):
        v = np.sort(cols[~np.isnan(cols[:, j]), j])
        if v.size:
            flat_lo[j] = v[max(int(alpha / 2 * v.size) - 1, 0)]
            flat_hi[j] = v[max(int((1 - alpha / 2) * v.size) - 1, 0)]
    return lo, hi


def _nan_stats(v: np.ndarray) -> tuple[float, float, int, int]:
    n_nan = int(np.isnan(v).sum())
    n = v.size - n_nan
    if n == 0:
        return math.nan, math.nan, 0, n_nan
    return float(np.nanmean(v)), float(np.nanmedian(v)), n, n_nan


def summarize(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
              ci: float = 0.95, method: CIMethod = "percentile",
              idx: np.ndarray | None = None) -> dict[str, Any]:
    """One vector of per-case values (NaN = undefined) -> summary with a bootstrap CI.

    Returns:
        ``{"mean", "median", "n", "n_nan", "ci_low", "ci_high", "bs_mean", "n_boot"}``. The
        point estimate is the full-sample NaN-mean; ``bs_mean`` is the mean of the replicate
        means (CheXlocalize reports both). All NaN when no value is defined.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    mean, median, n, n_nan = _nan_stats(v)
    out: dict[str, Any] = {"mean": mean, "median": median, "n": n, "n_nan": n_nan,
                           "ci_low": math.nan, "ci_high": math.nan, "bs_mean": math.nan,
                           "n_boot": int(n_boot if idx is None else idx.shape[0])}
    if n == 0:
        return out
    if idx is None:
        idx = bootstrap_indices(v.size, n_boot, seed)
    defined = ~np.isnan(v)
    reps = replicate_means(np.where(defined, v, 0.0)[:, None], defined[:, None].astype(float),
                           bootstrap_weights(idx, v.size))[:, 0]
    lo, hi = percentile_ci(reps, ci, method)
    out.update(ci_low=float(lo), ci_high=float(hi), bs_mean=float(np.nanmean(reps)))
    return out


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                      method: CIMethod = "percentile", idx: np.ndarray | None = None
                      ) -> dict[str, Any]:
    """Difference of NaN-means ``mean(a) - mean(b)`` over the same cases, paired bootstrap.

    ``a`` and ``b`` are per-case values of two methods on the same case order. Each replicate
    resamples the cases once and recomputes both means on that sample (each over its defined
    values). Returns ``{"diff", "ci_low", "ci_high", "p"}``; ``p`` is the two-sided bootstrap
    p-value ``2 · min(P(d <= 0), P(d >= 0))`` (capped at 1).
    """
    va = np.asarray(a, dtype=np.float64).ravel()
    vb = np.asarray(b, dtype=np.float64).ravel()
    if va.shape != vb.shape:
        raise ValueError(f"paired values need the same cases: {va.shape} vs {vb.shape}")
    if idx is None:
        idx = bootstrap_indices(va.size, n_boot, seed)
    w = bootstrap_weights(idx, va.size)
    da, db = ~np.isnan(va), ~np.isnan(vb)
    sums = np.stack([np.where(da, va, 0.0), np.where(db, vb, 0.0)], axis=1)
    cnts = np.stack([da, db], axis=1).astype(float)
    reps = replicate_means(sums, cnts, w)
    d = reps[:, 0] - reps[:, 1]
    point = _nan_stats(va)[0] - _nan_stats(vb)[0]
    lo, hi = percentile_ci(d, ci, method)
    return {"diff": point, "ci_low": float(lo), "ci_high": float(hi), "p": bootstrap_p(d)}


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "difference = 0" from replicate differences."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    return float(min(1.0, 2.0 * min((d <= 0).mean(), (d >= 0).mean())))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


__all__ = [
    "CIMethod",
    "bootstrap_indices",
    "bootstrap_p",
    "bootstrap_weights",
    "holm",
    "paired_difference",
    "percentile_ci",
    "replicate_means",
    "summarize",
]
