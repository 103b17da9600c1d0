"""Localisation metrics: a heatmap (or its binarised mask) against a ground-truth mask.

Pure NumPy on the ORIGINAL image grid: ``heatmap`` is ``(H, W)`` float, finite, >= 0 (usually
``Explanation.heatmap`` in [0, 1]); ``gt`` is ``(H, W)`` bool (a box is scored as its filled
mask, :func:`box_mask`). ``a = |G| / (H W)`` is the ground truth's area fraction. Every result is
a Python float computed in float arithmetic; NaN means "undefined" and is never cast into a
bool array (the Quantus pointing-game bug: NaN assigned into a bool array becomes ``True``, so
empty masks silently counted as hits).

Written policies (``EVALUATION.md`` §4):

=====================================  ==========================================================
Situation                              Result
=====================================  ==========================================================
GT empty                               NaN for every metric (hit, EBPG, rank accuracy, top-k,
                                       PxAP, AUROC; IoU/Dice when ``tp_only``) -- never 0, never
                                       a hit.
IoU / Dice, ``tp_only=True``           NaN unless BOTH prediction and GT are non-empty
                                       (CheXlocalize ``--true_pos_only``).
IoU / Dice, ``tp_only=False``          NaN only for an empty union; a false positive (GT empty,
                                       prediction not) or false negative scores 0.
GT covers the whole image              PxAP / AUROC NaN (one class only).
Ties at the maximum (hit)              share of the tied maxima that are inside (within
                                       ``tolerance_px``): the expected hit under a random
                                       tie-break, so a constant map scores ``a``. Maxima are the
                                       pixels within 1e-6 x range of the maximum.
                                       ``ties="first"``: the first index (``np.argmax``),
                                       CheXlocalize's rule.
Constant map                           EBPG / rank accuracy / top-k treat it as uniform (= ``a``);
                                       thresholded masks are empty (``thresholds.binarize``).
=====================================  ==========================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .thresholds import DEFAULT_FIXED, ThresholdRule, TunedTable, binarize, tuned_threshold

_TIE_RTOL = 1e-6


# ---- input checks ---------------------------------------------------------------------------
def _gt(gt: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    g = np.asarray(gt)
    if g.dtype != bool:
        if not np.isin(np.unique(g), (0, 1)).all():
            raise ValueError("gt must be a boolean (or 0/1) mask")
        g = g.astype(bool)
    if g.ndim != 2:
        raise ValueError(f"gt must be 2-D (H, W), got shape {g.shape}")
    if shape is not None and g.shape != shape:
        raise ValueError(f"gt shape {g.shape} differs from the map's {shape}")
    return g


def _map(heatmap: Any) -> np.ndarray:
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("heatmap contains NaN or inf")
    if h.size and h.min() < 0:
        raise ValueError(f"heatmap has negative values (min {h.min():.3g}); maps must be >= 0")
    return h


def box_mask(box: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """``(x, y, w, h)`` box in pixels -> filled bool mask ``(H, W)`` (pixel-centre rule:
    pixel ``(i, j)`` is inside when ``x <= j + 0.5 < x + w`` and ``y <= i + 0.5 < y + h``)."""
    from ..data.annotations import box_to_mask

    return box_to_mask(box, hw)


def area_fraction(gt: Any) -> float:
    """``|G| / (H W)`` (0.0 for an empty mask)."""
    g = _gt(gt)
    return float(g.sum()) / g.size if g.size else math.nan


# ---- overlap --------------------------------------------------------------------------------
def iou(pred: Any, gt: Any, *, tp_only: bool = True) -> float:
    """Intersection over union of two masks.

    Policy: ``tp_only=True`` -> NaN unless both masks are non-empty; ``tp_only=False`` -> NaN
    only when the union is empty (both empty), 0 for a false positive or false negative.
    """
    g = _gt(gt)
    p = _gt(pred, g.shape)
    np_, ng = int(p.sum()), int(g.sum())
    if tp_only and (np_ == 0 or ng == 0):
        return math.nan
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return math.nan
    return float(np.logical_and(p, g).sum()) / union


def dice(pred: Any, gt: Any, *, tp_only: bool = True) -> float:
    """``2 |P ∩ G| / (|P| + |G|)``; the same NaN policy as :func:`iou`."""
    g = _gt(gt)
    p = _gt(pred, g.shape)
    np_, ng = int(p.sum()), int(g.sum())
    if tp_only and (np_ == 0 or ng == 0):
        return math.nan
    if np_ + ng == 0:
        return math.nan
    return 2.0 * float(np.logical_and(p, g).sum()) / (np_ + ng)


# ---- pointing game --------------------------------------------------------------------------
def _within(g: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Pixels whose centre lies within ``tolerance_px`` (Euclidean) of a GT pixel centre."""
    if tolerance_px <= 0:
        return g
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~g) <= tolerance_px


def hit(heatmap: Any, gt: Any, *, tolerance_px: float = 0.0, ties: str = "share") -> float:
    """Pointing game: is the map's maximum inside the ground truth?

    Args:
        tolerance_px: a maximum within this distance (original pixels, pixel centres) of a GT
            pixel also counts (TorchRay's protocol uses 15 px at 224²).
        ties: ``"share"`` (default) -> the share of tied maxima inside (expected value under a
            random tie-break; a constant map scores ``a``); ``"first"`` -> the first maximum in
            row-major order (``np.argmax``; CheXlocalize).

    Returns:
        1.0 / 0.0 (or a share in between for ties). **NaN when the GT is empty** -- never a hit.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    if not g.any():
        return math.nan
    region = _within(g, float(tolerance_px))
    if ties == "first":
        return float(region.ravel()[int(np.argmax(h))])
    if ties != "share":
        raise ValueError(f"ties must be 'share' or 'first', got {ties!r}")
    hi, lo = float(h.max()), float(h.min())
    at_max = h >= hi - _TIE_RTOL * (hi - lo)
    return float(region[at_max].mean())


def hit_rate(heatmaps: Iterable[Any], gts: Iterable[Any], **kw: Any) -> tuple[float, int, int]:
    """Mean hit over cases -> ``(rate, n_scored, n_nan)``; empty GTs are NaN and excluded, so
    they never count as hits (float array throughout)."""
    vals = np.array([hit(h, g, **kw) for h, g in zip(heatmaps, gts)], dtype=np.float64)
    n_nan = int(np.isnan(vals).sum())
    n = vals.size - n_nan
    return (float(np.nanmean(vals)) if n else math.nan), n, n_nan


# ---- mass and rank --------------------------------------------------------------------------
def ebpg(heatmap: Any, gt: Any) -> float:
    """Energy-based pointing game / relevance mass accuracy: ``Σ_G S / Σ S``.

    Policy: NaN when the GT is empty; an all-zero map is treated as uniform (returns ``a``).
    Chance level is ``a``; see :func:`enrichment`.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    if not g.any():
        return math.nan
    total = float(h.sum())
    if total <= 0.0:
        return float(g.mean())
    return float(h[g].sum()) / total


def enrichment(heatmap: Any, gt: Any) -> float:
    """``EBPG / a``: 1.0 = no better than a uniform map. NaN when the GT is empty."""
    e = ebpg(heatmap, gt)
    if math.isnan(e):
        return math.nan
    return e / area_fraction(gt)


def _top_share(h: np.ndarray, region: np.ndarray, k: int) -> float:
    """Expected share of the ``k`` highest pixels inside ``region`` (random tie-break)."""
    flat = h.ravel()
    inside = region.ravel()
    n = flat.size
    k = int(min(max(k, 1), n))
    if k == n:
        return float(inside.mean())
    v = float(np.partition(flat, n - k)[n - k])
    above = flat > v
    eq = flat == v
    need = k - int(above.sum())
    share_eq = float(inside[eq].sum()) / int(eq.sum())
    return (float(inside[above].sum()) + need * share_eq) / k


def rank_accuracy(heatmap: Any, gt: Any) -> float:
    """Relevance rank accuracy: share of the ``|G|`` highest pixels that lie in ``G``.

    Policy: NaN when the GT is empty; ties at the cut are split in expectation, so a constant
    map scores ``a``.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    k = int(g.sum())
    if k == 0:
        return math.nan
    return _top_share(h, g, k)


def top_k_intersection(heatmap: Any, gt: Any, k: int | float) -> float:
    """Share of the top-``k`` pixels inside ``G`` (``k`` a count, or a fraction in (0, 1)).

    Policy: NaN when the GT is empty; ties at the cut split in expectation (constant map = ``a``).
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    if not g.any():
        return math.nan
    kk = math.ceil(k * h.size) if isinstance(k, float) and 0 < k < 1 else int(k)
    if kk < 1:
        raise ValueError(f"k must be >= 1 pixel or a fraction in (0, 1), got {k}")
    return _top_share(h, g, kk)


# ---- threshold-free ----------------------------------------------------------------------------
def _two_class(g: np.ndarray) -> bool:
    n = int(g.sum())
    return 0 < n < g.size


def _ranking_curve(h: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true / false positives at every distinct score, descending (one sort).

    The same construction as scikit-learn's ``_binary_clf_curve`` (stable descending sort, one
    point per distinct score), so :func:`pxap` / :func:`pixel_auroc` equal
    ``average_precision_score`` / ``roc_auc_score`` (checked in the tests) at a fraction of the
    cost on large images.
    """
    s = h.ravel()
    y = g.ravel()
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    y = y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    fps = 1.0 + last - tps
    return tps, fps


def _ap_auc(h: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    tps, fps = _ranking_curve(h, g)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    auc = float(np.trapezoid(tpr, fpr))
    return ap, auc


def pxap(heatmap: Any, gt: Any) -> float:
    """Pixel average precision (area under the pixel precision-recall curve, step-wise as
    ``sklearn.metrics.average_precision_score``). Chance = ``a``.

    Policy: NaN when the GT is empty or covers the whole image.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    if not _two_class(g):
        return math.nan
    return _ap_auc(h, g)[0]


def pixel_auroc(heatmap: Any, gt: Any) -> float:
    """Pixel ROC AUC (pixels as samples; equals ``sklearn.metrics.roc_auc_score``). Chance 0.5.

    Policy: NaN when the GT is empty or covers the whole image.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    if not _two_class(g):
        return math.nan
    return _ap_auc(h, g)[1]


# ---- CheXlocalize protocol ------------------------------------------------------------------
def chexlocalize_scores(heatmap: Any, gt: Any) -> dict[str, float]:
    """CheXlocalize (Saporta et al. 2022) for one map: ``{"iou", "hit", "threshold"}``.

    The map (already bilinear on the original grid) is min-max normalised, quantised
    ``floor(255 m)``, Otsu-thresholded with holes filled; IoU is **TP-only** (NaN unless both
    masks are non-empty); hit is the **first** argmax inside the GT, NaN for an empty GT, no
    tolerance.
    """
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    lo, hi = float(h.min()), float(h.max())
    m = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    mask, thr = binarize(m, ThresholdRule("chexlocalize"))
    return {"iou": iou(mask, g, tp_only=True), "hit": hit(h, g, ties="first"), "threshold": thr}


# ---- metric table and one-call scoring ------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    """Metadata the UI and the summary read (never ``if metric == ...``)."""

    name: str
    title: str
    higher_is_better: bool
    chance: str
    thresholded: bool = False


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("iou", "IoU", True, "-", thresholded=True),
    MetricInfo("dice", "Dice", True, "-", thresholded=True),
    MetricInfo("hit", "Pointing game (hit)", True, "a"),
    MetricInfo("ebpg", "Energy-based pointing game", True, "a"),
    MetricInfo("enrichment", "EBPG / area fraction", True, "1"),
    MetricInfo("rank_accuracy", "Relevance rank accuracy (top-|G|)", True, "a"),
    MetricInfo("pxap", "Pixel AP", True, "a"),
    MetricInfo("auroc", "Pixel AUROC", True, "0.5"),
    MetricInfo("deletion_auc", "Deletion AUC (normalised)", False, "-"),
    MetricInfo("insertion_auc", "Insertion AUC (normalised)", True, "-"),
    MetricInfo("mprt_spearman", "Randomisation: Spearman to the randomised model's map", False,
               "0"),
)}


def higher_is_better(metric: str) -> bool:
    """From :data:`METRICS`; unknown metrics are assumed higher-is-better."""
    info = METRICS.get(metric)
    return True if info is None else info.higher_is_better


@dataclass(frozen=True)
class Protocol:
    """What :func:`score_map` computes; every row it returns records the protocol.

    Attributes:
        rules: IoU/Dice binarisation rules (``otsu``, ``fixed:0.3`` ...).
        tp_only: IoU/Dice NaN unless both masks are non-empty.
        tolerance_px: pointing-game tolerance in original pixels.
        dice: also report Dice for every rule.
        chexlocalize: add CheXlocalize-compatible IoU and hit (rule ``chexlocalize``).
        threshold_free: hit, EBPG, enrichment, rank accuracy, PxAP, AUROC.
    """

    rules: tuple[ThresholdRule, ...] = field(default_factory=lambda: (
        ThresholdRule("otsu"), *(ThresholdRule("fixed", t) for t in DEFAULT_FIXED),
        ThresholdRule("top_k", 0.1), ThresholdRule("gt_area")))
    tp_only: bool = True
    tolerance_px: float = 0.0
    dice: bool = False
    chexlocalize: bool = True
    threshold_free: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [r.label for r in self.rules], "tp_only": self.tp_only,
                "tolerance_px": self.tolerance_px, "dice": self.dice,
                "chexlocalize": self.chexlocalize, "threshold_free": self.threshold_free}


@dataclass(frozen=True)
class Score:
    """One metric value with its protocol (``rule`` "" for threshold-free metrics)."""

    metric: str
    value: float
    rule: str = ""
    threshold: float = math.nan
    tp_only: bool | None = None
    tolerance_px: float | None = None


def score_map(heatmap: Any, gt: Any, protocol: Protocol | None = None, *,
              method: str = "", finding: str = "", tuned: TunedTable | None = None
              ) -> list[Score]:
    """Every mask metric of one heatmap against one GT mask, in a fixed order.

    ``tuned`` rules look up their threshold for ``method`` x ``finding``; a missing entry is
    skipped (no row). The ``gt`` may be empty (full-set scoring): each metric then follows its
    NaN policy.
    """
    p = protocol or Protocol()
    h = _map(heatmap)
    g = _gt(gt, h.shape)
    out: list[Score] = []
    for rule in p.rules:
        if rule.kind == "tuned" and rule.value is None:
            t = tuned_threshold(tuned or {}, method, finding)
            if t is None:
                continue
            rule = ThresholdRule("tuned", t)
        mask, thr = binarize(h, rule, gt=g)
        out.append(Score("iou", iou(mask, g, tp_only=p.tp_only), rule.label, thr, p.tp_only))
        if p.dice:
            out.append(Score("dice", dice(mask, g, tp_only=p.tp_only), rule.label, thr, p.tp_only))
    if p.threshold_free:
        tol = float(p.tolerance_px)
        ap, auc = _ap_auc(h, g) if _two_class(g) else (math.nan, math.nan)
        out += [Score("hit", hit(h, g, tolerance_px=tol), tolerance_px=tol),
                Score("ebpg", ebpg(h, g)),
                Score("enrichment", enrichment(h, g)),
                Score("rank_accuracy", rank_accuracy(h, g)),
                Score("pxap", ap),
                Score("auroc", auc)]
    if p.chexlocalize:
        cx = chexlocalize_scores(h, g)
        out += [Score("iou", cx["iou"], "chexlocalize", cx["threshold"], True),
                Score("hit", cx["hit"], "chexlocalize", tolerance_px=0.0)]
    return out


def nanmean_defined(values: Sequence[float]) -> float:
    """Mean over the defined (non-NaN) values; NaN when none (no RuntimeWarning)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isnan(v).all():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(v))


__all__ = [
    "METRICS",
    "MetricInfo",
    "Protocol",
    "Score",
    "area_fraction",
    "box_mask",
    "chexlocalize_scores",
    "dice",
    "ebpg",
    "enrichment",
    "higher_is_better",
    "hit",
    "hit_rate",
    "iou",
    "nanmean_defined",
    "pixel_auroc",
    "pxap",
    "rank_accuracy",
    "score_map",
    "top_k_intersection",
]
