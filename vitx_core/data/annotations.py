"""Ground truth for a cohort: CheXlocalize RLE JSON, CSV boxes (NIH layout too), mask folders, COCO.

Every annotation ends in the ORIGINAL image's pixel grid (DICOM ``Rows x Columns``, PNG/JPEG size),
one finding at a time. Parsing (this module) and attaching to cases (:mod:`.cohort`) are separate:
a parser turns a file into :class:`GTRecord` items keyed by the image reference written in the
file (stem, file name, NIH ``Image Index``, CheXpert id); the cohort resolves those keys to cases,
checks sizes and builds the lazy :class:`MaskAnnotation` / :class:`BoxAnnotation` objects.

Conventions (tested in ``tests/data/test_annotations.py``):

* Coordinates are continuous, origin top-left: pixel ``(i, j)`` (row, column) spans
  ``[j, j + 1) x [i, i + 1)``, its centre is ``(j + 0.5, i + 0.5)``.
* **Box -> mask by pixel centres**: pixel ``(i, j)`` is inside box ``(x, y, w, h)`` when
  ``x <= j + 0.5 < x + w`` and ``y <= i + 0.5 < y + h``. An integer box ``(x, y, w, h)`` therefore
  covers columns ``x .. x + w - 1`` and rows ``y .. y + h - 1`` (the tight extent of a mask).
  ``xmin, ymin, xmax, ymax`` columns are read as continuous edges: ``w = xmax - xmin``.
* Boxes drawn on another grid (``ref_hw``; NIH boxes refer to the 1024 x 1024 PNGs) are scaled by
  ``(W / ref_w, H / ref_h)`` before the rule above. A box partly outside the image is clipped
  (noted); a box wholly outside, or covering no pixel centre, is an error for that annotation.
* Masks are never resized: a mask (RLE ``size`` or mask file) whose size differs from the image
  is an error for that case.
* **All-zero masks mean "finding absent"** (label 0, no annotation), never an empty positive.
* Mask files are binarised at ``> 0`` (grey levels / palette indices; for RGB(A) files any colour
  channel ``> 0``, alpha ignored). JPEG masks are refused (lossy: ``> 0`` would pick up noise).
  Each mask file is read once when the cohort loads (size and emptiness), then released and
  decoded again on demand; RLE masks are checked from their run lengths without decoding.
* CSV headers are matched case-insensitively with punctuation dropped (``"Bbox [x"`` -> ``bboxx``)
  and the values are read through the SAME normalised column map (never by the raw header text).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

GT_FORMATS: tuple[str, ...] = ("auto", "chexlocalize", "csv", "nih", "masks", "coco")
#: NIH ChestX-ray14 ``BBox_List_2017.csv`` boxes refer to the 1024 x 1024 PNGs.
NIH_REF_HW: tuple[int, int] = (1024, 1024)
#: NIH's box file spells one finding differently from its label file (``Data_Entry_2017.csv``);
#: format ``nih`` uses the label file's names so boxes and labels join.
NIH_FINDING_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ".tif", ".tiff", ".bmp"}


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class GTSpec:
    """One ground-truth source.

    Attributes:
        path: JSON / CSV file or mask folder.
        format: ``auto`` (from the path: folder -> ``masks``, ``.csv`` -> ``csv``, ``.json`` ->
            ``coco`` when it has ``images``/``annotations``/``categories`` lists, else
            ``chexlocalize``), ``chexlocalize``, ``csv``, ``nih`` (= ``csv`` with ``ref_size``
            1024 x 1024 unless given, and NIH's ``Infiltrate`` read as ``Infiltration``, the
            label file's name), ``masks`` or ``coco``.
        finding: finding name for single-finding sources (a CSV without a finding column, mask
            files directly in the mask folder).
        ref_size: ``(h, w)`` (or one int) of the grid boxes were drawn on; rescaled to each
            image. Per-row ``OrigWidth`` / ``OrigHeight`` columns take precedence.
    """

    path: str | Path
    format: str = "auto"
    finding: str | None = None
    ref_size: tuple[int, int] | int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        fmt = str(self.format).strip().lower()
        if fmt not in GT_FORMATS:
            raise ValueError(f"unknown ground-truth format {self.format!r}; allowed: "
                             f"{', '.join(GT_FORMATS)}")
        object.__setattr__(self, "format", fmt)
        if self.ref_size is not None:
            rs = self.ref_size
            vals = (rs, rs) if isinstance(rs, (int, np.integer)) else tuple(rs)
            if (len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                      or v <= 0 for v in vals)):
                raise ValueError(f"ref_size must be (h, w) positive integers, got {self.ref_size!r}")
            object.__setattr__(self, "ref_size", (int(vals[0]), int(vals[1])))
        if self.finding is not None and not str(self.finding).strip():
            raise ValueError("finding must be a non-empty name")

    def resolved_format(self) -> str:
        return detect_format(self.path) if self.format == "auto" else self.format


def detect_format(path: str | Path) -> str:
    """``auto`` -> a concrete format from the path (and, for JSON, its top-level keys)."""
    p = Path(path)
    if p.is_dir():
        return "masks"
    suf = p.suffix.lower()
    if suf in (".csv", ".tsv", ".txt"):
        return "csv"
    if suf == ".json":
        try:
            with open(p, "rb") as fh:
                head = fh.read(1 << 16).decode("utf-8", "replace")
        except OSError:
            return "chexlocalize"
        if all(f'"{k}"' in head for k in ("images", "annotations")) or '"categories"' in head:
            return "coco"
        return "chexlocalize"
    raise ValueError(f"cannot tell the ground-truth format of {p.name}; give format= one of "
                     f"{', '.join(GT_FORMATS[1:])}")


def as_gt_specs(gt: Any) -> list[GTSpec]:
    """``None`` | path | :class:`GTSpec` | dict | a list of those -> a list of specs."""
    if gt is None:
        return []
    if isinstance(gt, (GTSpec, str, Path, dict)):
        gt = [gt]
    out = []
    for g in gt:
        if isinstance(g, GTSpec):
            out.append(g)
        elif isinstance(g, (str, Path)):
            out.append(GTSpec(g))
        elif isinstance(g, dict):
            out.append(GTSpec(**g))
        else:
            raise TypeError(f"ground truth must be a path, GTSpec or dict, got {type(g).__name__}")
    return out


# ----------------------------------------------------------------------------- annotations


def box_to_mask(box: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """``(x, y, w, h)`` in pixels -> bool ``(H, W)`` by the pixel-centre rule (module docstring).

    Pixel ``(i, j)`` is inside when ``x <= j + 0.5 < x + w`` and ``y <= i + 0.5 < y + h``.
    """
    x, y, w, h = (float(v) for v in box)
    H, W = int(hw[0]), int(hw[1])
    out = np.zeros((H, W), dtype=bool)
    c0, c1 = _centre_range(x, w, W)
    r0, r1 = _centre_range(y, h, H)
    if c1 > c0 and r1 > r0:
        out[r0:r1, c0:c1] = True
    return out


def _centre_range(start: float, size: float, n: int) -> tuple[int, int]:
    """Indices ``k`` with ``start <= k + 0.5 < start + size``, clipped to ``[0, n)``."""
    lo = math.ceil(start - 0.5)
    hi = math.ceil(start + size - 0.5)
    return max(lo, 0), min(hi, n)


@dataclass(frozen=True)
class BoxAnnotation:
    """A box on the case's ORIGINAL pixel grid (already rescaled from ``ref_hw`` and clipped).

    Attributes:
        x, y, w, h: continuous pixel coordinates, origin top-left (see the module docstring).
        hw: the image grid ``(H, W)`` the box lives on.
        ref_hw: the grid the source drew it on (equal to ``hw`` when no rescaling happened).
        raw: ``(x, y, w, h)`` as written in the source (before rescaling / clipping).
        source: file name and line / entry it came from.
        note: what was done to it (rescaled, clipped), empty when nothing.
    """

    x: float
    y: float
    w: float
    h: float
    hw: tuple[int, int]
    ref_hw: tuple[int, int]
    raw: tuple[float, float, float, float]
    source: str
    note: str = ""
    kind: Literal["box"] = field(default="box", init=False)

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    def mask(self) -> np.ndarray:
        """bool ``(H, W)`` by the pixel-centre rule."""
        return box_to_mask(self.xywh, self.hw)


@dataclass(frozen=True)
class MaskAnnotation:
    """A pixel mask on the case's ORIGINAL grid, decoded on demand (RLE text or a mask file).

    Attributes:
        hw: ``(H, W)`` of the mask (checked equal to the image's when attached).
        source: file name (and entry) it came from.
    """

    hw: tuple[int, int]
    source: str
    rle: dict[str, Any] | None = field(default=None, repr=False)
    path: Path | None = field(default=None, repr=False)
    kind: Literal["mask"] = field(default="mask", init=False)

    def mask(self) -> np.ndarray:
        """bool ``(H, W)``: pycocotools decode of the RLE, or the mask file binarised at > 0."""
        if self.rle is not None:
            m = decode_rle(self.rle)
        elif self.path is not None:
            m = read_mask_file(self.path)
        else:  # pragma: no cover - constructed by the loader only
            raise ValueError("mask annotation without RLE or file")
        if m.shape != tuple(self.hw):
            raise ValueError(f"{self.source}: mask is {m.shape[0]}x{m.shape[1]}, expected "
                             f"{self.hw[0]}x{self.hw[1]}")
        return m


Annotation = BoxAnnotation | MaskAnnotation


# ----------------------------------------------------------------------------- RLE


def rle_counts(counts: str | bytes | list | tuple) -> list[int]:
    """COCO compressed RLE text (or a plain list) -> run lengths, validated in Python.

    Parsed here (same LEB128-like scheme as pycocotools ``rleFrString``) so malformed counts are
    reported instead of handed to pycocotools' C decoder, which does not bounds-check them.
    """
    if isinstance(counts, (list, tuple)):
        out = [int(c) for c in counts]
    else:
        s = counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
        out = []
        p, n = 0, len(s)
        while p < n:
            x, k, more = 0, 0, True
            while more:
                if p >= n:
                    raise ValueError("RLE counts string ends inside a number")
                c = ord(s[p]) - 48
                if not 0 <= c < 64:
                    raise ValueError(f"invalid character {s[p]!r} in RLE counts")
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(out) > 2:
                x += out[-2]
            out.append(x)
    if any(c < 0 for c in out):
        raise ValueError("negative run length in RLE counts")
    return out


def check_rle(rle: Any) -> tuple[tuple[int, int], int]:
    """Validate ``{"size": [h, w], "counts": ...}`` -> ``((h, w), foreground pixel count)``."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError('expected {"size": [h, w], "counts": ...}')
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"size must be [h, w] positive integers, got {size!r}")
    if not isinstance(rle["counts"], (str, bytes, list, tuple)):
        raise ValueError(f"counts must be a string or a list, got {type(rle['counts']).__name__}")
    runs = rle_counts(rle["counts"])
    h, w = int(size[0]), int(size[1])
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, size {h}x{w} needs {h * w}")
    return (h, w), int(sum(runs[1::2]))


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed text / bytes, or list counts) -> bool ``(h, w)`` with pycocotools."""
    from pycocotools import mask as mask_utils

    (h, w), _ = check_rle(rle)
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
               else bytes(counts)}
    with warnings.catch_warnings():
        # pycocotools 2.0.x under NumPy 2 warns about __array__(copy=...): harmless, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(mask_utils.decode(obj), dtype=bool)


# ----------------------------------------------------------------------------- records


@dataclass
class GTRecord:
    """One parsed ground-truth item, before it is matched to a case.

    ``kind``: ``rle`` (mask), ``file`` (mask file), ``box`` or ``absent`` (the source says the
    finding is not there: an all-zero mask, or a COCO image without that category).
    """

    key: str
    finding: str
    kind: Literal["rle", "file", "box", "absent"]
    where: str
    rle: dict[str, Any] | None = None
    path: Path | None = None
    box: tuple[float, float, float, float] | None = None
    ref_hw: tuple[int, int] | None = None
    mask_hw: tuple[int, int] | None = None


@dataclass
class ParseResult:
    """What a parser made of one source: records, per-item errors ``(where, reason)``, notes,
    and ``fatal`` (the whole source was unusable: missing, malformed, wrong layout)."""

    source: str
    records: list[GTRecord] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None


def parse_gt(spec: GTSpec) -> ParseResult:
    """Parse one ground-truth source (never raises for bad input: see :class:`ParseResult`)."""
    src = spec.path.name or str(spec.path)
    if not spec.path.exists():
        return ParseResult(src, fatal=f"ground-truth path not found: {spec.path}")
    try:
        fmt = spec.resolved_format()
    except ValueError as e:
        return ParseResult(src, fatal=str(e))
    parser: dict[str, Callable[[GTSpec], ParseResult]] = {
        "chexlocalize": parse_chexlocalize, "csv": parse_box_csv, "nih": parse_box_csv,
        "masks": parse_mask_dir, "coco": parse_coco}
    return parser[fmt](spec)


def _load_json(path: Path, res: ParseResult) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        res.fatal = f"malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except UnicodeDecodeError as e:
        res.fatal = f"malformed JSON (not UTF-8 text: {e.reason})"
    except OSError as e:
        res.fatal = f"cannot read file ({e.strerror or e})"
    return None


def parse_chexlocalize(spec: GTSpec) -> ParseResult:
    """``{image_id: {finding: {"size": [h, w], "counts": RLE}}}`` -> rle / absent records.

    Keys may be plain stems or CheXpert ids (``patient64622_study1_view1_frontal``); an
    ``img_size`` entry (raw CheXlocalize polygon files) is skipped with a note.
    """
    res = ParseResult(spec.path.name)
    data = _load_json(spec.path, res)
    if res.fatal:
        return res
    if not isinstance(data, dict):
        res.fatal = ("expected a JSON object {image_id: {finding: {size, counts}}}, got "
                     f"{type(data).__name__}")
        return res
    polygons = 0
    for img_key, per_finding in data.items():
        if not isinstance(per_finding, dict):
            res.errors.append((f"entry {img_key!r}", "expected {finding: {size, counts}}"))
            continue
        for finding, rle in per_finding.items():
            where = f"entry {img_key!r} / {finding!r}"
            if finding == "img_size":
                continue
            if isinstance(rle, list):
                polygons += 1
                continue
            try:
                hw, area = check_rle(rle)
            except ValueError as e:
                res.errors.append((where, f"bad RLE: {e}"))
                continue
            if area == 0:
                res.records.append(GTRecord(str(img_key), str(finding), "absent", where,
                                            mask_hw=hw))
            else:
                res.records.append(GTRecord(str(img_key), str(finding), "rle", where,
                                            rle={"size": list(hw), "counts": rle["counts"]},
                                            mask_hw=hw))
    if polygons:
        res.errors.append(("polygons", f"{polygons} entries hold polygon lists (CheXlocalize "
                           "raw annotations); convert them to RLE segmentations first "
                           "(CheXlocalize annotation_to_segmentation.py)"))
    return res


# ---- CSV boxes -------------------------------------------------------------------------------
def norm_header(text: str) -> str:
    """Header cell -> lowercase letters and digits only (``"Bbox [x"`` -> ``bboxx``)."""
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


IMAGE_COLUMNS = ("filename", "file", "image", "imageindex", "imageid", "imagename", "imagepath",
                 "path", "dicomid", "cxrid", "imgid")
FINDING_COLUMNS = ("finding", "findinglabel", "label", "class", "classname", "category",
                   "pathology", "task")
PATIENT_COLUMNS = ("patientid", "patient", "subjectid", "subject")
_BOX_COLUMNS = {
    "x": ("x", "bboxx", "boxx", "left"),
    "y": ("y", "bboxy", "boxy", "top"),
    "w": ("w", "width", "bboxw", "boxw", "bboxwidth", "boxwidth"),
    "h": ("h", "height", "bboxh", "boxh", "bboxheight", "boxheight"),
    "xmin": ("xmin", "x1", "minx", "bboxxmin"),
    "ymin": ("ymin", "y1", "miny", "bboxymin"),
    "xmax": ("xmax", "x2", "maxx", "bboxxmax"),
    "ymax": ("ymax", "y2", "maxy", "bboxymax"),
    "ref_w": ("origwidth", "originalwidth", "originalimagewidth", "imagewidth", "refwidth"),
    "ref_h": ("origheight", "originalheight", "originalimageheight", "imageheight", "refheight"),
}


class _CsvLayoutError(ValueError):
    pass


def _read_csv_rows(path: Path, res: ParseResult) -> list[list[str]] | None:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        res.fatal = f"malformed CSV (not UTF-8 text: {e.reason} at byte {e.start})"
        return None
    except OSError as e:
        res.fatal = f"cannot read file ({e.strerror or e})"
        return None
    if "\x00" in text:
        res.fatal = "malformed CSV (contains NUL bytes: a binary file?)"
        return None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        res.fatal = f"malformed CSV ({e})"
        return None
    if not rows or not any(c.strip() for c in rows[0]):
        res.fatal = "empty CSV (no header row)"
        return None
    return rows


def _column_map(header: list[str], wanted: dict[str, Iterable[str]]) -> dict[str, int]:
    """Role -> column index via normalised header names; two columns for one role is an error."""
    norm = [norm_header(h) for h in header]
    out: dict[str, int] = {}
    for role, aliases in wanted.items():
        hits = [i for i, n in enumerate(norm) if n and n in set(aliases)]
        if len(hits) > 1:
            raise _CsvLayoutError(f"ambiguous header: columns {', '.join(repr(header[i]) for i in hits)}"
                                  f" all mean {role!r}")
        if hits:
            out[role] = hits[0]
    return out


def _cell(row: list[str], idx: int | None) -> str:
    return row[idx].strip() if idx is not None and idx < len(row) else ""


def _number(text: str, name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}={text!r} is not finite")
    return v


def parse_box_csv(spec: GTSpec) -> ParseResult:
    """CSV boxes -> box records (see the module docstring for the accepted headers).

    Image column: ``filename|file|image|Image Index|image_id|path``; finding column:
    ``finding|label|Finding Label|class|category`` (or ``spec.finding``); coordinates ``x, y, w,
    h`` (also ``width``/``height`` and NIH's ``Bbox [x, y, w, h]``) or ``xmin, ymin, xmax,
    ymax``; optional per-row reference size ``OrigWidth, OrigHeight``. Rows with all coordinates
    empty name an image without a box (counted in a note).
    """
    res = ParseResult(spec.path.name)
    rows = _read_csv_rows(spec.path, res)
    if rows is None:
        return res
    header = rows[0]
    wanted: dict[str, Iterable[str]] = {"image": IMAGE_COLUMNS, "finding": FINDING_COLUMNS,
                                        **_BOX_COLUMNS}
    try:
        cols = _column_map(header, wanted)
    except _CsvLayoutError as e:
        res.fatal = str(e)
        return res
    shown = ", ".join(repr(h) for h in header if h.strip())
    if "image" not in cols:
        res.fatal = (f"no image column (one of filename, file, image, Image Index, image_id, "
                     f"path; case-insensitive) in header [{shown}]")
        return res
    xywh = all(k in cols for k in ("x", "y", "w", "h"))
    corners = all(k in cols for k in ("xmin", "ymin", "xmax", "ymax"))
    if xywh == corners:
        res.fatal = ("need box columns x, y, w, h (or width, height; NIH 'Bbox [x,y,w,h]') or "
                     f"xmin, ymin, xmax, ymax{' (not both)' if xywh else ''}; header [{shown}]")
        return res
    if "finding" not in cols and spec.finding is None:
        res.fatal = (f"no finding column (finding, label, Finding Label, class, category) in "
                     f"header [{shown}]; give finding= for a single-finding file")
        return res
    ref_default = spec.ref_size or (NIH_REF_HW if spec.format == "nih" else None)
    coord_keys = ("x", "y", "w", "h") if xywh else ("xmin", "ymin", "xmax", "ymax")
    without_box = 0
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"line {lineno}"
        image = _cell(row, cols["image"])
        finding = _cell(row, cols.get("finding")) or (spec.finding or "")
        if not image:
            res.errors.append((where, "empty image name"))
            continue
        if not finding:
            res.errors.append((where, f"image {image}: empty finding"))
            continue
        if spec.format == "nih":
            finding = NIH_FINDING_ALIASES.get(finding, finding)
        raw = [_cell(row, cols[k]) for k in coord_keys]
        if not any(raw):
            without_box += 1
            continue
        try:
            a, b, c, d = (_number(t, header[cols[k]].strip() or k) for t, k in zip(raw, coord_keys))
            box = (a, b, c, d) if xywh else (a, b, c - a, d - b)
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"box has non-positive width/height (w={box[2]:g}, h={box[3]:g})")
            ref_hw = ref_default
            rw, rh = _cell(row, cols.get("ref_w")), _cell(row, cols.get("ref_h"))
            if rw or rh:
                wv, hv = _number(rw, "OrigWidth"), _number(rh, "OrigHeight")
                if wv <= 0 or hv <= 0 or wv != int(wv) or hv != int(hv):
                    raise ValueError(f"reference size {rw}x{rh} is not a positive integer size")
                ref_hw = (int(hv), int(wv))
        except ValueError as e:
            res.errors.append((where, f"image {image}: {e}"))
            continue
        res.records.append(GTRecord(image, finding, "box", where, box=box, ref_hw=ref_hw))
    if without_box:
        res.notes.append(f"{without_box} row(s) name an image without box coordinates (no box)")
    return res


# ---- mask folders ----------------------------------------------------------------------------
def read_mask_file(path: Path) -> np.ndarray:
    """A mask image -> bool ``(H, W)``, binarised at ``> 0`` (RGB(A): any colour channel)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        a = np.asarray(im)
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "La"):
        ch = 1 if mode in ("LA", "PA", "La") else 3
        return np.asarray(a[..., :ch] > 0).any(axis=-1)
    return np.asarray(a > 0) if a.ndim == 2 else np.asarray(a > 0).any(axis=-1)


def _mask_file_info(path: Path) -> tuple[tuple[int, int], bool]:
    """Size ``(h, w)`` and whether the mask has any foreground (read once, then released)."""
    from PIL import Image

    with Image.open(path) as im:
        fmt = im.format
    if fmt == "JPEG":
        raise ValueError("JPEG masks are refused (lossy compression: '> 0' picks up noise); "
                         "save masks as PNG")
    m = read_mask_file(path)
    return (int(m.shape[0]), int(m.shape[1])), bool(m.any())


def _mask_key(path: Path) -> str:
    return path.stem if path.suffix.lower() in MASK_SUFFIXES | _IMAGE_SUFFIXES else path.name


def parse_mask_dir(spec: GTSpec) -> ParseResult:
    """``<dir>/<finding>/<stem>.png`` and/or ``<dir>/<stem>.png`` (needs ``spec.finding``)."""
    res = ParseResult(spec.path.name or str(spec.path))
    root = spec.path
    if not root.is_dir():
        res.fatal = f"mask folder not found or not a folder: {root}"
        return res
    items: list[tuple[str, Path]] = []
    top = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top_masks = [p for p in top if p.suffix.lower() in MASK_SUFFIXES | {".jpg", ".jpeg"}]
    if top_masks:
        if spec.finding is None:
            msg = (f"{len(top_masks)} mask file(s) directly in {root.name}/ but no finding= given "
                   "(use <dir>/<finding>/<stem>.png or set finding)")
            if not subdirs:
                res.fatal = msg
                return res
            res.errors.append((root.name + "/", msg))
        else:
            items += [(spec.finding, p) for p in top_masks]
    for d in subdirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in MASK_SUFFIXES | {".jpg", ".jpeg"})
        items += [(d.name, p) for p in files]
    if not items:
        res.fatal = f"no mask files (.png) in {root} or its finding subfolders"
        return res
    for finding, p in items:
        where = p.relative_to(root).as_posix()
        try:
            hw, nonempty = _mask_file_info(p)
        except ValueError as e:
            res.errors.append((where, str(e)))
            continue
        except Exception as e:  # PIL raises many types for broken files
            res.errors.append((where, f"unreadable mask image ({type(e).__name__}: {e})"))
            continue
        kind: Literal["file", "absent"] = "file" if nonempty else "absent"
        res.records.append(GTRecord(_mask_key(p), finding, kind, where, path=p, mask_hw=hw))
    return res


# ---- COCO ------------------------------------------------------------------------------------
def parse_coco(spec: GTSpec) -> ParseResult:
    """COCO detection JSON: ``images`` (file_name, width, height), ``annotations`` (bbox
    ``[x, y, w, h]``), ``categories`` (id -> finding name) -> box records on each image's
    declared grid. A listed image without annotations of a category means that finding is absent
    there (label 0). ``segmentation`` fields are not read (boxes only; noted)."""
    res = ParseResult(spec.path.name)
    data = _load_json(spec.path, res)
    if res.fatal:
        return res
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        res.fatal = "not a COCO detection file: needs lists 'images', 'annotations', 'categories'"
        return res
    cats: dict[Any, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            res.errors.append((f"categories[{i}]", "needs 'id' and 'name'"))
            continue
        cats[c["id"]] = str(c["name"]).strip()
    images: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not str(im.get("file_name", "")).strip():
            res.errors.append((f"images[{i}]", "needs 'id' and 'file_name'"))
            continue
        w, h = im.get("width"), im.get("height")
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h))
        images[im["id"]] = (str(im["file_name"]).strip(), (int(h), int(w)) if ok else None)
    seen: set[tuple[Any, Any]] = set()
    segm = 0
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            res.errors.append((where, "not an object"))
            continue
        if a.get("image_id") not in images:
            res.errors.append((where, f"image_id {a.get('image_id')!r} not in 'images'"))
            continue
        if a.get("category_id") not in cats:
            res.errors.append((where, f"category_id {a.get('category_id')!r} not in 'categories'"))
            continue
        name, ref_hw = images[a["image_id"]]
        bbox = a.get("bbox")
        try:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
            box = tuple(_number(str(v), k) for v, k in zip(bbox, "xywh"))
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"bbox has non-positive width/height {bbox!r}")
        except ValueError as e:
            res.errors.append((where, f"image {name}: {e}"))
            continue
        segm += bool(a.get("segmentation"))
        seen.add((a["image_id"], a["category_id"]))
        res.records.append(GTRecord(name, cats[a["category_id"]], "box", where,
                                    box=box, ref_hw=ref_hw))  # type: ignore[arg-type]
    for img_id, (name, _) in images.items():
        for cat_id, cat in cats.items():
            if (img_id, cat_id) not in seen:
                res.records.append(GTRecord(name, cat, "absent", f"image {name}"))
    if segm:
        res.notes.append(f"{segm} COCO annotation(s) carry a segmentation; only their bbox is used")
    return res


# ----------------------------------------------------------------------------- labels CSV

_POSITIVE = {"1", "1.0", "true", "yes", "y", "positive", "pos"}
_NEGATIVE = {"0", "0.0", "false", "no", "n", "negative", "neg"}
_UNKNOWN = {"", "-1", "-1.0", "nan", "na", "n/a", "none", "null", "u", "uncertain", "unknown", "?"}
#: Columns never read as findings even if their values happen to be 0/1 (NIH Data_Entry etc.).
_METADATA_COLUMNS = {"followup", "followupnumber", "patientage", "age", "patientgender", "gender",
                     "sex", "patientsex", "viewposition", "view", "frontallateral", "appa",
                     "originalimagewidth", "originalimageheight", "originalimagepixelspacingx",
                     "height", "width", "y", "x", "split", "fold", "study", "studyid", "nofinding"}
MULTI_LABEL_COLUMNS = ("findinglabels", "labels", "findings")


def label_value(text: str) -> int | str | None:
    """``1/0`` (and yes/no, true/false, 1.0/0.0) -> int; blank, ``-1`` (CheXpert uncertain),
    ``nan`` -> None; anything else is returned unchanged (the column is not a label column)."""
    t = text.strip().lower()
    if t in _POSITIVE:
        return 1
    if t in _NEGATIVE:
        return 0
    if t in _UNKNOWN:
        return None
    return text


@dataclass
class LabelRow:
    key: str
    labels: dict[str, int | None]
    patient: str | None
    where: str


@dataclass
class LabelsResult:
    source: str
    findings: list[str] = field(default_factory=list)
    rows: list[LabelRow] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None


def parse_labels_csv(path: str | Path) -> LabelsResult:
    """Labels CSV -> per-image labels (1 / 0 / None) and an optional patient id.

    Layouts: an image column plus one 0/1 column per finding (other columns whose values are not
    all 0/1/blank are ignored, with a note), or NIH's ``Finding Labels`` column
    (``A|B``; ``No Finding``) where every finding seen in the column is 0 unless listed.
    Patient column: ``patient_id|patient|Patient ID`` (kept only as a keyed hash by the cohort).
    """
    p = Path(path)
    res = LabelsResult(p.name)
    if not p.is_file():
        res.fatal = f"labels CSV not found: {p}"
        return res
    tmp = ParseResult(p.name)
    rows = _read_csv_rows(p, tmp)
    if rows is None:
        res.fatal = tmp.fatal
        return res
    header = rows[0]
    try:
        cols = _column_map(header, {"image": IMAGE_COLUMNS, "patient": PATIENT_COLUMNS,
                                    "multi": MULTI_LABEL_COLUMNS})
    except _CsvLayoutError as e:
        res.fatal = str(e)
        return res
    if "image" not in cols:
        res.fatal = ("no image column (one of filename, file, image, Image Index, image_id, path) "
                     f"in header [{', '.join(repr(h) for h in header if h.strip())}]")
        return res
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    if "multi" in cols:
        mi = cols["multi"]
        names: dict[str, str] = {}
        for _, r in body:
            for t in _cell(r, mi).split("|"):
                t = t.strip()
                if t and norm_header(t) != "nofinding":
                    names.setdefault(t.casefold(), t)
        res.findings = list(names.values())
        for n, r in body:
            key = _cell(r, cols["image"])
            if not key:
                res.errors.append((f"line {n}", "empty image name"))
                continue
            listed = {t.strip().casefold() for t in _cell(r, mi).split("|") if t.strip()}
            labels: dict[str, int | None] = {f: int(f.casefold() in listed) for f in res.findings}
            res.rows.append(LabelRow(key, labels, _cell(r, cols.get("patient")) or None,
                                     f"line {n}"))
        return res
    skip = {cols["image"], cols.get("patient")}
    label_cols: list[int] = []
    ignored: list[str] = []
    for i, h in enumerate(header):
        if i in skip or not h.strip():
            continue
        if norm_header(h) in _METADATA_COLUMNS:
            ignored.append(h.strip())
            continue
        vals = [label_value(_cell(r, i)) for _, r in body]
        if all(v is None or isinstance(v, int) for v in vals):
            label_cols.append(i)
        else:
            ignored.append(h.strip())
    if ignored:
        res.notes.append(f"{p.name}: column(s) not read as labels (values not 0/1): "
                         f"{', '.join(ignored)}")
    if not label_cols:
        res.fatal = ("no label columns: expected one 0/1 column per finding (blank / -1 = "
                     "unknown) or a 'Finding Labels' column")
        return res
    res.findings = [header[i].strip() for i in label_cols]
    for n, r in body:
        key = _cell(r, cols["image"])
        if not key:
            res.errors.append((f"line {n}", "empty image name"))
            continue
        labels = {header[i].strip(): label_value(_cell(r, i)) for i in label_cols}
        res.rows.append(LabelRow(key, labels, _cell(r, cols.get("patient")) or None,  # type: ignore[arg-type]
                                 f"line {n}"))
    return res
