"""Power and minimum detectable effect of the paired comparisons (statistics.md §8)."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
from statsmodels.stats.power import TTestPower

__all__ = ["POWER_COLUMNS", "compute_power_curve", "mde_dz", "seed_variance_components", "seeds_needed"]

logger = logging.getLogger(__name__)

#: Columns of ``power.csv`` (after the key columns ``train_dataset, shot, comparison, metric``).
POWER_COLUMNS = (
    "train_dataset",
    "shot",
    "comparison",
    "metric",
    "primary",
    "axis",
    "n_seeds",
    "n_categories",
    "sd_delta",
    "mde_dz",
    "mde_pp",
    "observed",
    "sigma_d",
    "tau",
    "alpha",
    "power",
)


@functools.lru_cache(maxsize=1024)
def mde_dz(n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Return the smallest standardized paired effect d_z that a two-sided paired t-test with ``n``
    pairs detects with the given power (statsmodels ``TTestPower.solve_power``).

    Args:
        n: Number of pairs (the category count for the category-level test).
        alpha: Two-sided significance level.
        power: Target power.

    Returns:
        d_z, or NaN when ``n < 2`` (no test is possible).
    """
    if n < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = TTestPower().solve_power(
            effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"
        )
    return float(np.asarray(value).item())


def seed_variance_components(units: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """Split the spread of the category means δ into seed noise and between-category spread.

    Args:
        units: Seed-level differences per category (pp), shape (S_t,) each.

    Returns:
        ``(sd_delta, sigma_d, tau)``: the across-category SD of δ (ddof=1), the pooled within-category
        seed SD of d, and the between-category SD τ = √max(SD(δ)² − σ_d²·mean(1/S_t), 0). NaN where
        undefined (fewer than 2 categories, or no category with 2 seeds).
    """
    arrays = [np.asarray(u, dtype=float) for u in units]
    deltas = np.array([a.mean() for a in arrays])
    sd_delta = float(deltas.std(ddof=1)) if deltas.size >= 2 else math.nan
    variances = [a.var(ddof=1) for a in arrays if a.size >= 2]
    sigma_d = float(np.sqrt(np.mean(variances))) if variances else math.nan
    if math.isnan(sd_delta) or math.isnan(sigma_d):
        return sd_delta, sigma_d, math.nan
    inv_s = float(np.mean([1.0 / a.size for a in arrays]))
    tau = math.sqrt(max(sd_delta**2 - sigma_d**2 * inv_s, 0.0))
    return sd_delta, sigma_d, tau


def seeds_needed(
    n_categories: int,
    sigma_d: float,
    tau: float,
    effect_pp: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    max_seeds: int = 100,
) -> int | None:
    """Return the smallest number of seeds S for which the MDE with ``n_categories`` is ≤ ``effect_pp``.

    Uses SD(δ)(S) = √(τ² + σ_d²/S). Returns None when no S ≤ ``max_seeds`` suffices (τ alone is too
    large, or too few categories) or the inputs are undefined.
    """
    dz = mde_dz(n_categories, alpha=alpha, power=power)
    if not all(math.isfinite(v) for v in (dz, sigma_d, tau, effect_pp)) or effect_pp <= 0:
        return None
    for s in range(1, max_seeds + 1):
        if dz * math.sqrt(tau**2 + sigma_d**2 / s) <= effect_pp:
            return s
    return None


def compute_power_curve(
    units: Sequence[np.ndarray],
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    seeds: Sequence[int] = tuple(range(1, 21)),
    categories: Sequence[int] = tuple(range(2, 41)),
) -> list[dict]:
    """Return the rows of the power curve for one comparison and metric.

    Axis ``seeds``: the MDE (pp) at the actual category count T for S seeds, from
    SD(δ)(S) = √(τ² + σ_d²/S). Axis ``categories``: the MDE for T' categories at the observed SD(δ).

    Args:
        units: Seed-level differences per category (pp).
        alpha: Two-sided significance level.
        power: Target power.
        seeds: Seed counts of the seeds axis.
        categories: Category counts of the categories axis.

    Returns:
        Dicts with ``axis, n_seeds, n_categories, sd_delta, mde_dz, mde_pp, observed, sigma_d, tau``;
        ``observed`` marks the row matching the actual design.
    """
    if len(units) == 0:
        return []
    sd_delta, sigma_d, tau = seed_variance_components(units)
    n_cat = len(units)
    s_actual = min(int(np.asarray(u).size) for u in units)
    rows = []
    dz_actual = mde_dz(n_cat, alpha=alpha, power=power)
    for s in seeds:
        sd = math.sqrt(tau**2 + sigma_d**2 / s) if math.isfinite(tau) else math.nan
        rows.append(
            {
                "axis": "seeds",
                "n_seeds": int(s),
                "n_categories": n_cat,
                "sd_delta": sd,
                "mde_dz": dz_actual,
                "mde_pp": dz_actual * sd,
                "observed": int(s) == s_actual,
                "sigma_d": sigma_d,
                "tau": tau,
            }
        )
    for t in categories:
        dz = mde_dz(int(t), alpha=alpha, power=power)
        rows.append(
            {
                "axis": "categories",
                "n_seeds": s_actual,
                "n_categories": int(t),
                "sd_delta": sd_delta,
                "mde_dz": dz,
                "mde_pp": dz * sd_delta,
                "observed": int(t) == n_cat,
                "sigma_d": sigma_d,
                "tau": tau,
            }
        )
    return rows
