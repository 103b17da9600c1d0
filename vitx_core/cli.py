"""Command line: ``python -m vitx_core <command> ...``.

Commands are registered with :func:`command` (one argparse subparser each), so other modules can
add theirs; :func:`main` returns the exit status instead of exiting (in-process use and tests):
0 success, 1 some inputs failed (each reported on stderr, the others still written), 2 usage
errors (unknown method / option / class, missing model or weights file), 130 interrupted.

``explain`` writes, for every image, ``OUT/<image stem>/``: ``<method>.npy`` (heatmap, float32
in [0, 1] on the ORIGINAL pixel grid), ``<method>.grid.npy`` (raw patch grid), ``<method>.png``
(overlay with title and colour bar) and ``prediction.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from .registry import value_fits

PROG = "python -m vitx_core"


class UsageError(Exception):
    """A problem with the command line itself: reported in one line, exit status 2."""


# ---- command registry ----------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator registering ``run(args) -> int`` as subcommand ``name``; ``configure(parser)``
    adds its arguments. Raise :class:`UsageError` for command-line problems."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} already registered")
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return deco


# Modules that register further commands with @command (imported when the parser is built, so
# `import vitx_core.cli` stays light and there are no import cycles).
COMMAND_MODULES: tuple[str, ...] = ("vitx_core.data.commands", "vitx_core.benchmark.commands",
                                    "vitx_core.training.commands")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from . import __version__

    for mod in COMMAND_MODULES:
        importlib.import_module(mod)

    parser = argparse.ArgumentParser(
        prog=PROG, description="vitx: explain Vision Transformer classifiers on chest X-rays "
        "(offline; heatmaps on the original pixel grid).")
    parser.add_argument("--version", action="version", version=f"vitx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the CLI never reaches a hub
        os.environ[k] = "1"
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(run(args))
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


# ---- option parsing ------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """``--option`` value text -> int / float / bool / None / tuple / str.

    ``none``/``null`` -> None; ``true``/``false`` -> bool; ``a,b`` (or ``(a,b)``, ``[a,b]``,
    ``a,``) -> tuple; quotes force a string.
    """
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    bracketed = len(s) >= 2 and s[0] + s[-1] in ("()", "[]")
    if bracketed:
        s = s[1:-1]
    if bracketed or "," in s:
        return tuple(parse_value(p) for p in s.split(",") if p.strip())
    low = s.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def _coerce(tp: Any, v: Any, raw: str) -> Any:
    """Adjust a parsed value to the option's annotation (``1`` for a float -> ``1.0``, a
    scalar for a tuple -> 1-tuple, digits for a string choice -> the string)."""
    members = _members(tp)
    if v is None:
        return None
    if not isinstance(v, str):
        text = raw.strip()
        choices = [c for m in members if typing.get_origin(m) is Literal for c in typing.get_args(m)]
        if text in choices or (str in members and not value_fits(tp, v)):
            return text
    tup = next((m for m in members if m is tuple or typing.get_origin(m) is tuple), None)
    if tup is not None and not isinstance(v, tuple):
        v = (v,)
    if isinstance(v, tuple) and tup is not None:
        args = typing.get_args(tup)
        if len(args) == 2 and args[1] is Ellipsis and args[0] is float:
            v = tuple(float(x) if type(x) is int else x for x in v)
        return v
    if type(v) is int:
        if float in members and int not in members:
            return float(v)
        if bool in members and int not in members and v in (0, 1):
            return bool(v)
    return v


def parse_option(text: str) -> tuple[str, str, str]:
    """``METHOD.OPTION=VALUE`` -> ``(method, option, raw value)``."""
    key, sep, raw = text.partition("=")
    method, dot, opt = key.strip().partition(".")
    if not sep or not dot or not method.strip() or not opt.strip():
        raise UsageError(f"--option {text!r}: expected METHOD.OPTION=VALUE "
                         "(e.g. rollout.discard_ratio=0.9)")
    return method.strip(), opt.strip(), raw


def select_methods(spec: str) -> list[str]:
    """``default`` | ``all`` | ``k1,k2`` (may mix in ``default``/``all``) -> registry keys."""
    from .registry import default_methods, list_explainers

    known = [i.name for i in list_explainers()]
    names: list[str] = []
    for tok in [t.strip() for t in (spec or "default").split(",") if t.strip()] or ["default"]:
        names += default_methods() if tok == "default" else known if tok == "all" else [tok]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown method(s): {', '.join(unknown)}; known: {', '.join(known)} "
                         "(or 'all', 'default')")
    return list(dict.fromkeys(names))


def methods_with_options(spec: str, options: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--methods`` + ``--option`` strings -> the ``{key: options}`` dict of :func:`explain`."""
    from .registry import get_explainer_class

    selected = select_methods(spec)
    out: dict[str, dict[str, Any]] = {n: {} for n in selected}
    for text in options or ():
        method, opt, raw = parse_option(text)
        if method not in out:
            select_methods(method)  # unknown method: the error lists the known ones
            raise UsageError(f"--option {text!r}: method {method!r} is not selected "
                             f"(selected: {', '.join(selected)}); add it to --methods")
        value = parse_value(raw)
        if opt == "preset":
            out[method]["preset"] = raw.strip().strip("'\"")
            continue
        cls = get_explainer_class(method)
        hints = typing.get_type_hints(cls.Params)
        if opt not in hints:
            fields = [f.name for f in dataclasses.fields(cls.Params)]
            raise UsageError(f"--option {text!r}: {method} has no option {opt!r}; known: "
                             f"{', '.join([*fields, 'preset']) if fields else 'preset only'}")
        value = _coerce(hints[opt], value, raw)
        if not value_fits(hints[opt], value):
            raise UsageError(f"--option {text!r}: {method}.{opt} expects "
                             f"{_type_name(hints[opt])}, got {raw.strip()!r}")
        out[method][opt] = value
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(str(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def parse_img_size(values: Sequence[str]) -> tuple[int, int]:
    """``["224"]`` | ``["64", "48"]`` | ``["64x48"]`` -> ``(H, W)``."""
    toks = [t for v in values for t in re.split(r"[x×,]", str(v).lower()) if t.strip()]
    try:
        nums = [int(t) for t in toks]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or len(nums) != len(toks) or min(nums) <= 0:
        raise UsageError(f"--img-size {' '.join(values)!r}: expected H W, HxW or one size "
                         "(positive integers)")
    return (nums[0], nums[-1])


# ---- inputs and outputs --------------------------------------------------------------------
def _known_image_suffix(p: Path) -> bool:
    from .imageio import DICOM_SUFFIXES, RASTER_SUFFIXES

    return p.suffix.lower() in DICOM_SUFFIXES | RASTER_SUFFIXES


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files as given; a directory contributes its image files (PNG/JPEG/TIFF/BMP/DICOM, also
    extension-less DICOM), sorted, not recursive."""
    from .imageio import is_dicom_file

    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and (_known_image_suffix(f) or is_dicom_file(f)))
            if not files:
                raise UsageError(f"no image files (PNG, JPEG, TIFF, DICOM) in directory {p}")
            out += files
        else:
            out.append(p)  # missing / unreadable files are reported per image later
    return out


def output_names(paths: Sequence[Path]) -> list[str]:
    """One folder name per input: the file stem (the whole name for files without an image
    suffix, e.g. DICOM ``1.2.840.1``), ``_2``, ``_3``... appended on a clash (case-insensitive)."""
    used: set[str] = set()
    out = []
    for p in paths:
        stem = (p.stem if _known_image_suffix(p) else p.name) or "image"
        name, k = stem, 2
        while name.casefold() in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name.casefold())
        out.append(name)
    return out


def figure_title(method: str, res: Any, exp: Any) -> str:
    pred = res.prediction
    t = f"{method} — predicted: {pred.top_label} (p={pred.top_prob:.2f}) — target: {res.target_label}"
    if res.target != pred.top:
        t += f" (p={exp.prob:.2f})"
    if exp.constant_map:
        t += " — constant map (no evidence)"
    if exp.flags.get("partial_view"):
        t += " — outlined: region the model saw"
    return t


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_result(res: Any, pixels: Any, folder: Path, *, source: Path, alpha: float, cmap: str,
                 png: bool = True) -> None:
    """All files of one explained image into ``folder``."""
    import numpy as np

    from .viz import overlay_figure

    folder.mkdir(parents=True, exist_ok=True)
    for name, exp in res.explanations.items():
        hm = np.asarray(exp.heatmap, dtype=np.float32)
        np.save(folder / f"{name}.npy", hm)
        np.save(folder / f"{name}.grid.npy", np.asarray(exp.grid, dtype=np.float32))
        if png:
            mask = exp.geometry.seen_mask() if exp.flags.get("partial_view") else None
            fig = overlay_figure(pixels, hm, figure_title(name, res, exp), alpha=alpha, cmap=cmap,
                                 contour_mask=mask)
            fig.save(folder / f"{name}.png")
    d = res.to_dict()
    d["file"] = source.name
    (folder / "prediction.json").write_text(json.dumps(d, indent=2, default=_json_default) + "\n")


# ---- explain -------------------------------------------------------------------------------
def _configure_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG / JPEG / TIFF / DICOM files (extension-less DICOM too) or folders")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="timm:<arch> (with --weights), hf:<dir>, a vitx model directory, or demo")
    p.add_argument("--weights", metavar="FILE",
                   help="state dict (.safetensors / .pth) for a timm:<arch> model")
    p.add_argument("--img-size", nargs="+", metavar="SIZE",
                   help="model input size for timm:<arch>: 'H W', 'HxW' or one number "
                        "(put it after the images)")
    p.add_argument("--labels", metavar="A,B,...",
                   help="class names for timm:/hf: specs (model directories carry their own)")
    p.add_argument("--multi-label", action="store_true",
                   help="sigmoid head for a timm:<arch> spec (default softmax)")
    p.add_argument("--methods", default="default", metavar="LIST",
                   help="comma-separated explainer keys, 'all' or 'default' (the one-pass set); "
                        "see list-explainers")
    p.add_argument("--target", metavar="T",
                   help="class name or index to explain (default: the top prediction)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.OPT=VALUE",
                   help="explainer option, repeatable: rollout.discard_ratio=0.9, "
                        "legrad.layers=-2,-1, rollout.preset=vit-explain")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: cuda when available, else cpu")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="images per shared pass (default 1)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap of the PNGs (default jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the PNGs (0-1)")
    p.add_argument("--no-png", action="store_true", help="write only .npy and prediction.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")


def _load_adapter(args: argparse.Namespace) -> Any:
    import torch

    from .adapters.loading import load_model

    spec = str(args.model)
    is_timm = spec.startswith("timm:")
    if args.weights is not None:
        if not is_timm:
            raise UsageError(f"--weights applies to timm:<arch> specs only, not {spec!r} "
                             "(model directories hold their own weights)")
        if not Path(args.weights).is_file():
            raise UsageError(f"weights file not found: {args.weights}")
    img_size = None
    if args.img_size:
        if not is_timm:
            raise UsageError("--img-size applies to timm:<arch> specs only (model directories "
                             "and hf: models fix their input size)")
        img_size = parse_img_size(args.img_size)
    if not (is_timm or spec.startswith("hf:") or spec == "demo" or Path(spec).exists()):
        raise UsageError(f"model not found: {spec} (expected timm:<arch>, hf:<dir>, a vitx model "
                         "directory or demo)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    try:
        return load_model(spec, weights=args.weights, labels=labels,
                          multi_label=True if args.multi_label else None, img_size=img_size,
                          device=args.device)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        raise UsageError(f"cannot load model {spec}: {e.args[0] if e.args else e}") from None


def _resolve_target(adapter: Any, target: str | None) -> int | None:
    if target is None:
        return None
    t = target.strip()
    if t not in adapter.labels and not t.lstrip("-").isdigit():
        hits = [lab for lab in adapter.labels if lab.casefold() == t.casefold()]
        t = hits[0] if len(hits) == 1 else t
    try:
        return adapter.class_index(t)
    except (KeyError, IndexError) as e:
        raise UsageError(f"--target: {e.args[0] if e.args else e}") from None


@command("explain", "explain images with one or more explainers; write heatmaps, overlays and "
         "predictions", _configure_explain)
def run_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import build_explainers, iter_explain
    from .imageio import ImageReadError, load_image
    from .viz import get_cmap

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError("--alpha must lie in [0, 1]")
    try:
        get_cmap(args.cmap)
    except ValueError as e:
        raise UsageError(str(e)) from None
    methods = methods_with_options(args.methods, args.option)
    try:
        explainers = build_explainers(methods)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(str(e.args[0] if e.args else e)) from None
    inputs = expand_inputs(args.images)
    adapter = _load_adapter(args)
    target = _resolve_target(adapter, args.target)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out_dir}: {e}") from None

    names = output_names(inputs)
    n = len(inputs)
    pbar = tqdm(total=n, file=sys.stderr, disable=n <= 1, unit="image", desc="explain",
                dynamic_ncols=True)
    failed: list[Path] = []
    pending: dict[int, tuple[Path, str]] = {}

    def fail(path: Path, err: BaseException) -> None:
        msg = str(err) if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}"
        tqdm.write(f"{PROG} explain: skipped {path}: {msg}", file=sys.stderr)
        failed.append(path)

    def loaded() -> Iterator[Any]:
        for path, name in zip(inputs, names):
            try:
                li = load_image(path)
            except Exception as err:  # unreadable input: report, skip, go on
                fail(path, err)
                pbar.update(1)
                continue
            pending[id(li)] = (path, name)
            yield li

    try:
        for li, res in iter_explain(adapter, loaded(), explainers, target=target,
                                    batch_size=args.batch_size):
            path, name = pending.pop(id(li))
            if isinstance(res, BaseException):
                fail(path, res)
            else:
                folder = out_dir / name
                try:
                    write_result(res, li.pixels, folder, source=path, alpha=args.alpha,
                                 cmap=args.cmap, png=not args.no_png)
                except (OSError, ValueError) as err:
                    fail(path, err)
                else:
                    tqdm.write(str(folder), file=sys.stdout)
            pbar.update(1)
    finally:
        pbar.close()
    ok = n - len(failed)
    print(f"{PROG} explain: {ok} of {n} image(s) written to {out_dir}"
          + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


# ---- list-explainers -----------------------------------------------------------------------
def _configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("list-explainers", "list the registered explainers, their options and presets",
         _configure_list)
def run_list_explainers(args: argparse.Namespace) -> int:
    from .registry import list_explainers

    infos = list_explainers()
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2, default=_json_default))
        return 0
    for i in infos:
        mode = "on-demand" if i.on_demand else "one-pass"
        print(f"{i.name}  —  {i.title}  [{mode}, {i.kind}]")
        if not i.params:
            print("    (no options)")
        for opt, spec in i.params.items():
            choices = f"  choices: {'|'.join(map(str, spec['choices']))}" if "choices" in spec else ""
            print(f"    {opt} = {spec['default']!r}{choices}")
        for pname, pvals in i.presets.items():
            vals = ", ".join(f"{k}={v!r}" for k, v in pvals.items())
            print(f"    preset {pname}: {vals}")
    return 0
