"""Benchmark runner: explain a cohort with every selected explainer, score, aggregate, report.

``run_benchmark(cfg, out_dir)`` (CLI: ``python -m vitx_core benchmark --config vitx.toml``):

1. Loads the cohort and, per model of the sweep, the adapter (a model that fails to load is
   reported in ``models.csv`` / ``errors.csv`` and the sweep goes on).
2. Walks the cases in fixed batches (cohort order; ``batch_size``): the raw patch GRIDS come from
   the on-disk cache (:mod:`.cache`) or from one shared engine pass, and are cached.
3. Scores, per case x target finding x method, every localisation metric of the protocol
   (:func:`vitx_core.metrics.score_map`), for the explainers AND the baselines (uniform,
   centred Gaussian, leave-one-out mean-mask prior); optionally deletion / insertion and the
   model-parameter randomisation check.
4. Appends the rows to ``per_case.csv`` and writes a per-case completion marker
   (``progress.jsonl``: the byte offsets of the CSVs after the case). A killed run resumes at the
   first unfinished case: the CSVs are cut back to the last marker, finished cases are skipped,
   and the output is byte-identical to an uninterrupted run.
5. Aggregates ``per_case.csv`` into ``summary.csv`` (NaN-aware mean / median, percentile
   bootstrap CI resampling cases once for every method and model, paired difference to the best
   baseline) and ``models.csv`` (one line per model, best model named).

Targets (``[benchmark].targets``): ``present`` (default: each finding labelled present),
``predicted`` (the top class; scored only where that finding is present unless ``full_set``),
``all`` (every finding with a known label, absent ones included = the full set; IoU then follows
``tp_only``). Findings are matched to the model's class names case-insensitively.

Memory is bounded by one batch of images and maps: rows are streamed to disk, the prior keeps
one canvas per finding, and the summary reads the CSV back at the end.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tomllib
import warnings
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.baselines import BASELINES, MaskPrior, baseline_map
from ..metrics.localisation import METRICS, Protocol, higher_is_better, score_map
from ..metrics.stats import (
    bootstrap_indices,
    bootstrap_p,
    bootstrap_weights,
    percentile_ci,
    replicate_means,
)
from ..metrics.thresholds import DEFAULT_FIXED, ThresholdRule, TunedTable, binarize, load_tuned_thresholds
from .cache import CachedGrid, CachedPrediction, GridCache, file_hash

TARGET_MODES: tuple[str, ...] = ("present", "predicted", "all")
RANDOMISATION_MODES: tuple[str, ...] = ("none", "cascading", "full")
ALL_FINDINGS = "(all)"
RUN_FORMAT = "vitx-benchmark/1"

PER_CASE_COLUMNS: tuple[str, ...] = (
    "model", "model_version", "case_id", "finding", "method", "kind", "metric", "rule",
    "threshold", "tp_only", "tolerance_px", "value", "pred_label", "pred_prob", "target_prob",
    "target_logit", "gt_frac", "constant_map")
ERROR_COLUMNS: tuple[str, ...] = ("model", "case_id", "stage", "error")
SUMMARY_KEYS: tuple[str, ...] = ("model", "finding", "method", "kind", "metric", "rule", "tp_only",
                                 "tolerance_px")
SUMMARY_COLUMNS: tuple[str, ...] = (
    *SUMMARY_KEYS, "higher_is_better", "n_cases", "n", "n_nan", "mean", "median", "ci_low",
    "ci_high", "bs_mean", "baseline", "diff_vs_baseline", "diff_ci_low", "diff_ci_high", "diff_p",
    "n_boot", "seed", "ci_level", "ci_method")
MODEL_COLUMNS: tuple[str, ...] = (
    "model", "status", "model_version", "n_cases", "n_errors", "headline", "best_method", "mean",
    "ci_low", "ci_high", "best_baseline", "baseline_mean", "gain", "gain_ci_low", "gain_ci_high",
    "best_model", "error")


class BenchmarkError(ValueError):
    """Invalid benchmark configuration (every problem listed, one per line)."""


# ============================================================================ configuration
@dataclass(frozen=True)
class BenchmarkSettings:
    """``[benchmark]`` table of ``vitx.toml`` (all optional).

    Attributes:
        targets: ``present`` | ``predicted`` | ``all`` (see the module docstring).
        full_set: with ``predicted``, also score the predicted finding where it is absent.
        baselines: subset of ``uniform``, ``centre_gaussian``, ``prior``.
        gaussian_sigma: centre Gaussian sigma as a fraction of each side.
        prior_canvas: common canvas ``[h, w]`` of the mean-mask prior.
        n_boot, seed, ci, ci_method: bootstrap (``percentile`` | ``chexlocalize``).
        headline: ``metric:rule`` used to rank methods and models (default ``iou:`` + the
            ``[evaluation] threshold_rule``).
        batch_size: images per engine pass (default ``[explainers] batch_size``; 16 on a GPU).
        cache_dir: grid cache (default ``<out>/cache``).
        overlays, panels, max_panel_cases: heatmap overlays / threshold panels for the first N
            cases.
        attention_gif: ``true`` (first case with a target) or a case id: per-block raw
            attention GIF.
        faithfulness, faithfulness_steps, faithfulness_baseline, faithfulness_score: deletion /
            insertion curves (``blur`` | ``mean``; ``logit`` | ``prob``).
        randomisation, randomisation_cases: ``none`` | ``cascading`` | ``full`` model-parameter
            randomisation on the first N cases.
        dice: also report Dice for every threshold rule.
        max_cases: only the first N cases of the cohort.
    """

    targets: str = "present"
    full_set: bool = False
    baselines: tuple[str, ...] = BASELINES
    gaussian_sigma: float = 0.25
    prior_canvas: tuple[int, int] = (64, 64)
    n_boot: int = 1000
    seed: int = 0
    ci: float = 0.95
    ci_method: str = "percentile"
    headline: str = ""
    batch_size: int | None = None
    cache_dir: Path | None = None
    overlays: bool = False
    panels: bool = False
    max_panel_cases: int = 12
    attention_gif: bool | str = False
    faithfulness: bool = False
    faithfulness_steps: int = 16
    faithfulness_baseline: str = "blur"
    faithfulness_score: str = "logit"
    randomisation: str = "none"
    randomisation_cases: int = 8
    dice: bool = False
    max_cases: int | None = None

    def check(self) -> list[str]:
        e = []
        if self.targets not in TARGET_MODES:
            e.append(f"targets: expected one of {', '.join(TARGET_MODES)}, got {self.targets!r}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            e.append(f"baselines: unknown {bad}; known: {', '.join(BASELINES)}")
        if self.gaussian_sigma <= 0:
            e.append("gaussian_sigma: must be > 0")
        if self.n_boot < 1:
            e.append("n_boot: must be >= 1")
        if not 0 < self.ci < 1:
            e.append("ci: must lie in (0, 1)")
        if self.ci_method not in ("percentile", "chexlocalize"):
            e.append("ci_method: expected percentile or chexlocalize")
        if self.faithfulness_baseline not in ("blur", "mean"):
            e.append("faithfulness_baseline: expected blur or mean")
        if self.faithfulness_score not in ("logit", "prob"):
            e.append("faithfulness_score: expected logit or prob")
        if self.randomisation not in RANDOMISATION_MODES:
            e.append(f"randomisation: expected one of {', '.join(RANDOMISATION_MODES)}")
        for k in ("faithfulness_steps", "randomisation_cases", "max_panel_cases"):
            if getattr(self, k) < 1:
                e.append(f"{k}: must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            e.append("batch_size: must be >= 1")
        if self.max_cases is not None and self.max_cases < 1:
            e.append("max_cases: must be >= 1")
        if min(self.prior_canvas) < 1:
            e.append("prior_canvas: must be positive")
        return e


@dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: a display ``name`` and a validated ``[model]`` table."""

    name: str
    model: Any  # vitx_core.data.config.ModelConfig


@dataclass(frozen=True)
class BenchmarkConfig:
    """A ``vitx.toml`` plus its ``[benchmark]`` and ``[[models]]`` tables."""

    vitx: Any  # vitx_core.data.config.VitxConfig
    settings: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    models: tuple[ModelEntry, ...] = ()
    fixed_thresholds: tuple[float, ...] = DEFAULT_FIXED

    def model_entries(self) -> tuple[ModelEntry, ...]:
        return self.models or (ModelEntry(_model_name(self.vitx.model.spec), self.vitx.model),)


def _model_name(spec: str) -> str:
    if spec == "demo" or spec.startswith("timm:"):
        return spec
    return Path(spec.removeprefix("hf:")).name or spec


_SETTING_TYPES: dict[str, Any] = {
    "targets": str, "full_set": bool, "baselines": list, "gaussian_sigma": float,
    "prior_canvas": list, "n_boot": int, "seed": int, "ci": float, "ci_method": str,
    "headline": str, "batch_size": int, "cache_dir": str, "overlays": bool, "panels": bool,
    "max_panel_cases": int, "attention_gif": (bool, str), "faithfulness": bool,
    "faithfulness_steps": int, "faithfulness_baseline": str, "faithfulness_score": str,
    "randomisation": str, "randomisation_cases": int, "dice": bool, "max_cases": int}


def settings_from_dict(d: dict[str, Any], base: Path, errors: list[str]) -> BenchmarkSettings:
    """Check a ``[benchmark]`` table -> :class:`BenchmarkSettings` (problems into ``errors``)."""
    if not isinstance(d, dict):
        errors.append("[benchmark]: expected a table")
        return BenchmarkSettings()
    kw: dict[str, Any] = {}
    for k, v in d.items():
        tp = _SETTING_TYPES.get(k)
        if tp is None:
            errors.append(f"[benchmark]: unknown key {k!r}; allowed: {', '.join(_SETTING_TYPES)}")
            continue
        ok = (isinstance(v, tp) and not (tp is int and isinstance(v, bool))) or (
            tp is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            errors.append(f"[benchmark].{k}: expected {getattr(tp, '__name__', tp)}, got {v!r}")
            continue
        if k == "baselines":
            v = tuple(str(x) for x in v)
        elif k == "prior_canvas":
            if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                errors.append("[benchmark].prior_canvas: expected [height, width]")
                continue
            v = (int(v[0]), int(v[1]))
        elif k == "cache_dir":
            p = Path(v).expanduser()
            v = p if p.is_absolute() else base / p
        elif k == "gaussian_sigma" or k == "ci":
            v = float(v)
        kw[k] = v
    s = BenchmarkSettings(**kw)
    errors += [f"[benchmark].{m}" for m in s.check()]
    return s


def load_benchmark_config(path: str | os.PathLike) -> BenchmarkConfig:
    """Read ``vitx.toml`` with its optional ``[benchmark]`` and ``[[models]]`` tables.

    ``vitx_core.data.config`` validates every other section (it rejects unknown sections, so the
    two tables are taken out first and validated here; each ``[[models]]`` entry has the keys of
    ``[model]`` plus an optional ``name``).

    Raises:
        ConfigError / BenchmarkError: every problem listed.
    """
    from ..data.config import ConfigError, config_from_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    bench_raw = data.pop("benchmark", {})
    models_raw = data.pop("models", None)
    cfg = config_from_dict(data, p.parent, source=str(p))
    cfg = replace(cfg, path=p.resolve())
    errors: list[str] = []
    settings = settings_from_dict(bench_raw, p.parent.resolve(), errors)
    models: list[ModelEntry] = []
    if models_raw is not None:
        entries = models_raw if isinstance(models_raw, list) else [models_raw]
        used: set[str] = set()
        for i, m in enumerate(entries):
            where = f"[[models]] #{i + 1}"
            if not isinstance(m, dict):
                errors.append(f"{where}: expected a table")
                continue
            m = dict(m)
            name = m.pop("name", None)
            if name is not None and (not isinstance(name, str) or not name.strip()):
                errors.append(f"{where}.name: expected a non-empty string")
                name = None
            if "spec" not in m:
                errors.append(f"{where}: 'spec' is required")
                continue
            try:
                mc = config_from_dict({"cohort": data.get("cohort", {}), "model": m}, p.parent,
                                      source=where).model
            except ConfigError as e:
                errors += [f"{where}: {ln.strip()}" for ln in str(e).splitlines()[1:]] or [str(e)]
                continue
            nm = name or _model_name(mc.spec)
            base_nm, k = nm, 2
            while nm in used:
                nm, k = f"{base_nm}_{k}", k + 1
            used.add(nm)
            models.append(ModelEntry(nm, mc))
        if not models and not errors:
            errors.append("[[models]]: no model given")
    if errors:
        raise BenchmarkError(f"{p}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    ev = data.get("evaluation", {})
    fixed = cfg.evaluation.thresholds if isinstance(ev, dict) and "thresholds" in ev else DEFAULT_FIXED
    return BenchmarkConfig(cfg, settings, tuple(models), tuple(fixed))


def as_benchmark_config(cfg: Any) -> BenchmarkConfig:
    """A path, a :class:`~vitx_core.data.config.VitxConfig` or a :class:`BenchmarkConfig`."""
    if isinstance(cfg, BenchmarkConfig):
        return cfg
    if isinstance(cfg, (str, os.PathLike)):
        return load_benchmark_config(cfg)
    if hasattr(cfg, "cohort") and hasattr(cfg, "evaluation"):
        return BenchmarkConfig(cfg, BenchmarkSettings(), (), tuple(cfg.evaluation.thresholds))
    raise TypeError(f"expected a config path, VitxConfig or BenchmarkConfig, got {type(cfg).__name__}")


def protocol_from_config(bc: BenchmarkConfig) -> tuple[Protocol, str, TunedTable | None]:
    """-> (protocol, headline ``metric:rule``, tuned-threshold table or None)."""
    ev = bc.vitx.evaluation
    rules = [ThresholdRule("otsu"), *(ThresholdRule("fixed", t) for t in bc.fixed_thresholds),
             ThresholdRule("top_k", ev.top_fraction), ThresholdRule("gt_area")]
    tuned = None
    if ev.tuned_thresholds_csv is not None:
        tuned = load_tuned_thresholds(ev.tuned_thresholds_csv)
        rules.append(ThresholdRule("tuned"))
    primary = {"otsu": "otsu", "top_k": f"top_k:{ev.top_fraction:g}", "tuned": "tuned",
               "fixed": f"fixed:{(ev.thresholds or (0.5,))[0]:g}"}[ev.threshold_rule]
    if ev.threshold_rule == "fixed" and not any(r.label == primary for r in rules):
        rules.insert(1, ThresholdRule.parse(primary))
    dedup = list(dict.fromkeys(rules))
    proto = Protocol(rules=tuple(dedup), tp_only=ev.true_positive_only,
                     tolerance_px=float(ev.tolerance_px), dice=bc.settings.dice)
    headline = bc.settings.headline or f"iou:{primary}"
    return proto, headline, tuned


# ============================================================================ small helpers
def _fmt(v: Any) -> str:
    """Deterministic CSV text: NaN/None -> empty, floats with 6 significant digits."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return ""
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if f == 0:
            return "0"
        return format(f, ".6g")
    return str(v)


def _csv_bytes(rows: Iterable[Sequence[Any]]) -> bytes:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return buf.getvalue().encode("utf-8")


def _slug(text: str, limit: int = 48) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return (s or "x")[:limit]


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _map_to_grid(m: np.ndarray, geom: Any, grid_hw: tuple[int, int], patch: tuple[int, int]
                 ) -> np.ndarray:
    """An original-grid map sampled at the patch centres (nearest pixel): a patch-grid ordering
    for the baselines' deletion / insertion curves."""
    gh, gw = grid_hw
    ph, pw = patch
    vv, uu = np.meshgrid((np.arange(gh) + 0.5) * ph, (np.arange(gw) + 0.5) * pw, indexing="ij")
    xy = geom.inverse_points(np.stack([uu, vv], axis=-1))
    h0, w0 = m.shape
    xs = np.clip(np.floor(xy[..., 0]).astype(int), 0, w0 - 1)
    ys = np.clip(np.floor(xy[..., 1]).astype(int), 0, h0 - 1)
    return np.asarray(m, dtype=np.float32)[ys, xs]


# ============================================================================ progress journal
class _Journal:
    """Append-only CSVs + per-case completion markers (byte offsets) for exact resume."""

    def __init__(self, out: Path, fingerprint: str, resume: bool, run_info: dict[str, Any]) -> None:
        self.out = out
        self.per_case = out / "per_case.csv"
        self.errors = out / "errors.csv"
        self.journal = out / "progress.jsonl"
        self.run_json = out / "run.json"
        self.done: set[tuple[str, str]] = set()
        self.versions: dict[str, str] = {}
        self.resumed = False
        self.restarted = False
        out.mkdir(parents=True, exist_ok=True)
        if resume and self._try_resume(fingerprint):
            self.resumed = True
        else:
            self.restarted = resume and self.run_json.is_file()
            self._fresh(fingerprint, run_info)
        self._pc = open(self.per_case, "ab")
        self._er = open(self.errors, "ab")
        self._jr = open(self.journal, "ab")

    def _fresh(self, fingerprint: str, run_info: dict[str, Any]) -> None:
        self.per_case.write_bytes(_csv_bytes([PER_CASE_COLUMNS]))
        self.errors.write_bytes(_csv_bytes([ERROR_COLUMNS]))
        self.journal.write_bytes(b"")
        info = {"format": RUN_FORMAT, "fingerprint": fingerprint, **run_info}
        self.run_json.write_text(json.dumps(info, indent=1, sort_keys=True, default=str) + "\n")
        self.done.clear()
        self.versions.clear()

    def _try_resume(self, fingerprint: str) -> bool:
        try:
            info = json.loads(self.run_json.read_text())
        except (OSError, ValueError):
            return False
        if info.get("fingerprint") != fingerprint or not all(
                p.is_file() for p in (self.per_case, self.errors, self.journal)):
            return False
        good_end = 0
        offs = (len(_csv_bytes([PER_CASE_COLUMNS])), len(_csv_bytes([ERROR_COLUMNS])))
        raw = self.journal.read_bytes()
        pos = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
            except ValueError:
                break
            pos += len(line)
            good_end = pos
            if "v" in rec:
                self.versions[rec["m"]] = rec["v"]
            else:
                self.done.add((rec["m"], rec["c"]))
                offs = (int(rec["p"]), int(rec["e"]))
        if self.per_case.stat().st_size < offs[0] or self.errors.stat().st_size < offs[1]:
            self.done.clear()
            self.versions.clear()
            return False
        with open(self.journal, "r+b") as fh:
            fh.truncate(good_end)
        for p, o in ((self.per_case, offs[0]), (self.errors, offs[1])):
            with open(p, "r+b") as fh:
                fh.truncate(o)
        return True

    def model_version(self, model: str, version: str) -> bool:
        """Record the model's weights hash; False when it differs from the resumed run's."""
        old = self.versions.get(model)
        if old is not None and old != version:
            return False
        if old is None:
            self._jr.write((json.dumps({"m": model, "v": version}) + "\n").encode())
            self._jr.flush()
            self.versions[model] = version
        return True

    def commit(self, model: str, case_id: str, rows: list[Sequence[Any]],
               errors: list[Sequence[Any]]) -> None:
        if rows:
            self._pc.write(_csv_bytes(rows))
        if errors:
            self._er.write(_csv_bytes(errors))
        self._pc.flush()
        self._er.flush()
        rec = {"m": model, "c": case_id, "p": self._pc.tell(), "e": self._er.tell()}
        self._jr.write((json.dumps(rec) + "\n").encode())
        self._jr.flush()
        self.done.add((model, case_id))

    def close(self) -> None:
        for f in (self._pc, self._er, self._jr):
            f.close()


# ============================================================================ per-case work
@dataclass
class _CaseData:
    case: Any
    image_hash: str
    geometry: Any
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    targets: list[int] = field(default_factory=list)
    grids: dict[tuple[str, int], CachedGrid] = field(default_factory=dict)
    pixels: np.ndarray | None = None
    x: Any = None


@dataclass
class _Context:
    adapter: Any
    model_name: str
    explainers: list[Any]
    cohort_findings: list[str]
    fmap: dict[str, int]                   # cohort finding -> class index
    finding_of: dict[int, str]             # class index -> finding name (cohort spelling)
    settings: BenchmarkSettings
    protocol: Protocol
    tuned: TunedTable | None
    cache: GridCache
    prior: MaskPrior | None
    prior_members: set[tuple[str, str]]
    hashes: dict[str, str]
    out: Path
    figures: Path
    output_cfg: Any
    random_adapters: dict[str, Any] = field(default_factory=dict)


def _case_targets(ctx: _Context, case: Any) -> list[int] | None:
    """Class indices to explain for a case (None: the predicted class, known after the pass)."""
    mode = ctx.settings.targets
    if mode == "predicted":
        return None
    out = []
    for f in ctx.cohort_findings:
        if f not in ctx.fmap:
            continue
        lab = case.labels.get(f)
        if lab == 1 or (mode == "all" and lab in (0, 1)):
            out.append(ctx.fmap[f])
    return out


def _image_hash(ctx: _Context, case: Any) -> str:
    h = ctx.hashes.get(case.case_id)
    if h is None:
        h = file_hash(case.file_path)
        ctx.hashes[case.case_id] = h
    return h


def _grid_stats(grid: np.ndarray, extras: dict[str, Any], b: int) -> dict[str, float]:
    s = {"min": float(grid.min()), "max": float(grid.max()), "sum": float(grid.sum())}
    if "patch_mass" in extras:
        s["patch_mass"] = float(np.asarray(extras["patch_mass"])[b])
    return s


def _from_cache(ctx: _Context, case: Any, h: str) -> _CaseData | None:
    a = ctx.adapter
    want = _case_targets(ctx, case)
    geom = a.preprocess.geometry(tuple(case.size_hw))
    if want == []:
        return _CaseData(case, h, geom)
    pred = ctx.cache.get_prediction(h)
    if pred is None:
        return None
    targets = [int(np.argmax(pred.logits))] if want is None else want
    cd = _CaseData(case, h, geom, pred.logits, pred.probs, targets)
    for t in targets:
        for e in ctx.explainers:
            g = ctx.cache.get(h, e.name, e.params_json, t)
            if g is None:
                return None
            cd.grids[(e.name, t)] = g
    return cd


def _compute(ctx: _Context, cases: list[Any], loaded: dict[str, Any]) -> dict[str, _CaseData]:
    """One engine pass over ``cases`` (already loaded pixels); caches every grid."""
    import torch

    from ..engine import run_explainers
    from ..geometry import preprocess

    a = ctx.adapter
    xs, geoms, wants = [], [], []
    for c in cases:
        x, g = preprocess(loaded[c.case_id], a.preprocess)
        xs.append(x)
        geoms.append(g)
        wants.append(_case_targets(ctx, c))
    if ctx.settings.targets == "predicted":
        slots: list[Any] = [None]
    else:
        k = max(1, max(len(w or []) for w in wants))
        slots = [[(w[j] if j < len(w) else (w[0] if w else 0)) for w in wants] for j in range(k)]
    x = torch.stack(xs)
    res = run_explainers(a, x, ctx.explainers, slots)
    logits = res.logits.float()
    probs = a.probabilities(logits).float().numpy()
    logits_np = logits.numpy()
    out: dict[str, _CaseData] = {}
    for b, c in enumerate(cases):
        h = ctx.hashes[c.case_id]
        pred = CachedPrediction(logits_np[b].copy(), probs[b].copy())
        ctx.cache.put_prediction(h, pred)
        n_real = 1 if wants[b] is None else len(wants[b])
        targets = [int(res.targets[k][b]) for k in range(n_real)]
        cd = _CaseData(c, h, geoms[b], pred.logits, pred.probs, targets, x=xs[b],
                       pixels=loaded[c.case_id])
        for k, t in enumerate(targets):
            for e in ctx.explainers:
                mo = res.outputs[k][e.name]
                grid = mo.grid[b].numpy().astype(np.float32)
                entry = CachedGrid(grid, t, float(logits_np[b, t]), float(probs[b, t]),
                                   _grid_stats(grid, {n: v.numpy() for n, v in mo.extras.items()}, b))
                ctx.cache.put(h, e.name, e.params_json, entry)
                cd.grids[(e.name, t)] = entry
        out[c.case_id] = cd
    return out


def _explain_batch(ctx: _Context, batch: list[Any]) -> dict[str, _CaseData | BaseException]:
    """Grids for a FIXED batch of cases: all from the cache, else one pass over the whole batch
    (so a resumed run computes with exactly the same batch composition)."""
    results: dict[str, _CaseData | BaseException] = {}
    ok_cases = []
    for c in batch:
        try:
            _image_hash(ctx, c)
            ok_cases.append(c)
        except OSError as e:
            results[c.case_id] = e
    cached: dict[str, _CaseData] = {}
    for c in ok_cases:
        cd = _from_cache(ctx, c, ctx.hashes[c.case_id])
        if cd is None:
            break
        cached[c.case_id] = cd
    if len(cached) == len(ok_cases):
        results.update(cached)
        return results
    loaded: dict[str, Any] = {}
    to_run = []
    for c in ok_cases:
        try:
            loaded[c.case_id] = c.load_image().pixels
            to_run.append(c)
        except Exception as e:  # unreadable image: reported, the batch goes on
            results[c.case_id] = e
    if not to_run:
        return results
    try:
        results.update(_compute(ctx, to_run, loaded))
    except Exception:
        if len(to_run) == 1:
            raise
        for c in to_run:  # isolate the failing case(s)
            try:
                results.update(_compute(ctx, [c], loaded))
            except Exception as e:
                results[c.case_id] = e
    return results


def _ensure_input(ctx: _Context, cd: _CaseData) -> None:
    from ..geometry import preprocess

    if cd.pixels is None:
        cd.pixels = cd.case.load_image().pixels
    if cd.x is None:
        cd.x = preprocess(cd.pixels, ctx.adapter.preprocess)[0]


def _gt_for(ctx: _Context, case: Any, finding: str) -> tuple[np.ndarray | None, bool]:
    """(mask or None, scored?) following the target mode and the full-set option."""
    mask = case.mask(finding) if finding in ctx.cohort_findings else None
    lab = case.labels.get(finding)
    if mask is None and lab == 0:
        mask = np.zeros(tuple(case.size_hw), dtype=bool)
    if mask is None:
        return None, False
    present = bool(mask.any())
    full = ctx.settings.targets == "all" or ctx.settings.full_set
    return mask, present or full


def _random_stages(ctx: _Context) -> list[str]:
    from ..metrics.faithfulness import cascade_stages

    if ctx.settings.randomisation == "full":
        return ["all"]
    st = cascade_stages(ctx.adapter.model)
    nb = len(st) - 2
    keep = ["head", "top1"] + ([f"top{(nb + 1) // 2}"] if nb > 2 else []) + ["all"]
    return [s for s in dict.fromkeys(keep) if s in st]


def _score_case(ctx: _Context, cd: _CaseData, case_index: int) -> list[list[Any]]:
    from ..metrics.thresholds import is_constant
    from ..results import normalise

    a = ctx.adapter
    s = ctx.settings
    rows: list[list[Any]] = []
    case = cd.case
    hw = tuple(case.size_hw)
    if cd.logits is None:
        return rows
    top = int(np.argmax(cd.logits))
    pred_label, pred_prob = a.labels[top], float(cd.probs[top])
    patch = tuple(a.patch_size)
    want_figs = (s.overlays or s.panels) and case_index < s.max_panel_cases
    for t in cd.targets:
        finding = ctx.finding_of.get(t, a.labels[t])
        gt, scored = _gt_for(ctx, case, finding)
        first = cd.grids[(ctx.explainers[0].name, t)]
        gt_frac = float(gt.mean()) if gt is not None else math.nan
        common = (cd.logits[t], cd.probs[t])

        def row(method: str, kind: str, metric: str, rule: str, thr: float, tp: Any, tol: Any,
                value: float, const: bool, _c=common, _f=finding, _g=gt_frac) -> list[Any]:
            return [ctx.model_name, a.version, case.case_id, _f, method, kind, metric, rule, thr,
                    tp, tol, value, pred_label, pred_prob, float(_c[1]), float(_c[0]), _g, const]

        maps: list[tuple[str, str, np.ndarray, bool, np.ndarray | None]] = []
        for e in ctx.explainers:
            g = cd.grids[(e.name, t)]
            hm, const = normalise(cd.geometry.grid_to_original(g.grid, patch))
            maps.append((e.name, "explainer", hm, const, g.grid))
        for b in s.baselines:
            own = gt if (gt is not None and (case.case_id, finding) in ctx.prior_members) else None
            m = baseline_map(b, hw, prior=ctx.prior, finding=finding, own_mask=own,
                             sigma=s.gaussian_sigma)
            if m is None:
                continue
            hm, const = normalise(m)
            maps.append((b, "baseline", hm, const, None))
        if scored and gt is not None:
            for name, kind, hm, const, _ in maps:
                for sc in score_map(hm, gt, ctx.protocol, method=name, finding=finding,
                                    tuned=ctx.tuned):
                    rows.append(row(name, kind, sc.metric, sc.rule, sc.threshold, sc.tp_only,
                                    sc.tolerance_px, sc.value, const))
        if s.faithfulness:
            from ..metrics.faithfulness import deletion_insertion

            _ensure_input(ctx, cd)
            rule = f"{s.faithfulness_baseline},{s.faithfulness_score},steps={s.faithfulness_steps}"
            for name, kind, hm, const, grid in maps:
                if grid is None:
                    grid = _map_to_grid(hm, cd.geometry, first.grid.shape, patch)
                curves = deletion_insertion(a, cd.x, grid, t, steps=s.faithfulness_steps,
                                            baseline=s.faithfulness_baseline,
                                            score=s.faithfulness_score)
                rows.append(row(name, kind, "deletion_auc", rule, math.nan, None, None,
                                curves["deletion"].nauc, const))
                rows.append(row(name, kind, "insertion_auc", rule, math.nan, None, None,
                                curves["insertion"].nauc, const))
        if s.randomisation != "none" and case_index < s.randomisation_cases:
            from ..engine import run_explainers
            from ..metrics.faithfulness import randomized_adapter, spearman

            _ensure_input(ctx, cd)
            for stage in _random_stages(ctx):
                if stage not in ctx.random_adapters:
                    ctx.random_adapters[stage] = randomized_adapter(
                        a, stage, mode="cascading", seed=s.seed)
                res = run_explainers(ctx.random_adapters[stage], cd.x[None], ctx.explainers, [[t]])
                for e in ctx.explainers:
                    g0 = cd.grids[(e.name, t)].grid
                    g1 = res.outputs[0][e.name].grid[0].numpy()
                    rows.append(row(e.name, "explainer", "mprt_spearman",
                                    f"{s.randomisation}:{stage}", math.nan, None, None,
                                    spearman(g0, g1), is_constant(g0)))
        if want_figs and gt is not None:
            _figures(ctx, cd, finding, gt, maps)
    return rows


def _figures(ctx: _Context, cd: _CaseData, finding: str, gt: np.ndarray,
             maps: list[tuple[str, str, np.ndarray, bool, np.ndarray | None]]) -> None:
    from ..metrics.localisation import iou
    from .panels import overlay_with_gt, threshold_panel

    s = ctx.settings
    if cd.pixels is None:
        cd.pixels = cd.case.load_image().pixels
    folder = ctx.figures / _slug(ctx.model_name) / cd.case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    cmap = getattr(ctx.output_cfg, "cmap", "jet")
    alpha = getattr(ctx.output_cfg, "alpha", 0.5)
    for name, _kind, hm, _const, _grid in maps:
        stem = f"{_slug(finding)}__{_slug(name)}"
        if s.overlays:
            overlay_with_gt(cd.pixels, hm, gt, f"{name} - {finding} ({ctx.model_name})",
                            alpha=alpha, cmap=cmap).save(folder / f"{stem}_overlay.png")
        if s.panels:
            tiles = []
            for rule in ctx.protocol.rules:
                if rule.kind == "tuned":
                    continue
                mask, _thr = binarize(hm, rule, gt=gt)
                tp = True if rule.kind == "chexlocalize" else ctx.protocol.tp_only
                tiles.append((rule.label, mask, iou(mask, gt, tp_only=tp)))
            if ctx.protocol.chexlocalize:
                mask, _thr = binarize(hm, ThresholdRule("chexlocalize"))
                tiles.append(("chexlocalize", mask, iou(mask, gt, tp_only=True)))
            threshold_panel(cd.pixels, hm, gt, tiles, cmap=cmap,
                            header=f"{cd.case.case_id} - {finding} - {name}"
                            ).save(folder / f"{stem}_thresholds.png")


# ============================================================================ summary
def _order(values: Iterable[str], first: Sequence[str] = (), last: Sequence[str] = ()
           ) -> dict[str, int]:
    seen = list(dict.fromkeys([*first, *values]))
    seen = [v for v in seen if v not in last] + [v for v in last if v in set(values) | set(first)]
    return {v: i for i, v in enumerate(seen)}


def _iter_rows(per_case: Any, keys: Sequence[str]) -> Iterable[tuple[tuple[str, ...], str, str]]:
    """``(group key, case_id, value text)`` per row of ``per_case.csv`` (streamed with the csv
    module: the summary holds 3 numbers per row, not a DataFrame) or of a DataFrame."""
    import csv

    if hasattr(per_case, "columns"):  # a DataFrame
        cols = [per_case[k].astype(str).tolist() for k in keys]
        cids = per_case["case_id"].astype(str).tolist()
        vals = ["" if (isinstance(v, float) and math.isnan(v)) else str(v)
                for v in per_case["value"].tolist()]
        for i in range(len(cids)):
            yield tuple(c[i] for c in cols), cids[i], vals[i]
        return
    with open(per_case, newline="", encoding="utf-8") as fh:
        r = csv.reader(fh)
        header = next(r, None)
        if header is None:
            return
        ik = [header.index(k) for k in keys]
        ic, iv = header.index("case_id"), header.index("value")
        for row in r:
            yield tuple(row[i] for i in ik), row[ic], row[iv]


def _group_medians(gid: np.ndarray, val: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of the defined values of every group (NaN for none): one lexsort, O(rows)."""
    d = ~np.isnan(val)
    g, v = gid[d], val[d]
    order = np.lexsort((v, g))
    g, v = g[order], v[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    ok = counts > 0
    lo = np.where(ok, starts + (counts - 1) // 2, 0)
    hi = np.where(ok, starts + counts // 2, 0)
    if v.size == 0:
        return np.full(n_groups, np.nan)
    return np.where(ok, (v[lo] + v[hi]) / 2.0, np.nan)


def summarise_per_case(per_case: str | os.PathLike | Any, case_ids: Sequence[str], *,
                       n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                       ci_method: str = "percentile", findings: Sequence[str] = ()) -> Any:
    """``per_case.csv`` (path or DataFrame) -> summary DataFrame (``SUMMARY_COLUMNS``).

    Groups by model x finding x method x metric x protocol, plus a pooled finding ``(all)``.
    The bootstrap resamples the **cases** (``case_ids`` order) once for every group, so the
    difference to the best baseline of the same model x finding x metric x protocol is paired.
    Memory: the CSV is streamed; 3 numbers per row (group, case, value), the ``n_boot x cases``
    int32 indices, and per chunk of groups two ``cases x groups`` matrices and the
    ``n_boot x groups`` replicates.
    """
    import pandas as pd

    keys = list(SUMMARY_KEYS)
    pos_of = {c: i for i, c in enumerate(case_ids)}
    n = len(case_ids)
    key_ids: dict[tuple[str, ...], int] = {}
    gid_l, pos_l, val_l = array("i"), array("i"), array("d")
    for k, cid, v in _iter_rows(per_case, keys):
        p = pos_of.get(cid)
        if p is None:
            continue
        g = key_ids.get(k)
        if g is None:
            g = key_ids[k] = len(key_ids)
        gid_l.append(g)
        pos_l.append(p)
        val_l.append(float(v) if v not in ("", "nan") else math.nan)
    if not key_ids:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    # the pooled "(all)" groups: the same rows under a second group id (finding replaced)
    fi = keys.index("finding")
    single = list(key_ids)
    pooled_ids: dict[tuple[str, ...], int] = {}
    pooled_of = np.empty(len(single), dtype=np.int64)
    for i, k in enumerate(single):
        pk = (*k[:fi], ALL_FINDINGS, *k[fi + 1:])
        pooled_of[i] = pooled_ids.setdefault(pk, len(single) + len(pooled_ids))
    gdf = pd.DataFrame([*single, *pooled_ids], columns=keys)
    gid_a = np.frombuffer(gid_l, dtype=np.int32).astype(np.int64)
    gid = np.concatenate([gid_a, pooled_of[gid_a]])
    val = np.tile(np.frombuffer(val_l, dtype=np.float64), 2)
    pos = np.tile(np.frombuffer(pos_l, dtype=np.int32).astype(np.int64), 2)
    del gid_l, pos_l, val_l, gid_a
    present = np.bincount(gid, minlength=len(gdf)) > 0
    finding_set = set(gdf["finding"])
    orders = {
        "model": _order(gdf["model"]),
        "finding": _order(gdf["finding"], first=[f for f in findings if f in finding_set],
                          last=[ALL_FINDINGS]),
        "method": _order(pd.concat([gdf.loc[gdf["kind"] == "explainer", "method"],
                                    gdf.loc[gdf["kind"] != "explainer", "method"]])),
        "metric": _order(gdf["metric"], first=[m for m in METRICS if m in set(gdf["metric"])]),
        "rule": _order(gdf["rule"]),
    }
    for k, o in orders.items():
        gdf[f"_o_{k}"] = gdf[k].map(o)
    gdf["_old"] = np.arange(len(gdf))
    gdf = gdf[present].sort_values([f"_o_{k}" for k in orders] + ["kind", "tp_only", "tolerance_px"],
                                   kind="stable").reset_index(drop=True)
    remap = np.full(len(present), -1, dtype=np.int64)
    remap[gdf["_old"].to_numpy()] = np.arange(len(gdf))
    gid = remap[gid]
    gdf = gdf[keys]
    defined = ~np.isnan(val)
    G = len(gdf)
    med = _group_medians(gid, val, G)
    nan_rows = np.bincount(gid[~defined], minlength=G)

    idx = bootstrap_indices(n, n_boot, seed)  # (B, n) int32, drawn once for every group
    fam_keys = ["model", "finding", "metric", "rule", "tp_only", "tolerance_px"]
    fam = gdf.groupby(fam_keys, sort=False).ngroup().to_numpy()
    out_cols: dict[str, np.ndarray] = {k: np.full(G, np.nan) for k in (
        "mean", "ci_low", "ci_high", "bs_mean", "diff_vs_baseline", "diff_ci_low", "diff_ci_high",
        "diff_p")}
    n_def = np.zeros(G, dtype=np.int64)
    n_cases = np.zeros(G, dtype=np.int64)
    baseline_name = np.array([""] * G, dtype=object)
    hib = np.array([higher_is_better(m) for m in gdf["metric"]])
    limit = max(1, int(2e7 // max(n, 1)))
    fam_ids = np.unique(fam)
    start = 0
    while start < len(fam_ids):  # chunks of whole families (paired differences stay in-chunk)
        cols: list[int] = []
        stop = start
        while stop < len(fam_ids) and (not cols or len(cols) < limit):
            cols += list(np.flatnonzero(fam == fam_ids[stop]))
            stop += 1
        cols_arr = np.asarray(cols)
        local = {c: i for i, c in enumerate(cols)}
        to_local = np.full(G, -1, dtype=np.int64)
        to_local[cols_arr] = np.arange(len(cols))
        sel = to_local[gid] >= 0
        lc = to_local[gid[sel]]
        S = np.zeros((n, len(cols)))
        C = np.zeros((n, len(cols)))
        np.add.at(S, (pos[sel], lc), np.where(defined[sel], val[sel], 0.0))
        np.add.at(C, (pos[sel], lc), defined[sel].astype(float))
        tot = C.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            point = np.where(tot > 0, S.sum(axis=0) / np.where(tot > 0, tot, 1), np.nan)
        reps = np.empty((n_boot, len(cols)))
        for r0 in range(0, n_boot, 128):  # weights in chunks: memory O(128 x cases)
            w = bootstrap_weights(idx[r0:r0 + 128], n)
            reps[r0:r0 + len(w)] = replicate_means(S, C, w)
        lo, hi = percentile_ci(reps, ci, ci_method)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bsm = np.nanmean(reps, axis=0)
        out_cols["mean"][cols_arr] = point
        out_cols["ci_low"][cols_arr] = lo
        out_cols["ci_high"][cols_arr] = hi
        out_cols["bs_mean"][cols_arr] = bsm
        n_def[cols_arr] = tot.astype(np.int64)
        n_cases[cols_arr] = (C > 0).sum(axis=0)
        for f in fam_ids[start:stop]:
            members = [c for c in cols if fam[c] == f]
            bases = [c for c in members if gdf.at[c, "kind"] == "baseline"
                     and not math.isnan(point[local[c]])]
            if not bases:
                continue
            sign = 1.0 if hib[members[0]] else -1.0
            best = max(bases, key=lambda c: (sign * point[local[c]], -c))
            for c in members:
                dr = reps[:, local[c]] - reps[:, local[best]]
                dlo, dhi = percentile_ci(dr, ci, ci_method)  # type: ignore[arg-type]
                baseline_name[c] = gdf.at[best, "method"]
                out_cols["diff_vs_baseline"][c] = point[local[c]] - point[local[best]]
                out_cols["diff_ci_low"][c] = float(dlo)
                out_cols["diff_ci_high"][c] = float(dhi)
                out_cols["diff_p"][c] = bootstrap_p(dr)
        start = stop

    res = gdf[keys].copy()
    res["higher_is_better"] = hib
    res["n_cases"] = n_cases
    res["n"] = n_def
    res["n_nan"] = nan_rows
    res["mean"] = out_cols["mean"]
    res["median"] = med
    for k in ("ci_low", "ci_high", "bs_mean"):
        res[k] = out_cols[k]
    res["baseline"] = baseline_name
    for k in ("diff_vs_baseline", "diff_ci_low", "diff_ci_high", "diff_p"):
        res[k] = out_cols[k]
    res["n_boot"] = n_boot
    res["seed"] = seed
    res["ci_level"] = ci
    res["ci_method"] = ci_method
    return res[list(SUMMARY_COLUMNS)]


def _write_frame(df: Any, path: Path, columns: Sequence[str]) -> None:
    rows = [list(columns)] + [[r[c] for c in columns] for r in df.to_dict("records")]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(_csv_bytes(rows))
    os.replace(tmp, path)


def _split_headline(headline: str) -> tuple[str, str]:
    metric, _, rule = headline.partition(":")
    return metric.strip(), rule.strip()


def models_table(summary: Any, statuses: dict[str, dict[str, Any]], headline: str) -> Any:
    """One row per model: its best explainer on the headline (pooled findings), the best
    baseline and the paired gain; ``best_model`` marks the winner among models that ran."""
    import pandas as pd

    metric, rule = _split_headline(headline)
    hib = higher_is_better(metric)
    rows = []
    for name, st in statuses.items():
        r: dict[str, Any] = {c: None for c in MODEL_COLUMNS}
        r.update(model=name, status=st["status"], model_version=st.get("version", ""),
                 n_cases=st.get("n_cases", 0), n_errors=st.get("n_errors", 0), headline=headline,
                 error=st.get("error", ""), best_model=False)
        if len(summary):
            sel = summary[(summary["model"] == name) & (summary["finding"] == ALL_FINDINGS)
                          & (summary["metric"] == metric) & (summary["rule"] == rule)]
            ex = sel[sel["kind"] == "explainer"].dropna(subset=["mean"])
            if len(ex):
                best = ex.sort_values("mean", ascending=not hib, kind="stable").iloc[0]
                r.update(best_method=best["method"], mean=best["mean"], ci_low=best["ci_low"],
                         ci_high=best["ci_high"], best_baseline=best["baseline"],
                         gain=best["diff_vs_baseline"], gain_ci_low=best["diff_ci_low"],
                         gain_ci_high=best["diff_ci_high"])
                bl = sel[(sel["kind"] == "baseline") & (sel["method"] == best["baseline"])]
                if len(bl):
                    r["baseline_mean"] = bl.iloc[0]["mean"]
        rows.append(r)
    mt = pd.DataFrame(rows, columns=list(MODEL_COLUMNS))
    ran = mt[mt["status"] != "failed"].dropna(subset=["mean"])
    if len(ran):
        best_i = (ran["mean"].astype(float) * (1 if hib else -1)).idxmax()
        mt.loc[best_i, "best_model"] = True
    return mt


# ============================================================================ result
@dataclass
class BenchmarkResult:
    """What a run produced (paths, tables) and how it went."""

    out_dir: Path
    per_case_csv: Path
    summary_csv: Path
    models_csv: Path
    errors_csv: Path
    summary: Any
    models: Any
    headline: str
    n_cases: int
    statuses: dict[str, dict[str, Any]]
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def best_model(self) -> str | None:
        b = self.models[self.models["best_model"] == True]  # noqa: E712 - pandas mask
        return None if b.empty else str(b.iloc[0]["model"])

    @property
    def exit_code(self) -> int:
        """0: every model and case ran; 1: something failed (listed in errors.csv)."""
        bad = any(s["status"] != "ok" or s.get("n_errors", 0) for s in self.statuses.values())
        return 1 if bad else 0

    def format_table(self, finding: str = ALL_FINDINGS) -> str:
        return format_summary(self.summary, self.models, self.headline, finding=finding,
                              notes=self.notes)


def _cell(mean: Any, lo: Any = None, hi: Any = None, ci: bool = False) -> str:
    try:
        m = float(mean)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(m):
        return "-"
    if not ci:
        return f"{m:.3f}"
    try:
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError):
        return f"{m:.3f}"
    if math.isnan(lo_f) or math.isnan(hi_f):
        return f"{m:.3f}"
    return f"{m:.3f} [{lo_f:.3f}, {hi_f:.3f}]"


def format_summary(summary: Any, models: Any, headline: str, *, finding: str = ALL_FINDINGS,
                   notes: Sequence[str] = ()) -> str:
    """Plain-text table per model: methods x headline metrics (pooled over findings by default),
    mean [95 % CI], and the paired difference of the headline to the best baseline."""
    metric, rule = _split_headline(headline)
    lines: list[str] = []
    cols = [(f"{metric}:{rule}" if rule else metric, metric, rule, True),
            ("hit", "hit", "", False), ("enrich", "enrichment", "", False),
            ("pxap", "pxap", "", False), ("auroc", "auroc", "", False),
            ("iou:chexloc", "iou", "chexlocalize", False), ("hit:chexloc", "hit", "chexlocalize", False)]
    for _, m in models.iterrows():
        name = m["model"]
        if m["status"] == "failed":
            lines.append(f"model {name}: FAILED - {m['error']}")
            lines.append("")
            continue
        sub = summary[(summary["model"] == name) & (summary["finding"] == finding)] \
            if len(summary) else summary
        lines.append(f"model {name} (weights {m['model_version']}): {m['n_cases']} case(s), "
                     f"{m['n_errors']} error(s); finding {finding}; mean [95% CI], n = scored "
                     f"values; delta = paired difference to the best baseline")
        if not len(sub):
            lines.append("  (nothing scored)")
            lines.append("")
            continue
        methods = list(dict.fromkeys(sub["method"]))
        kinds = dict(zip(sub["method"], sub["kind"]))
        width = max(14, *(len(x) + (10 if kinds[x] == "baseline" else 0) for x in methods))
        head = (f"  {'method':<{width}}  " + "  ".join(
            f"{c[0]:<22}" if c[3] else f"{c[0]:>11}" for c in cols)
            + f"  {'delta ' + cols[0][0]:<26}{'n':>5}")
        lines.append(head)
        for meth in methods:
            r = sub[sub["method"] == meth]
            cells = []
            n_val = ""
            delta = "-"
            for _lab, met, ru, ci in cols:
                x = r[(r["metric"] == met) & (r["rule"] == ru)]
                if not len(x):
                    cells.append(f"{'-':<22}" if ci else f"{'-':>11}")
                    continue
                x0 = x.iloc[0]
                txt = _cell(x0["mean"], x0["ci_low"], x0["ci_high"], ci)
                cells.append(f"{txt:<22}" if ci else f"{txt:>11}")
                if ci:
                    n_val = str(x0["n"])
                    if kinds[meth] != "baseline" or x0["baseline"] != meth:
                        delta = _cell(x0["diff_vs_baseline"], x0["diff_ci_low"], x0["diff_ci_high"],
                                      True)
                        if delta != "-" and x0["baseline"]:
                            delta += f" vs {x0['baseline']}"
            label = f"baseline: {meth}" if kinds[meth] == "baseline" else meth
            lines.append(f"  {label:<{width}}  " + "  ".join(cells) + f"  {delta:<26}{n_val:>5}")
        lines.append("")
    best = models[models["best_model"] == True]  # noqa: E712
    if len(best):
        b = best.iloc[0]
        val = _cell(b["mean"], b["ci_low"], b["ci_high"], True)
        lines.append(f"best model: {b['model']} ({headline} {val} with {b['best_method']})")
    for n in notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ============================================================================ the run
def _load_adapter(mc: Any) -> Any:
    from ..adapters.loading import load_model

    kw: dict[str, Any] = {"labels": list(mc.labels) if mc.labels else None,
                          "multi_label": mc.multi_label, "device": mc.device}
    if mc.weights is not None:
        kw["weights"] = mc.weights
    if mc.img_size is not None and str(mc.spec).startswith("timm:"):
        kw["img_size"] = mc.img_size
    return load_model(mc.spec, **kw)


def _err_text(e: BaseException) -> str:
    msg = str(e).replace("\n", " ").strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _case_err(case: Any, e: BaseException) -> str:
    """Error text for ``errors.csv`` with the case's file path replaced by its pseudonymous id
    (the CSV is shared with reviewers; file names stay on the server)."""
    msg = _err_text(e)
    for p in sorted({str(getattr(case, "path", "") or ""), _safe_file_path(case)}, key=len,
                    reverse=True):
        if p:
            msg = msg.replace(p, f"<{case.case_id}>")
    return msg


def _safe_file_path(case: Any) -> str:
    try:
        return str(case.file_path)
    except Exception:
        return ""


def run_benchmark(cfg: Any, out_dir: str | os.PathLike | None = None, *,
                  methods: Any = None, models: Sequence[ModelEntry] | None = None,
                  resume: bool = True, progress: bool = True, adapters: dict[str, Any] | None = None,
                  **overrides: Any) -> BenchmarkResult:
    """Run the benchmark described by ``cfg`` and write its outputs to ``out_dir``.

    Args:
        cfg: a ``vitx.toml`` path, a :class:`~vitx_core.data.config.VitxConfig` or a
            :class:`BenchmarkConfig`.
        out_dir: output folder (default ``[output] dir / "benchmark"``, else ``runs/benchmark``).
        methods: explainers (as :func:`vitx_core.build_explainers` takes them; Explainer
            instances too); default ``[explainers]`` of the config.
        models: override the sweep (default ``[[models]]``, else ``[model]``).
        resume: continue an interrupted run with the same settings (False: start over; the grid
            cache is kept either way).
        progress: tqdm progress bar on stderr (rate and ETA).
        adapters: ``{model name: VitAdapter}`` already loaded (tests, notebooks).
        **overrides: any :class:`BenchmarkSettings` field.

    Returns:
        :class:`BenchmarkResult`; ``per_case.csv``, ``summary.csv``, ``models.csv``,
        ``errors.csv``, ``run.json``, ``progress.jsonl`` (+ ``figures/``, ``attention/``) in
        ``out_dir``.
    """
    from tqdm import tqdm

    from .. import __version__
    from ..api import build_explainers
    from ..data.cohort import load_cohort_from_config

    bc = as_benchmark_config(cfg)
    if overrides:
        unknown = set(overrides) - set(BenchmarkSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown benchmark option(s) {sorted(unknown)}")
        bc = replace(bc, settings=replace(bc.settings, **overrides))
    errs = bc.settings.check()
    if errs:
        raise BenchmarkError("invalid benchmark settings:\n  " + "\n  ".join(errs))
    s = bc.settings
    vc = bc.vitx
    if out_dir is None:
        out_dir = (Path(vc.output.dir) / "benchmark") if vc.output.dir else Path("runs/benchmark")
    out = Path(out_dir)
    entries = tuple(models) if models is not None else bc.model_entries()
    names = [m.name for m in entries]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"model names must be unique, got {names}")
    explainers = build_explainers(methods if methods is not None else vc.explainers.methods_arg())
    protocol, headline, tuned = protocol_from_config(bc)

    cohort = load_cohort_from_config(vc)
    cases = list(cohort.cases)[: s.max_cases] if s.max_cases else list(cohort.cases)
    case_ids = [c.case_id for c in cases]
    notes = [f"cohort: {e}" for e in cohort.errors]

    run_info = {
        "vitx_version": __version__,
        "cases": [[c.case_id, list(c.size_hw)] for c in cases],
        "models": [{"name": m.name, "spec": str(m.model.spec),
                    "weights": str(m.model.weights) if m.model.weights else None,
                    "labels": list(m.model.labels) if m.model.labels else None,
                    "img_size": m.model.img_size, "multi_label": m.model.multi_label}
                   for m in entries],
        "methods": [[e.name, e.params_json] for e in explainers],
        "protocol": protocol.to_dict(),
        "tuned": sorted([[*list(map(str, k)), v] for k, v in (tuned or {}).items()]),
        "settings": {k: getattr(s, k) for k in (
            "targets", "full_set", "baselines", "gaussian_sigma", "prior_canvas", "faithfulness",
            "faithfulness_steps", "faithfulness_baseline", "faithfulness_score", "randomisation",
            "randomisation_cases", "dice", "seed")},
        "findings": list(cohort.findings),
    }
    fingerprint = _digest(run_info)
    journal = _Journal(out, fingerprint, resume, run_info)
    if journal.resumed:
        notes.append(f"resumed: {len(journal.done)} case(s) already done")
    elif journal.restarted:
        notes.append("the previous run in this folder had other settings (or was damaged): "
                     "started over (cached grids are reused)")

    # the leave-one-out prior needs every case's masks first (one canvas per finding in memory)
    prior = MaskPrior(tuple(s.prior_canvas)) if "prior" in s.baselines else None
    members: set[tuple[str, str]] = set()
    if prior is not None:
        for c in cases:
            for f in cohort.findings:
                try:
                    m = c.mask(f)
                except Exception as e:  # unreadable mask: noted, left out of the prior
                    notes.append(f"prior: case {c.case_id} {f}: {_err_text(e)}")
                    continue
                if m is not None and m.any():
                    prior.add(f, m)
                    members.add((c.case_id, f))

    statuses: dict[str, dict[str, Any]] = {}
    total = len(entries) * len(cases)
    bar = tqdm(total=total, initial=len(journal.done), unit="case", desc="benchmark",
               file=sys.stderr, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    hashes: dict[str, str] = {}
    try:
        for entry in entries:
            st: dict[str, Any] = {"status": "ok", "n_cases": len(cases), "n_errors": 0}
            statuses[entry.name] = st
            bar.set_postfix_str(entry.name)
            try:
                adapter = (adapters or {}).get(entry.name) or _load_adapter(entry.model)
            except Exception as e:
                st.update(status="failed", error=_err_text(e), n_cases=0)
                if (entry.name, "") not in journal.done:
                    journal.commit(entry.name, "", [], [[entry.name, "", "load_model", _err_text(e)]])
                todo = sum(1 for c in cases if (entry.name, c.case_id) not in journal.done)
                bar.update(todo)
                continue
            st["version"] = adapter.version
            if not journal.model_version(entry.name, adapter.version):
                raise BenchmarkError(
                    f"model {entry.name!r}: its weights changed since the interrupted run "
                    "(different hash); run again with resume=False / --fresh")
            fmap = {}
            finding_of = {}
            low = {lab.casefold(): i for i, lab in enumerate(adapter.labels)}
            for f in cohort.findings:
                if f.casefold() in low:
                    fmap[f] = low[f.casefold()]
                    finding_of[low[f.casefold()]] = f
            missing = [f for f in cohort.findings if f not in fmap]
            if missing and s.targets != "predicted":
                notes.append(f"model {entry.name}: no class for finding(s) {missing}; not scored")
            cache_root = s.cache_dir or (out / "cache")
            ctx = _Context(adapter, entry.name, explainers, list(cohort.findings), fmap, finding_of,
                           s, protocol, tuned, GridCache(cache_root, adapter.version,
                                                         adapter.preprocess.to_dict()),
                           prior, members, hashes, out, out / "figures", vc.output)
            bs = s.batch_size or (max(16, vc.explainers.batch_size)
                                  if getattr(adapter.device, "type", "cpu") == "cuda"
                                  else vc.explainers.batch_size)
            if s.attention_gif:
                _attention_gif(ctx, cases, notes)
            for start in range(0, len(cases), bs):
                batch = cases[start:start + bs]
                todo = [c for c in batch if (entry.name, c.case_id) not in journal.done]
                if not todo:
                    continue
                try:
                    results = _explain_batch(ctx, batch)
                except Exception as e:  # the whole batch failed even case by case
                    results = {c.case_id: e for c in batch}
                for c in todo:
                    i = start + batch.index(c)
                    r = results.get(c.case_id)
                    rows: list[list[Any]] = []
                    errs_rows: list[list[Any]] = []
                    if isinstance(r, BaseException) or r is None:
                        errs_rows.append([entry.name, c.case_id, "explain",
                                          _case_err(c, r) if r is not None else "not explained"])
                    else:
                        try:
                            rows = _score_case(ctx, r, i)
                        except Exception as e:
                            rows = []
                            errs_rows.append([entry.name, c.case_id, "score", _case_err(c, e)])
                    journal.commit(entry.name, c.case_id, rows, errs_rows)
                    bar.update(1)
            st["cache_hits"], st["cache_misses"] = ctx.cache.hits, ctx.cache.misses
    finally:
        bar.close()
        journal.close()

    import pandas as pd

    err_df = pd.read_csv(journal.errors, dtype=str, keep_default_na=False)
    for name, st in statuses.items():
        sub = err_df[err_df["model"] == name]
        st["n_errors"] = int((sub["case_id"] != "").sum())
        if st["status"] == "ok" and len(sub) and st["n_errors"] >= len(cases):
            st["status"] = "failed"
            st["error"] = sub.iloc[0]["error"]
        elif st["status"] == "ok" and st["n_errors"]:
            st["status"] = "partial"
            st["error"] = sub.iloc[0]["error"]
        if st["status"] == "failed" and not st.get("error") and len(sub):
            st["error"] = sub.iloc[0]["error"]
    summary = summarise_per_case(journal.per_case, case_ids, n_boot=s.n_boot, seed=s.seed, ci=s.ci,
                                 ci_method=s.ci_method, findings=cohort.findings)
    summary_csv = out / "summary.csv"
    _write_frame(summary, summary_csv, SUMMARY_COLUMNS)
    mt = models_table(summary, statuses, headline)
    models_csv = out / "models.csv"
    _write_frame(mt, models_csv, MODEL_COLUMNS)
    return BenchmarkResult(out, journal.per_case, summary_csv, models_csv, journal.errors, summary,
                           mt, headline, len(cases), statuses, journal.resumed, notes)


def _attention_gif(ctx: _Context, cases: Sequence[Any], notes: list[str]) -> None:
    from .panels import attention_gif

    want = ctx.settings.attention_gif
    case = None
    if isinstance(want, str):
        case = next((c for c in cases if c.case_id == want), None)
        if case is None:
            notes.append(f"attention_gif: no case {want!r} in the cohort")
            return
    else:
        case = next((c for c in cases if _case_targets(ctx, c) != []), cases[0] if cases else None)
    if case is None:
        return
    try:
        path = ctx.out / "attention" / f"{_slug(ctx.model_name)}__{case.case_id}.gif"
        attention_gif(ctx.adapter, case.load_image().pixels, path, title=case.case_id,
                      cmap=getattr(ctx.output_cfg, "cmap", "jet"),
                      alpha=getattr(ctx.output_cfg, "alpha", 0.5))
        notes.append(f"attention GIF: {path}")
    except Exception as e:  # a figure must not stop the benchmark
        notes.append(f"attention_gif failed for {case.case_id}: {_err_text(e)}")


__all__ = [
    "ALL_FINDINGS",
    "MODEL_COLUMNS",
    "PER_CASE_COLUMNS",
    "SUMMARY_COLUMNS",
    "TARGET_MODES",
    "BenchmarkConfig",
    "BenchmarkError",
    "BenchmarkResult",
    "BenchmarkSettings",
    "ModelEntry",
    "as_benchmark_config",
    "format_summary",
    "load_benchmark_config",
    "models_table",
    "protocol_from_config",
    "run_benchmark",
    "settings_from_dict",
    "summarise_per_case",
]
