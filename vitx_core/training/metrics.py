"""Classification metrics computed from PROBABILITIES (never from thresholded labels).

Multi-label: one binary problem per class (sigmoid probabilities). Single-label: one-vs-rest per
class on the softmax probabilities. Classes whose targets hold a single value have no ROC curve:
their AUROC / AP are ``nan`` and they are left out of macro averages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _binary_ok(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < len(y)


def auroc_per_class(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    from sklearn.metrics import roc_auc_score

    out = []
    for c in range(probs.shape[1]):
        y = (targets[:, c] > 0.5).astype(int)
        out.append(float(roc_auc_score(y, probs[:, c])) if _binary_ok(y) else float("nan"))
    return out


def ap_per_class(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    from sklearn.metrics import average_precision_score

    out = []
    for c in range(probs.shape[1]):
        y = (targets[:, c] > 0.5).astype(int)
        out.append(float(average_precision_score(y, probs[:, c])) if _binary_ok(y) else float("nan"))
    return out


def nanmean(v: list[float]) -> float:
    good = [x for x in v if not math.isnan(x)]
    return float(np.mean(good)) if good else float("nan")


def macro_auroc(targets: np.ndarray, probs: np.ndarray, multi_label: bool = True) -> float:
    """Mean AUROC over the classes that have both outcomes (one-vs-rest for single-label)."""
    if len(probs) == 0:
        return float("nan")
    if not multi_label and probs.shape[1] == 2:  # binary: both one-vs-rest AUROCs are equal
        return auroc_per_class(targets, probs)[1]
    return nanmean(auroc_per_class(targets, probs))


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Equal-width reliability bins of binary outcomes ``y`` vs probabilities ``p``.

    Returns the bins (lower / upper edge, count, mean predicted probability, observed frequency),
    the expected calibration error ``ECE = sum_b n_b / N * |freq_b - conf_b|`` and the Brier score
    ``mean((p - y)^2)``.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    ece = 0.0
    n = len(p)
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        conf = float(p[m].mean()) if k else float("nan")
        freq = float(y[m].mean()) if k else float("nan")
        if k:
            ece += k / n * abs(freq - conf)
        bins.append({"bin": b, "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": k,
                     "mean_prob": conf, "observed": freq})
    brier = float(np.mean((p - y) ** 2)) if n else float("nan")
    return {"bins": bins, "ece": float(ece) if n else float("nan"), "brier": brier, "n": n}
