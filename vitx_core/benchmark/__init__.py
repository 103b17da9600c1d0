"""Cohort benchmark: explain, score against ground truth with baselines, aggregate with CIs.

* :mod:`.runner` -- :func:`run_benchmark` (streaming, resumable), :func:`load_benchmark_config`
  (``[benchmark]`` and ``[[models]]`` tables), :func:`summarise_per_case`.
* :mod:`.cache` -- :class:`GridCache`: raw explanation grids on disk keyed by hashes only.
* :mod:`.panels` -- overlays, threshold panels, per-block attention GIF.
* :mod:`.commands` -- the ``benchmark`` CLI command.
"""

from .cache import CachedGrid, GridCache, cached_explanation, file_hash
from .runner import (
    ALL_FINDINGS,
    PER_CASE_COLUMNS,
    SUMMARY_COLUMNS,
    BenchmarkConfig,
    BenchmarkError,
    BenchmarkResult,
    BenchmarkSettings,
    ModelEntry,
    as_benchmark_config,
    format_summary,
    load_benchmark_config,
    run_benchmark,
    summarise_per_case,
)

__all__ = [
    "ALL_FINDINGS",
    "PER_CASE_COLUMNS",
    "SUMMARY_COLUMNS",
    "BenchmarkConfig",
    "BenchmarkError",
    "BenchmarkResult",
    "BenchmarkSettings",
    "CachedGrid",
    "GridCache",
    "ModelEntry",
    "as_benchmark_config",
    "cached_explanation",
    "file_hash",
    "format_summary",
    "load_benchmark_config",
    "run_benchmark",
    "summarise_per_case",
]
