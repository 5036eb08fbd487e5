"""Bayesian ROPE analysis of paired differences: the paired-t posterior and a signed-rank cross-check."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats as sps

__all__ = ["bayesian_signed_rank", "paired_t_posterior"]

logger = logging.getLogger(__name__)

_CHUNK = 5000


def paired_t_posterior(delta: np.ndarray, rope: float) -> dict[str, float]:
    """Return P(A better), P(within ROPE), P(B better) under the plain Bayesian paired-t posterior.

    The posterior of the mean difference (flat prior) is Student-t with n − 1 degrees of freedom,
    location mean(δ) and scale sd(δ)/√n (statistics.md §12; not baycomp's correlated t-test, whose
    Nadeau–Bengio inflation does not apply to seeds on a fixed split). Probabilities come from its CDF.

    Args:
        delta: Paired differences, shape (n,), in pp.
        rope: ROPE half-width in pp (≥ 0); 0 gives P(within ROPE) = 0.

    Returns:
        ``{"p_better", "p_rope", "p_worse"}``; NaN for n < 2. With sd = 0 the posterior is a point mass.
    """
    delta = np.asarray(delta, dtype=float)
    n = delta.size
    if n < 2:
        return {"p_better": math.nan, "p_rope": math.nan, "p_worse": math.nan}
    mean = float(delta.mean())
    sd = float(delta.std(ddof=1))
    if sd == 0.0:
        p_better = float(mean > rope)
        p_worse = float(mean < -rope)
    else:
        posterior = sps.t(df=n - 1, loc=mean, scale=sd / math.sqrt(n))
        p_better = float(posterior.sf(rope))
        p_worse = float(posterior.cdf(-rope))
    return {"p_better": p_better, "p_rope": max(0.0, 1.0 - p_better - p_worse), "p_worse": p_worse}


def bayesian_signed_rank(
    delta: np.ndarray,
    rope: float,
    *,
    n_samples: int,
    rng: np.random.Generator,
    prior_weight: float = 0.5,
) -> dict[str, float]:
    """Return the Bayesian signed-rank probabilities (Benavoli et al. 2017) that A is better, that the
    difference lies in the ROPE, or that B is better.

    A Dirichlet process with a pseudo-observation at 0 (weight ``prior_weight``) gives posterior weights
    w over {0, δ_1..δ_n}; each sample's mass of pairs with δ_i + δ_j below −2r, within ±2r and above 2r
    is computed, and the reported probabilities are the fractions of samples in which each region holds
    the largest mass (as baycomp's ``two_on_multiple`` reports them).

    Args:
        delta: Paired differences over categories, shape (n,), in pp.
        rope: ROPE half-width in pp.
        n_samples: Number of posterior samples.
        rng: Generator (seeded by the caller; the seed is recorded).
        prior_weight: Weight of the pseudo-observation at 0.

    Returns:
        ``{"p_better", "p_rope", "p_worse"}``; NaN when ``delta`` is empty.
    """
    delta = np.asarray(delta, dtype=float)
    if delta.size == 0:
        return {"p_better": math.nan, "p_rope": math.nan, "p_worse": math.nan}
    z = np.concatenate(([0.0], delta))
    sums = z[:, None] + z[None, :]
    below = (sums < -2 * rope).astype(float)
    above = (sums > 2 * rope).astype(float)
    alpha = np.ones(z.size)
    alpha[0] = prior_weight
    counts = np.zeros(3)
    remaining = n_samples
    while remaining > 0:
        size = min(_CHUNK, remaining)
        w = rng.dirichlet(alpha, size=size)  # (size, n + 1)
        p_worse = ((w @ below) * w).sum(axis=1)
        p_better = ((w @ above) * w).sum(axis=1)
        p_rope = 1.0 - p_worse - p_better
        winner = np.argmax(np.stack([p_better, p_rope, p_worse], axis=1), axis=1)
        counts += np.bincount(winner, minlength=3)
        remaining -= size
    counts /= n_samples
    return {"p_better": float(counts[0]), "p_rope": float(counts[1]), "p_worse": float(counts[2])}
