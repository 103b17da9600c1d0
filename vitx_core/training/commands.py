"""CLI: ``python -m vitx_core train ...`` and ``python -m vitx_core train-demo ...`` (thin layer over
:func:`vitx_core.training.train` and :func:`vitx_core.training.train_demo`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..cli import PROG, UsageError, command, parse_img_size, parse_value


# ---- train -----------------------------------------------------------------------------------
def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR",
                   help="class folders (DIR/train|val|test/<class>/ or DIR/<class>/), or the image "
                        "folder of --labels-csv")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="timm:<arch> (random init unless --weights) or hf:<dir> (local "
                        "save_pretrained ViT)")
    p.add_argument("--weights", metavar="FILE",
                   help="initial state dict for timm:<arch> (.safetensors/.pth); a head of another "
                        "size is replaced, position embeddings are resampled")
    p.add_argument("--img-size", nargs="+", metavar="SIZE",
                   help="model input for timm:<arch>: 'H W', 'HxW' or one number")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument, repeatable (depth=6, patch_size=8)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="vitx model directory to write")
    p.add_argument("--epochs", type=int, default=10, metavar="N")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--lr", type=float, default=5e-4, metavar="F")
    p.add_argument("--weight-decay", type=float, default=0.05, metavar="F")
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="LR schedule after the warmup (default cosine)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, metavar="F")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--balance", action="store_true",
                   help="class-balanced weighted sampler for the training split (seeded)")
    p.add_argument("--patience", type=int, default=5, metavar="N",
                   help="early stopping: evaluations without a better val AUROC (0 = off)")
    p.add_argument("--labels-csv", metavar="CSV",
                   help="labels: an image column + one 0/1 column per class (multi-label); "
                        "optional 'split' column")
    p.add_argument("--image-col", metavar="C", help="CSV column naming the image (path or stem)")
    p.add_argument("--patient-col", metavar="P", help="CSV column with the patient id")
    p.add_argument("--patient-regex", metavar="REGEX",
                   help="patient id from the file name (first group or whole match)")
    p.add_argument("--classes", metavar="A,B,...", help="class folders / CSV columns to use")
    p.add_argument("--multi-label", action="store_true",
                   help="sigmoid head (default for CSV labels; class folders: softmax)")
    p.add_argument("--val-frac", type=float, default=0.15, metavar="F")
    p.add_argument("--test-frac", type=float, default=0.15, metavar="F")
    p.add_argument("--hflip", type=float, default=0.0, metavar="P",
                   help="horizontal flip probability (default 0: chest anatomy is lateralised)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    p.add_argument("--resize-mode", choices=["resize", "letterbox"], default=None,
                   help="preprocessing mode stored with the model (default: resize)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps")
    p.add_argument("--max-minutes", type=float, metavar="F", help="wall-clock budget")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader workers")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--description", default="", help="model card description")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _model_args(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--model-arg {it!r}: expected KEY=VALUE (e.g. depth=6)")
        out[k.strip()] = parse_value(v)
    return out


@command("train", "fine-tune a ViT classifier on labelled images; write a vitx model directory "
         "with a test report", _configure_train)
def run_train(args: argparse.Namespace) -> int:
    from .augment import AugmentConfig
    from .data import DataError
    from .fit import TrainConfig
    from .pipeline import train

    spec = str(args.model)
    if not spec.startswith(("timm:", "hf:")):
        raise UsageError(f"--model must be timm:<arch> or hf:<dir>, got {spec!r}")
    if args.weights and not spec.startswith("timm:"):
        raise UsageError("--weights applies to timm:<arch> models only")
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"weights file not found: {args.weights}")
    if spec.startswith("hf:") and not Path(spec[3:]).is_dir():
        raise UsageError(f"Hugging Face model directory not found: {spec[3:]}")
    if args.img_size and not spec.startswith("timm:"):
        raise UsageError("--img-size applies to timm:<arch> models only")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UsageError("--epochs and --batch-size must be >= 1, --lr > 0")
    if not 0 <= args.hflip <= 1:
        raise UsageError("--hflip must lie in [0, 1]")
    if not Path(args.data).exists():
        raise UsageError(f"data folder not found: {args.data}")
    img_size = parse_img_size(args.img_size) if args.img_size else None
    augment = None if args.no_augment else AugmentConfig(hflip=args.hflip)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, schedule=args.schedule,
                      warmup_epochs=args.warmup_epochs, balance=args.balance,
                      patience=args.patience, seed=args.seed, augment=augment,
                      max_steps=args.max_steps, max_minutes=args.max_minutes,
                      num_workers=args.workers, threads=args.threads, progress=not args.quiet)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        res = train(args.data, spec, args.out, config=cfg, weights=args.weights,
                    img_size=img_size, model_kwargs=_model_args(args.model_arg) or None,
                    preprocess={"mode": args.resize_mode} if args.resize_mode else None,
                    labels_csv=args.labels_csv, image_col=args.image_col,
                    patient_col=args.patient_col, patient_regex=args.patient_regex,
                    classes=classes, multi_label=True if args.multi_label else None,
                    val_frac=args.val_frac, test_frac=args.test_frac,
                    description=args.description, device=args.device,
                    command=shlex.join([*PROG.split(), *sys.argv[1:]]) if sys.argv[1:2] == ["train"]
                    else None)
    except DataError as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{type(e).__name__}: {e}") from None
    m = res.metrics
    aurocs = ", ".join(f"{c} {v['auroc']:.3f}" if v["auroc"] is not None and v["auroc"] == v["auroc"]
                       else f"{c} n/a" for c, v in m["per_class"].items())
    print(f"{PROG} train: {res.fit.steps} steps ({res.fit.stop_reason}); best val AUROC "
          f"{res.fit.best_metric:.4f} at step {res.fit.best_step}", file=sys.stderr)
    print(f"{PROG} train: {m['split']} AUROC: {aurocs}; macro {m['macro']['auroc']:.4f}",
          file=sys.stderr)
    print(str(res.model_dir))
    return 0


# ---- train-demo ------------------------------------------------------------------------------
def _configure_demo(p: argparse.ArgumentParser) -> None:
    from .demo import DEFAULT_OUT

    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                   help="model directory to write (default sample_data/models/demo)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed (0-499, default 0)")
    p.add_argument("--minutes", type=float, default=None, metavar="N",
                   help="wall-clock cap of the training loop (default from the demo config); the "
                        "cosine schedule is compressed to end in time on a slow machine")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimiser steps (default from the demo config)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default 2)")
    p.add_argument("--cohort", default=None, metavar="DIR",
                   help="cohort for the pointing game (default sample_data/cohort)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command("train-demo", "train the bundled demo ViT on synthetic phantoms (CPU, minutes) and report "
         "test AUROC and the pointing game on the sample cohort", _configure_demo)
def run_train_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .demo import DEFAULT_COHORT, DemoConfig, train_demo

    cfg = DemoConfig()
    if args.minutes is not None:
        if args.minutes <= 0:
            raise UsageError("--minutes must be > 0")
        cfg = replace(cfg, minutes=args.minutes)
    if args.steps is not None:
        if args.steps < 1:
            raise UsageError("--steps must be >= 1")
        cfg = replace(cfg, steps=args.steps)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be >= 1")
        cfg = replace(cfg, threads=args.threads)
    if not 0 <= args.seed < 500:
        raise UsageError("--seed must be in [0, 500)")
    cohort = Path(args.cohort) if args.cohort else DEFAULT_COHORT
    if not (cohort / "gt_segmentations.json").is_file():
        raise UsageError(f"no gt_segmentations.json in cohort folder {cohort}")
    cmd = [*PROG.split(), "train-demo"]
    for flag, val, default in (("--out", args.out, None), ("--seed", args.seed, 0),
                               ("--minutes", args.minutes, None), ("--steps", args.steps, None),
                               ("--threads", args.threads, None), ("--cohort", args.cohort, None)):
        if val is not None and val != default:
            if flag == "--out":
                from .demo import _rel

                val = _rel(val)
                if val == "sample_data/models/demo":
                    continue
            cmd += [flag, str(val)]
    out = train_demo(args.out, seed=args.seed, config=cfg, cohort_dir=cohort,
                     progress=not args.quiet, command=shlex.join(cmd))
    st = out.metrics["synthetic_test"]
    pg = out.metrics["cohort_pointing_game"]
    print(json.dumps({"synthetic_test_auroc": st["auroc"], "pointing_game": pg["hit_rate"],
                      "best_explainer": pg["best_explainer"], "wall_min": round(out.wall_s / 60, 2)},
                     indent=2))
    print(str(out.model_dir))
    return 0
