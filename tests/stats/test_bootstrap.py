"""Tests of the two-stage stratified bootstrap (statistics.md §5)."""

from __future__ import annotations

import numpy as np
import pytest

from aaclip_xattn.stats.bootstrap import (
    analytic_seed_se,
    bootstrap_ci,
    bootstrap_replicates,
    inflate_residuals,
    make_bootstrap_rng,
)


def _units(rng, n_units=20, n_seeds=3):
    centres = rng.normal(1.0, 2.0, size=n_units)
    return [c + rng.normal(0.0, rng.uniform(0.5, 2.0), size=n_seeds) for c in centres]


def test_inflate_residuals_keeps_mean_and_makes_population_variance_the_sample_variance():
    d = np.array([1.0, 2.5, 4.0])
    inflated = inflate_residuals(d)
    assert inflated.mean() == pytest.approx(d.mean())
    assert inflated.var(ddof=0) == pytest.approx(d.var(ddof=1))
    np.testing.assert_array_equal(inflate_residuals(np.array([2.0])), [2.0])


def test_bootstrap_is_reproducible_for_a_seed_and_key_and_differs_across_keys():
    units = _units(np.random.default_rng(1))
    strata = ["a"] * 12 + ["b"] * 8
    first = bootstrap_replicates(units, strata, n_resamples=2000, rng=make_bootstrap_rng(12345, "k1"))
    again = bootstrap_replicates(units, strata, n_resamples=2000, rng=make_bootstrap_rng(12345, "k1"))
    other = bootstrap_replicates(units, strata, n_resamples=2000, rng=make_bootstrap_rng(12345, "k2"))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_seed_only_bootstrap_matches_analytic_standard_error(n_seeds):
    units = _units(np.random.default_rng(2), n_units=20, n_seeds=n_seeds)
    reps = bootstrap_replicates(
        units,
        ["d"] * 20,
        n_resamples=20_000,
        rng=make_bootstrap_rng(7, "se"),
        resample_categories=False,
        joint_seeds=False,
    )
    se = analytic_seed_se(units)
    expected = np.sqrt(sum(u.var(ddof=1) / n_seeds for u in units)) / 20  # SE² = Σ s_t²/S / T²
    assert se == pytest.approx(expected)
    assert reps.std() == pytest.approx(se, rel=0.03)
    assert reps.mean() == pytest.approx(np.mean([u.mean() for u in units]), abs=0.05 * se)
    low, high = bootstrap_ci(reps)
    centre = np.mean([u.mean() for u in units])
    assert low == pytest.approx(centre - 1.96 * se, abs=0.1 * se)
    assert high == pytest.approx(centre + 1.96 * se, abs=0.1 * se)


def test_joint_seed_draws_keep_shared_run_noise():
    # Every category moves with the same run: seed s adds run[s] to all of them. Joint draws keep that
    # shared noise in the interval, independent draws average it away.
    rng = np.random.default_rng(3)
    run = np.array([-3.0, 0.0, 3.0])
    units = [c + run + rng.normal(0, 0.1, 3) for c in rng.normal(0, 1, 16)]
    kwargs = dict(n_resamples=10_000, resample_categories=False)
    joint = bootstrap_replicates(
        units, ["d"] * 16, rng=make_bootstrap_rng(0, "j"), joint_seeds=True, **kwargs
    )
    indep = bootstrap_replicates(
        units, ["d"] * 16, rng=make_bootstrap_rng(0, "j"), joint_seeds=False, **kwargs
    )
    mean_runs = np.mean(units, axis=0)  # the per-run mean over categories
    assert joint.std() == pytest.approx(mean_runs.std(ddof=1) / np.sqrt(3), rel=0.05)
    assert joint.std() > 3 * indep.std()


def test_category_stage_resamples_within_strata_only():
    # Two strata with constant values: stratified draws keep C_a and C_b fixed, so every replicate equals
    # the full mean; an unstratified draw would vary.
    units = [np.array([1.0])] * 6 + [np.array([3.0])] * 4
    reps = bootstrap_replicates(
        units, ["a"] * 6 + ["b"] * 4, n_resamples=1000, rng=make_bootstrap_rng(0, "s")
    )
    np.testing.assert_allclose(reps, 1.8)
    pooled = bootstrap_replicates(units, ["x"] * 10, n_resamples=1000, rng=make_bootstrap_rng(0, "s"))
    assert pooled.std() > 0.1


def test_category_bootstrap_with_one_seed_matches_plain_bootstrap_variance():
    values = np.random.default_rng(4).normal(0, 2, 25)
    reps = bootstrap_replicates(
        [np.array([v]) for v in values], ["d"] * 25, n_resamples=20_000, rng=make_bootstrap_rng(1, "p")
    )
    assert reps.std() == pytest.approx(values.std(ddof=0) / np.sqrt(25), rel=0.03)


def test_bootstrap_rejects_bad_units():
    with pytest.raises(ValueError, match="no categories to resample"):
        bootstrap_replicates([], [], n_resamples=10, rng=make_bootstrap_rng(0, "e"))
    with pytest.raises(ValueError, match="unit 1 must be a non-empty 1-D finite array"):
        bootstrap_replicates(
            [np.ones(3), np.array([np.nan])], ["a", "a"], n_resamples=10, rng=make_bootstrap_rng(0, "e")
        )
    with pytest.raises(ValueError, match="2 units but 1 strata labels"):
        bootstrap_replicates([np.ones(3), np.ones(3)], ["a"], n_resamples=10, rng=make_bootstrap_rng(0, "e"))
