"""Cohorts: a folder of chest X-rays with optional ground truth, labels and external saliency maps.

:func:`load_cohort` indexes a folder (recursively by default) without decoding pixels:

* Images: ``.dcm`` / ``.dicom`` / ``.dic`` and extension-less files with the ``DICM`` preamble
  (DICOM), ``.png``, ``.jpg`` / ``.jpeg`` (format from the content, not the suffix). Hidden files
  and folders, and ground-truth / map folders that lie inside the root, are skipped.
* DICOM headers are read with ``stop_before_pixels=True``; the pixel-data element is then
  checked in place (present, long enough for ``Rows x Columns x frames``, not cut off; for
  compressed data the fragment items are walked to the sequence delimiter) and the transfer
  syntax's decoder is looked up (``pydicom.pixels.get_decoder(uid).is_available``), so a
  truncated file or a syntax without an installed decoder is reported at indexing, not when a
  reviewer opens the case. Only :data:`vitx_core.imageio.DICOM_TAG_ALLOWLIST` tags (plus the
  transfer syntax name and the frame count) reach :attr:`Case.meta`; no other header value is
  kept, and pydicom's warnings are silenced while indexing because they may quote header values.
* PNG / JPEG: the header gives the size (EXIF orientation applied, as :func:`load_image` does);
  PNG chunks are CRC-checked (``Image.verify``); a JPEG must end with its EOI marker.
* A pixel limit (:data:`DEFAULT_MAX_PIXELS`, 64 megapixels; ``rows x cols x frames`` for DICOM)
  is checked from the header before anything is decoded (decompression bombs). Pillow's own
  ``DecompressionBombWarning`` is turned into an error while indexing.
* Anything unreadable becomes a :class:`CohortError` naming the file, and is skipped; the rest of
  the cohort loads.

Identifiers: ``case_id`` = ``"c_"`` + the first 16 hex digits of HMAC-SHA256(key, path relative to
the root, POSIX separators): stable across runs and machines, independent of where the cohort
lives, different for a different key, and free of names. The key comes from ``key=``, else
``$VITX_PSEUDONYM_KEY``, else a public built-in default (ids then stable but not secret: noted in
:attr:`Cohort.notes`). ``image_id`` is the file stem (the whole name for extension-less DICOM),
used to join ground truth; when two files share a stem it becomes the relative path without
suffix joined by ``_`` (for ``patient1/study1/view1_frontal.jpg``: ``patient1_study1_view1_frontal``,
the CheXlocalize id). File names are the site's: never name files after patients. The patient
column of a labels CSV is kept only as a keyed hash (``group_id``, ``"p_"`` + 12 hex digits).

Ground truth, labels and maps are described in :mod:`.annotations` and :mod:`.external_maps`.
Label policy per case and finding: a labels-CSV value (1 / 0) wins; a blank / unknown value or
no row falls back to the ground truth (1 when a non-empty mask or box is attached, 0 when a source
says absent: an all-zero CheXlocalize mask or an unannotated COCO category), else ``None``.
Disagreements (label 0 with an annotation, label 1 with an all-zero mask) are kept as given and
counted in :attr:`Cohort.notes`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
import os
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import DICOM_SUFFIXES, DICOM_TAG_ALLOWLIST, ImageReadError, LoadedImage, is_dicom_file
from .annotations import (
    Annotation,
    BoxAnnotation,
    GTRecord,
    GTSpec,
    MaskAnnotation,
    _centre_range,
    as_gt_specs,
    parse_gt,
    parse_labels_csv,
)
from .external_maps import MapRef, MapSpec, SaliencyMap, as_map_specs, scan_maps

DEFAULT_MAX_PIXELS = 64_000_000
PSEUDONYM_ENV = "VITX_PSEUDONYM_KEY"
#: Public fallback key: ids stay stable, but anyone can recompute them from file paths.
DEFAULT_PSEUDONYM_KEY = "vitx-public-default-key"
IMAGE_FORMATS = ("dicom", "png", "jpeg")
_RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: Suffixes never probed for a DICM preamble (saves a read per file in annotated folders).
_NOT_IMAGES = {".csv", ".tsv", ".json", ".txt", ".md", ".toml", ".yaml", ".yml", ".npy", ".npz",
               ".pkl", ".py", ".xml", ".html", ".pdf", ".zip", ".gz", ".tar", ".log", ".ini"}


def pseudonymous_id(text: str, key: str | bytes, *, prefix: str = "c_", digits: int = 16) -> str:
    """``prefix`` + the first ``digits`` hex digits of HMAC-SHA256(key, text)."""
    k = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return prefix + hmac.new(k, text.encode("utf-8"), hashlib.sha256).hexdigest()[:digits]


def resolve_key(key: str | bytes | None) -> tuple[str | bytes, bool]:
    """Explicit key, else ``$VITX_PSEUDONYM_KEY``, else the public default -> (key, is_default)."""
    if key is not None and key != "":
        return key, False
    env = os.environ.get(PSEUDONYM_ENV)
    if env:
        return env, False
    return DEFAULT_PSEUDONYM_KEY, True


# ----------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class CohortError:
    """An input that was skipped. ``file``: the image's path relative to the root, or the
    ground-truth / labels / map file; ``kind``: image | annotation | ground_truth | labels | map."""

    file: str
    reason: str
    kind: str = "image"
    case_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(eq=False)
class Case:
    """One image of a cohort (no pixels held; see :meth:`load_image`).

    Attributes:
        case_id: pseudonymous id (keyed hash of the relative path).
        image_id: file stem used to join ground truth (see the module docstring).
        path: POSIX path relative to the cohort root (for loading; not for display).
        format: ``dicom`` | ``png`` | ``jpeg``.
        size_hw: original pixel grid ``(H, W)``.
        labels: per cohort finding, 1 / 0 / None (unknown).
        annotations: per finding with ground truth, the masks and boxes (original grid).
        meta: allowlisted technical metadata only.
        group_id: pseudonymous patient id from the labels CSV (keyed hash), or None.
        maps: external saliency maps ``{method: {finding or None: MapRef}}``.
    """

    case_id: str
    image_id: str
    path: str = field(repr=False)
    format: str
    size_hw: tuple[int, int]
    labels: dict[str, int | None] = field(default_factory=dict)
    annotations: dict[str, list[Annotation]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    maps: dict[str, dict[str | None, MapRef]] = field(default_factory=dict, repr=False)
    _root: Path | None = field(default=None, repr=False)
    _max_pixels: int = field(default=DEFAULT_MAX_PIXELS, repr=False)

    @property
    def file_path(self) -> Path:
        """Absolute path of the image file (server-side only: never render or export it)."""
        if self._root is None:
            raise ValueError(f"case {self.case_id} has no cohort root")
        return self._root / self.path

    def mask(self, finding: str) -> np.ndarray | None:
        """bool ``(H, W)``: union of the finding's masks and boxes; None without annotations."""
        anns = self.annotations.get(finding)
        if not anns:
            return None
        out = np.zeros(self.size_hw, dtype=bool)
        for a in anns:
            out |= a.mask()
        return out

    def load_image(self) -> LoadedImage:
        """Decode the image on its original grid (float32 in [0, 1]); ``name`` is the case id.

        Raises:
            ImageReadError: over the pixel limit, unreadable, or a size different from the index.
        """
        from ..imageio import load_image

        h, w = self.size_hw
        frames = int(self.meta.get("frames", 1) or 1)
        if h * w * frames > self._max_pixels:
            raise ImageReadError(f"{self.path}: refused, {h}x{w}"
                                 f"{f'x{frames} frames' if frames > 1 else ''} exceeds the pixel "
                                 f"limit of {self._max_pixels}")
        li = load_image(self.file_path, name=self.case_id)
        if li.hw != tuple(self.size_hw):
            raise ImageReadError(f"{self.path}: decoded size {li.hw[0]}x{li.hw[1]} differs from the "
                                 f"indexed size {h}x{w}")
        return li

    def saliency(self, method: str, finding: str | None = None) -> SaliencyMap:
        """An attached external map (own grid; ``.to_original()`` for the image grid)."""
        per = self.maps.get(method)
        if per is None:
            raise KeyError(f"case {self.case_id}: no external map for method {method!r}; "
                           f"known: {sorted(self.maps)}")
        if finding not in per:
            if finding is None and len(per) == 1:
                finding = next(iter(per))
            else:
                raise KeyError(f"case {self.case_id}: method {method!r} has no map for finding "
                               f"{finding!r}; known: {sorted(map(str, per))}")
        return per[finding].load(self.size_hw)

    @property
    def positives(self) -> list[str]:
        return [f for f, v in self.labels.items() if v == 1]


@dataclass
class Cohort:
    """Indexed cases, skipped inputs (with reasons), findings, and informational notes."""

    cases: list[Case]
    errors: list[CohortError]
    findings: list[str]
    root: Path
    notes: list[str] = field(default_factory=list)
    key_is_default: bool = False

    def __post_init__(self) -> None:
        self._by_id = {c.case_id: c for c in self.cases}

    def case(self, case_id: str) -> Case:
        try:
            return self._by_id[case_id]
        except KeyError:
            raise KeyError(f"unknown case id {case_id!r} ({len(self.cases)} cases in the cohort)"
                           ) from None

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def summary(self) -> dict[str, Any]:
        """Counts for display (JSON-able): cases, formats, per-finding labels / annotations."""
        per: dict[str, dict[str, int]] = {}
        for f in self.findings:
            d = {"positive": 0, "negative": 0, "unknown": 0, "annotated": 0, "masks": 0, "boxes": 0}
            for c in self.cases:
                v = c.labels.get(f)
                d["positive" if v == 1 else "negative" if v == 0 else "unknown"] += 1
                anns = c.annotations.get(f, [])
                d["annotated"] += bool(anns)
                d["masks"] += sum(a.kind == "mask" for a in anns)
                d["boxes"] += sum(a.kind == "box" for a in anns)
            per[f] = d
        maps = Counter(m for c in self.cases for m in c.maps)
        return {"root": str(self.root), "cases": len(self.cases),
                "formats": dict(sorted(Counter(c.format for c in self.cases).items())),
                "findings": per, "maps": dict(maps),
                "errors": [{"file": e.file, "kind": e.kind, "reason": e.reason}
                           for e in self.errors],
                "notes": list(self.notes)}

    def format_summary(self) -> str:
        s = self.summary()
        fmts = ", ".join(f"{k} {v}" for k, v in s["formats"].items()) or "none"
        lines = [f"cohort {s['root']}: {s['cases']} case(s) ({fmts}); {len(self.errors)} error(s)"]
        if self.findings:
            w = max(len("finding"), *(len(f) for f in self.findings))
            lines.append(f"  {'finding':<{w}}  positive  negative  unknown  annotated  masks  boxes")
            for f, d in s["findings"].items():
                lines.append(f"  {f:<{w}}  {d['positive']:>8}  {d['negative']:>8}  {d['unknown']:>7}"
                             f"  {d['annotated']:>9}  {d['masks']:>5}  {d['boxes']:>5}")
        for m, n in s["maps"].items():
            lines.append(f"  external maps {m}: {n} case(s)")
        if self.errors:
            lines.append(f"errors ({len(self.errors)}):")
            lines += [f"  [{e.kind}] {e}" for e in self.errors]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- indexing


class _IndexFail(Exception):
    """Reason an input cannot be indexed (message shown to the user, no header values)."""


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV",
             b"UV"}
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
               0x7FE00009: "DoubleFloatPixelData"}


def _int_tag(ds: Any, kw: str, default: int | None = None) -> int | None:
    try:
        v = ds.get(kw, default)
        v = getattr(v, "value", v)
        return default if v is None or v == "" else int(v)
    except (TypeError, ValueError, OverflowError):
        raise _IndexFail(f"invalid {kw} in the DICOM header") from None


def _allowlisted_meta(ds: Any) -> dict[str, Any]:
    from pydicom.dataset import Dataset

    from ..imageio import dicom_technical_meta

    out: dict[str, Any] = {}
    for kw in DICOM_TAG_ALLOWLIST:
        if kw not in ds:
            continue
        try:  # tag by tag: one malformed value does not drop the others
            sub = Dataset()
            sub[kw] = ds[kw]
            out.update(dicom_technical_meta(sub))
        except Exception:  # a value pydicom cannot convert: leave it out (never quote it)
            continue
    return out


def _check_encapsulated(fp: Any, pos: int, fsize: int) -> None:
    """Walk the item headers of encapsulated pixel data to the sequence delimiter."""
    fp.seek(pos)
    items = 0
    while True:
        b = fp.read(8)
        if len(b) < 8:
            raise _IndexFail("truncated: compressed pixel data ends without its sequence delimiter")
        g, el, ln = struct.unpack("<HHL", b)
        if (g, el) == (0xFFFE, 0xE0DD):
            break
        if (g, el) != (0xFFFE, 0xE000) or ln == 0xFFFFFFFF:
            raise _IndexFail(f"malformed compressed pixel data (unexpected item ({g:04X},{el:04X}) "
                             f"at byte {pos})")
        pos += 8 + ln
        if pos > fsize:
            raise _IndexFail("truncated: a compressed pixel-data fragment runs past the end of the "
                             "file")
        fp.seek(pos)
        items += 1
    if items < 2:
        raise _IndexFail("compressed pixel data has no fragments")


def _index_dicom(path: Path, max_pixels: int) -> tuple[tuple[int, int], dict[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        UID,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    fsize = path.stat().st_size
    if fsize == 0:
        raise _IndexFail("empty file (0 bytes)")
    force = path.suffix.lower() in DICOM_SUFFIXES
    with warnings.catch_warnings():
        # pydicom warnings can quote header values (names, dates): never let them reach a log
        warnings.simplefilter("ignore")
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            except InvalidDicomError:
                raise _IndexFail("not a DICOM file (no 'DICM' marker or file meta header)") from None
            except Exception as e:  # pydicom raises many types on garbage; never quote values
                raise _IndexFail(f"not a readable DICOM file ({type(e).__name__} while reading "
                                 "the header)") from None
            pix_pos = fp.tell()
            try:
                implicit, little = ds.original_encoding
            except (AttributeError, TypeError, ValueError):
                implicit, little = None, None
            rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
            if not rows or not cols or implicit is None:
                raise _IndexFail("not a DICOM image (no Rows / Columns: not DICOM, or not an image "
                                 "object)")
            frames = _int_tag(ds, "NumberOfFrames", 1) or 1
            samples = _int_tag(ds, "SamplesPerPixel", 1) or 1
            bits_alloc = _int_tag(ds, "BitsAllocated", 16) or 16
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").upper()
            ts_raw = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if ts_raw:
                ts = UID(str(ts_raw))
            else:
                ts = (ImplicitVRLittleEndian if implicit else
                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            if rows * cols * frames > max_pixels:
                raise _IndexFail(f"refused: {rows}x{cols}{f'x{frames} frames' if frames > 1 else ''}"
                                 f" = {rows * cols * frames} pixels exceeds the limit of "
                                 f"{max_pixels} (max_pixels; decompression-bomb guard)")
            if samples not in (1, 3) or photometric == "PALETTE COLOR":
                raise _IndexFail(f"unsupported pixel layout ({samples} samples, {photometric})")
            try:
                decoder = get_decoder(ts)
            except NotImplementedError:
                raise _IndexFail(f"transfer syntax '{ts.name}' ({ts}) has no pixel-data decoder in "
                                 "pydicom") from None
            if not decoder.is_available:
                needs = "; ".join(getattr(decoder, "missing_dependencies", []) or []) or "a plugin"
                raise _IndexFail(f"transfer syntax '{ts.name}': no decoder installed (needs {needs})")
            if ts != DeflatedExplicitVRLittleEndian:  # deflated: offsets are not file offsets
                _check_pixel_element(fp, pix_pos, fsize, implicit=bool(implicit),
                                     little=bool(little), compressed=ts.is_compressed,
                                     expected=_native_bytes(rows, cols, frames, samples, bits_alloc,
                                                            photometric))
        meta = _allowlisted_meta(ds)
    meta["transfer_syntax"] = str(ts.name)
    if frames > 1:
        meta["frames"] = int(frames)
    return (int(rows), int(cols)), meta


def _native_bytes(rows: int, cols: int, frames: int, samples: int, bits_alloc: int,
                  photometric: str) -> int:
    if photometric == "YBR_FULL_422" and samples == 3:
        samples = 2  # native 4:2:2 stores two samples per pixel on average
    n = rows * cols * frames * samples
    return math.ceil(n / 8) if bits_alloc == 1 else n * max(bits_alloc // 8, 1)


def _check_pixel_element(fp: Any, pos: int, fsize: int, *, implicit: bool, little: bool,
                         compressed: bool, expected: int) -> None:
    fp.seek(pos)
    head = fp.read(8)
    if not head:
        raise _IndexFail("no pixel data (DICOM header only)")
    if len(head) < 8:
        raise _IndexFail("truncated at the pixel-data element")
    e = "<" if little else ">"
    g, el = struct.unpack(e + "HH", head[:4])
    tag = (g << 16) | el
    if tag not in _PIXEL_TAGS:
        raise _IndexFail(f"no pixel data (element ({g:04X},{el:04X}) where PixelData was expected)")
    if tag != 0x7FE00010:
        raise _IndexFail(f"{_PIXEL_TAGS[tag]} (floating-point pixels) is not supported")
    if implicit:
        (length,) = struct.unpack(e + "L", head[4:8])
        value_pos = pos + 8
    elif head[4:6] in _LONG_VRS:
        b = fp.read(4)
        if len(b) < 4:
            raise _IndexFail("truncated at the pixel-data element")
        (length,) = struct.unpack(e + "L", b)
        value_pos = pos + 12
    else:
        (length,) = struct.unpack(e + "H", head[6:8])
        value_pos = pos + 8
    if length == 0xFFFFFFFF:
        _check_encapsulated(fp, value_pos, fsize)
        return
    if compressed:
        raise _IndexFail("compressed transfer syntax but the pixel data is not encapsulated")
    left = fsize - value_pos
    if length > left:
        raise _IndexFail(f"truncated: PixelData declares {length} bytes, only {max(left, 0)} left in "
                         "the file")
    if length < expected:
        raise _IndexFail(f"PixelData holds {length} bytes, {expected} needed for the declared size")


def _index_raster(path: Path, max_pixels: int) -> tuple[str, tuple[int, int], dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise _IndexFail("empty file (0 bytes)")
    w = h = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                fmt, (w, h), mode = im.format, im.size, im.mode
                if w * h > max_pixels:
                    raise _IndexFail(f"refused: {h}x{w} = {w * h} pixels exceeds the limit of "
                                     f"{max_pixels} (max_pixels; decompression-bomb guard)")
                orientation = 1
                try:  # header-only: PNG's getexif() would decode the image, read its eXIf chunk
                    if fmt in ("JPEG", "MPO"):
                        orientation = int(im.getexif().get(0x0112, 1) or 1)
                    elif fmt == "PNG" and im.info.get("exif"):
                        exif = Image.Exif()
                        exif.load(im.info["exif"])
                        orientation = int(exif.get(0x0112, 1) or 1)
                except Exception:  # a broken EXIF block: treated as no rotation
                    orientation = 1
            if fmt == "PNG":
                with Image.open(path) as im:
                    im.verify()  # reads every chunk and checks its CRC: finds truncated files
        except _IndexFail:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _IndexFail(f"refused: image too large ({h}x{w}; decompression-bomb guard)"
                             ) from None
        except UnidentifiedImageError:
            raise _IndexFail("not a recognised image file") from None
        except Exception as e:  # PIL raises many types for broken files
            raise _IndexFail(f"not a readable image ({type(e).__name__}: {e})") from None
    kind = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}.get(fmt or "")
    if kind is None:
        raise _IndexFail(f"unsupported image format {fmt} (cohorts take DICOM, PNG, JPEG)")
    if kind == "jpeg":
        with open(path, "rb") as fh:
            fh.seek(max(path.stat().st_size - 65536, 0))
            if b"\xff\xd9" not in fh.read():
                raise _IndexFail("truncated JPEG (no end-of-image marker)")
    meta: dict[str, Any] = {"mode": mode}
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if orientation != 1:
        meta["exif_orientation"] = orientation
    return kind, (int(h), int(w)), meta


# ----------------------------------------------------------------------------- discovery


def _stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    p = Path(name)
    return p.stem if p.suffix.lower() in DICOM_SUFFIXES | _RASTER_SUFFIXES else name


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    parts = rel.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, g) for g in patterns for p in prefixes)


def _discover(root: Path, recursive: bool, skip_dirs: set[Path], exclude: Sequence[str]
              ) -> tuple[list[tuple[Path, str, str]], int]:
    out: list[tuple[Path, str, str]] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if recursive and not n.startswith(".")
                             and (d / n).resolve() not in skip_dirs)
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = d / fn
            rel = p.relative_to(root).as_posix()
            if _excluded(rel, exclude):
                continue
            suf = p.suffix.lower()
            if suf in DICOM_SUFFIXES:
                kind = "dicom"
            elif suf in _RASTER_SUFFIXES:
                kind = "raster"
            elif suf not in _NOT_IMAGES and p.is_file() and is_dicom_file(p):
                kind = "dicom"
            else:
                ignored += 1
                continue
            out.append((p, rel, kind))
    out.sort(key=lambda t: t[1])
    return out, ignored


# ----------------------------------------------------------------------------- key matching


def _case_keys(rel: str) -> set[str]:
    """Every way ground truth may name this file: relative path (with / without suffix) and its
    trailing parts, file name, stem, and the ``_``-joined CheXpert id of trailing parts."""
    parts = rel.split("/")
    stem = _stem(rel)
    keys: set[str] = set()
    for k in range(1, len(parts) + 1):
        tail = parts[-k:]
        bare = [*tail[:-1], stem]
        keys.update(("/".join(tail), "/".join(bare), "_".join(bare)))
    return keys


class _KeyIndex:
    def __init__(self, cases: Sequence[Case]) -> None:
        self.exact: dict[str, set[int]] = defaultdict(set)
        self.folded: dict[str, set[int]] = defaultdict(set)
        for i, c in enumerate(cases):
            for k in _case_keys(c.path) | {c.image_id}:
                self.exact[k].add(i)
                self.folded[k.casefold()].add(i)

    def lookup(self, ref: str) -> tuple[int | None, int]:
        """-> (case index or None, number of cases the reference matched when ambiguous)."""
        r = str(ref).strip().replace("\\", "/")
        while r.startswith("./"):
            r = r[2:]
        r = r.lstrip("/")
        if not r:
            return None, 0
        parts = r.split("/")
        for k in range(len(parts)):
            cand = "/".join(parts[k:])
            stems = [cand]
            if Path(cand).suffix.lower() in DICOM_SUFFIXES | _RASTER_SUFFIXES:
                stems.append(cand[: -len(Path(cand).suffix)])
            for c in stems:
                for table, key in ((self.exact, c), (self.folded, c.casefold())):
                    hit = table.get(key)
                    if hit:
                        if len(hit) == 1:
                            return next(iter(hit)), 1
                        return None, len(hit)
        return None, 0


class _FindingNames:
    """Canonical finding spelling (first seen wins; matched case-insensitively)."""

    def __init__(self, allowed: Sequence[str] | None) -> None:
        self.order: list[str] = []
        self._fold: dict[str, str] = {}
        self.dropped: Counter[str] = Counter()
        for f in allowed or ():
            self._register(str(f).strip())
        self.restricted = bool(allowed)  # None or empty: every finding the sources name

    def _register(self, f: str) -> str:
        k = f.casefold()
        if k not in self._fold:
            self._fold[k] = f
            self.order.append(f)
        return self._fold[k]

    def get(self, name: str) -> str | None:
        return self._fold.get(str(name).strip().casefold())

    def add(self, name: str) -> str | None:
        f = str(name).strip()
        if not f:
            return None
        known = self.get(f)
        if known is not None:
            return known
        if self.restricted:
            self.dropped[f] += 1
            return None
        return self._register(f)


def _place_box(rec: GTRecord, hw: tuple[int, int], src: str) -> BoxAnnotation:
    """Rescale (``ref_hw`` -> image) and clip a box; raise ValueError when nothing is left."""
    assert rec.box is not None
    H, W = hw
    x, y, w, h = rec.box
    ref = rec.ref_hw or (H, W)
    notes = []
    if tuple(ref) != (H, W):
        sy, sx = H / ref[0], W / ref[1]
        x, y, w, h = x * sx, y * sy, w * sx, h * sy
        notes.append(f"rescaled from {ref[0]}x{ref[1]} to {H}x{W}")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
    desc = f"box (x={rec.box[0]:g}, y={rec.box[1]:g}, w={rec.box[2]:g}, h={rec.box[3]:g})"
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{desc} lies wholly outside the {H}x{W} image")
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        notes.append("clipped to the image")
    c0, c1 = _centre_range(x0, x1 - x0, W)
    r0, r1 = _centre_range(y0, y1 - y0, H)
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"{desc} covers no pixel centre of the {H}x{W} image")
    return BoxAnnotation(x0, y0, x1 - x0, y1 - y0, (int(H), int(W)), (int(ref[0]), int(ref[1])),
                         tuple(float(v) for v in rec.box), f"{src} {rec.where}",  # type: ignore[arg-type]
                         "; ".join(notes))


# ----------------------------------------------------------------------------- loading


def load_cohort(root: str | os.PathLike, *, gt: Any = None, labels_csv: str | os.PathLike | None = None,
                key: str | bytes | None = None, recursive: bool = True, max_images: int | None = None,
                maps: Any = None, findings: Sequence[str] | None = None,
                exclude: Sequence[str] = (), max_pixels: int = DEFAULT_MAX_PIXELS,
                verify: bool = False) -> Cohort:
    """Index a folder of chest X-rays and attach ground truth, labels and external maps.

    Args:
        root: the cohort folder (ids are computed from paths relative to it).
        gt: ground truth: a path (format detected), a :class:`GTSpec`, a dict of its fields, or
            a list of those.
        labels_csv: per-image labels (see :func:`.annotations.parse_labels_csv`).
        key: pseudonymisation key (default ``$VITX_PSEUDONYM_KEY``, else a public default).
        recursive: descend into sub-folders.
        max_images: keep the first N image files in sorted relative-path order.
        maps: external saliency map folders (path, :class:`MapSpec`, dict or a list).
        findings: restrict (and order) the findings; others are dropped with a note.
        exclude: glob patterns on the relative path (a pattern matching a folder excludes it).
        max_pixels: refuse images larger than this (``rows x cols x frames``) before decoding.
        verify: also decode every image once (slow; catches corrupt compressed streams).

    Returns:
        A :class:`Cohort`; unreadable inputs are in ``errors`` (each naming its file), never
        raised.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError / TypeError: invalid arguments (unknown format, bad ref_size, ...).
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise FileNotFoundError(f"cohort folder not found: {root_p}")
    root_p = root_p.resolve()
    if max_images is not None and (isinstance(max_images, bool) or int(max_images) < 1):
        raise ValueError(f"max_images must be a positive integer, got {max_images!r}")
    if int(max_pixels) < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
    gt_specs = as_gt_specs(gt)
    map_specs = as_map_specs(maps)
    the_key, key_default = resolve_key(key)
    errors: list[CohortError] = []
    notes: list[str] = []

    skip_dirs: set[Path] = set()
    for s in [*gt_specs, *map_specs]:
        p = Path(s.path).expanduser()
        if p.is_dir():
            rp = p.resolve()
            if rp == root_p:
                raise ValueError(f"{p} is the cohort root itself; keep masks / maps in their own "
                                 "folder")
            if root_p in rp.parents:
                skip_dirs.add(rp)
    files, ignored = _discover(root_p, recursive, skip_dirs, list(exclude))
    if skip_dirs:
        notes.append(f"{len(skip_dirs)} ground-truth / map folder(s) inside the root not indexed "
                     "as images")
    if ignored:
        notes.append(f"{ignored} non-image file(s) ignored")
    if max_images is not None and len(files) > int(max_images):
        notes.append(f"max_images={int(max_images)}: {len(files) - int(max_images)} more image "
                     "file(s) not loaded")
        files = files[: int(max_images)]

    # ---- index images -----------------------------------------------------------------------
    cases: list[Case] = []
    for path, rel, kind in files:
        try:
            if kind == "dicom":
                hw, meta = _index_dicom(path, int(max_pixels))
                fmt = "dicom"
            else:
                fmt, hw, meta = _index_raster(path, int(max_pixels))
        except _IndexFail as e:
            errors.append(CohortError(rel, str(e), "image"))
            continue
        except OSError as e:
            errors.append(CohortError(rel, f"cannot read file ({e.strerror or type(e).__name__})",
                                      "image"))
            continue
        except Exception as e:  # never let one file stop the cohort; no message text (PHI)
            errors.append(CohortError(rel, f"cannot index this file ({type(e).__name__})", "image"))
            continue
        cases.append(Case(pseudonymous_id(rel, the_key), _stem(rel), rel, fmt, hw, meta=meta,
                          _root=root_p, _max_pixels=int(max_pixels)))
    stems = Counter(c.image_id for c in cases)
    for c in cases:
        if stems[c.image_id] > 1:
            parts = c.path.split("/")
            c.image_id = "_".join([*parts[:-1], _stem(c.path)])
    ids = Counter(c.case_id for c in cases)
    if any(n > 1 for n in ids.values()):  # 64-bit hash: only with a pathological key / input
        raise RuntimeError("pseudonymous case id collision; use another key")
    if key_default:
        notes.append(f"pseudonym key: public default (ids stable, not secret); set {PSEUDONYM_ENV} "
                     "or the config's pseudonym_key for real data")
    index = _KeyIndex(cases)
    names = _FindingNames(findings)

    # ---- labels CSV (parsed first: its column order leads the findings order) ----------------
    label_result = _guarded(parse_labels_csv, labels_csv) if labels_csv is not None else None
    if label_result is not None:
        if label_result.fatal:
            errors.append(CohortError(str(labels_csv), label_result.fatal, "labels"))
        else:
            for f in label_result.findings:
                names.add(f)
        errors += [CohortError(str(labels_csv), f"{w}: {r}", "labels")
                   for w, r in label_result.errors]
        notes += label_result.notes

    # ---- ground truth -----------------------------------------------------------------------
    anns: dict[int, dict[str, list[Annotation]]] = defaultdict(lambda: defaultdict(list))
    absent: dict[int, set[str]] = defaultdict(set)
    bad: dict[int, list[CohortError]] = defaultdict(list)
    for spec in gt_specs:
        src = str(spec.path)
        pr = _guarded(parse_gt, spec)
        if pr.fatal:
            errors.append(CohortError(src, pr.fatal, "ground_truth"))
            continue
        errors += [CohortError(src, f"{w}: {r}", "annotation") for w, r in pr.errors]
        notes += [f"{spec.path.name}: {n}" for n in pr.notes]
        unmatched: list[str] = []
        for rec in pr.records:
            idx, n_amb = index.lookup(rec.key)
            if idx is None:
                if n_amb:
                    errors.append(CohortError(src, f"{rec.where}: image reference {rec.key!r} is "
                                              f"ambiguous ({n_amb} images match)", "annotation"))
                else:
                    unmatched.append(rec.key)
                continue
            finding = names.add(rec.finding)
            if finding is None:
                continue
            case = cases[idx]
            if rec.mask_hw is not None and tuple(rec.mask_hw) != tuple(case.size_hw):
                file = str(spec.path / rec.where) if rec.kind == "file" or (
                    rec.kind == "absent" and rec.path is not None) else src
                bad[idx].append(CohortError(
                    file, f"{rec.where}: mask is {rec.mask_hw[0]}x{rec.mask_hw[1]} but image "
                    f"{case.path} is {case.size_hw[0]}x{case.size_hw[1]}; case skipped (masks are "
                    "never resized)", "annotation", case.case_id))
                continue
            if rec.kind == "absent":
                absent[idx].add(finding)
            elif rec.kind == "rle":
                anns[idx][finding].append(MaskAnnotation(case.size_hw, f"{spec.path.name} {rec.where}",
                                                         rle=rec.rle))
            elif rec.kind == "file":
                anns[idx][finding].append(MaskAnnotation(case.size_hw,
                                                         f"{spec.path.name}/{rec.where}",
                                                         path=rec.path))
            else:
                try:
                    box = _place_box(rec, case.size_hw, spec.path.name)
                except ValueError as e:
                    errors.append(CohortError(src, f"{rec.where}: image {rec.key}: {e}",
                                              "annotation", case.case_id))
                    continue
                anns[idx][finding].append(box)
        clipped = sum(1 for per in anns.values() for lst in per.values() for a in lst
                      if isinstance(a, BoxAnnotation) and "clipped" in a.note
                      and a.source.startswith(spec.path.name + " "))
        if clipped:
            notes.append(f"{spec.path.name}: {clipped} box(es) partly outside their image, clipped")
        if unmatched:
            uniq = sorted(set(unmatched))
            notes.append(f"{spec.path.name}: {len(unmatched)} entr(y/ies) for {len(uniq)} image(s) "
                         f"not in the cohort (e.g. {', '.join(uniq[:3])})")

    # ---- labels CSV rows ----------------------------------------------------------------------
    csv_labels: dict[int, dict[str, int | None]] = {}
    groups: dict[int, str] = {}
    if label_result is not None and not label_result.fatal:
        unmatched_rows = 0
        for row in label_result.rows:
            idx, n_amb = index.lookup(row.key)
            if idx is None:
                if n_amb:
                    errors.append(CohortError(str(labels_csv), f"{row.where}: image reference "
                                              f"{row.key!r} is ambiguous ({n_amb} images match)",
                                              "labels"))
                else:
                    unmatched_rows += 1
                continue
            if idx in csv_labels:
                errors.append(CohortError(str(labels_csv), f"{row.where}: second row for image "
                                          f"{row.key!r} ignored", "labels", cases[idx].case_id))
                continue
            csv_labels[idx] = {f2: v for f, v in row.labels.items()
                               if (f2 := names.get(f)) is not None}
            if row.patient:
                groups[idx] = pseudonymous_id("patient:" + row.patient, the_key, prefix="p_",
                                              digits=12)
        if unmatched_rows:
            notes.append(f"{Path(str(labels_csv)).name}: {unmatched_rows} row(s) for images not in "
                         "the cohort")

    # ---- assemble ---------------------------------------------------------------------------
    conflicts = Counter()
    for idx, c in enumerate(cases):
        per = anns.get(idx, {})
        c.annotations = {f: list(per[f]) for f in names.order if per.get(f)}
        row = csv_labels.get(idx, {})
        for f in names.order:
            gt_label = 1 if per.get(f) else (0 if f in absent.get(idx, ()) else None)
            v = row.get(f)
            c.labels[f] = v if v is not None else gt_label
            if v == 0 and per.get(f):
                conflicts["label 0 with an annotation"] += 1
            elif v == 1 and f in absent.get(idx, ()):
                conflicts["label 1 but the ground truth says absent"] += 1
        c.group_id = groups.get(idx)
    if conflicts:
        notes.append("label / ground-truth disagreements kept as given: "
                     + ", ".join(f"{n} x {k}" for k, n in conflicts.items()))
    if names.dropped:
        notes.append("findings outside the configured list ignored: "
                     + ", ".join(f"{k} ({n})" for k, n in sorted(names.dropped.items())))

    # ---- external maps ------------------------------------------------------------------------
    for ms in map_specs:
        scan = _guarded(scan_maps, ms)
        src = str(ms.path)
        if scan.fatal:
            errors.append(CohortError(src, scan.fatal, "map"))
            continue
        errors += [CohortError(src, f"{w}: {r}", "map") for w, r in scan.errors]
        notes += scan.notes
        missing = 0
        for mrec in scan.records:
            idx, method, finding = _resolve_map(mrec, index, names)
            if idx is None or method is None:
                missing += 1
                continue
            slot = cases[idx].maps.setdefault(method, {})
            if finding in slot:
                errors.append(CohortError(src, f"{mrec.path.relative_to(ms.path).as_posix()}: "
                                          f"second map for method {method!r}, finding {finding!r} "
                                          "ignored", "map", cases[idx].case_id))
                continue
            slot[finding] = MapRef(method, finding, mrec.path, mrec.kind)
        if missing:
            notes.append(f"{ms.path.name}: {missing} map file(s) match no cohort image")

    # ---- cases with inconsistent ground truth are skipped ----------------------------------------
    keep = []
    for idx, c in enumerate(cases):
        if idx in bad:
            errors += bad[idx]
        else:
            keep.append(c)
    if verify:
        ok = []
        for c in keep:
            try:
                c.load_image()
            except ImageReadError as e:
                errors.append(CohortError(c.path, str(e).removeprefix(f"{Path(c.path).name}: "),
                                          "image", c.case_id))
                continue
            ok.append(c)
        keep = ok
    return Cohort(keep, errors, list(names.order), root_p, notes, key_default)


class _Failed:
    """Stands in for a parser result when the parser itself raised (unexpected input)."""

    def __init__(self, reason: str) -> None:
        self.fatal = reason
        self.errors: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.records: list[Any] = []


def _guarded(parse: Any, arg: Any) -> Any:
    try:
        return parse(arg)
    except (MemoryError, RecursionError, OSError, ValueError, TypeError, KeyError) as e:
        return _Failed(f"cannot parse ({type(e).__name__}: {e})")


def _resolve_map(rec: Any, index: _KeyIndex, names: _FindingNames
                 ) -> tuple[int | None, str | None, str | None]:
    """A map record -> (case index, method, finding)."""
    if rec.key is not None:
        idx, _ = index.lookup(rec.key)
        finding = (names.get(rec.finding) or rec.finding) if rec.finding else None
        return idx, rec.method, finding
    name = rec.combined or ""
    cuts = [i for i, ch in enumerate(name) if ch == "_"]
    for i in reversed(cuts):
        idx, _ = index.lookup(name[:i])
        if idx is None:
            continue
        suffix = name[i + 1:]
        if not suffix:
            return None, None, None
        if rec.kind == "chexlocalize":  # <id>_<Task>: the suffix is the finding
            return idx, rec.method, names.get(suffix) or suffix
        finding = (names.get(rec.finding) or rec.finding) if rec.finding else None
        return idx, suffix, finding
    return None, None, None


def load_cohort_from_config(cfg: Any) -> Cohort:
    """Load the cohort a :class:`~vitx_core.data.config.VitxConfig` describes
    (``$VITX_PSEUDONYM_KEY`` overrides the config's ``pseudonym_key``)."""
    key = cfg.pseudonym_key()
    return load_cohort(cfg.cohort.root, gt=list(cfg.ground_truth), labels_csv=cfg.cohort.labels_csv,
                       key=key, recursive=cfg.cohort.recursive, max_images=cfg.cohort.max_images,
                       maps=list(cfg.maps), findings=cfg.cohort.findings,
                       exclude=cfg.cohort.exclude, max_pixels=cfg.cohort.max_pixels,
                       verify=cfg.cohort.verify)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PSEUDONYM_ENV",
    "Case",
    "Cohort",
    "CohortError",
    "GTSpec",
    "MapSpec",
    "load_cohort",
    "load_cohort_from_config",
    "pseudonymous_id",
]
