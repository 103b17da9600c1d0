"""Metrics: pure NumPy functions with written edge-case policies (``EVALUATION.md`` §3-§7).

* :mod:`.localisation` -- IoU / Dice, pointing game (hit), EBPG + enrichment, rank accuracy,
  top-k intersection, pixel AP / AUROC, the CheXlocalize protocol, :func:`score_map`.
* :mod:`.thresholds` -- fixed, Otsu, top-k, oracle-area, tuned and CheXlocalize binarisation.
* :mod:`.baselines` -- uniform, centred Gaussian and leave-one-out mean-mask prior maps.
* :mod:`.stats` -- NaN-aware summaries, case bootstrap (paired across methods), Holm.
* :mod:`.faithfulness` -- deletion / insertion curves and model-parameter randomisation (needs
  the model; imported lazily).

Empty ground truth is NaN for every metric -- never 0 and never a hit.
"""

from __future__ import annotations

from typing import Any

from .baselines import (
    BASELINES,
    MaskPrior,
    baseline_map,
    centre_gaussian,
    resize_area,
    resize_bilinear,
    uniform_map,
)
from .localisation import (
    METRICS,
    MetricInfo,
    Protocol,
    Score,
    area_fraction,
    box_mask,
    chexlocalize_scores,
    dice,
    ebpg,
    enrichment,
    higher_is_better,
    hit,
    hit_rate,
    iou,
    pixel_auroc,
    pxap,
    rank_accuracy,
    score_map,
    top_k_intersection,
)
from .stats import (
    bootstrap_indices,
    bootstrap_p,
    bootstrap_weights,
    holm,
    paired_difference,
    percentile_ci,
    replicate_means,
    summarize,
)
from .thresholds import (
    DEFAULT_FIXED,
    ThresholdRule,
    binarize,
    is_constant,
    load_tuned_thresholds,
    otsu_threshold,
    tuned_threshold,
)

_LAZY = {"deletion_insertion", "randomize_model", "randomized_adapter", "randomisation_check",
         "spearman", "PerturbationCurve", "cascade_stages", "parameter_groups"}


def __getattr__(name: str) -> Any:  # faithfulness needs torch + the model: import on first use
    if name in _LAZY:
        from . import faithfulness

        return getattr(faithfulness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASELINES",
    "DEFAULT_FIXED",
    "METRICS",
    "MaskPrior",
    "MetricInfo",
    "PerturbationCurve",
    "Protocol",
    "Score",
    "ThresholdRule",
    "area_fraction",
    "baseline_map",
    "binarize",
    "bootstrap_indices",
    "bootstrap_p",
    "bootstrap_weights",
    "box_mask",
    "cascade_stages",
    "centre_gaussian",
    "chexlocalize_scores",
    "deletion_insertion",
    "dice",
    "ebpg",
    "enrichment",
    "higher_is_better",
    "hit",
    "hit_rate",
    "holm",
    "iou",
    "is_constant",
    "load_tuned_thresholds",
    "otsu_threshold",
    "paired_difference",
    "parameter_groups",
    "percentile_ci",
    "pixel_auroc",
    "pxap",
    "randomisation_check",
    "randomize_model",
    "randomized_adapter",
    "rank_accuracy",
    "replicate_means",
    "resize_area",
    "resize_bilinear",
    "score_map",
    "spearman",
    "summarize",
    "top_k_intersection",
    "tuned_threshold",
    "uniform_map",
]
