"""Binarising a heatmap: fixed, Otsu, top-k, oracle area, tuned and the CheXlocalize rule.

Every rule works on a heatmap in ``[0, 1]`` on the ORIGINAL image grid (``Explanation.heatmap``)
and returns a bool mask of the same shape plus the threshold actually applied.

Policies (also stated per function):

* **Constant map** (range <= 1e-12, including the all-zero map that ``normalise`` returns for
  "no evidence"): every rule returns an EMPTY mask and threshold NaN; the map carries no
  localisation, so it never "covers" the ground truth by accident.
* ``fixed`` / ``tuned``: pixels strictly above the threshold (``h > t``, as
  ``cv2.THRESH_BINARY``). The fixed 0.3 / 0.5 / 0.7 cuts are *uncalibrated*; see
  ``EVALUATION.md`` §2.
* ``otsu``: Otsu's threshold on the 256-bin histogram of ``floor(255 h)`` (OpenCV's
  ``THRESH_OTSU`` algorithm: first maximum of the between-class variance); pixels whose
  quantised value is strictly above it.
* ``chexlocalize``: ``otsu`` followed by filling holes, equivalent to CheXlocalize drawing every
  ``RETR_TREE`` contour filled (``heatmap_to_segmentation.py``).
* ``top_k``: the ``ceil(k N)`` highest pixels; pixels tied with the last one are all included
  (the mask may exceed ``k N`` on plateaus).
* ``gt_area`` (oracle area, "relevance rank" style): the ``|G|`` highest pixels, ties included;
  needs the ground truth; an empty ground truth gives an empty mask.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

RuleKind = Literal["fixed", "otsu", "top_k", "gt_area", "tuned", "chexlocalize"]
RULE_KINDS: tuple[str, ...] = ("fixed", "otsu", "top_k", "gt_area", "tuned", "chexlocalize")
DEFAULT_FIXED: tuple[float, ...] = (0.3, 0.5, 0.7)
_FLAT = 1e-12


@dataclass(frozen=True)
class ThresholdRule:
    """How a heatmap becomes a mask.

    Attributes:
        kind: ``fixed`` | ``otsu`` | ``top_k`` | ``gt_area`` | ``tuned`` | ``chexlocalize``.
        value: the threshold (``fixed``; ``tuned`` when known), or the pixel fraction ``k``
            (``top_k``, in ``(0, 1]``); None for the parameter-free rules.
    """

    kind: RuleKind
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown threshold rule {self.kind!r}; known: {', '.join(RULE_KINDS)}")
        v = self.value
        if self.kind == "fixed" and (v is None or not 0.0 <= v <= 1.0):
            raise ValueError(f"fixed threshold must lie in [0, 1], got {v!r}")
        if self.kind == "tuned" and v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"tuned threshold must lie in [0, 1], got {v!r}")
        if self.kind == "top_k" and (v is None or not 0.0 < v <= 1.0):
            raise ValueError(f"top_k fraction must lie in (0, 1], got {v!r}")
        if self.kind in ("otsu", "gt_area", "chexlocalize") and v is not None:
            raise ValueError(f"rule {self.kind!r} takes no value")
        if v is not None:
            object.__setattr__(self, "value", float(v))

    @property
    def label(self) -> str:
        """Stable text used in CSVs: ``otsu``, ``fixed:0.5``, ``top_k:0.1``, ``gt_area``,
        ``tuned``, ``chexlocalize`` (a tuned threshold is reported in its own column)."""
        if self.kind in ("fixed", "top_k"):
            return f"{self.kind}:{self.value:g}"
        return self.kind

    @classmethod
    def parse(cls, text: str | float | ThresholdRule) -> ThresholdRule:
        """``"otsu"``, ``"fixed:0.5"`` (or just ``0.5``), ``"top_k:0.1"``, ``"gt_area"``,
        ``"tuned"``, ``"chexlocalize"``."""
        if isinstance(text, ThresholdRule):
            return text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls("fixed", float(text))
        s = str(text).strip().lower()
        kind, _, val = s.partition(":")
        kind = kind.strip()
        if not val and kind not in RULE_KINDS:
            try:
                return cls("fixed", float(kind))
            except ValueError:
                pass
        try:
            value = float(val) if val.strip() else None
        except ValueError:
            raise ValueError(f"threshold rule {text!r}: bad value {val!r}") from None
        return cls(kind, value)  # type: ignore[arg-type]


def is_constant(heatmap: np.ndarray) -> bool:
    """True when the map has (numerically) no range: it carries no localisation."""
    h = np.asarray(heatmap)
    return bool(h.size == 0 or float(h.max()) - float(h.min()) <= _FLAT)


def quantise_u8(heatmap: np.ndarray) -> np.ndarray:
    """``floor(255 h)`` as uint8 for ``h`` in [0, 1] (CheXlocalize's ``np.uint8(255 * m)``)."""
    h = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0)
    return np.floor(255.0 * h).astype(np.uint8)


def otsu_level_u8(q: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image, OpenCV's algorithm (``getThreshVal_Otsu_8u``).

    Between-class variance for every split ``q <= i`` vs ``q > i``; splits with an (almost)
    empty class are skipped; the first maximum wins. Foreground is ``q > level``. A single
    grey level returns 0.
    """
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise TypeError(f"otsu_level_u8 expects uint8, got {q.dtype}")
    n = q.size
    if n == 0:
        return 0
    p = np.bincount(q.ravel(), minlength=256).astype(np.float64) / n
    i = np.arange(256, dtype=np.float64)
    mu = float((i * p).sum())
    q1 = np.cumsum(p)
    q2 = 1.0 - q1
    m1 = np.cumsum(i * p)
    eps = np.finfo(np.float32).eps
    ok = (np.minimum(q1, q2) >= eps) & (np.maximum(q1, q2) <= 1.0 - eps)
    if not ok.any():
        return 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = m1 / q1
        mu2 = (mu - m1) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
    sigma = np.where(ok, sigma, -np.inf)
    best = float(sigma.max())
    if best <= 0.0:
        return 0
    return int(np.argmax(sigma))  # first maximum, as OpenCV's strict ``sigma > max_sigma``


def otsu_threshold(heatmap: np.ndarray) -> float:
    """Otsu's level of a [0, 1] map on the [0, 1] scale (``level / 255``); foreground is
    ``floor(255 h) > level``. NaN for a constant map."""
    if is_constant(heatmap):
        return math.nan
    return otsu_level_u8(quantise_u8(heatmap)) / 255.0


def _top_count_mask(h: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    flat = h.ravel()
    n = flat.size
    if k <= 0:
        return np.zeros(h.shape, dtype=bool), math.nan
    k = min(k, n)
    v = float(np.partition(flat, n - k)[n - k])
    return h >= v, v


def binarize(heatmap: np.ndarray, rule: ThresholdRule | str | float, *,
             gt: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Heatmap ``(H, W)`` in [0, 1] -> (bool mask ``(H, W)``, threshold applied).

    Policies: a constant map gives an empty mask and NaN (see the module docstring);
    ``tuned`` without a value raises ``ValueError`` (look the value up with
    :func:`tuned_threshold` first); ``gt_area`` without ``gt`` raises ``ValueError``.
    """
    rule = ThresholdRule.parse(rule)
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("heatmap contains NaN or inf")
    empty = np.zeros(h.shape, dtype=bool)
    if rule.kind == "gt_area" and gt is None:
        raise ValueError("rule 'gt_area' needs the ground truth (gt=...)")
    if rule.kind == "tuned" and rule.value is None:
        raise ValueError("rule 'tuned' needs a threshold value (see tuned_threshold())")
    if is_constant(h):
        return empty, math.nan
    if rule.kind in ("fixed", "tuned"):
        t = float(rule.value)  # type: ignore[arg-type]
        return h > t, t
    if rule.kind in ("otsu", "chexlocalize"):
        q = quantise_u8(h)
        level = otsu_level_u8(q)
        mask = q > level
        if rule.kind == "chexlocalize":
            from scipy.ndimage import binary_fill_holes

            mask = binary_fill_holes(mask)
        return np.asarray(mask, dtype=bool), level / 255.0
    if rule.kind == "top_k":
        k = math.ceil(float(rule.value) * h.size - 1e-9)  # type: ignore[arg-type]
        return _top_count_mask(h, max(k, 1))
    g = np.asarray(gt, dtype=bool)
    if g.shape != h.shape:
        raise ValueError(f"gt shape {g.shape} differs from heatmap shape {h.shape}")
    return _top_count_mask(h, int(g.sum()))


# ---- tuned thresholds (CheXlocalize ``threshold,task`` CSV plus an optional explainer column) ----
TunedTable = dict[tuple[str | None, str], float]


def load_tuned_thresholds(path: str | os.PathLike) -> TunedTable:
    """Read a tuned-threshold CSV: columns ``threshold`` and ``task`` (CheXlocalize layout), plus
    an optional ``explainer`` / ``method`` column. Headers are matched case-insensitively.

    Returns ``{(explainer or None, task casefolded): threshold}``; rows without an explainer
    apply to every explainer.
    """
    p = Path(path)
    out: TunedTable = {}
    with p.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{p}: empty tuned-threshold CSV")
    head = [h.strip().casefold() for h in rows[0]]
    if "threshold" not in head or "task" not in head:
        raise ValueError(f"{p}: needs columns 'threshold' and 'task', got {rows[0]}")
    it, ik = head.index("threshold"), head.index("task")
    ie = next((head.index(c) for c in ("explainer", "method") if c in head), None)
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            t = float(row[it])
        except (ValueError, IndexError):
            raise ValueError(f"{p}:{n}: bad threshold {row!r}") from None
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"{p}:{n}: threshold {t} outside [0, 1]")
        exp = row[ie].strip() if ie is not None and ie < len(row) and row[ie].strip() else None
        out[(exp, row[ik].strip().casefold())] = t
    return out


def tuned_threshold(table: TunedTable, method: str, finding: str) -> float | None:
    """The tuned threshold for ``method`` x ``finding`` (explainer-specific row first), else None."""
    key = finding.strip().casefold()
    if (method, key) in table:
        return table[(method, key)]
    return table.get((None, key))


__all__ = [
    "DEFAULT_FIXED",
    "RULE_KINDS",
    "ThresholdRule",
    "TunedTable",
    "binarize",
    "is_constant",
    "load_tuned_thresholds",
    "otsu_level_u8",
    "otsu_threshold",
    "quantise_u8",
    "tuned_threshold",
]
