"""Baseline maps scored like explainers: uniform, centred Gaussian, cohort mean-mask prior.

An explainer that does not beat these localises nothing model-specific (Arun et al. 2021: the
average-mask prior beat most saliency methods on RSNA). All maps are ``(H, W)`` float32 on the
case's ORIGINAL grid, >= 0; normalise them like any heatmap before thresholding.

* :func:`uniform_map` -- constant: chance on every metric (``a``, AUROC 0.5); thresholded masks
  are empty (constant-map policy).
* :func:`centre_gaussian` -- centre bias; ``sigma`` is a fraction of each side (stated in the
  protocol).
* :class:`MaskPrior` -- per finding, the mean GT mask of the cohort on a common canvas,
  **leave-one-out** (the scored case's own mask is subtracted), mapped back to each image's grid.
  Masks go to the canvas by exact area averaging and back by bilinear sampling (pixel centres,
  ``align_corners=False``, border clamp).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import resize_bilinear

BASELINES: tuple[str, ...] = ("uniform", "centre_gaussian", "prior")


def uniform_map(hw: tuple[int, int]) -> np.ndarray:
    """Constant ``(H, W)`` map of ones."""
    return np.ones((int(hw[0]), int(hw[1])), dtype=np.float32)


def centre_gaussian(hw: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """``exp(-(dy² / 2(σH)² + dx² / 2(σW)²))`` centred on the image, peak 1.

    Args:
        sigma: standard deviation as a fraction of the height / width (default 0.25).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    h, w = int(hw[0]), int(hw[1])
    y = (np.arange(h) + 0.5 - h / 2.0) / (sigma * h)
    x = (np.arange(w) + 0.5 - w / 2.0) / (sigma * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


# ---- resampling (separable weight matrices, exact) -----------------------------------------
def _area_weights(n_src: int, n_dst: int) -> np.ndarray:
    """``(n_dst, n_src)``: overlap of destination cell ``i`` with source pixel ``j``, rows sum 1."""
    edges_d = np.arange(n_dst + 1, dtype=np.float64) * (n_src / n_dst)
    lo = edges_d[:-1, None]
    hi = edges_d[1:, None]
    j = np.arange(n_src, dtype=np.float64)[None, :]
    w = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def resize_area(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area-average ``(h, w)`` -> ``hw`` (mass-preserving; a mask becomes its coverage)."""
    a = np.asarray(a, dtype=np.float64)
    return _area_weights(a.shape[0], int(hw[0])) @ a @ _area_weights(a.shape[1], int(hw[1])).T


@dataclass
class MaskPrior:
    """Running per-finding sum of GT masks on a common canvas (bounded memory: one canvas per
    finding). Feed every positive case with :meth:`add`, then ask :meth:`leave_one_out`.

    Attributes:
        canvas: ``(h, w)`` of the common canvas (default 64 x 64).
    """

    canvas: tuple[int, int] = (64, 64)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def to_canvas(self, mask: np.ndarray) -> np.ndarray:
        return resize_area(np.asarray(mask, dtype=np.float64), self.canvas)

    def add(self, finding: str, mask: np.ndarray) -> None:
        """Add one case's (non-empty) mask for ``finding``; empty masks are ignored (the prior
        is the mean *location* of the finding where present)."""
        m = np.asarray(mask, dtype=bool)
        if not m.any():
            return
        c = self.to_canvas(m)
        if finding in self.sums:
            self.sums[finding] += c
        else:
            self.sums[finding] = c.copy()
        self.counts[finding] = self.counts.get(finding, 0) + 1

    def mean_canvas(self, finding: str, exclude: np.ndarray | None = None) -> np.ndarray | None:
        """Mean canvas of ``finding`` without the masks in ``exclude`` (a mask that was added).

        Returns None when no other case has the finding (the prior is undefined).
        """
        if finding not in self.sums:
            return None
        s = self.sums[finding]
        n = self.counts[finding]
        if exclude is not None and np.asarray(exclude, dtype=bool).any():
            s = s - self.to_canvas(np.asarray(exclude, dtype=bool))
            n -= 1
        if n <= 0:
            return None
        return np.clip(s / n, 0.0, 1.0)

    def leave_one_out(self, finding: str, hw: tuple[int, int],
                      own_mask: np.ndarray | None = None) -> np.ndarray | None:
        """The prior for one case: mean of the OTHER cases' masks, on the case's grid ``hw``.

        Args:
            own_mask: the case's own mask if it was :meth:`add`-ed (it is subtracted).

        Returns:
            ``(H, W)`` float32 in [0, 1], or None when no other case has the finding.
        """
        c = self.mean_canvas(finding, own_mask)
        if c is None:
            return None
        return np.clip(resize_bilinear(c, hw), 0.0, 1.0).astype(np.float32)


def baseline_map(name: str, hw: tuple[int, int], *, prior: MaskPrior | None = None,
                 finding: str = "", own_mask: np.ndarray | None = None,
                 sigma: float = 0.25) -> np.ndarray | None:
    """One baseline by name (``uniform`` | ``centre_gaussian`` | ``prior``); None when the prior
    is undefined for this case."""
    if name == "uniform":
        return uniform_map(hw)
    if name == "centre_gaussian":
        return centre_gaussian(hw, sigma)
    if name == "prior":
        if prior is None:
            raise ValueError("baseline 'prior' needs a MaskPrior")
        return prior.leave_one_out(finding, hw, own_mask)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


__all__ = [
    "BASELINES",
    "MaskPrior",
    "baseline_map",
    "centre_gaussian",
    "resize_area",
    "resize_bilinear",
    "uniform_map",
]
