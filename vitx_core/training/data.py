"""Training data: find labelled images, split them by patient, read them the way vitx explains them.

Layouts understood by :func:`discover`:

* **class folders with splits**: ``DIR/train/<class>/*``, ``DIR/val/<class>/*``,
  ``DIR/test/<class>/*`` (``val`` may be missing: it is carved out of ``train``; ``test`` may be
  missing: the report is then written on ``val``).
* **class folders without splits**: ``DIR/<class>/*``: split into train / val / test for you.
* **a labels CSV**: one row per image, a column naming the image (a path relative to ``DIR``, an
  absolute path or a file stem searched for under ``DIR``) and one 0/1 column per class
  (multi-label). An optional ``split`` column (``train``/``val``/``test``) fixes the split.

Splits made here are stratified by class and grouped by patient: a patient id comes from a CSV
column (``patient_col``) or a regular expression on the file name (``patient_regex``; its first
group, or the whole match); without one every image is its own patient. No patient ever lands in
two splits.

Images are read with :func:`vitx_core.load_image` (PNG / JPEG / TIFF / DICOM, extension-less DICOM
too) and resized with :func:`vitx_core.preprocess` and the model's :class:`PreprocessSpec`, so
training sees exactly the geometry that explanations are mapped back through.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..geometry import PreprocessSpec, preprocess
from ..imageio import DICOM_SUFFIXES, RASTER_SUFFIXES, is_dicom_file, load_image

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


class DataError(ValueError):
    """The training data cannot be used as given (the message says what to fix)."""


@dataclass
class Sample:
    """One labelled image: ``target`` is a 0/1 vector over the classes (one-hot when single-label)."""

    path: Path
    target: np.ndarray
    patient: str
    image_id: str = ""

    def __post_init__(self) -> None:
        self.target = np.asarray(self.target, dtype=np.float32)
        if not self.image_id:
            self.image_id = self.path.stem


@dataclass
class DataSplits:
    """Labelled images split three ways (``test`` may be empty: then reports use ``val``)."""

    class_names: list[str]
    multi_label: bool
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def summary(self) -> dict:
        """Counts per split and class, patients per split (JSON-able)."""
        out: dict = {"classes": list(self.class_names), "multi_label": self.multi_label,
                     "source": self.source, "notes": list(self.notes)}
        for name in SPLITS:
            ss = self.split(name)
            t = np.stack([s.target for s in ss]) if ss else np.zeros((0, len(self.class_names)))
            out[name] = {"images": len(ss), "patients": len({s.patient for s in ss}),
                         "positives": {c: int(t[:, i].sum()) for i, c in enumerate(self.class_names)}}
        return out


# ---- finding files -------------------------------------------------------------------------
def is_image_file(p: Path) -> bool:
    """PNG / JPEG / TIFF / BMP / DICOM by suffix, or an extension-less DICOM (``DICM`` marker)."""
    if not p.is_file() or p.name.startswith("."):
        return False
    suf = p.suffix.lower()
    if suf in RASTER_SUFFIXES or suf in DICOM_SUFFIXES:
        return True
    return is_dicom_file(p)  # extension-less DICOM (e.g. ``1.2.840.113619...``)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if is_image_file(p))


def patient_from_name(path: Path, regex: str | None) -> str:
    """Patient id of a file: ``regex``'s first group (or whole match) on the file name; without a
    regex (or no match) the file itself (its full path: every image is its own patient)."""
    if regex:
        m = re.search(regex, path.name)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return str(path)


# ---- splitting -----------------------------------------------------------------------------
def split_by_patient(samples: Sequence[Sample], fractions: dict[str, float], *, seed: int = 0
                     ) -> dict[str, list[Sample]]:
    """Stratified, patient-grouped split.

    Patients are visited in a seeded random order (larger ones first) and each goes whole to the
    split that most lacks its classes relative to its target share (``fractions``, normalised).
    Every patient lands in exactly one split, so no patient leaks across splits.
    """
    names = [k for k, v in fractions.items() if v > 0]
    if not names:
        raise ValueError("at least one split needs a positive fraction")
    frac = np.array([fractions[k] for k in names], dtype=np.float64)
    frac = frac / frac.sum()
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.patient, []).append(s)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    keys.sort(key=lambda k: -len(groups[k]))  # stable: random order within equal sizes
    n_cls = len(samples[0].target) if samples else 0
    # strata: each class, plus "no positive" (normal) and the image count itself
    totals = np.zeros(n_cls + 2)
    for s in samples:
        totals[:n_cls] += s.target
        totals[n_cls] += float(s.target.sum() == 0)
        totals[n_cls + 1] += 1
    want = frac[:, None] * totals[None, :]
    have = np.zeros_like(want)
    out: dict[str, list[Sample]] = {k: [] for k in fractions}
    for k in keys:
        g = groups[k]
        vec = np.zeros(n_cls + 2)
        for s in g:
            vec[:n_cls] += s.target
            vec[n_cls] += float(s.target.sum() == 0)
            vec[n_cls + 1] += 1
        # deficit of each split on the strata this patient carries, relative to the stratum size
        rel = (want - have) / np.maximum(totals, 1.0)[None, :]
        score = (rel * (vec > 0)[None, :]).sum(axis=1) + 1e-3 * rel[:, -1]
        j = int(np.argmax(score))
        out[names[j]].extend(g)
        have[j] += vec
    return out


def _check_no_leak(parts: dict[str, list[Sample]]) -> None:
    seen: dict[str, str] = {}
    for name, ss in parts.items():
        for s in ss:
            if seen.setdefault(s.patient, name) != name:
                raise DataError(f"patient {s.patient!r} appears in both the {seen[s.patient]} and "
                                f"the {name} split; give each patient one split")


# ---- discovery -----------------------------------------------------------------------------
def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _samples_from_class_folders(folder: Path, classes: list[str], patient_regex: str | None
                                ) -> list[Sample]:
    out = []
    for i, c in enumerate(classes):
        d = folder / c
        if not d.is_dir():
            continue
        onehot = np.zeros(len(classes), np.float32)
        onehot[i] = 1.0
        for p in list_images(d):
            out.append(Sample(p, onehot, patient_from_name(p, patient_regex)))
    return out


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        rows = list(rd)
        header = list(rd.fieldnames or [])
    if not header:
        raise DataError(f"{path}: empty CSV (no header)")
    return header, rows


def _as01(v: str) -> float | None:
    s = str(v).strip().lower()
    if s in ("1", "1.0", "true", "yes", "y", "pos", "positive"):
        return 1.0
    if s in ("0", "0.0", "false", "no", "n", "neg", "negative", ""):
        return 0.0
    return None


def _csv_samples(data: Path, labels_csv: Path, image_col: str | None, patient_col: str | None,
                 patient_regex: str | None, classes: Sequence[str] | None,
                 ) -> tuple[list[str], list[Sample], dict[str, str]]:
    header, rows = _read_csv(labels_csv)
    if not rows:
        raise DataError(f"{labels_csv}: no rows")
    image_col = image_col or next((c for c in ("image", "path", "file", "filename", "image_id",
                                               "Path", "Image Index") if c in header), header[0])
    for col, what in ((image_col, "--image-col"), (patient_col, "--patient-col")):
        if col is not None and col not in header:
            raise DataError(f"{labels_csv}: {what} {col!r} is not a column; columns: {header}")
    split_col = next((c for c in header if c.lower() == "split"), None)
    if classes:
        missing = [c for c in classes if c not in header]
        if missing:
            raise DataError(f"{labels_csv}: class column(s) {missing} not found; columns: {header}")
        class_names = list(classes)
    else:
        skip = {image_col, patient_col, split_col}
        class_names = [c for c in header if c not in skip
                       and all(_as01(r.get(c, "")) is not None for r in rows)]
        if not class_names:
            raise DataError(f"{labels_csv}: no 0/1 label columns found besides {image_col!r}; "
                            f"columns: {header}")
    index: dict[str, Path] | None = None
    samples: list[Sample] = []
    fixed: dict[str, str] = {}
    missing_files = []
    for r in rows:
        ref = str(r[image_col]).strip()
        p = Path(ref)
        cand = p if p.is_absolute() else data / p
        if not cand.is_file():
            if index is None:
                index = {}
                for f in list_images(data):
                    index.setdefault(f.stem, f)
                    index.setdefault(f.name, f)
            cand = index.get(ref) or index.get(p.stem) or index.get(p.name)
        if cand is None or not cand.is_file():
            missing_files.append(ref)
            continue
        vals = []
        for c in class_names:
            v = _as01(r[c])
            if v is None:
                raise DataError(f"{labels_csv}: column {c!r} must be 0/1, got {r[c]!r} for {ref}")
            vals.append(v)
        pid = str(r[patient_col]).strip() if patient_col else patient_from_name(cand, patient_regex)
        s = Sample(cand, np.array(vals, np.float32), pid or str(cand), image_id=Path(ref).stem)
        samples.append(s)
        if split_col and str(r[split_col]).strip():
            sp = SPLIT_ALIASES.get(str(r[split_col]).strip().lower())
            if sp is None:
                raise DataError(f"{labels_csv}: split {r[split_col]!r} is not train/val/test")
            fixed[str(s.path)] = sp
    if missing_files:
        more = f" (+{len(missing_files) - 5} more)" if len(missing_files) > 5 else ""
        raise DataError(f"{labels_csv}: {len(missing_files)} image(s) not found under {data}: "
                        f"{missing_files[:5]}{more}")
    return class_names, samples, fixed


def discover(data: str | Path, *, labels_csv: str | Path | None = None,
             image_col: str | None = None, patient_col: str | None = None,
             patient_regex: str | None = None, classes: Sequence[str] | None = None,
             multi_label: bool | None = None, val_frac: float = 0.15, test_frac: float = 0.15,
             seed: int = 0) -> DataSplits:
    """Find labelled images under ``data`` and split them (see the module docstring).

    Args:
        data: the data folder (or, with ``labels_csv``, the folder the image paths refer to).
        labels_csv: CSV of labels (one 0/1 column per class: multi-label). A ``labels.csv`` in
            ``data`` is used when there are no class folders.
        image_col / patient_col: CSV columns (default image column: ``image``/``path``/...).
        patient_regex: patient id from the file name (first group or whole match).
        classes: class names / CSV columns to use (default: every folder / 0/1 column).
        multi_label: sigmoid head; default True for CSV labels, False for class folders.
        val_frac, test_frac: shares of the patients split off when the data has no split.
        seed: split seed.
    """
    d = Path(data)
    if not d.is_dir():
        if labels_csv is None and d.is_file() and d.suffix.lower() == ".csv":
            d, labels_csv = d.parent, d
        else:
            raise DataError(f"data folder not found: {d}")
    if not 0 <= val_frac < 1 or not 0 <= test_frac < 1 or val_frac + test_frac >= 1:
        raise DataError(f"val_frac {val_frac} / test_frac {test_frac}: each in [0, 1), sum < 1")
    notes: list[str] = []
    split_dirs = {SPLIT_ALIASES[p.name.lower()]: p for p in _class_folders(d)
                  if p.name.lower() in SPLIT_ALIASES}
    if labels_csv is None and not split_dirs and not any(
            list_images(p, recursive=True) for p in _class_folders(d)) and (d / "labels.csv").is_file():
        labels_csv = d / "labels.csv"

    if labels_csv is not None:
        lc = Path(labels_csv)
        if not lc.is_file():
            raise DataError(f"labels CSV not found: {lc}")
        class_names, samples, fixed = _csv_samples(d, lc, image_col, patient_col, patient_regex,
                                                   classes)
        multi = True if multi_label is None else bool(multi_label)
        source = f"csv:{lc}"
        if fixed:
            parts: dict[str, list[Sample]] = {k: [] for k in SPLITS}
            free = []
            for s in samples:
                (parts[fixed[str(s.path)]] if str(s.path) in fixed else free).append(s)
            if free:
                raise DataError(f"{lc}: {len(free)} row(s) have an empty split column")
            notes.append("splits from the CSV 'split' column")
        else:
            parts = split_by_patient(samples, {"train": 1 - val_frac - test_frac, "val": val_frac,
                                               "test": test_frac}, seed=seed)
            notes.append(f"split by patient: val {val_frac:.0%}, test {test_frac:.0%} (seed {seed})")
    elif split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"{d} has {sorted(split_dirs)} folders but no train/ folder")
        class_names = list(classes) if classes else sorted(
            {c.name for sd in split_dirs.values() for c in _class_folders(sd)})
        if len(class_names) < 2:
            raise DataError(f"{d}/train needs at least two class folders, found {class_names}")
        parts = {k: (_samples_from_class_folders(split_dirs[k], class_names, patient_regex)
                     if k in split_dirs else []) for k in SPLITS}
        multi = bool(multi_label)
        source = f"folders:{d} (train/val/test)"
        if "val" not in split_dirs:
            share = val_frac / max(1e-9, 1 - test_frac) if "test" not in split_dirs else val_frac
            sub = split_by_patient(parts["train"], {"train": 1 - share, "val": share}, seed=seed)
            parts["train"], parts["val"] = sub["train"], sub["val"]
            notes.append(f"val split carved out of train by patient ({share:.0%}, seed {seed})")
        if "test" not in split_dirs:
            notes.append("no test/ folder: the report is computed on the validation split")
    else:
        class_names = list(classes) if classes else [p.name for p in _class_folders(d)]
        if len(class_names) < 2:
            raise DataError(f"{d}: expected class folders (at least two), train/val/test folders "
                            "or a labels CSV (--labels-csv)")
        samples = _samples_from_class_folders(d, class_names, patient_regex)
        multi = bool(multi_label)
        source = f"folders:{d}"
        parts = split_by_patient(samples, {"train": 1 - val_frac - test_frac, "val": val_frac,
                                           "test": test_frac}, seed=seed)
        notes.append(f"split by patient: val {val_frac:.0%}, test {test_frac:.0%} (seed {seed})")
    for k in SPLITS:
        parts.setdefault(k, [])
    _check_no_leak(parts)
    if not parts["train"]:
        raise DataError(f"{d}: no training images found")
    if not parts["val"]:
        raise DataError(f"{d}: the validation split is empty (too few patients?); add images or "
                        "a val/ folder")
    if not multi:
        bad = [s.path for k in SPLITS for s in parts[k] if s.target.sum() != 1]
        if bad:
            raise DataError(f"single-label training needs exactly one class per image; "
                            f"{len(bad)} image(s) have {int(parts['train'][0].target.sum())} or "
                            f"more, e.g. {bad[0]} (use --multi-label)")
    return DataSplits(class_names, multi, parts["train"], parts["val"], parts["test"], source, notes)


# ---- datasets ------------------------------------------------------------------------------
def unit_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """``spec`` without normalisation: :func:`preprocess` then yields the resized ``[0, 1]`` image
    (the same geometry and resampling); :func:`normalise_batch` applies mean / std later."""
    return dataclasses.replace(spec, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def to_unit_tensor(pixels: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """Original pixels -> resized ``[0, 1]`` tensor ``(1 | 3, H, W)`` (1 channel when grey)."""
    x, _ = preprocess(pixels, unit_spec(spec))
    if np.asarray(pixels).ndim == 2:
        x = x[:1]
    return x


def normalise_batch(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """``(B, 1 | 3, H, W)`` in [0, 1] -> the model input ``(B, 3, H, W)`` (mean / std of ``spec``)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


class ImageDataset(Dataset):
    """Samples -> ``(x, target)``: ``x`` the resized ``[0, 1]`` image ``(3, H, W)`` float32 (not yet
    normalised; see :func:`normalise_batch`), ``target`` the 0/1 class vector.

    With ``cache=True`` each image is read and resized once (kept as float16) and reused across
    epochs (``num_workers=0``: one cache in the main process).
    """

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, *, cache: bool = True):
        self.samples = list(samples)
        self.spec = spec
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self.targets = torch.from_numpy(np.stack([s.target for s in self.samples])) \
            if self.samples else torch.zeros(0, 0)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        x = self._cache.get(i)
        if x is None:
            s = self.samples[i]
            x = to_unit_tensor(load_image(s.path).pixels, self.spec)
            if self.cache:
                self._cache[i] = x.half()
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.load(i).float()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x.contiguous(), self.targets[i]

    @property
    def ids(self) -> list[str]:
        return [s.image_id for s in self.samples]


class TensorImageDataset(Dataset):
    """In-memory images ``(N, 1 | 3, H, W)`` in [0, 1] (any float dtype) + targets ``(N, C)``."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, ids: Sequence[str] | None = None):
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(f"images (N, C, H, W) and targets (N, K) must match, got "
                             f"{tuple(images.shape)} and {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.float()
        self._ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float()
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x.contiguous(), self.targets[i]

    @property
    def ids(self) -> list[str]:
        return self._ids


def balanced_weights(targets: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-sample weights for a :class:`~torch.utils.data.WeightedRandomSampler` that draws every
    class equally often: ``1 / count(class)``; multi-label: the rarest positive class of the sample
    decides (``max`` of ``1 / count``), samples with no positive form their own stratum."""
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError("targets must be a non-empty (N, C) 0/1 matrix")
    pos = t > 0.5
    counts = pos.sum(0).clamp(min=1).float()
    inv = torch.where(pos, 1.0 / counts[None, :], torch.zeros_like(t))
    w = inv.max(dim=1).values
    none = ~pos.any(dim=1)
    if none.any():
        w[none] = 1.0 / float(none.sum())
    return w / w.sum()


def class_counts(targets: torch.Tensor | np.ndarray) -> list[int]:
    t = np.asarray(targets)
    return [int(v) for v in (t > 0.5).sum(axis=0)]


def approx_memory_mb(n: int, spec: PreprocessSpec, channels: int = 1) -> float:
    """Memory of ``n`` cached images (float16) in MB."""
    h, w = spec.size
    return n * channels * h * w * 2 / 2**20


