"""``vitx.toml``: one file naming the cohort, its ground truth, the model, explainers and outputs.

Read with the standard library's ``tomllib``; validated completely before anything runs, and every
problem is reported at once (:class:`ConfigError`, one line each: unknown sections / keys with the
allowed ones listed, wrong types, missing files, unknown explainers or options). Relative paths
are resolved against the TOML file's own folder, so a config travels with its data.

Example (``sample_data/vitx.toml``)::

    [cohort]
    root = "cohort/images"              # required
    labels_csv = "cohort/labels.csv"
    max_images = 48
    # pseudonym_key = "..."             # $VITX_PSEUDONYM_KEY overrides it

    [[ground_truth]]                    # a table or an array of tables
    format = "chexlocalize"             # auto | chexlocalize | csv | nih | masks | coco
    path = "cohort/gt_segmentations.json"

    [model]
    spec = "demo"                       # demo | timm:<arch> | hf:<dir> | <model dir>

    [explainers]
    methods = ["default"]               # keys, "default" or "all"
    [explainers.options.rollout]
    discard_ratio = 0.9

    [evaluation]
    threshold_rule = "otsu"             # otsu | fixed | tuned | top_k

    [output]
    dir = "runs/sample"
    save_overlays = true
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from ..registry import value_fits
from .annotations import GT_FORMATS, GTSpec
from .cohort import DEFAULT_MAX_PIXELS
from .external_maps import MAP_FORMATS, MapSpec

THRESHOLD_RULES = ("otsu", "fixed", "tuned", "top_k")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, one per line."""


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class CohortConfig:
    root: Path
    labels_csv: Path | None = None
    recursive: bool = True
    max_images: int | None = None
    exclude: tuple[str, ...] = ()
    findings: tuple[str, ...] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    verify: bool = False
    pseudonym_key: str | None = field(default=None, repr=False)  # a secret: never shown


@dataclass(frozen=True)
class ModelConfig:
    spec: str = "demo"
    weights: Path | None = None
    labels: tuple[str, ...] | None = None
    multi_label: bool | None = None
    img_size: tuple[int, int] | None = None
    device: str | None = None


@dataclass(frozen=True)
class ExplainersConfig:
    methods: tuple[str, ...] = ("default",)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: str | int | None = None
    batch_size: int = 1

    def methods_arg(self) -> dict[str, dict[str, Any]]:
        """``{key: options}`` for :func:`vitx_core.build_explainers` (``default`` / ``all``
        expanded through the registry)."""
        from ..registry import default_methods, list_explainers

        names: list[str] = []
        for m in self.methods:
            names += (default_methods() if m == "default" else
                      [i.name for i in list_explainers()] if m == "all" else [m])
        return {n: dict(self.options.get(n, {})) for n in dict.fromkeys(names)}


@dataclass(frozen=True)
class EvaluationConfig:
    threshold_rule: str = "otsu"
    thresholds: tuple[float, ...] = (0.5,)
    top_fraction: float = 0.1
    tuned_thresholds_csv: Path | None = None
    tolerance_px: float = 0.0
    true_positive_only: bool = True


@dataclass(frozen=True)
class OutputConfig:
    dir: Path | None = None
    save_overlays: bool = True
    cmap: str = "jet"
    alpha: float = 0.5


@dataclass(frozen=True)
class VitxConfig:
    """A validated ``vitx.toml`` (all paths absolute)."""

    cohort: CohortConfig
    ground_truth: tuple[GTSpec, ...] = ()
    maps: tuple[MapSpec, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    explainers: ExplainersConfig = field(default_factory=ExplainersConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    path: Path | None = None

    def pseudonym_key(self) -> str | None:
        """``$VITX_PSEUDONYM_KEY`` when set (it overrides the file), else the file's key."""
        return os.environ.get("VITX_PSEUDONYM_KEY") or self.cohort.pseudonym_key


# ----------------------------------------------------------------------------- checkers


class _Bad(Exception):
    pass


def _show(v: Any) -> str:
    return f"{type(v).__name__} {v!r}" if not isinstance(v, dict) else "a table"


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"expected a non-empty string, got {_show(v)}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_show(v)}")
    return v


def _int(lo: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {_show(v)}")
        if lo is not None and v < lo:
            raise _Bad(f"must be >= {lo}, got {v}")
        return v
    return check


def _float(lo: float | None = None, hi: float | None = None) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"expected a number, got {_show(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Bad(f"must lie in [{lo}, {hi}], got {v}")
        return float(v)
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise _Bad(f"expected one of {', '.join(options)}, got {_show(v)}")
        return v
    return check


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise _Bad(f"expected a list of strings, got {_show(v)}")
    return tuple(v)


def _float_list(lo: float, hi: float) -> Callable[[Any], tuple[float, ...]]:
    def check(v: Any) -> tuple[float, ...]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not v:
            raise _Bad(f"expected a list of numbers, got {_show(v)}")
        return tuple(_float(lo, hi)(x) for x in v)
    return check


def _hw(v: Any) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return (v, v)
    if (isinstance(v, list) and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
        return (v[0], v[1])
    raise _Bad(f"expected [height, width] (positive integers) or one integer, got {_show(v)}")


def _path(base: Path, *, must_exist: bool = True, kind: str | None = None) -> Callable[[Any], Path]:
    def check(v: Any) -> Path:
        p = Path(_str(v)).expanduser()
        p = p if p.is_absolute() else base / p
        p = Path(os.path.normpath(p))
        if must_exist and not p.exists():
            raise _Bad(f"path not found: {p}")
        if must_exist and kind == "dir" and not p.is_dir():
            raise _Bad(f"not a folder: {p}")
        if must_exist and kind == "file" and not p.is_file():
            raise _Bad(f"not a file: {p}")
        return p
    return check


def _table(data: Any, where: str, fields: dict[str, Callable[[Any], Any]], errors: list[str],
           required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check one TOML table against its fields -> converted values (bad keys reported)."""
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a table, got {_show(data)}")
        return {}
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k not in fields:
            errors.append(f"{where}: unknown key {k!r}; allowed: {', '.join(fields)}")
            continue
        try:
            out[k] = fields[k](v)
        except _Bad as e:
            errors.append(f"{where}.{k}: {e}")
    for k in required:
        if k not in data:
            errors.append(f"{where}: {k!r} is required")
    return out


# ---- explainer options: type check against the explainer's Params annotations ---------------
def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _check_explainers(methods: tuple[str, ...], options: Any, errors: list[str]
                      ) -> dict[str, dict[str, Any]]:
    try:
        from ..registry import get_explainer_class, list_explainers
        known = [i.name for i in list_explainers()]
    except Exception:  # registry unavailable (minimal install): names checked when run
        known = []
    selected: list[str] = []
    for m in methods:
        if m in ("default", "all"):
            selected += known if m == "all" else []
        elif known and m not in known:
            errors.append(f"[explainers].methods: unknown explainer {m!r}; known: "
                          f"{', '.join(known)} (or 'default', 'all')")
        else:
            selected.append(m)
    if options is None:
        return {}
    if not isinstance(options, dict):
        errors.append(f"[explainers].options: expected tables [explainers.options.<method>], got "
                      f"{_show(options)}")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, opts in options.items():
        where = f"[explainers.options.{name}]"
        if known and name not in known:
            errors.append(f"{where}: unknown explainer {name!r}; known: {', '.join(known)}")
            continue
        if not isinstance(opts, dict):
            errors.append(f"{where}: expected a table of options, got {_show(opts)}")
            continue
        vals = {k: _tuples(v) for k, v in opts.items()}
        if known:
            cls = get_explainer_class(name)
            hints = typing.get_type_hints(cls.Params)
            bad = False
            for k, v in vals.items():
                if k == "preset":
                    if v not in getattr(cls, "presets", {}):
                        errors.append(f"{where}.preset: unknown preset {v!r}; known: "
                                      f"{', '.join(cls.presets) or 'none'}")
                        bad = True
                    continue
                if k not in hints:
                    errors.append(f"{where}: unknown option {k!r}; allowed: "
                                  f"{', '.join([*hints, 'preset'])}")
                    bad = True
                    continue
                members = (typing.get_args(hints[k]) if typing.get_origin(hints[k])
                           in (Union, types.UnionType) else (hints[k],))
                if type(v) is int and float in members and int not in members:
                    vals[k] = v = float(v)  # TOML 0 for a float option
                if not value_fits(hints[k], v):
                    errors.append(f"{where}.{k}: expected {_type_name(hints[k])}, got {_show(v)}")
                    bad = True
            if not bad:
                try:
                    preset = vals.get("preset")
                    rest = {k: v for k, v in vals.items() if k != "preset"}
                    cls.from_preset(preset, **rest) if preset else cls(**rest)
                except (TypeError, ValueError, KeyError) as e:
                    errors.append(f"{where}: {e.args[0] if e.args else e}")
        out[name] = vals
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + " | ".join(repr(c) for c in typing.get_args(tp))
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


# ----------------------------------------------------------------------------- loading

_SECTIONS = ("cohort", "ground_truth", "maps", "model", "explainers", "evaluation", "output")
# read and validated by vitx_core.benchmark (load_benchmark_config); passed over here
_PASS_THROUGH = ("benchmark", "models")


def config_from_dict(data: dict[str, Any], base_dir: str | Path, *, source: str = "config"
                     ) -> VitxConfig:
    """Validate a parsed TOML document; relative paths are taken from ``base_dir``."""
    base = Path(base_dir).expanduser().resolve()
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a TOML document")
    for k in data:
        if k not in _SECTIONS and k not in _PASS_THROUGH:
            errors.append(f"unknown section [{k}]; allowed: {', '.join(_SECTIONS)}")

    # [cohort]
    c = _table(data.get("cohort", {}), "[cohort]", {
        "root": _path(base, kind="dir"), "labels_csv": _path(base, kind="file"),
        "recursive": _bool, "max_images": _int(1), "exclude": _str_list, "findings": _str_list,
        "max_pixels": _int(1), "verify": _bool, "pseudonym_key": _str}, errors, required=("root",))
    if "cohort" not in data:
        errors.append("missing section [cohort] (needs at least root = \"<image folder>\")")

    # [[ground_truth]]
    gts: list[GTSpec] = []
    raw_gt = data.get("ground_truth", [])
    for i, g in enumerate(raw_gt if isinstance(raw_gt, list) else [raw_gt]):
        where = f"[[ground_truth]] #{i + 1}"
        t = _table(g, where, {"path": _path(base), "format": _choice(GT_FORMATS),
                              "finding": _str, "ref_size": _hw}, errors, required=("path",))
        if "path" in t:
            try:
                gts.append(GTSpec(**t))
            except (ValueError, TypeError) as e:
                errors.append(f"{where}: {e}")

    # [[maps]]
    maps: list[MapSpec] = []
    raw_maps = data.get("maps", [])
    for i, m in enumerate(raw_maps if isinstance(raw_maps, list) else [raw_maps]):
        where = f"[[maps]] #{i + 1}"
        t = _table(m, where, {"path": _path(base, kind="dir"), "method": _str, "finding": _str,
                              "format": _choice(MAP_FORMATS)}, errors, required=("path",))
        if "path" in t:
            maps.append(MapSpec(**t))

    # [model]
    md = _table(data.get("model", {}), "[model]", {
        "spec": _str, "weights": _path(base, kind="file"), "labels": _str_list,
        "multi_label": _bool, "img_size": _hw, "device": _choice(("cpu", "cuda"))}, errors)
    if "spec" in md:
        md["spec"] = _model_spec(md["spec"], base, errors)

    # [explainers]
    raw_ex = data.get("explainers", {})
    ex = _table({k: v for k, v in raw_ex.items() if k != "options"} if isinstance(raw_ex, dict)
                else raw_ex, "[explainers]",
                {"methods": _str_list, "target": _target, "batch_size": _int(1)}, errors)
    methods = ex.get("methods", ("default",))
    ex["options"] = _check_explainers(methods, raw_ex.get("options") if isinstance(raw_ex, dict)
                                      else None, errors)
    not_selected = [n for n in ex["options"] if n not in methods and "all" not in methods
                    and not ("default" in methods and _is_default(n))]
    for n in not_selected:
        errors.append(f"[explainers.options.{n}]: explainer {n!r} is not in methods "
                      f"({', '.join(methods)}); add it there")

    # [evaluation]
    ev = _table(data.get("evaluation", {}), "[evaluation]", {
        "threshold_rule": _choice(THRESHOLD_RULES), "thresholds": _float_list(0.0, 1.0),
        "top_fraction": _float(0.0, 1.0), "tuned_thresholds_csv": _path(base, kind="file"),
        "tolerance_px": _float(0.0, None), "true_positive_only": _bool}, errors)
    if ev.get("threshold_rule") == "tuned" and "tuned_thresholds_csv" not in ev:
        errors.append("[evaluation]: threshold_rule = \"tuned\" needs tuned_thresholds_csv")
    if ev.get("top_fraction") == 0.0:
        errors.append("[evaluation].top_fraction: must be > 0")

    # [output]
    out = _table(data.get("output", {}), "[output]", {
        "dir": _path(base, must_exist=False), "save_overlays": _bool, "cmap": _str,
        "alpha": _float(0.0, 1.0)}, errors)

    if errors:
        raise ConfigError(f"{source}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return VitxConfig(
        cohort=CohortConfig(**c), ground_truth=tuple(gts), maps=tuple(maps),
        model=ModelConfig(**md), explainers=ExplainersConfig(**ex),
        evaluation=EvaluationConfig(**ev), output=OutputConfig(**out),
        path=None)


def _target(v: Any) -> str | int:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _Bad(f"expected a class name or index, got {_show(v)}")
    return v


def _is_default(name: str) -> bool:
    try:
        from ..registry import default_methods
        return name in default_methods()
    except Exception:
        return True


def _model_spec(spec: str, base: Path, errors: list[str]) -> str:
    """``demo`` / ``timm:<arch>`` kept; ``hf:<dir>`` and model folders resolved and checked."""
    if spec == "demo" or spec.startswith("timm:"):
        return spec
    hf = spec.startswith("hf:")
    raw = spec[3:] if hf else spec
    p = Path(raw).expanduser()
    p = Path(os.path.normpath(p if p.is_absolute() else base / p))
    if not p.exists():
        errors.append(f"[model].spec: model folder not found: {p} (expected demo, timm:<arch>, "
                      "hf:<dir> or a vitx model folder)")
    return f"hf:{p}" if hf else str(p)


def load_config(path: str | os.PathLike) -> VitxConfig:
    """Read and validate ``vitx.toml``.

    Raises:
        ConfigError: missing file, invalid TOML, or any invalid entry (all listed at once).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason})") from None
    cfg = config_from_dict(data, p.parent, source=str(p))
    return VitxConfig(cfg.cohort, cfg.ground_truth, cfg.maps, cfg.model, cfg.explainers,
                      cfg.evaluation, cfg.output, path=p.resolve())
