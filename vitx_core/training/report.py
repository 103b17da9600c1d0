"""Evaluation report of a trained classifier on a held-out split, written as CSV / JSON / PNG.

Everything threshold-free (ROC, PR, AUROC, AP, calibration) is computed from the predicted
PROBABILITIES; only the classification report and confusion matrices use hard decisions
(``p >= 0.5`` per class for multi-label, ``argmax`` for single-label).

Files (``<out>/``): ``metrics.json`` (summary), ``predictions.csv`` (targets and probabilities per
image), ``classification_report.{json,txt}``, ``roc_curves.csv``, ``pr_curves.csv``,
``confusion_matrix.{csv,json}``, ``calibration.csv`` and the plots ``roc.png``, ``pr.png``,
``confusion_matrix.png``, ``calibration.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import ap_per_class, auroc_per_class, nanmean, reliability

THRESHOLD = 0.5


def _clean(o: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(header)
        for r in rows:
            wr.writerow([f"{v:.9g}" if isinstance(v, (float, np.floating)) else v for v in r])


def hard_predictions(probs: np.ndarray, multi_label: bool, threshold: float = THRESHOLD
                     ) -> np.ndarray:
    if multi_label:
        return (probs >= threshold).astype(int)
    out = np.zeros_like(probs, dtype=int)
    if len(probs):
        out[np.arange(len(probs)), probs.argmax(1)] = 1
    return out


def compute_report(targets: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                   multi_label: bool, *, n_bins: int = 10) -> dict[str, Any]:
    """All numbers of the report (curves included) as one dict; nothing written."""
    from sklearn.metrics import (
        classification_report,
        confusion_matrix,
        multilabel_confusion_matrix,
        precision_recall_curve,
        roc_curve,
    )

    targets = (np.asarray(targets) > 0.5).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    names = list(class_names)
    n, k = probs.shape
    pred = hard_predictions(probs, multi_label)
    aurocs = auroc_per_class(targets, probs)
    aps = ap_per_class(targets, probs)
    roc, pr, calib = {}, {}, {}
    for c, name in enumerate(names):
        y = targets[:, c]
        if 0 < y.sum() < n:
            fpr, tpr, thr = roc_curve(y, probs[:, c])
            roc[name] = {"fpr": fpr, "tpr": tpr, "threshold": thr}
            prec, rec, thr_pr = precision_recall_curve(y, probs[:, c])
            pr[name] = {"precision": prec, "recall": rec,
                        "threshold": np.append(thr_pr, np.nan)}
        calib[name] = reliability(y, probs[:, c], n_bins)
    if multi_label:
        cls_rep = classification_report(targets, pred, target_names=names, output_dict=True,
                                        zero_division=0)
        cls_txt = classification_report(targets, pred, target_names=names, zero_division=0)
        mcm = multilabel_confusion_matrix(targets, pred)
        confusion = {"kind": "per_class_2x2", "labels": ["negative", "positive"],
                     "matrices": {name: mcm[c].tolist() for c, name in enumerate(names)}}
    else:
        yt, yp = targets.argmax(1), probs.argmax(1)
        cls_rep = classification_report(yt, yp, labels=list(range(k)), target_names=names,
                                        output_dict=True, zero_division=0)
        cls_txt = classification_report(yt, yp, labels=list(range(k)), target_names=names,
                                        zero_division=0)
        cm = confusion_matrix(yt, yp, labels=list(range(k)))
        confusion = {"kind": "multiclass", "labels": names, "matrix": cm.tolist()}
        top = probs.max(1)
        calib["top_label"] = reliability((yp == yt).astype(float), top, n_bins)
    per_class = {}
    for c, name in enumerate(names):
        cr = cls_rep.get(name, {})
        per_class[name] = {
            "auroc": aurocs[c], "ap": aps[c], "n_positive": int(targets[:, c].sum()),
            "prevalence": float(targets[:, c].mean()) if n else float("nan"),
            "precision": cr.get("precision"), "recall": cr.get("recall"),
            "f1": cr.get("f1-score"), "ece": calib[name]["ece"], "brier": calib[name]["brier"]}
    summary: dict[str, Any] = {
        "n_images": int(n), "classes": names, "multi_label": bool(multi_label),
        "decision": f"p >= {THRESHOLD} per class" if multi_label else "argmax",
        "per_class": per_class,
        "macro": {"auroc": nanmean(aurocs), "ap": nanmean(aps),
                  "ece": nanmean([calib[c]["ece"] for c in names]),
                  "brier": nanmean([calib[c]["brier"] for c in names])},
    }
    if multi_label:
        summary["subset_accuracy"] = float((pred == targets).all(1).mean()) if n else float("nan")
    else:
        summary["accuracy"] = float((probs.argmax(1) == targets.argmax(1)).mean()) if n else \
            float("nan")
        summary["top_label_calibration"] = {"ece": calib["top_label"]["ece"],
                                            "brier_multiclass": float(np.mean(
                                                ((probs - targets) ** 2).sum(1))) if n else
                                            float("nan")}
    return {"summary": summary, "roc": roc, "pr": pr, "calibration": calib,
            "classification_report": cls_rep, "classification_report_text": cls_txt,
            "confusion": confusion, "pred": pred}


def write_report(out_dir: str | Path, ids: Sequence[str], targets: np.ndarray, probs: np.ndarray,
                 class_names: Sequence[str], multi_label: bool, *, split: str = "test",
                 extra: dict | None = None, plots: bool = True) -> dict[str, Any]:
    """Compute and write the report files into ``out_dir``; returns the ``metrics.json`` dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = compute_report(targets, probs, class_names, multi_label)
    names = list(class_names)
    summary = {"split": split, **rep["summary"], **(extra or {})}
    write_json(out / "metrics.json", summary)
    _write_rows(out / "predictions.csv", ["image_id", *[f"y_{c}" for c in names],
                                          *[f"p_{c}" for c in names]],
                [[i, *[int(v) for v in (np.asarray(t) > 0.5)], *[float(v) for v in p]]
                 for i, t, p in zip(ids, targets, probs)])
    write_json(out / "classification_report.json", rep["classification_report"])
    (out / "classification_report.txt").write_text(rep["classification_report_text"])
    _write_rows(out / "roc_curves.csv", ["class", "fpr", "tpr", "threshold"],
                [[c, f, t, th] for c, r in rep["roc"].items()
                 for f, t, th in zip(r["fpr"], r["tpr"], r["threshold"])])
    _write_rows(out / "pr_curves.csv", ["class", "recall", "precision", "threshold"],
                [[c, rc, pc, th] for c, r in rep["pr"].items()
                 for rc, pc, th in zip(r["recall"], r["precision"], r["threshold"])])
    conf = rep["confusion"]
    write_json(out / "confusion_matrix.json", conf)
    if conf["kind"] == "per_class_2x2":
        _write_rows(out / "confusion_matrix.csv", ["class", "tn", "fp", "fn", "tp"],
                    [[c, m[0][0], m[0][1], m[1][0], m[1][1]] for c, m in conf["matrices"].items()])
    else:
        _write_rows(out / "confusion_matrix.csv", ["true\\predicted", *conf["labels"]],
                    [[lab, *row] for lab, row in zip(conf["labels"], conf["matrix"])])
    _write_rows(out / "calibration.csv",
                ["class", "bin", "lower", "upper", "count", "mean_prob", "observed"],
                [[c, b["bin"], b["lower"], b["upper"], b["count"], b["mean_prob"], b["observed"]]
                 for c, cal in rep["calibration"].items() for b in cal["bins"]])
    if plots:
        plot_report(out, rep, names)
    return summary


def plot_report(out: Path, rep: dict[str, Any], names: Sequence[str]) -> None:
    """``roc.png``, ``pr.png``, ``confusion_matrix.png``, ``calibration.png`` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    per = rep["summary"]["per_class"]

    fig = Figure(figsize=(5.5, 5), dpi=110)
    ax = fig.subplots()
    for c, r in rep["roc"].items():
        ax.plot(r["fpr"], r["tpr"], label=f"{c} (AUROC {per[c]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png")

    fig = Figure(figsize=(5.5, 5), dpi=110)
    ax = fig.subplots()
    for c, r in rep["pr"].items():
        ax.plot(r["recall"], r["precision"], label=f"{c} (AP {per[c]['ap']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test split)",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr.png")

    conf = rep["confusion"]
    if conf["kind"] == "per_class_2x2":
        mats = list(conf["matrices"].items())
        fig = Figure(figsize=(2.6 * len(mats), 2.8), dpi=110)
        axes = np.atleast_1d(fig.subplots(1, len(mats)))
        for ax, (c, m) in zip(axes, mats):
            _matrix(ax, np.asarray(m), ["neg", "pos"], c)
    else:
        k = len(conf["labels"])
        fig = Figure(figsize=(1.2 * k + 2.5, 1.0 * k + 2), dpi=110)
        _matrix(fig.subplots(), np.asarray(conf["matrix"]), conf["labels"], "confusion (argmax)")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png")

    fig = Figure(figsize=(5.5, 5), dpi=110)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    for c, cal in rep["calibration"].items():
        xs = [b["mean_prob"] for b in cal["bins"] if b["count"]]
        ys = [b["observed"] for b in cal["bins"] if b["count"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{c} (ECE {cal['ece']:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency",
           title="Reliability (10 bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "calibration.png")


def _matrix(ax: Any, m: np.ndarray, labels: Sequence[str], title: str) -> None:
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 2 else 0, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    hi = m.max() if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if v > hi / 2 else "black", fontsize=8)
