"""Tests of the MDE / power curve and the Bayesian ROPE probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from aaclip_xattn.stats.bayes import bayesian_signed_rank, paired_t_posterior
from aaclip_xattn.stats.power import compute_power_curve, mde_dz, seed_variance_components, seeds_needed


@pytest.mark.parametrize(
    ("n", "table"), [(3, 3.26), (5, 1.68), (6, 1.43), (10, 1.00), (27, 0.56), (30, 0.53)]
)
def test_mde_dz_matches_statsmodels_and_the_spec_table(n, table):
    direct = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided"
    )
    assert mde_dz(n) == pytest.approx(float(direct), rel=1e-6)
    assert mde_dz(n) == pytest.approx(table, abs=0.01)


def test_mde_dz_is_undefined_below_two_pairs_and_shrinks_with_alpha_and_power():
    assert math.isnan(mde_dz(1))
    assert mde_dz(10, alpha=0.025) > mde_dz(10)
    assert mde_dz(10, power=0.9) > mde_dz(10)


def test_seed_variance_components_split_spread_into_seed_noise_and_between_category_sd():
    units = [np.array([0.0, 2.0, 4.0]) + c for c in (0.0, 5.0, 10.0, 15.0)]
    sd_delta, sigma_d, tau = seed_variance_components(units)
    assert sd_delta == pytest.approx(np.std([2.0, 7.0, 12.0, 17.0], ddof=1))
    assert sigma_d == pytest.approx(2.0)
    assert tau == pytest.approx(math.sqrt(sd_delta**2 - 4.0 / 3))


def test_seeds_needed_is_the_smallest_sufficient_seed_count():
    s = seeds_needed(20, sigma_d=3.0, tau=0.2, effect_pp=1.0)
    dz = mde_dz(20)
    assert dz * math.sqrt(0.04 + 9.0 / s) <= 1.0 < dz * math.sqrt(0.04 + 9.0 / (s - 1))
    assert seeds_needed(20, sigma_d=3.0, tau=5.0, effect_pp=1.0) is None  # τ alone exceeds the effect


def test_power_curve_decreases_and_marks_the_observed_design():
    rng = np.random.default_rng(0)
    units = [c + rng.normal(0, 1.0, 3) for c in rng.normal(0, 0.5, 12)]
    rows = compute_power_curve(units)
    seeds = [r for r in rows if r["axis"] == "seeds"]
    cats = [r for r in rows if r["axis"] == "categories"]
    assert all(a["mde_pp"] >= b["mde_pp"] for a, b in zip(seeds, seeds[1:], strict=False))
    assert all(a["mde_pp"] >= b["mde_pp"] for a, b in zip(cats, cats[1:], strict=False))
    (obs_cat,) = [r for r in cats if r["observed"]]
    sd_delta = np.std([u.mean() for u in units], ddof=1)
    assert obs_cat["n_categories"] == 12
    assert obs_cat["mde_pp"] == pytest.approx(mde_dz(12) * sd_delta)
    (obs_seed,) = [r for r in seeds if r["observed"]]
    assert obs_seed["n_seeds"] == 3
    assert obs_seed["mde_pp"] == pytest.approx(mde_dz(12) * sd_delta, rel=1e-9)  # τ²+σ²/S = SD(δ)² at S


def test_paired_t_posterior_matches_student_t_cdf():
    delta = np.array([0.3, -0.1, 0.2, 0.05, 0.4, 0.1, -0.05, 0.25])
    post = sps.t(df=7, loc=delta.mean(), scale=delta.std(ddof=1) / math.sqrt(8))
    got = paired_t_posterior(delta, 0.5)
    assert got["p_better"] == pytest.approx(post.sf(0.5))
    assert got["p_worse"] == pytest.approx(post.cdf(-0.5))
    assert got["p_rope"] == pytest.approx(post.cdf(0.5) - post.cdf(-0.5))
    assert all(math.isnan(v) for v in paired_t_posterior(np.array([1.0]), 0.5).values())


def test_bayesian_signed_rank_is_seeded_and_follows_the_data():
    rng = np.random.default_rng
    far = np.array([3.0, 2.5, 4.0, 3.2, 2.8, 3.9, 3.3, 2.1, 3.0, 2.6])
    got = bayesian_signed_rank(far, 0.5, n_samples=5000, rng=rng(0))
    assert got["p_better"] > 0.99
    assert got == bayesian_signed_rank(far, 0.5, n_samples=5000, rng=rng(0))
    near = np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.02, 0.0, -0.03, 0.01, 0.02])
    assert bayesian_signed_rank(near, 0.5, n_samples=5000, rng=rng(0))["p_rope"] > 0.99
    worse = bayesian_signed_rank(-far, 0.5, n_samples=5000, rng=rng(0))
    assert worse["p_worse"] > 0.99
    assert sum(got.values()) == pytest.approx(1.0)
