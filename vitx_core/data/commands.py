"""Command-line commands of the data layer: ``sample-data`` and ``cohort``.

Registered with :func:`vitx_core.cli.command` when ``vitx_core.data.commands`` is listed in
``vitx_core.cli.COMMAND_MODULES``::

    python -m vitx_core sample-data [--out DIR] [--seed N] [--n-cases N] [--no-broken]
    python -m vitx_core cohort --config vitx.toml [--json]
    python -m vitx_core cohort --root DIR [--gt PATH [--gt-format FMT]] [--labels CSV] ...

``cohort`` prints a summary (cases, formats, per-finding labels and annotations, every error with
its reason) and exits 0 when nothing was skipped, 1 when some inputs were (they are listed), 2 on
usage errors (bad config, missing folder).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import UsageError, command


def _configure_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="sample_data/cohort", metavar="DIR",
                   help="output folder (default sample_data/cohort)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--n-cases", type=int, default=48, metavar="N", help="number of cases (default 48)")
    p.add_argument("--no-broken", action="store_true",
                   help="do not write the broken/ folder of intentionally unreadable files")


@command("sample-data", "write the synthetic phantom cohort (images, CheXlocalize GT, boxes, labels)",
         _configure_sample)
def run_sample_data(args: argparse.Namespace) -> int:
    from .phantoms import generate_sample_cohort

    if args.n_cases < 1:
        raise UsageError("--n-cases must be >= 1")
    if args.seed < 0:
        raise UsageError("--seed must be >= 0")
    try:
        manifest = generate_sample_cohort(args.out, seed=args.seed, n_cases=args.n_cases,
                                          broken=not args.no_broken)
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote {manifest['n_cases']} case(s) to {args.out} (seed {manifest['seed']}; {counts}; "
          f"{len(manifest['broken'])} broken file(s))")
    return 0


def _configure_cohort(p: argparse.ArgumentParser) -> None:
    from .annotations import GT_FORMATS

    p.add_argument("--config", metavar="TOML", help="vitx.toml (other options then not allowed)")
    p.add_argument("--root", metavar="DIR", help="image folder")
    p.add_argument("--gt", action="append", default=[], metavar="PATH",
                   help="ground truth file / mask folder (repeatable)")
    p.add_argument("--gt-format", action="append", default=[], choices=GT_FORMATS, metavar="FMT",
                   help=f"format of each --gt ({', '.join(GT_FORMATS)}; default auto)")
    p.add_argument("--ref-size", metavar="HxW", help="size the boxes were drawn on (e.g. 1024x1024)")
    p.add_argument("--finding", help="finding name for single-finding ground truth")
    p.add_argument("--labels", metavar="CSV", help="labels CSV")
    p.add_argument("--maps", action="append", default=[], metavar="DIR",
                   help="external saliency map folder (repeatable)")
    p.add_argument("--max-images", type=int, metavar="N")
    p.add_argument("--no-recursive", action="store_true", help="only the top folder")
    p.add_argument("--verify", action="store_true", help="also decode every image (slow)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def _ref_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    import re

    toks = [t for t in re.split(r"[x×,]", text.lower()) if t.strip()]
    try:
        nums = [int(t) for t in toks]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or min(nums) <= 0:
        raise UsageError(f"--ref-size {text!r}: expected HxW or one size (positive integers)")
    return (nums[0], nums[-1])


@command("cohort", "index a cohort (images, ground truth, labels) and print a summary with every "
         "skipped input and its reason", _configure_cohort)
def run_cohort(args: argparse.Namespace) -> int:
    from .annotations import GTSpec
    from .cohort import load_cohort, load_cohort_from_config
    from .config import ConfigError, load_config

    if args.config:
        others = [o for o, v in (("--root", args.root), ("--gt", args.gt), ("--labels", args.labels),
                                 ("--maps", args.maps), ("--gt-format", args.gt_format),
                                 ("--max-images", args.max_images)) if v]
        if others:
            raise UsageError(f"--config cannot be combined with {', '.join(others)}")
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise UsageError(str(e)) from None
        try:
            cohort = load_cohort_from_config(cfg)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    else:
        if not args.root:
            raise UsageError("give --config TOML or --root DIR")
        if len(args.gt_format) > len(args.gt) or (len(args.gt_format) > 1
                                                   and len(args.gt_format) != len(args.gt)):
            raise UsageError("give one --gt-format per --gt (or one for all)")
        fmts = args.gt_format if len(args.gt_format) == len(args.gt) else (
            args.gt_format * len(args.gt) if args.gt_format else ["auto"] * len(args.gt))
        try:
            specs = [GTSpec(p, format=f, finding=args.finding, ref_size=_ref_size(args.ref_size))
                     for p, f in zip(args.gt, fmts)]
            cohort = load_cohort(args.root, gt=specs, labels_csv=args.labels, maps=args.maps or None,
                                 recursive=not args.no_recursive, max_images=args.max_images,
                                 verify=args.verify)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(cohort.summary(), indent=2))
    else:
        print(cohort.format_summary())
    if cohort.errors:
        print(f"{len(cohort.errors)} input(s) skipped (listed above)", file=sys.stderr)
    return 1 if cohort.errors else 0
