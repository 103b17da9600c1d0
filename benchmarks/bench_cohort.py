"""Cohort benchmark figures: throughput on the sample cohort and peak memory vs cohort size.

1. **Throughput** -- ``run_benchmark`` on the bundled sample cohort (``sample_data/vitx.toml``)
   with every one-pass explainer and the three baselines: *cold* (empty grid cache: engine pass +
   scoring + summary) and *warm* (every grid from the cache: scoring + summary only), as cases
   per second.
2. **Memory** -- ``generate_sample_cohort`` writes N phantom cases (default 40 and 400) into a
   temporary folder; each N runs ``run_benchmark`` in a FRESH subprocess that reports its peak
   resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the ``tracemalloc`` peak of
   Python / NumPy allocations during the run. A streaming runner keeps both roughly flat.

The model is the bundled demo model when ``sample_data/models/demo`` exists, else a random-init
model of the same architecture (timm ``vit_tiny_patch16_224``, 160 x 144 input, depth 4, 4
multi-label classes) saved to a temporary folder: the same cost, meaningless maps.

    .venv/bin/python benchmarks/bench_cohort.py                       # both parts
    .venv/bin/python benchmarks/bench_cohort.py --sizes 40 400 --threads 2 --json /tmp/c.json
    .venv/bin/python benchmarks/bench_cohort.py --skip-memory         # throughput only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def model_spec(tmp: Path) -> tuple[str, str]:
    """(spec, description): the demo model if present, else a same-size random stand-in."""
    from vitx_core.adapters.loading import demo_model_dir

    if (demo_model_dir() / "model.json").is_file():
        return str(demo_model_dir()), "bundled demo model"
    import timm

    import vitx_core as vx
    from vitx_core.data import FINDINGS

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=len(FINDINGS),
                          img_size=(160, 144), depth=4).eval()
    ad = vx.adapter_from_module(m, labels=list(FINDINGS), multi_label=True)
    d = tmp / "stand_in_model"
    vx.save_model_dir(ad, d, description="random-init stand-in for the demo model (benchmark)")
    return str(d), "random-init stand-in (demo architecture; the demo model was not found)"


def write_config(path: Path, cohort: Path, spec: str, methods: list[str], batch: int) -> Path:
    path.write_text(f"""
[cohort]
root = "{cohort / 'images'}"
labels_csv = "{cohort / 'labels.csv'}"

[[ground_truth]]
format = "chexlocalize"
path = "{cohort / 'gt_segmentations.json'}"

[model]
spec = "{spec}"

[explainers]
methods = {json.dumps(methods)}
batch_size = {batch}

[evaluation]
threshold_rule = "otsu"
thresholds = [0.3, 0.5, 0.7]
""")
    return path


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints one JSON line."""
    import resource
    import tracemalloc

    # import every library the run touches first, so the figures measure the run, not imports
    import pandas  # noqa: F401
    import pydicom  # noqa: F401
    import scipy.ndimage
    import scipy.stats  # noqa: F401
    import timm  # noqa: F401
    import torch

    import vitx_core.data
    import vitx_core.metrics.faithfulness  # noqa: F401
    from vitx_core.benchmark import run_benchmark

    def maxrss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    import vitx_core.benchmark.runner as runner

    phases: dict[str, float] = {}
    summarise = runner.summarise_per_case

    def timed_summary(*a, **kw):  # split the figures: explain + score phase vs summary phase
        phases["rss_before_summary_mib"] = maxrss_mib()
        if args.tracemalloc:
            phases["tracemalloc_peak_explain_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.reset_peak()
        out = summarise(*a, **kw)
        if args.tracemalloc:
            phases["tracemalloc_peak_summary_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        return out

    runner.summarise_per_case = timed_summary
    torch.set_num_threads(args.threads)
    base = maxrss_mib()
    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    res = run_benchmark(args.child_config, args.child_out, progress=False, n_boot=args.n_boot)
    dt = time.perf_counter() - t0
    peak_tm = max(phases.get("tracemalloc_peak_explain_mib", 0.0),
                  phases.get("tracemalloc_peak_summary_mib", 0.0)) if args.tracemalloc else None
    with open(res.per_case_csv, "rb") as fh:
        rows = sum(1 for _ in fh) - 1
    peak = maxrss_mib()
    print(json.dumps({"n_cases": res.n_cases, "seconds": dt, "rows": rows,
                      "rss_after_imports_mib": base, "maxrss_mib": peak,
                      "run_rss_growth_mib": peak - base, "tracemalloc_peak_mib": peak_tm,
                      **phases, "exit_code": res.exit_code}))


def run_child(cfg: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-config", str(cfg),
           "--child-out", str(out), "--threads", str(args.threads), "--n-boot", str(args.n_boot)]
    if args.tracemalloc:
        cmd.append("--tracemalloc")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace, tmp: Path, spec: str) -> dict:
    import torch

    from vitx_core.benchmark import run_benchmark
    from vitx_core.registry import default_methods

    torch.set_num_threads(args.threads)
    cfg = write_config(tmp / "sample.toml", REPO / "sample_data" / "cohort", spec,
                       default_methods(), args.batch_size)
    out = tmp / "throughput"
    cache = tmp / "throughput_cache"
    t0 = time.perf_counter()
    cold = run_benchmark(cfg, out, progress=False, resume=False, cache_dir=cache,
                         n_boot=args.n_boot, max_cases=args.max_cases)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = run_benchmark(cfg, out, progress=False, resume=False, cache_dir=cache,
                         n_boot=args.n_boot, max_cases=args.max_cases)
    t_warm = time.perf_counter() - t0
    n = cold.n_cases
    return {"n_cases": n, "methods": default_methods(), "cold_s": t_cold, "warm_s": t_warm,
            "cold_cases_per_s": n / t_cold, "warm_cases_per_s": n / t_warm,
            "cache_misses_cold": cold.statuses[next(iter(cold.statuses))].get("cache_misses"),
            "cache_hits_warm": warm.statuses[next(iter(warm.statuses))].get("cache_hits")}


def memory(args: argparse.Namespace, tmp: Path, spec: str) -> list[dict]:
    from vitx_core.data.phantoms import generate_sample_cohort
    from vitx_core.registry import default_methods

    out = []
    for n in args.sizes:
        coh = tmp / f"cohort_{n}"
        t0 = time.perf_counter()
        generate_sample_cohort(coh, seed=1, n_cases=n, broken=False)
        gen_s = time.perf_counter() - t0
        cfg = write_config(tmp / f"mem_{n}.toml", coh, spec, default_methods(), args.batch_size)
        r = run_child(cfg, tmp / f"mem_out_{n}", args)
        r["generate_s"] = gen_s
        out.append(r)
        tm = r["tracemalloc_peak_mib"]
        tm_txt = "-" if tm is None else (
            f"{r['tracemalloc_peak_explain_mib']:.1f} MiB explain+score, "
            f"{r['tracemalloc_peak_summary_mib']:.1f} MiB summary")
        print(f"  {n} cases: {r['seconds']:.1f} s, {r['rows']} per-case rows; peak RSS "
              f"{r['maxrss_mib']:.0f} MiB ({r['rss_after_imports_mib']:.0f} MiB after imports, "
              f"+{r['run_rss_growth_mib']:.0f} MiB during the run); tracemalloc peak {tm_txt}",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 400])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--max-cases", type=int, default=None, help="throughput: first N sample cases")
    ap.add_argument("--tracemalloc", action=argparse.BooleanOptionalAction, default=True,
                    help="also trace Python/NumPy allocations (slower)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_config:
        child(args)
        return
    report: dict = {"threads": args.threads, "batch_size": args.batch_size, "n_boot": args.n_boot}
    with tempfile.TemporaryDirectory(prefix="vitx-bench-cohort-") as t:
        tmp = Path(t)
        spec, desc = model_spec(tmp)
        report["model"] = desc
        print(f"model: {desc}; {args.threads} thread(s), batch {args.batch_size}", flush=True)
        if not args.skip_throughput:
            r = throughput(args, tmp, spec)
            report["throughput"] = r
            print(f"sample cohort, {r['n_cases']} cases, {len(r['methods'])} one-pass explainers "
                  f"+ 3 baselines: cold {r['cold_s']:.1f} s ({r['cold_cases_per_s']:.2f} cases/s), "
                  f"warm cache {r['warm_s']:.1f} s ({r['warm_cases_per_s']:.2f} cases/s)", flush=True)
        if not args.skip_memory:
            print("peak memory per run (fresh subprocess each):", flush=True)
            report["memory"] = memory(args, tmp, spec)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
