"""Result types: a prediction, and per method an :class:`Explanation` on the original pixel grid."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .geometry import Geometry


def normalise(m: np.ndarray, rel_tol: float = 1e-6) -> tuple[np.ndarray, bool]:
    """Min-max to [0, 1]. A constant map (range <= ``rel_tol`` x magnitude, or exactly flat)
    returns zeros and ``True`` so the UI can say "no evidence" instead of stretching noise."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    scale = max(abs(lo), abs(hi))
    if hi - lo <= rel_tol * scale or hi == lo:
        return np.zeros(m.shape, dtype=np.float32), True
    return ((m - lo) / (hi - lo)).astype(np.float32), False


@dataclass
class Prediction:
    """Class scores of one image. ``probs`` are sigmoid (multi-label) or softmax."""

    labels: list[str]
    logits: np.ndarray
    probs: np.ndarray
    multi_label: bool

    @property
    def top(self) -> int:
        return int(np.argmax(self.logits))

    @property
    def top_label(self) -> str:
        return self.labels[self.top]

    @property
    def top_prob(self) -> float:
        return float(self.probs[self.top])

    def to_dict(self) -> dict[str, Any]:
        return {
            "multi_label": self.multi_label,
            "top": {"index": self.top, "label": self.top_label, "prob": self.top_prob},
            "classes": [{"index": i, "label": lab, "logit": float(self.logits[i]),
                         "prob": float(self.probs[i])} for i, lab in enumerate(self.labels)],
        }


@dataclass(eq=False)
class Explanation:
    """One explainer's map for one image and one target.

    Attributes:
        method: registry key; params: options used (defaults filled).
        grid: raw patch-grid map ``(gh, gw)`` float32, >= 0, before any normalisation.
        target / target_label / logit / prob: what was explained and its score.
        geometry: preprocessing geometry of this image (original <-> model input).
        patch_size: ``(ph, pw)`` in model-input pixels.
        stats: raw ``min``, ``max``, ``sum`` of the grid (+ ``patch_mass`` for attention rows).
        flags: ``constant_map`` (no evidence: heatmap is zeros), ``partial_view`` (the model did
            not see the whole image, e.g. centre crop), ``readout``.
        extras: method-specific arrays (per-head maps, signed attributions, ...).
    """

    method: str
    params: dict[str, Any]
    grid: np.ndarray
    target: int
    target_label: str
    logit: float
    prob: float
    geometry: Geometry
    patch_size: tuple[int, int]
    model_key: str = ""
    model_version: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"))

    def to_original(self, grid: np.ndarray | None = None, *, mode: str = "bilinear") -> np.ndarray:
        """A patch grid -> original image pixels (one sampling, no normalisation)."""
        g = self.grid if grid is None else grid
        return self.geometry.grid_to_original(g, self.patch_size, mode=mode)

    @cached_property
    def _heatmap_and_flag(self) -> tuple[np.ndarray, bool]:
        return normalise(self.to_original())

    @property
    def heatmap(self) -> np.ndarray:
        """``(H0, W0)`` float32 in [0, 1] on the ORIGINAL image grid (bilinear, min-max).

        Pixels the model never saw (centre-crop mode) take the nearest border value; see
        ``flags['partial_view']`` and ``geometry.seen_mask()``.
        """
        return self._heatmap_and_flag[0]

    def heatmap_nearest(self) -> np.ndarray:
        """Display variant: each original pixel shows its patch's value (true patch size)."""
        return normalise(self.to_original(mode="nearest"))[0]

    @property
    def constant_map(self) -> bool:
        return bool(self.flags.get("constant_map", False))


@dataclass
class ExplainResult:
    """All explanations of one image for one target, plus the prediction."""

    image_name: str
    image_hw: tuple[int, int]
    prediction: Prediction
    target: int
    target_label: str
    explanations: dict[str, Explanation]
    geometry: Geometry
    model_key: str = ""
    model_version: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, method: str) -> Explanation:
        try:
            return self.explanations[method]
        except KeyError:
            raise KeyError(f"no {method!r} explanation; computed: "
                           f"{list(self.explanations)}") from None

    def __iter__(self):
        return iter(self.explanations.values())

    @property
    def methods(self) -> list[str]:
        return list(self.explanations)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (no arrays): prediction, target, per-method parameters and stats."""
        return {
            "image": self.image_name,
            "image_size": list(self.image_hw),
            "model": {"key": self.model_key, "version": self.model_version},
            "target": {"index": self.target, "label": self.target_label},
            "prediction": self.prediction.to_dict(),
            "methods": {k: {"params": e.params, "stats": e.stats, "flags": e.flags,
                            "grid_size": list(e.grid.shape)}
                        for k, e in self.explanations.items()},
            "geometry": {"src_hw": list(self.geometry.src_hw),
                         "dst_hw": list(self.geometry.dst_hw),
                         "scale": list(self.geometry.scale),
                         "offset": list(self.geometry.offset)},
            "meta": self.meta,
        }
