"""Statistics of the study: long metrics table, paired comparisons, bootstrap CIs, power, verdicts.

Reads result files only and imports no torch (a test proves it in a fresh interpreter). The checklist,
figures and report live in ``checklist.py``, ``figures.py`` and ``report.py`` and are imported lazily
by ``python -m aaclip_xattn.stats``.
"""

from __future__ import annotations

from aaclip_xattn.stats.bayes import bayesian_signed_rank, paired_t_posterior
from aaclip_xattn.stats.bootstrap import (
    analytic_seed_se,
    bootstrap_ci,
    bootstrap_replicates,
    inflate_residuals,
)
from aaclip_xattn.stats.collect import LONG_COLUMNS, MetricRecord, collect_metrics, read_metrics_long
from aaclip_xattn.stats.compare import (
    BY_CATEGORY_COLUMNS,
    COMPARISON_COLUMNS,
    DESIGN_COLUMNS,
    compute_paired_test,
    is_testable,
    min_attainable_p,
    run_comparisons,
    verdict_sentence,
)
from aaclip_xattn.stats.config import DEFAULT_COMPARISONS, METRICS, StatsConfig, comparison_name
from aaclip_xattn.stats.power import compute_power_curve, mde_dz

__all__ = [
    "BY_CATEGORY_COLUMNS",
    "COMPARISON_COLUMNS",
    "DEFAULT_COMPARISONS",
    "DESIGN_COLUMNS",
    "LONG_COLUMNS",
    "METRICS",
    "MetricRecord",
    "StatsConfig",
    "analytic_seed_se",
    "bayesian_signed_rank",
    "bootstrap_ci",
    "bootstrap_replicates",
    "collect_metrics",
    "comparison_name",
    "compute_paired_test",
    "compute_power_curve",
    "inflate_residuals",
    "is_testable",
    "mde_dz",
    "min_attainable_p",
    "paired_t_posterior",
    "read_metrics_long",
    "run_comparisons",
    "verdict_sentence",
]
