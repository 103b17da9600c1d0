"""The bundled demo model: a small timm ViT trained on synthetic chest phantoms, on CPU, in minutes.

``python -m vitx_core train-demo`` (= :func:`train_demo`) renders a fixed pool of phantoms with
:func:`vitx_core.data.phantom_batch` from the TRAINING seed range (``TRAIN_SEED_OFFSET``: never a
key of the committed sample cohort, which uses seed 0), at cohort-like sizes (H 256-320,
W 224-300, like ``sample_data/cohort``), resizes them with vitx's own :func:`preprocess` and the
model's :class:`PreprocessSpec`, and trains a multi-label sigmoid head over the four findings
with light augmentation. It then reports

* AUROC / AP per finding on a held-out synthetic TEST set (its own seed range,
  :data:`TEST_SEED_OFFSET`, fixed whatever the training seed), and
* on the committed sample cohort (``sample_data/cohort``): the pointing-game hit rate of every
  one-pass explainer: for each case and each finding present in it, a hit when the argmax pixel
  of ``vx.explain(model, image, target=finding)[method].heatmap`` lies inside the finding's
  ground-truth mask (``gt_segmentations.json``),

and writes a vitx model directory (``model.json`` with these numbers under ``metrics``,
``model.safetensors``, ``README.md``, ``report/``).

Everything is seeded: the same seed and the same step count give the same weights (the optional
wall-clock cap only binds on a slower machine; the card records whether it did).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.base import VitAdapter
from ..adapters.loading import REPO_ROOT, save_model_dir
from ..data.phantoms import FINDINGS, TRAIN_SEED_OFFSET, decode_rle, phantom_batch
from ..geometry import PreprocessSpec
from .augment import AugmentConfig
from .data import TensorImageDataset, to_unit_tensor
from .fit import FitResult, TrainConfig, fit
from .pipeline import build_model, environment, evaluate, write_history
from .report import _clean, write_json

#: Held-out synthetic test phantoms use keys from here (disjoint from training and the cohort).
TEST_SEED_OFFSET = 2_000_000
#: Validation phantoms (early stopping / best checkpoint): inside the training range, disjoint.
VAL_SEED_OFFSET = TRAIN_SEED_OFFSET + 500_000
#: Render sizes of the sample cohort (``cohort_case``): H in [256, 320], W in [224, 300].
COHORT_H = (256, 320)
COHORT_W = (224, 300)
DEFAULT_OUT = REPO_ROOT / "sample_data" / "models" / "demo"
DEFAULT_COHORT = REPO_ROOT / "sample_data" / "cohort"


@dataclass
class DemoConfig:
    """Everything that defines the demo model (stored in its card).

    Attributes:
        arch, img_size, patch_size, depth, embed_dim, num_heads: the timm ViT
            (``timm.create_model(arch, img_size=..., patch_size=..., depth=...)``).
        pool_size: training phantoms rendered once and reused every epoch (augmented).
        val_size, test_size: held-out phantoms for early stopping / the final report.
        chunk: phantoms per :func:`phantom_batch` call (each chunk has its own render size).
        render_hw: ``None`` = cohort-like random sizes; or a fixed ``(H, W)`` (tests).
        prevalence: per-finding probability ``p`` of :func:`phantom_batch`.
        steps, batch_size, lr, weight_decay, warmup_steps, eval_every: optimisation.
        minutes: wall-clock cap of the training loop (the cosine schedule compresses to fit).
        threads: torch threads; render_workers: processes rendering phantoms (0 = in-process).
        cohort_limit: use only the first N cohort cases for the pointing game (tests).
    """

    arch: str = "vit_tiny_patch16_224"
    img_size: tuple[int, int] = (160, 144)
    patch_size: int = 8
    depth: int = 4
    embed_dim: int | None = None
    num_heads: int | None = None
    pool_size: int = 6000
    val_size: int = 300
    test_size: int = 600
    chunk: int = 50
    render_hw: tuple[int, int] | None = None
    prevalence: float = 0.33
    steps: int = 450
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    eval_every: int = 100
    minutes: float | None = 22.0
    threads: int = 2
    render_workers: int = 2
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        rotate_deg=4.0, scale=0.05, translate=0.03, brightness=0.06, contrast=0.12))
    cohort_limit: int | None = None

    def model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"img_size": tuple(self.img_size), "patch_size": self.patch_size,
                              "depth": self.depth}
        if self.embed_dim:
            kw["embed_dim"] = self.embed_dim
        if self.num_heads:
            kw["num_heads"] = self.num_heads
        return kw

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d


# ---- phantoms --------------------------------------------------------------------------------
def _chunk_size(base: int, c: int, render_hw: tuple[int, int] | None) -> tuple[int, int]:
    if render_hw is not None:
        return int(render_hw[0]), int(render_hw[1])
    rng = np.random.default_rng([base, c, 7])
    return (int(rng.integers(COHORT_H[0] // 2, COHORT_H[1] // 2 + 1)) * 2,
            int(rng.integers(COHORT_W[0] // 2, COHORT_W[1] // 2 + 1)) * 2)


def _render_chunk(job: tuple[int, int, int, tuple[int, int], dict, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One ``phantom_batch`` call -> resized [0, 1] images (float16, (n, 1, H, W)) and labels."""
    seed, n, _c, size_hw, spec_d, p = job
    torch.set_num_threads(1)
    spec = PreprocessSpec.from_dict(spec_d)
    xs, ys = [], []
    for img, lab in phantom_batch(seed, n, size_hw, p=p):
        xs.append(to_unit_tensor(img, spec).half().numpy())
        ys.append(lab)
    return np.stack(xs), np.stack(ys).astype(np.float32)


def render_phantom_set(base: int, n: int, spec: PreprocessSpec, *, chunk: int = 50,
                       render_hw: tuple[int, int] | None = None, p: float = 0.33,
                       workers: int = 0, progress: bool = True, desc: str = "render"
                       ) -> TensorImageDataset:
    """``n`` phantoms: chunk ``c`` is ``phantom_batch(base + c, chunk, size_c)`` with its own
    cohort-like size ``size_c`` (seeded by ``(base, c)``), resized to ``spec.size``."""
    from tqdm import tqdm

    jobs = []
    for c, start in enumerate(range(0, n, chunk)):
        jobs.append((base + c, min(chunk, n - start), c, _chunk_size(base, c, render_hw),
                     spec.to_dict(), p))
    ids = [f"{j[0]}:{i}" for j in jobs for i in range(j[1])]
    pbar = tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr,
                dynamic_ncols=True)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        if workers and workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            # fork (Linux): no re-import of the caller's __main__; children only render + resize
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for res in pool.imap(_render_chunk, jobs):
                    parts.append(res)
                    pbar.update(len(res[0]))
        else:
            for j in jobs:
                parts.append(_render_chunk(j))
                pbar.update(j[1])
    finally:
        pbar.close()
    x = torch.from_numpy(np.concatenate([a for a, _ in parts]))
    y = torch.from_numpy(np.concatenate([b for _, b in parts]))
    return TensorImageDataset(x, y, ids)


# ---- pointing game ---------------------------------------------------------------------------
def cohort_cases(cohort_dir: str | os.PathLike = DEFAULT_COHORT, limit: int | None = None
                 ) -> list[dict[str, Any]]:
    """The cohort's cases: image path, present findings and their GT masks (decoded RLE)."""
    d = Path(cohort_dir)
    gt = json.loads((d / "gt_segmentations.json").read_text())
    images = {p.stem: p for p in (d / "images").iterdir() if p.is_file()}
    out = []
    for cid in sorted(gt):
        if cid not in images:
            continue
        masks = {f: decode_rle(gt[cid][f]).astype(bool) for f in FINDINGS if f in gt[cid]}
        out.append({"image_id": cid, "path": images[cid],
                    "labels": [int(masks[f].any()) if f in masks else 0 for f in FINDINGS],
                    "masks": {f: m for f, m in masks.items() if m.any()}})
        if limit is not None and len(out) >= limit:
            break
    return out


def pointing_game(adapter: VitAdapter, cases: Sequence[dict[str, Any]],
                  methods: Sequence[str] | None = None, *, progress: bool = False
                  ) -> dict[str, Any]:
    """Hit rate per explainer: hit = argmax pixel of the heatmap (original pixels) inside the GT
    mask of the explained finding; one trial per (case, present finding). Also returns the
    cohort's predicted probabilities (for a cohort AUROC)."""
    from tqdm import tqdm

    from ..api import build_explainers, explain_images
    from ..registry import default_methods

    names = list(methods) if methods else default_methods()
    explainers = build_explainers(names)
    hits = {m: {f: 0 for f in FINDINGS} for m in names}
    trials = {f: 0 for f in FINDINGS}
    rows = []
    probs, targets = [], []
    for case in tqdm(cases, desc="pointing game", disable=not progress, file=sys.stderr,
                     dynamic_ncols=True):
        present = [f for f in FINDINGS if f in case["masks"]]
        targets.append(case["labels"])
        if not present:
            res0 = explain_images(adapter, [case["path"]], build_explainers(names[:1]), [None])[0][0]
            probs.append(res0.prediction.probs.tolist())
            continue
        res = explain_images(adapter, [case["path"]], explainers, present)[0]
        probs.append(res[0].prediction.probs.tolist())
        for f, r in zip(present, res):
            mask = case["masks"][f]
            trials[f] += 1
            row = {"image_id": case["image_id"], "finding": f, "prob": float(r[names[0]].prob)}
            for m in names:
                hm = r[m].heatmap
                y, x = np.unravel_index(int(np.argmax(hm)), hm.shape)
                hit = bool(mask[y, x]) and not r[m].constant_map
                hits[m][f] += int(hit)
                row[m] = int(hit)
            rows.append(row)
    n = sum(trials.values())
    rate = {m: (sum(hits[m].values()) / n if n else float("nan")) for m in names}
    per_finding = {m: {f: (hits[m][f] / trials[f] if trials[f] else float("nan")) for f in FINDINGS}
                   for m in names}
    best = max(names, key=lambda m: rate[m]) if n else None
    return {"n_trials": n, "trials_per_finding": trials, "hit_rate": rate,
            "hit_rate_per_finding": per_finding, "best": best,
            "best_hit_rate": rate[best] if best else float("nan"), "rows": rows,
            "probs": np.asarray(probs, dtype=np.float64), "targets": np.asarray(targets)}


# ---- the demo --------------------------------------------------------------------------------
@dataclass
class DemoOutcome:
    model_dir: Path
    adapter: VitAdapter
    fit: FitResult
    metrics: dict[str, Any]
    wall_s: float


def train_demo(out: str | os.PathLike = DEFAULT_OUT, *, seed: int = 0,
               config: DemoConfig | None = None, cohort_dir: str | os.PathLike = DEFAULT_COHORT,
               progress: bool = True, command: str | None = None) -> DemoOutcome:
    """Train, evaluate and write the demo model directory (see the module docstring)."""
    cfg = config or DemoConfig()
    if not 0 <= seed < 500:
        raise ValueError("seed must be in [0, 500) (it offsets the phantom seed ranges)")
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        adapter, info = build_model(f"timm:{cfg.arch}", list(FINDINGS), True,
                                    model_kwargs=cfg.model_kwargs(), seed=seed)
        spec = adapter.preprocess
        workers = cfg.render_workers
        train_ds = render_phantom_set(TRAIN_SEED_OFFSET + 1000 * seed, cfg.pool_size, spec,
                                      chunk=cfg.chunk, render_hw=cfg.render_hw, p=cfg.prevalence,
                                      workers=workers, progress=progress, desc="render train")
        val_ds = render_phantom_set(VAL_SEED_OFFSET + 1000 * seed, cfg.val_size, spec,
                                    chunk=cfg.chunk, render_hw=cfg.render_hw, p=cfg.prevalence,
                                    workers=workers, progress=progress, desc="render val")
        test_ds = render_phantom_set(TEST_SEED_OFFSET, cfg.test_size, spec, chunk=cfg.chunk,
                                     render_hw=cfg.render_hw, p=cfg.prevalence, workers=workers,
                                     progress=progress, desc="render test")
        t_render = time.perf_counter() - t0
        steps_per_epoch = max(1, len(train_ds) // min(cfg.batch_size, len(train_ds)))
        tcfg = TrainConfig(
            epochs=max(1, -(-cfg.steps // steps_per_epoch)), batch_size=cfg.batch_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, schedule="cosine",
            warmup_epochs=cfg.warmup_steps / steps_per_epoch, grad_clip=1.0, balance=False,
            patience=0, seed=seed, augment=cfg.augment, max_steps=cfg.steps,
            max_minutes=cfg.minutes, eval_every=cfg.eval_every, threads=cfg.threads,
            progress=progress)
        result = fit(adapter, train_ds, val_ds, tcfg)
        t_train = time.perf_counter() - t0 - t_render
        out_dir = Path(out)
        rep_dir = out_dir / "report"
        write_history(rep_dir, result)
        test = evaluate(adapter, test_ds, rep_dir / "synthetic_test", split="synthetic_test",
                        progress=progress)
        cases = cohort_cases(cohort_dir, cfg.cohort_limit)
        pg = pointing_game(adapter, cases, progress=progress)
        cohort_rep = None
        if len(cases) and len(pg["probs"]):
            from .report import write_report

            cohort_rep = write_report(rep_dir / "cohort", [c["image_id"] for c in cases],
                                      pg["targets"], pg["probs"], list(FINDINGS), True,
                                      split="sample_cohort", plots=False)
        _write_pointing(rep_dir / "cohort", pg)
        wall = time.perf_counter() - t0
        metrics = {
            "synthetic_test": {
                "n_images": test["n_images"], "seed_offset": TEST_SEED_OFFSET,
                "auroc": {f: test["per_class"][f]["auroc"] for f in FINDINGS},
                "ap": {f: test["per_class"][f]["ap"] for f in FINDINGS},
                "macro_auroc": test["macro"]["auroc"], "ece_macro": test["macro"]["ece"]},
            "cohort_pointing_game": {
                "cohort": _rel(cohort_dir), "n_cases": len(cases), "n_trials": pg["n_trials"],
                "trials_per_finding": pg["trials_per_finding"],
                "hit_rate": pg["hit_rate"], "hit_rate_per_finding": pg["hit_rate_per_finding"],
                "best_explainer": pg["best"], "best_hit_rate": pg["best_hit_rate"],
                "definition": "hit = argmax pixel of vx.explain(...)[method].heatmap inside the GT "
                              "mask of the target finding; one trial per (case, present finding)"},
        }
        if cohort_rep is not None:
            metrics["cohort_classification"] = {
                "n_images": cohort_rep["n_images"],
                "auroc": {f: cohort_rep["per_class"][f]["auroc"] for f in FINDINGS}}
        training = {
            "demo_config": cfg.to_dict(), "seed": seed, "train_config": tcfg.to_dict(),
            "data": {"train": {"generator": "vitx_core.data.phantom_batch",
                               "seed_range": _seed_range(TRAIN_SEED_OFFSET + 1000 * seed,
                                                         cfg.pool_size, cfg.chunk),
                               "n": len(train_ds)},
                     "val": {"seed_range": _seed_range(VAL_SEED_OFFSET + 1000 * seed,
                                                       cfg.val_size, cfg.chunk), "n": len(val_ds)},
                     "test": {"seed_range": _seed_range(TEST_SEED_OFFSET, cfg.test_size, cfg.chunk),
                              "n": len(test_ds)},
                     "render_hw": cfg.render_hw or {"H": COHORT_H, "W": COHORT_W},
                     "prevalence": cfg.prevalence},
            "result": {k: v for k, v in result.to_dict().items() if k not in ("history", "config")},
            "timing_s": {"render": round(t_render, 1), "train": round(t_train, 1),
                         "total": round(wall, 1)},
            "environment": environment() | {"threads": cfg.threads},
            "command": command or "python -m vitx_core train-demo",
        }
        desc = (f"vitx demo model: timm {cfg.arch} (patch {cfg.patch_size}, depth {cfg.depth}, "
                f"input {cfg.img_size[0]}x{cfg.img_size[1]}), random init, trained on synthetic "
                f"chest phantoms (multi-label: {', '.join(FINDINGS)}). For demonstrating vitx "
                "only: NOT a medical device, never trained on patient data.")
        save_model_dir(adapter, out_dir, description=desc, metrics=_clean(metrics),
                       extra={"training": _clean(training)}, model_kwargs=info["model_kwargs"])
        write_json(rep_dir / "demo_metrics.json", {"metrics": metrics, "training": training})
        write_readme(out_dir, cfg, seed, metrics, training)
        return DemoOutcome(out_dir, adapter, result, metrics, wall)
    finally:
        torch.set_num_threads(old_threads)


def _seed_range(base: int, n: int, chunk: int) -> str:
    k = max(1, -(-n // chunk))
    return f"phantom_batch(seed={base}..{base + k - 1}, n<={chunk})"


def _rel(p: str | os.PathLike) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _write_pointing(out: Path, pg: dict[str, Any]) -> None:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    rows = pg["rows"]
    if rows:
        keys = list(rows[0])
        with open(out / "pointing_game.csv", "w", newline="") as fh:
            wr = csv.DictWriter(fh, keys, lineterminator="\n")
            wr.writeheader()
            wr.writerows(rows)
    write_json(out / "pointing_game.json",
               {k: v for k, v in pg.items() if k not in ("rows", "probs", "targets")})


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def write_readme(out_dir: Path, cfg: DemoConfig, seed: int, metrics: dict, training: dict) -> None:
    st = metrics["synthetic_test"]
    pg = metrics["cohort_pointing_game"]
    res = training["result"]
    tm = training["timing_s"]
    cmd = training["command"]
    lines = [
        "# vitx demo model",
        "",
        "A small Vision Transformer trained **from scratch on synthetic chest phantoms** so that vitx",
        "runs offline with a model whose explanations can be checked against exact ground truth.",
        "**Not a medical device; never trained on patient data.**",
        "",
        "## Reproduce",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"Seed {seed}; {res['steps']} optimiser steps ({res['epochs_run']} epochs over the pool); "
        f"stop reason: {res['stop_reason']}. Wall time {tm['total'] / 60:.1f} min "
        f"(render {tm['render']:.0f} s, train {tm['train']:.0f} s, the rest evaluation) with "
        f"{cfg.threads} torch threads on {training['environment']['cpu_count']} CPU cores "
        f"(CPU only; the machine was shared, so times are noisy). Same seed and step count -> same "
        "weights" + (" (the wall-clock cap bound on this run: the schedule was compressed)."
                     if res.get("stop_reason", "").startswith("time") else "."),
        "",
        "## Model",
        "",
        f"- `timm.create_model(\"{cfg.arch}\", pretrained=False, num_classes=4, "
        f"img_size={tuple(cfg.img_size)}, patch_size={cfg.patch_size}, depth={cfg.depth}"
        + (f", embed_dim={cfg.embed_dim}" if cfg.embed_dim else "")
        + (f", num_heads={cfg.num_heads}" if cfg.num_heads else "") + ")`: "
        f"a {cfg.img_size[0] // cfg.patch_size}x{cfg.img_size[1] // cfg.patch_size} patch grid, "
        "class-token read-out, multi-label sigmoid head over "
        f"{', '.join(FINDINGS)}.",
        "- Preprocessing (stored in `model.json`): resize to the input size (bicubic, antialiased), "
        "mean/std 0.5 — the same `vitx_core.preprocess` path used for explanations.",
        "- Data: `vitx_core.data.phantom_batch` phantoms rendered at cohort-like sizes "
        f"(H {COHORT_H[0]}-{COHORT_H[1]}, W {COHORT_W[0]}-{COHORT_W[1]}) then resized; "
        f"{cfg.pool_size} training images (keys from TRAIN_SEED_OFFSET + 1000·seed, reused every "
        f"epoch with light augmentation: rotation ±{cfg.augment.rotate_deg}°, scale "
        f"±{cfg.augment.scale}, shift ±{cfg.augment.translate}, brightness/contrast; no flips), "
        f"{cfg.val_size} validation images (best checkpoint by macro AUROC), "
        f"{cfg.test_size} held-out test images (keys from {TEST_SEED_OFFSET}). The committed "
        "sample cohort uses seed 0 keys and is never trained on.",
        f"- AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, batch {cfg.batch_size}, "
        f"{cfg.warmup_steps} warmup steps then cosine, gradient clipping 1.0.",
        "",
        f"## Held-out synthetic test set ({st['n_images']} phantoms)",
        "",
        "| finding | AUROC | AP |",
        "|---|---|---|",
        *[f"| {f} | {_fmt(st['auroc'][f])} | {_fmt(st['ap'][f])} |" for f in FINDINGS],
        f"| **macro** | **{_fmt(st['macro_auroc'])}** | |",
        "",
        f"## Pointing game on the sample cohort ({pg['n_cases']} cases, {pg['n_trials']} "
        "case x finding trials)",
        "",
        "For every case and every finding present in it, `vx.explain(model, image, "
        "target=finding)`; a hit when the argmax pixel of `[method].heatmap` (original pixel "
        "grid) lies inside the finding's mask in `gt_segmentations.json`.",
        "",
        "| explainer | hit rate | " + " | ".join(FINDINGS) + " |",
        "|---|---|" + "---|" * len(FINDINGS),
        *[f"| {m}{' (best)' if m == pg['best_explainer'] else ''} | {_fmt(r)} | "
          + " | ".join(_fmt(pg["hit_rate_per_finding"][m][f]) for f in FINDINGS) + " |"
          for m, r in sorted(pg["hit_rate"].items(), key=lambda kv: -kv[1])],
        "",
        "Trials per finding: " + ", ".join(f"{f} {n}" for f, n in pg["trials_per_finding"].items())
        + ". A heatmap's maximum always sits on a patch-cell centre (bilinear upsampling of the "
        "patch grid), so for small nodules a hit also needs a cell centre inside the nodule.",
    ]
    if "cohort_classification" in metrics:
        cc = metrics["cohort_classification"]
        lines += ["", f"Cohort classification AUROC ({cc['n_images']} cases): "
                  + ", ".join(f"{f} {_fmt(v)}" for f, v in cc["auroc"].items()) + "."]
    lines += ["", "## Files", "",
              "- `model.json`: model card (architecture, `model_kwargs`, classes, preprocessing, "
              "`metrics`, `training`).",
              "- `model.safetensors`: weights (float32).",
              "- `report/`: training history (`history.csv`, `training.png`), synthetic test report "
              "(`synthetic_test/`: metrics, ROC/PR/calibration CSV + PNG), cohort pointing game "
              "(`cohort/pointing_game.csv|json`) and cohort classification metrics.",
              ""]
    (out_dir / "README.md").write_text("\n".join(lines))
