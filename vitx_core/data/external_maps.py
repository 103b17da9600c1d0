"""Saliency maps made elsewhere (``.npy`` / ``.png`` / CheXlocalize ``*_map.pkl``), for scoring.

A map keeps its OWN grid (for example a 7 x 7 Grad-CAM or a 20 x 16 patch grid) together with the
size of the image it explains; :meth:`SaliencyMap.to_original` maps it to the image's original
pixel grid by one bilinear resize with half-pixel centres (``align_corners=False``, border
clamp), i.e. exactly ``torch.nn.functional.interpolate(..., mode="bilinear",
align_corners=False)``, which is what CheXlocalize's ``heatmap_to_segmentation.py`` does.

Layouts (:func:`scan_maps`):

* ``<dir>/<method>/<stem>.npy|png`` (method = folder name),
* ``<dir>/<stem>_<method>.npy|png`` (split at the ``_`` whose left part names a cohort image;
  with ``MapSpec.method`` set, ``<dir>/<stem>.npy`` is read as that method),
* CheXlocalize ``<cxr_id>_<Task>_map.pkl`` anywhere below ``<dir>`` (finding = task; method =
  ``MapSpec.method`` or the folder name). The pickle holds a dict with ``map`` (a torch tensor
  ``(1, 1, h, w)``), ``prob``, ``task``, ``gt``, ``cxr_img``, ``cxr_dims = (w, h)``.

Pickles are only safe from trusted sources. :func:`load_chexlocalize_pickle` uses a restricted
unpickler whose ``find_class`` allows only NumPy array / scalar / dtype reconstruction, torch
tensor reconstruction (``torch._utils._rebuild_tensor_v2``), ``collections.OrderedDict`` and
``_codecs.encode``; torch's storage hook ``torch.storage._load_from_bytes`` (which would call
``torch.load(weights_only=False)``) is replaced by a ``torch.load(weights_only=True)`` on the
storage bytes. Anything else (``os.system``, ``builtins.eval``, arbitrary classes) is refused
with :class:`MapReadError`. Prefer ``.npy`` (read with ``allow_pickle=False``) for new exports.
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import resize_bilinear as _resize_bilinear

MAP_SUFFIXES = {".npy", ".png"}
MAP_FORMATS = ("auto", "npy", "png", "chexlocalize")


class MapReadError(ValueError):
    """A saliency map file could not be read; the message names the file and the reason."""


@dataclass(frozen=True)
class MapSpec:
    """A folder of external saliency maps.

    Attributes:
        path: the folder (see the module docstring for layouts).
        method: method name for ``<dir>/<stem>.npy`` files and CheXlocalize pickles (default:
            the folder name).
        finding: the finding the ``.npy`` / ``.png`` maps explain (``None``: unspecified).
        format: ``auto`` | ``npy`` | ``png`` | ``chexlocalize`` (restricts the files read).
    """

    path: str | Path
    method: str | None = None
    finding: str | None = None
    format: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.format not in MAP_FORMATS:
            raise ValueError(f"unknown map format {self.format!r}; allowed: {', '.join(MAP_FORMATS)}")


def as_map_specs(maps: Any) -> list[MapSpec]:
    if maps is None:
        return []
    if isinstance(maps, (MapSpec, str, Path, dict)):
        maps = [maps]
    out = []
    for m in maps:
        if isinstance(m, MapSpec):
            out.append(m)
        elif isinstance(m, (str, Path)):
            out.append(MapSpec(m))
        elif isinstance(m, dict):
            out.append(MapSpec(**m))
        else:
            raise TypeError(f"maps must be a path, MapSpec or dict, got {type(m).__name__}")
    return out


# ----------------------------------------------------------------------------- resampling


def resize_bilinear(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` -> ``(H, W)`` float32, half-pixel centres, border clamp (== F.interpolate,
    ``mode="bilinear", align_corners=False``)."""
    a = np.asarray(a, dtype=np.float64)
    H, W = int(hw[0]), int(hw[1])
    if a.shape == (H, W):
        return a.astype(np.float32)
    return _resize_bilinear(a, (H, W)).astype(np.float32)


# ----------------------------------------------------------------------------- maps


@dataclass
class SaliencyMap:
    """An external map on its own grid.

    Attributes:
        values: float32 ``(h, w)`` as stored (not normalised).
        image_hw: the original image's ``(H, W)``.
        method, finding: what made it and what it explains (finding may be None).
        source: file name.
        note: its geometry (map size vs image size, how it is brought to the image grid).
        extra: CheXlocalize ``prob`` / ``task`` / ``gt`` / ``cxr_dims`` when present.
    """

    values: np.ndarray = field(repr=False)
    image_hw: tuple[int, int]
    method: str
    finding: str | None
    source: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def map_hw(self) -> tuple[int, int]:
        return int(self.values.shape[0]), int(self.values.shape[1])

    def to_original(self) -> np.ndarray:
        """float32 ``(H, W)`` on the image's original grid (bilinear when sizes differ)."""
        return resize_bilinear(self.values, self.image_hw)


@dataclass(frozen=True)
class MapRef:
    """A map file attached to a case; :meth:`load` reads it."""

    method: str
    finding: str | None
    path: Path = field(repr=False)
    kind: str  # npy | png | chexlocalize

    def load(self, image_hw: tuple[int, int]) -> SaliencyMap:
        values, extra = read_map_file(self.path, self.kind)
        mh, mw = values.shape
        H, W = image_hw
        if (mh, mw) == (H, W):
            note = f"map {mh}x{mw} = image grid (no resampling)"
        else:
            note = (f"map {mh}x{mw} on image {H}x{W}: bilinear resize (align_corners=False) to the "
                    "original grid")
            if abs(mh / mw - H / W) > 0.02 * (H / W):
                note += "; aspect ratios differ (map stretched)"
        dims = extra.get("cxr_dims")
        if dims is not None and tuple(int(v) for v in dims) != (W, H):
            note += f"; pickle cxr_dims (w, h) = {tuple(dims)} differs from the image {W}x{H}"
        return SaliencyMap(values, (int(H), int(W)), self.method, self.finding, self.path.name,
                           note, extra)


def _as_2d(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise MapReadError(f"{name}: map is not numeric (dtype {a.dtype})")
    sq = np.squeeze(a)
    if sq.ndim != 2:
        raise MapReadError(f"{name}: expected a 2-D map ((h, w) or (1, 1, h, w)), got shape "
                           f"{tuple(a.shape)}")
    sq = sq.astype(np.float32)
    if not np.isfinite(sq).all():
        raise MapReadError(f"{name}: map contains NaN or infinite values")
    return sq


def read_map_file(path: str | Path, kind: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A map file -> (float32 ``(h, w)``, extra info). Raises :class:`MapReadError`."""
    p = Path(path)
    kind = kind or ("chexlocalize" if p.suffix.lower() == ".pkl" else p.suffix.lower().lstrip("."))
    if kind == "npy":
        try:
            a = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise MapReadError(f"{p.name}: not a plain .npy array ({e})") from e
        except OSError as e:
            raise MapReadError(f"{p.name}: cannot read ({e})") from e
        return _as_2d(a, p.name), {}
    if kind == "png":
        from PIL import Image

        try:
            with Image.open(p) as im:
                im.load()
                if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    raise MapReadError(f"{p.name}: {im.mode} map image; a colour-mapped heatmap "
                                       "cannot be inverted, save the raw values (grey or .npy)")
                a = np.asarray(im)
        except MapReadError:
            raise
        except Exception as e:  # PIL raises many types for broken files
            raise MapReadError(f"{p.name}: unreadable map image ({type(e).__name__}: {e})") from e
        return _as_2d(a, p.name), {"png_mode": im.mode}
    if kind == "chexlocalize":
        info = load_chexlocalize_pickle(p)
        if not isinstance(info, dict) or "map" not in info:
            raise MapReadError(f"{p.name}: expected a dict with a 'map' entry (CheXlocalize "
                               "*_map.pkl)")
        extra: dict[str, Any] = {}
        for k in ("prob", "gt"):
            if k in info:
                try:
                    extra[k] = float(np.asarray(_numpy(info[k])).reshape(-1)[0])
                except (TypeError, ValueError, IndexError):
                    pass
        if isinstance(info.get("task"), str):
            extra["task"] = info["task"]
        dims = info.get("cxr_dims")
        if isinstance(dims, (list, tuple)) and len(dims) == 2:
            try:
                extra["cxr_dims"] = (int(dims[0]), int(dims[1]))
            except (TypeError, ValueError):
                pass
        return _as_2d(info["map"], p.name), extra
    raise MapReadError(f"{p.name}: unknown map kind {kind!r}")


def _numpy(v: Any) -> Any:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else v


# ----------------------------------------------------------------------------- safe pickles


def _safe_load_storage(b: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: weights-only ``torch.load``."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
        return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows array / tensor reconstruction only (see the module docstring)."""

    _NUMPY = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
              ("numpy._core.numeric", "_frombuffer")}
    _TORCH = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
              ("torch._utils", "_rebuild_parameter"), ("torch", "Size")}
    _OTHER = {("collections", "OrderedDict"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == ("torch.storage", "_load_from_bytes"):
            return _safe_load_storage
        if key in self._NUMPY or key in self._OTHER or key in self._TORCH:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return super().find_class(module, name)
        if module == "torch" and _is_torch_dtype(name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only array / tensor "
                                     "reconstruction is allowed)")


def _is_torch_dtype(name: str) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(getattr(torch, name, None), torch.dtype)


def load_chexlocalize_pickle(path: str | Path) -> Any:
    """Unpickle a CheXlocalize ``*_map.pkl`` with the restricted unpickler (trusted files only).

    Raises:
        MapReadError: unreadable, truncated, or a refused global (the message names it).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return _RestrictedUnpickler(fh).load()
    except pickle.UnpicklingError as e:
        raise MapReadError(f"{p.name}: {e}") from e
    except ModuleNotFoundError as e:
        raise MapReadError(f"{p.name}: needs module {e.name!r} to rebuild its arrays") from e
    except (EOFError, OSError, ValueError, TypeError, AttributeError, RuntimeError, IndexError) as e:
        raise MapReadError(f"{p.name}: unreadable pickle ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- scanning


@dataclass
class MapRecord:
    """A map file before matching: ``key`` names the image directly, or ``combined`` is
    ``<key>_<suffix>`` to be split where the left part names a cohort image (the suffix is the
    method, or the finding for CheXlocalize pickles)."""

    path: Path
    kind: str
    method: str | None
    finding: str | None
    key: str | None = None
    combined: str | None = None


@dataclass
class MapScan:
    source: str
    records: list[MapRecord] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None


def scan_maps(spec: MapSpec) -> MapScan:
    """List the map files of a folder (no array is read here)."""
    root = spec.path
    res = MapScan(root.name or str(root))
    if not root.is_dir():
        res.fatal = f"saliency map folder not found: {root}"
        return res
    want = {"auto": {".npy", ".png", ".pkl"}, "npy": {".npy"}, "png": {".png"},
            "chexlocalize": {".pkl"}}[spec.format]
    default_method = spec.method or root.name
    if ".pkl" in want:
        for p in sorted(root.rglob("*_map.pkl")):
            stem = p.name[: -len("_map.pkl")]
            res.records.append(MapRecord(p, "chexlocalize", default_method, None, combined=stem))
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        suf = p.suffix.lower()
        if p.is_file() and suf in want and suf in MAP_SUFFIXES:
            kind = suf.lstrip(".")
            if spec.method:
                res.records.append(MapRecord(p, kind, spec.method, spec.finding, key=p.stem))
            else:
                res.records.append(MapRecord(p, kind, None, spec.finding, combined=p.stem))
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix.lower() in want & MAP_SUFFIXES:
                    res.records.append(MapRecord(f, f.suffix.lower().lstrip("."), p.name,
                                                 spec.finding, key=f.stem))
    if not res.records:
        res.fatal = (f"no saliency maps in {root} (expected <method>/<stem>.npy|png, "
                     "<stem>_<method>.npy|png or CheXlocalize *_map.pkl)")
    return res
