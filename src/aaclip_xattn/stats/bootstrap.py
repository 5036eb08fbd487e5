"""Two-stage stratified bootstrap of the mean paired difference (statistics.md §5)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = [
    "analytic_seed_se",
    "bootstrap_ci",
    "bootstrap_replicates",
    "inflate_residuals",
    "make_bootstrap_rng",
]

logger = logging.getLogger(__name__)


def make_bootstrap_rng(seed: int, key: str) -> np.random.Generator:
    """Return the generator for one table row: seeded by ``(seed, crc32(key))`` via ``SeedSequence``.

    Deriving the stream from the row key makes each row's interval reproducible on its own, whatever
    other rows the study holds. (``aaclip_xattn.seeding`` imports torch, which ``stats/`` must not.)

    Args:
        seed: The recorded bootstrap seed (``StatsConfig.bootstrap_seed``).
        key: A stable identifier of the row (train dataset, shot, comparison, scope, metric).
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))


def inflate_residuals(d: np.ndarray) -> np.ndarray:
    """Return ``δ + √(S/(S−1))·(d − δ)`` for one category's S seed-level differences (S ≥ 2).

    The inflation makes the resampled seed mean's variance equal ``s²/S`` (sample variance, ddof=1),
    which restores the coverage a plain within-category bootstrap loses at S = 3. With S = 1 the single
    value is returned unchanged.

    Args:
        d: Seed-level differences of one category, shape (S,).
    """
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return d.copy()
    delta = d.mean()
    return delta + np.sqrt(d.size / (d.size - 1)) * (d - delta)


def bootstrap_replicates(
    units: Sequence[np.ndarray],
    strata: Sequence[Hashable],
    *,
    n_resamples: int,
    rng: np.random.Generator,
    resample_categories: bool = True,
    joint_seeds: bool = True,
) -> np.ndarray:
    """Draw bootstrap replicates of the equal-weight mean over categories of the seed-mean difference.

    Stage 1 (when ``resample_categories``): within each stratum (test dataset) draw its C_d categories
    with replacement. Stage 2: for each category draw its S seeds with replacement from the inflated
    differences and average them. The replicate is the mean over all drawn categories (equal weight per
    category). Vectorised: joint seed draws become counts and a matrix product; category draws a gather.

    Args:
        units: One array of seed-level differences per category, shape (S_t,), in pp. With
            ``joint_seeds`` the positions must refer to the same seeds (the same training run) across
            categories, as ``compare`` builds them.
        strata: The stratum (test dataset) of each unit; categories are resampled within it.
        n_resamples: Number of replicates B.
        rng: The generator (see ``make_bootstrap_rng``).
        resample_categories: False gives the seed-only bootstrap ("conditional on these categories").
        joint_seeds: Draw the seed indices jointly for all categories (one training run scores every
            category, so its noise is shared, statistics.md §2); False draws them per category.

    Returns:
        Replicates, shape (B,).

    Raises:
        ValueError: If there are no units, lengths disagree, or a unit is empty or not finite.
    """
    if len(units) == 0:
        raise ValueError("bootstrap_replicates: no categories to resample")
    if len(units) != len(strata):
        raise ValueError(f"bootstrap_replicates: {len(units)} units but {len(strata)} strata labels")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_replicates: n_resamples must be >= 1, found {n_resamples}")
    arrays = [np.asarray(u, dtype=float) for u in units]
    for t, arr in enumerate(arrays):
        if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(
                f"bootstrap_replicates: unit {t} must be a non-empty 1-D finite array, found {arr!r}"
            )
    inflated = [inflate_residuals(a) for a in arrays]
    n_units = len(arrays)
    sizes = np.array([a.size for a in arrays])
    means = np.empty((n_resamples, n_units))
    u = rng.random((n_resamples, int(sizes.max()))) if joint_seeds else None
    for s in np.unique(sizes):
        s = int(s)
        members = np.flatnonzero(sizes == s)
        block = np.stack([inflated[t] for t in members])  # (T_s, S)
        if s == 1:
            means[:, members] = block[:, 0]
            continue
        if joint_seeds:
            positions = (u[:, :s] * s).astype(np.intp)  # (B, S) indices in [0, S)
            flat = (positions + s * np.arange(n_resamples)[:, None]).ravel()
            counts = np.bincount(flat, minlength=n_resamples * s).reshape(n_resamples, s).astype(float)
            means[:, members] = counts @ np.ascontiguousarray(block.T) / s
        else:
            draws = rng.integers(0, s, size=(n_resamples, members.size, s))  # (B, T_s, S) seed indices
            means[:, members] = np.take_along_axis(block[None, :, :], draws, axis=2).mean(axis=2)
    if not resample_categories:
        return means.mean(axis=1)
    labels = list(dict.fromkeys(strata))
    strata_arr = np.array([labels.index(s) for s in strata])
    columns = []
    for k in range(len(labels)):
        members = np.flatnonzero(strata_arr == k)
        columns.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])  # (B, C_d)
    drawn = np.concatenate(columns, axis=1)  # (B, T) drawn category columns, stratum by stratum
    return means[np.arange(n_resamples)[:, None], drawn].mean(axis=1)


def bootstrap_ci(replicates: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """Return the percentile interval ``(low, high)`` of the replicates at the given level."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(replicates, dtype=float), [tail, 1.0 - tail])
    return float(low), float(high)


def analytic_seed_se(units: Sequence[np.ndarray]) -> float:
    """Return the analytic SE of the equal-weight mean with categories fixed: √(Σ_t s_t²/S_t) / T.

    This is the check of the seed-only bootstrap (statistics.md §5); categories with one seed
    contribute no seed variance.
    """
    arrays = [np.asarray(u, dtype=float) for u in units]
    var = sum(a.var(ddof=1) / a.size for a in arrays if a.size >= 2)
    return float(np.sqrt(var) / len(arrays))
