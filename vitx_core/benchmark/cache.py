"""On-disk cache of raw explanation GRIDS, shared by the benchmark runner and the dashboard.

Key = sha256 over (cache format, vitx version, model hash = ``adapter.version``, preprocessing
spec, image content hash = sha256 of the file bytes, method, canonical options JSON, target
index). Entries are small ``.npz`` files (the ``(gh, gw)`` float32 grid plus the target's logit
and probability); predictions (all logits) are stored per (model, image). File names contain
only hashes: ``<root>/<model hash>/<key[:2]>/<key>.npz`` -- no case id, path or name (no PHI).

Writes are atomic (temporary file + ``os.replace``), so a killed run never leaves a truncated
entry; an unreadable entry is treated as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE_FORMAT = "vitx-grid-cache/1"
_CHUNK = 1 << 20


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (32 hex digits): the image content hash."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()[:32]


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:40]


@dataclass
class CachedGrid:
    """One cached explanation: raw patch grid and the explained target's scores."""

    grid: np.ndarray          # (gh, gw) float32, raw (before normalisation)
    target: int
    logit: float
    prob: float
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class CachedPrediction:
    logits: np.ndarray        # (C,) float32
    probs: np.ndarray         # (C,) float32


class GridCache:
    """Content-addressed store of explanation grids (see the module docstring).

    Args:
        root: cache folder (created on first write).
        model_version: ``adapter.version`` (weights hash).
        preprocess: ``adapter.preprocess.to_dict()`` (same weights, other input size = other maps).
    """

    def __init__(self, root: str | os.PathLike, model_version: str, preprocess: dict[str, Any]
                 ) -> None:
        from .. import __version__

        self.root = Path(root)
        self.model_version = str(model_version)
        self._base = (CACHE_FORMAT, __version__, self.model_version, preprocess)
        self.hits = 0
        self.misses = 0

    # ---- keys -------------------------------------------------------------------------------
    def grid_key(self, image_hash: str, method: str, params_json: str, target: int) -> str:
        return _digest(*self._base, image_hash, method, params_json, int(target))

    def prediction_key(self, image_hash: str) -> str:
        return _digest(*self._base, image_hash, "__prediction__")

    def _path(self, key: str) -> str:
        # plain strings: pathlib interns every path component (the interpreter's intern table
        # would grow with the number of cache files)
        safe_model = "".join(c for c in self.model_version if c.isalnum())[:32] or "model"
        return os.path.join(self.root, safe_model, key[:2], key + ".npz")

    # ---- io ---------------------------------------------------------------------------------
    def _load(self, key: str) -> dict[str, np.ndarray] | None:
        p = self._path(key)
        if not os.path.isfile(p):
            self.misses += 1
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def _save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        p = self._path(key)
        folder = os.path.dirname(p)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, image_hash: str, method: str, params_json: str, target: int
            ) -> CachedGrid | None:
        d = self._load(self.grid_key(image_hash, method, params_json, target))
        if d is None or "grid" not in d:
            return None
        stats = json.loads(str(d["stats"])) if "stats" in d else {}
        return CachedGrid(d["grid"].astype(np.float32), int(d["target"]), float(d["logit"]),
                          float(d["prob"]), stats)

    def put(self, image_hash: str, method: str, params_json: str, entry: CachedGrid) -> None:
        self._save(self.grid_key(image_hash, method, params_json, entry.target), {
            "grid": np.asarray(entry.grid, dtype=np.float32),
            "target": np.asarray(entry.target, dtype=np.int64),
            "logit": np.asarray(entry.logit, dtype=np.float64),
            "prob": np.asarray(entry.prob, dtype=np.float64),
            "stats": np.asarray(json.dumps(entry.stats, sort_keys=True))})

    def get_prediction(self, image_hash: str) -> CachedPrediction | None:
        d = self._load(self.prediction_key(image_hash))
        if d is None or "logits" not in d:
            return None
        return CachedPrediction(d["logits"].astype(np.float32), d["probs"].astype(np.float32))

    def put_prediction(self, image_hash: str, pred: CachedPrediction) -> None:
        self._save(self.prediction_key(image_hash), {
            "logits": np.asarray(pred.logits, dtype=np.float32),
            "probs": np.asarray(pred.probs, dtype=np.float32)})


def cached_explanation(cache: GridCache, adapter: Any, image_path: str | os.PathLike,
                       image_hw: tuple[int, int], explainer: Any, target: int) -> Any:
    """Rebuild an :class:`~vitx_core.results.Explanation` from the cache (dashboard reuse), or
    None when it is not cached. ``explainer`` is an Explainer instance (method + options)."""
    from ..results import Explanation, normalise

    h = file_hash(image_path)
    e = cache.get(h, explainer.name, explainer.params_json, int(target))
    if e is None:
        return None
    geom = adapter.preprocess.geometry(tuple(image_hw))
    return Explanation(method=explainer.name, params=explainer.params_dict, grid=e.grid,
                       target=e.target, target_label=adapter.labels[e.target], logit=e.logit,
                       prob=e.prob, geometry=geom, patch_size=tuple(adapter.patch_size),
                       model_key=adapter.key, model_version=adapter.version, stats=dict(e.stats),
                       flags={"constant_map": normalise(e.grid)[1],
                              "partial_view": not geom.covers_whole_image,
                              "readout": adapter.readout})


__all__ = ["CACHE_FORMAT", "CachedGrid", "CachedPrediction", "GridCache", "cached_explanation",
           "file_hash"]
