"""Fine-tune a ViT on a labelled image folder / CSV and write a vitx model directory with a report.

:func:`train` = :func:`~vitx_core.training.data.discover` -> :func:`build_model` ->
:func:`~vitx_core.training.fit.fit` -> :func:`evaluate` -> :func:`vitx_core.save_model_dir`.
The model directory (``model.json`` + ``model.safetensors``) loads with
``vitx_core.load_model(dir)`` and ``python -m vitx_core explain --model DIR``.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..adapters.base import VitAdapter
from ..adapters.loading import (
    _hf_preprocess,
    adapter_from_module,
    load_model,
    load_state_dict_file,
    save_model_dir,
    timm_model_kwargs,
)
from ..geometry import PreprocessSpec
from .data import DataSplits, ImageDataset, discover
from .fit import FitResult, TrainConfig, fit, predict, seed_everything
from .report import write_json, write_report


# ---- models ----------------------------------------------------------------------------------
def _adapt_state_dict(sd: dict[str, torch.Tensor], model: torch.nn.Module
                      ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Make a (pretrained) state dict fit ``model``: drop a classifier head of another size and
    resample absolute position embeddings to the model's grid. Returns the dict and notes."""
    notes = []
    own = model.state_dict()
    out = dict(sd)
    for k in [k for k in out if k.startswith(("head.", "head_dist."))]:
        if k not in own or tuple(own[k].shape) != tuple(out[k].shape):
            out.pop(k)
            notes.append(f"dropped {k} {tuple(sd[k].shape)} (new head)")
    pe = out.get("pos_embed")
    if pe is not None and "pos_embed" in own and pe.shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        npt = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        gh, gw = model.patch_embed.grid_size
        out["pos_embed"] = resample_abs_pos_embed(pe, (int(gh), int(gw)), num_prefix_tokens=npt)
        notes.append(f"resampled pos_embed {tuple(pe.shape)} -> {tuple(out['pos_embed'].shape)}")
    return out, notes


def build_model(spec: str, class_names: Sequence[str], multi_label: bool, *,
                weights: str | os.PathLike | None = None,
                img_size: tuple[int, int] | None = None, model_kwargs: dict | None = None,
                preprocess: PreprocessSpec | dict | None = None, seed: int = 0,
                device: str | None = None) -> tuple[VitAdapter, dict[str, Any]]:
    """A fresh classifier for ``class_names``: ``timm:<arch>`` (random init, or ``weights`` with
    the head replaced when its size differs) or ``hf:<dir>`` (a local ``save_pretrained`` ViT;
    the head is re-initialised for the new classes). Returns the adapter and build info (notes,
    ``model_kwargs`` for the model card)."""
    seed_everything(seed)
    labels = list(class_names)
    info: dict[str, Any] = {"spec": spec, "init_weights": str(weights) if weights else None,
                            "notes": []}
    if spec.startswith("timm:"):
        ad = load_model(spec, labels=labels, multi_label=multi_label, img_size=img_size,
                        model_kwargs=model_kwargs, preprocess=preprocess, device=device)
        if weights is not None:
            sd, notes = _adapt_state_dict(load_state_dict_file(weights), ad.model)
            missing, unexpected = ad.model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith(("head.", "head_dist."))]
            if missing or unexpected:
                raise ValueError(f"weights {weights} do not match {spec}: missing {missing[:8]}, "
                                 f"unexpected {list(unexpected)[:8]}")
            info["notes"] += notes
        kw = timm_model_kwargs(ad.model)
        for k, v in (model_kwargs or {}).items():  # e.g. patch_size: not readable off the model
            kw.setdefault(k, list(v) if isinstance(v, tuple) else v)
        info["model_kwargs"] = kw
        return ad, info
    if spec.startswith("hf:"):
        from transformers import ViTForImageClassification

        d = Path(spec[3:])
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face config.json in {d}")
        if img_size is not None:
            raise ValueError("img_size applies to timm:<arch> models only (hf: models fix theirs)")
        model = ViTForImageClassification.from_pretrained(
            str(d), local_files_only=True, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
            problem_type="multi_label_classification" if multi_label else
            "single_label_classification", ignore_mismatched_sizes=True)
        pre = _hf_preprocess(d, model, preprocess)
        ad = adapter_from_module(model, labels=labels, multi_label=multi_label, preprocess=pre,
                                 device=device, key=spec)
        info["model_kwargs"] = None
        return ad, info
    raise ValueError(f"model spec must be timm:<arch> or hf:<dir>, got {spec!r}")


# ---- evaluation ------------------------------------------------------------------------------
def evaluate(adapter: VitAdapter, dataset: Dataset, out_dir: str | os.PathLike, *,
             ids: Sequence[str] | None = None, split: str = "test", extra: dict | None = None,
             batch_size: int = 64, progress: bool = False, plots: bool = True) -> dict[str, Any]:
    """Predict ``dataset`` (``(x in [0, 1], target)`` items) and write the report files into
    ``out_dir`` (see :mod:`vitx_core.training.report`). Returns the ``metrics.json`` dict."""
    probs, targets = predict(adapter, dataset, batch_size=batch_size, progress=progress,
                             desc=f"evaluate {split}")
    if ids is None:
        ids = list(getattr(dataset, "ids", [str(i) for i in range(len(probs))]))
    return write_report(out_dir, ids, targets, probs, adapter.labels, adapter.multi_label,
                        split=split, extra=extra, plots=plots)


def write_history(out_dir: Path, result: FitResult) -> None:
    """``history.csv`` / ``history.json`` and ``training.png`` (loss and validation AUROC)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "history.json", result.to_dict())
    keys = ["step", "epoch", "train_loss", "val_loss", "val_auroc", "lr", "elapsed_s", "improved"]
    with open(out_dir / "history.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(keys)
        for r in result.history:
            wr.writerow([r.get(k, "") for k in keys])
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.4), dpi=100)
    a1, a2 = fig.subplots(1, 2)
    ls = np.asarray(result.train_losses, dtype=float)
    if ls.size:
        k = max(1, ls.size // 50)
        sm = np.convolve(ls, np.ones(k) / k, mode="valid")
        a1.plot(np.arange(1, ls.size + 1), ls, c="lightgrey", lw=0.6)
        a1.plot(np.arange(k, ls.size + 1), sm, c="C0")
    a1.set(xlabel="step", ylabel="training loss", title="loss")
    hs = [r for r in result.history if r.get("val_auroc") is not None]
    if hs:
        a2.plot([r["step"] for r in hs], [r["val_auroc"] for r in hs], marker="o", ms=3)
        a2.axvline(result.best_step, ls="--", c="grey", lw=0.8)
    a2.set(xlabel="step", ylabel="validation AUROC (macro)", title="validation")
    fig.tight_layout()
    fig.savefig(out_dir / "training.png")


def write_splits(out_dir: Path, splits: DataSplits) -> None:
    """``splits.csv``: every image with its split and patient (audit of leakage) + a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "splits.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["split", "image_id", "patient", "path", *splits.class_names])
        for name in ("train", "val", "test"):
            for s in splits.split(name):
                wr.writerow([name, s.image_id, s.patient, str(s.path), *[int(v) for v in s.target]])
    write_json(out_dir / "data.json", splits.summary())


def environment() -> dict[str, Any]:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "platform": platform.platform()}


@dataclass
class TrainOutcome:
    """What :func:`train` produced."""

    model_dir: Path
    adapter: VitAdapter
    fit: FitResult
    metrics: dict[str, Any]
    splits: DataSplits


def train(data: str | os.PathLike, model: str, out: str | os.PathLike, *,
          config: TrainConfig | None = None, weights: str | os.PathLike | None = None,
          img_size: tuple[int, int] | None = None, model_kwargs: dict | None = None,
          preprocess: PreprocessSpec | dict | None = None, labels_csv: str | None = None,
          image_col: str | None = None, patient_col: str | None = None,
          patient_regex: str | None = None, classes: Sequence[str] | None = None,
          multi_label: bool | None = None, val_frac: float = 0.15, test_frac: float = 0.15,
          description: str = "", device: str | None = None, cache: bool = True,
          command: str | None = None) -> TrainOutcome:
    """Fine-tune ``model`` (``timm:<arch>`` / ``hf:<dir>``) on ``data`` and write ``out``.

    ``out`` receives ``model.json`` + ``model.safetensors`` (or ``hf/``) and ``report/``
    (test-split metrics, curves, plots, training history, the data splits). The model card's
    ``metrics`` hold the test AUROC / AP per class; ``training`` holds the configuration.
    """
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    splits = discover(data, labels_csv=labels_csv, image_col=image_col, patient_col=patient_col,
                      patient_regex=patient_regex, classes=classes, multi_label=multi_label,
                      val_frac=val_frac, test_frac=test_frac, seed=cfg.seed)
    adapter, info = build_model(model, splits.class_names, splits.multi_label, weights=weights,
                                img_size=img_size, model_kwargs=model_kwargs,
                                preprocess=preprocess, seed=cfg.seed, device=device)
    spec = adapter.preprocess
    train_ds = ImageDataset(splits.train, spec, cache=cache)
    val_ds = ImageDataset(splits.val, spec, cache=cache)
    eval_split = "test" if splits.test else "val"
    test_ds = ImageDataset(splits.test, spec, cache=cache) if splits.test else val_ds
    out_dir = Path(out)
    rep_dir = out_dir / "report"
    write_splits(rep_dir, splits)
    result = fit(adapter, train_ds, val_ds, cfg)
    write_history(rep_dir, result)
    metrics = evaluate(adapter, test_ds, rep_dir, split=eval_split, progress=cfg.progress,
                       extra={"best_val_auroc": result.best_metric, "best_step": result.best_step})
    card_metrics = {
        "split": eval_split, "n_images": metrics["n_images"],
        "auroc": {c: v["auroc"] for c, v in metrics["per_class"].items()},
        "ap": {c: v["ap"] for c, v in metrics["per_class"].items()},
        "macro_auroc": metrics["macro"]["auroc"], "macro_ap": metrics["macro"]["ap"],
        "ece_macro": metrics["macro"]["ece"], "best_val_auroc": result.best_metric}
    from .report import _clean

    training = {"data": splits.summary(), "config": cfg.to_dict(), "build": info,
                "result": {k: v for k, v in result.to_dict().items() if k not in ("history", "config")},
                "environment": environment(), "wall_s": round(time.perf_counter() - t0, 1),
                "command": command or " ".join(sys.argv)}
    desc = description or (f"{model} fine-tuned on {splits.source} ({len(splits.train)} train / "
                           f"{len(splits.val)} val / {len(splits.test)} test images)")
    save_model_dir(adapter, out_dir, description=desc, metrics=_clean(card_metrics),
                   extra={"training": _clean(training)}, model_kwargs=info.get("model_kwargs"))
    return TrainOutcome(out_dir, adapter, result, metrics, splits)
