"""``python -m vitx_core benchmark --config vitx.toml``: the cohort benchmark from the command line.

Registered with :func:`vitx_core.cli.command` when ``vitx_core.benchmark.commands`` is listed in
``vitx_core.cli.COMMAND_MODULES``::

    python -m vitx_core benchmark --config sample_data/vitx.toml
    python -m vitx_core benchmark --config vitx.toml --out runs/bench --methods rollout,gradcam \\
        --targets predicted --panels --overlays --attention-gif --n-boot 2000
    python -m vitx_core benchmark --config vitx.toml --faithfulness --randomisation cascading

Prints the summary table (stdout; progress bar on stderr) and exits 0 when every model and case
ran, 1 when some failed (each listed in ``errors.csv``; the others are still scored), 2 on usage
errors (bad config, unknown method), 130 when interrupted (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli import UsageError, command, methods_with_options


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="TOML",
                   help="vitx.toml (with optional [benchmark] and [[models]] tables)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: [output] dir / benchmark)")
    p.add_argument("--methods", metavar="LIST",
                   help="explainers (comma-separated keys, 'default', 'all'); default: [explainers]")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.OPT=VALUE",
                   help="explainer option (repeatable; needs --methods)")
    p.add_argument("--targets", choices=["present", "predicted", "all"],
                   help="explain each present finding (default), the predicted class, or every "
                        "finding with a known label (full set)")
    p.add_argument("--full-set", action="store_true",
                   help="with --targets predicted: also score absent predicted findings")
    p.add_argument("--max-cases", type=int, metavar="N", help="only the first N cases")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per engine pass")
    p.add_argument("--n-boot", type=int, metavar="N", help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, help="bootstrap / randomisation seed (default 0)")
    p.add_argument("--ci-method", choices=["percentile", "chexlocalize"],
                   help="CI convention (default percentile)")
    p.add_argument("--headline", metavar="METRIC:RULE",
                   help="metric ranking methods and models (default iou:<threshold_rule>)")
    p.add_argument("--overlays", action="store_true", help="write heatmap overlays (first cases)")
    p.add_argument("--panels", action="store_true",
                   help="write threshold panels (image, map, binarised maps with IoU)")
    p.add_argument("--max-panel-cases", type=int, metavar="N",
                   help="cases with overlays / panels (default 12)")
    p.add_argument("--attention-gif", nargs="?", const=True, default=None, metavar="CASE_ID",
                   help="per-block raw-attention GIF for one case (default: first case with a target)")
    p.add_argument("--faithfulness", action="store_true",
                   help="deletion / insertion curves (extra forward passes)")
    p.add_argument("--randomisation", choices=["none", "cascading", "full"],
                   help="model-parameter randomisation check (Spearman per method)")
    p.add_argument("--cache-dir", metavar="DIR", help="grid cache (default OUT/cache)")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of resuming an interrupted run (the cache is kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("benchmark", "explain a cohort with every selected explainer, score localisation against "
         "the ground truth with baselines and bootstrap CIs, write per_case.csv / summary.csv",
         _configure)
def run_benchmark_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.config import ConfigError
    from .runner import BenchmarkError, load_benchmark_config, run_benchmark

    try:
        bc = load_benchmark_config(args.config)
    except (ConfigError, BenchmarkError) as e:
        raise UsageError(str(e)) from None
    methods: Any = None
    if args.option and not args.methods:
        raise UsageError("--option needs --methods (name the explainers it applies to)")
    if args.methods:
        methods = methods_with_options(args.methods, args.option)
    over: dict[str, Any] = {}
    for k in ("targets", "max_cases", "batch_size", "n_boot", "seed", "ci_method", "headline",
              "max_panel_cases", "randomisation"):
        v = getattr(args, k)
        if v is not None:
            over[k] = v
    for k in ("full_set", "overlays", "panels", "faithfulness"):
        if getattr(args, k):
            over[k] = True
    if args.attention_gif is not None:
        over["attention_gif"] = args.attention_gif
    if args.cache_dir:
        over["cache_dir"] = Path(args.cache_dir)
    try:
        res = run_benchmark(bc, args.out, methods=methods, resume=not args.fresh,
                            progress=not args.no_progress, **over)
    except (BenchmarkError, KeyError, TypeError) as e:
        raise UsageError(str(e.args[0] if e.args else e)) from None
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    print(res.format_table())
    print(f"\nwrote {res.per_case_csv}, {res.summary_csv}, {res.models_csv}, {res.errors_csv}",
          file=sys.stderr)
    return res.exit_code
