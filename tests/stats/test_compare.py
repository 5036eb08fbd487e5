"""Tests of the paired comparisons against scipy/statsmodels oracles, the n-floors and the wording."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from aaclip_xattn.fileio import read_csv, read_json
from aaclip_xattn.stats.collect import collect_metrics
from aaclip_xattn.stats.compare import (
    COMPARISON_COLUMNS,
    DESIGN_COLUMNS,
    compute_paired_test,
    is_testable,
    min_attainable_p,
    run_comparisons,
    verdict_sentence,
)
from aaclip_xattn.stats.config import METRICS, StatsConfig

ALPHA = 0.05


def _run(fake, out_dir, **settings):
    long_csv = collect_metrics(fake.root, out_dir / "metrics_long.csv")
    paths = run_comparisons(long_csv, out_dir, StatsConfig.from_mapping(settings))
    return read_csv(paths["comparisons"]), paths


@pytest.fixture(scope="module")
def default_run(shared_fake_results, tmp_path_factory):
    """The comparisons of the default fake study, computed once for this module."""
    rows, paths = _run(shared_fake_results, tmp_path_factory.mktemp("default_run"))
    return shared_fake_results, rows, paths


def _f(value: str) -> float:
    return float(value) if value != "" else math.nan


def _deltas(fake, arm_a, arm_b, metric, *, train="synth_a", shot="4", seeds=(0, 1, 2)):
    """Seed-mean differences (pp) per (test_dataset, category) straight from the fake's truth."""
    out = {}
    cats = sorted({(k[4], k[5]) for k in fake.values})
    for td, cat in cats:
        pairs = [
            (
                fake.values[(train, shot, s, arm_a, td, cat, metric)],
                fake.values[(train, shot, s, arm_b, td, cat, metric)],
            )
            for s in seeds
            if (train, shot, s, arm_a, td, cat, metric) in fake.values
            and (train, shot, s, arm_b, td, cat, metric) in fake.values
        ]
        d = [100 * (a - b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
        if d:
            out[(td, cat)] = (
                np.mean(d),
                np.array([100 * a for a, _ in pairs]),
                np.array([100 * b for _, b in pairs]),
            )
    return out


def _scipy_wilcoxon(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sps.wilcoxon(x, zero_method="zsplit", alternative="two-sided", method="auto")


# --- the primary test ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delta",
    [
        [2.1, -0.4, 1.3, 0.8, 3.0, 1.1, -0.2, 0.6, 2.4],  # no ties: scipy's exact distribution
        [0.0, 0.0, 1.5, 1.5, -0.5, 2.0, 2.0, 0.7],  # zeros and ties, n ≤ 13: exact sign-flip permutations
        [0.0, 1.0, -1.0, 2.0, 2.0, 3.0, 0.5, -0.5, 4.0, 1.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied, same sign: the 2/2^n floor
        list(np.round(np.random.default_rng(0).normal(0.5, 1, 20), 1)),  # ties, n > 13: normal approximation
        list(np.random.default_rng(1).normal(0.3, 1, 60)),  # n > 50: normal approximation
    ],
)
def test_compute_paired_test_matches_scipy_wilcoxon_zsplit(delta):
    got = compute_paired_test(np.array(delta))
    ref = _scipy_wilcoxon(np.array(delta))
    assert got["statistic"] == pytest.approx(float(ref.statistic), rel=1e-12)
    assert got["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    d = np.array(delta)
    assert (got["wins"], got["ties"], got["losses"]) == ((d > 0).sum(), (d == 0).sum(), (d < 0).sum())


def test_all_same_sign_reaches_exactly_the_minimum_attainable_p():
    for n in (5, 6, 8):
        assert compute_paired_test(np.arange(1.0, n + 1))["p_value"] == pytest.approx(min_attainable_p(n))
    assert min_attainable_p(6) == pytest.approx(0.03125)


def _direct_rank_biserial(d):
    d = np.asarray(d, dtype=float)
    a = np.abs(d)
    ranks = [1 + np.sum(a < x) + 0.5 * (np.sum(a == x) - 1) for x in a]  # average ranks, by counting
    w_plus = sum(r for r, x in zip(ranks, d, strict=True) if x > 0) + 0.5 * sum(
        r for r, x in zip(ranks, d, strict=True) if x == 0
    )
    total = len(d) * (len(d) + 1) / 2
    return (2 * w_plus - total) / total  # (W+ − W−)/(W+ + W−)


@pytest.mark.parametrize(
    "delta",
    [[3.0, -1.0, 2.0, 5.0, -4.0, 6.0], [0.0, 1.0, 1.0, -2.0, 3.0, 0.0, 4.0], [-1.0, -2.0, -3.0], [0.0, 0.0]],
)
def test_rank_biserial_matches_direct_formula(delta):
    assert compute_paired_test(np.array(delta))["effect_size"] == pytest.approx(_direct_rank_biserial(delta))


def test_rank_biserial_is_one_when_every_category_improves():
    assert compute_paired_test(np.array([0.5, 1.0, 2.0]))["effect_size"] == 1.0


@pytest.mark.parametrize(
    ("m", "n_needed"), [(1, 6), (2, 7), (3, 7), (4, 8), (6, 8), (10, 9), (15, 10), (20, 10), (30, 11)]
)
def test_testability_floor_matches_the_spec_table(m, n_needed):
    assert is_testable(n_needed, alpha=ALPHA, family_size=m)
    assert not is_testable(n_needed - 1, alpha=ALPHA, family_size=m)


# --- run_comparisons against oracles ---------------------------------------------------------------


def test_run_comparisons_matches_scipy_and_statsmodels_on_the_same_numbers(default_run):
    fake_results, rows, paths = default_run
    header = open(paths["comparisons"]).readline().strip().split(",")
    assert tuple(header[: len(DESIGN_COLUMNS)]) == DESIGN_COLUMNS
    assert tuple(header) == COMPARISON_COLUMNS
    primary = [r for r in rows if r["primary"] == "True"]
    assert [r["comparison"] for r in primary] == [
        "xattn_from_base-baseline",
        "xattn_scratch-baseline",
        "xattn_from_base-xattn_scratch",
        "xattn_from_base-baseline_continued",
    ]
    assert {(r["scope"], r["metric"]) for r in primary} == {("all", "image_auroc")}
    for row in primary:
        truth = _deltas(fake_results, row["arm_a"], row["arm_b"], "image_auroc")
        delta = np.array([v[0] for v in truth.values()])
        seed_mean_a = np.array([v[1].mean() for v in truth.values()])
        seed_mean_b = np.array([v[2].mean() for v in truth.values()])
        assert int(row["n_units"]) == 9
        assert _f(row["mean_delta"]) == pytest.approx(delta.mean(), rel=1e-12)
        assert _f(row["median_delta"]) == pytest.approx(np.median(delta), rel=1e-12)
        assert (int(row["wins"]), int(row["ties"]), int(row["losses"])) == (
            (delta > 0).sum(),
            0,
            (delta < 0).sum(),
        )
        ref = _scipy_wilcoxon(delta)
        assert _f(row["statistic"]) == pytest.approx(float(ref.statistic))
        assert _f(row["p_value"]) == pytest.approx(float(ref.pvalue), rel=1e-12)
        assert _f(row["effect_size"]) == pytest.approx(_direct_rank_biserial(delta))
        t_ref = sps.ttest_rel(seed_mean_a, seed_mean_b)
        assert _f(row["t_statistic"]) == pytest.approx(float(t_ref.statistic), rel=1e-9)
        assert _f(row["t_p_value"]) == pytest.approx(float(t_ref.pvalue), rel=1e-9)
        assert _f(row["d_z"]) == pytest.approx(delta.mean() / delta.std(ddof=1), rel=1e-9)
        mde = TTestPower().solve_power(
            effect_size=None, nobs=9, alpha=ALPHA, power=0.8, alternative="two-sided"
        )
        assert _f(row["mde_pp"]) == pytest.approx(float(mde) * delta.std(ddof=1), rel=1e-6)
        assert _f(row["ci_low"]) < delta.mean() < _f(row["ci_high"])
        assert _f(row["seed_ci_low"]) < delta.mean() < _f(row["seed_ci_high"])
        assert row["family"] == "primary" and row["correction"] == "holm" and row["family_size"] == "4"
    holm = multipletests([_f(r["p_value"]) for r in primary], method="holm")[1]
    np.testing.assert_allclose([_f(r["p_adjusted"]) for r in primary], holm, rtol=1e-12)
    secondary = [r for r in rows if r["primary"] == "False"]
    assert len(secondary) == 4 * 7 * 3 - 4  # comparisons × metrics × scopes (all + 2 datasets) − primary
    bh = multipletests([_f(r["p_value"]) for r in secondary], method="fdr_bh")[1]
    np.testing.assert_allclose([_f(r["p_adjusted"]) for r in secondary], bh, rtol=1e-12)
    assert {r["correction"] for r in secondary} == {"fdr_bh"}
    # per-dataset scope uses only that dataset's categories
    row_b = next(
        r
        for r in rows
        if r["comparison"] == "xattn_from_base-baseline"
        and r["scope"] == "synth_b"
        and r["metric"] == "pixel_aupro"
    )
    truth_b = [
        v[0]
        for k, v in _deltas(fake_results, "xattn_from_base", "baseline", "pixel_aupro").items()
        if k[0] == "synth_b"
    ]
    assert int(row_b["n_units"]) == 4
    assert _f(row_b["mean_delta"]) == pytest.approx(np.mean(truth_b), rel=1e-12)


def test_run_comparisons_is_reproducible_and_records_settings(default_run, tmp_path):
    fake_results, _, first = default_run
    _, second = _run(fake_results, tmp_path / "b")
    for name in ("comparisons", "comparisons_by_category", "power"):
        assert first[name].read_bytes() == second[name].read_bytes()
    record = read_json(first["stats_json"])
    assert record["bootstrap"] == {"resamples": 10_000, "seed": 12345, "interval": "percentile"}
    assert "method='holm'" in record["methods"]["primary_correction"]
    assert "zero_method='zsplit'" in record["methods"]["primary_test"]
    primary_family = next(f for f in record["families"] if f["family"] == "primary")
    assert primary_family["size"] == 4
    assert set(record["versions"]) >= {"numpy", "scipy", "statsmodels"}
    # a different bootstrap seed moves the CI but nothing else
    rows_a = read_csv(first["comparisons"])
    rows_c, _ = _run(fake_results, tmp_path / "c", bootstrap_seed=12346)
    assert [r["p_value"] for r in rows_a] == [r["p_value"] for r in rows_c]
    assert [r["ci_low"] for r in rows_a] != [r["ci_low"] for r in rows_c]


def test_planted_consistent_effect_is_significant(default_run):
    _, rows, _ = default_run
    row = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline")
    assert row["verdict"] == "significant"
    assert _f(row["p_adjusted"]) < ALPHA
    assert row["sentence"].startswith(
        "Across the 9 categories, xattn_from_base improved image AUROC over baseline"
    )
    assert "Holm-adjusted p = " in row["sentence"]


def test_fewer_than_six_categories_are_not_testable_never_significant(fake_results_factory, tmp_path):
    fake = fake_results_factory(
        test_datasets={"synth_a": ("a", "b", "c", "d", "e")}, effects={"xattn_from_base": 0.2}
    )
    rows, _ = _run(fake, tmp_path)
    for row in rows:
        assert int(row["n_units"]) == 5
        assert row["testable"] == "False"
        assert row["verdict"] == "not testable with n = 5"
        assert "not testable with n = 5 categories" in row["sentence"]
        assert not re.search(r"\bsignificant\b", row["sentence"])
        assert _f(row["min_attainable_p"]) == pytest.approx(1 / 16)
    big = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline")
    assert _f(big["p_value"]) == pytest.approx(1 / 16)  # recorded, but not worded as a finding
    assert "the first Holm step over m = 4 comparisons needs p < 0.0125" in big["sentence"]


def test_seven_categories_testable_alone_but_not_under_holm_over_four(fake_results_factory, tmp_path):
    fake = fake_results_factory(test_datasets={"synth_a": tuple("abcdefg")}, effects={"xattn_from_base": 0.2})
    rows, _ = _run(fake, tmp_path)
    primary = next(
        r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline"
    )
    assert primary["verdict"] == "not testable with n = 7"
    secondary = next(
        r
        for r in rows
        if r["primary"] == "False"
        and r["comparison"] == "xattn_from_base-baseline"
        and r["metric"] == "pixel_auroc"
        and r["scope"] == "all"
    )
    assert secondary["testable"] == "True"


def test_equivalent_only_through_the_rope(fake_results_factory, tmp_path):
    fake = fake_results_factory(effects={}, shared_noise=0.002, arm_noise=0.0005)
    rows, _ = _run(fake, tmp_path / "rope", rope=0.5)
    row = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_scratch-baseline")
    delta = np.array([v[0] for v in _deltas(fake, "xattn_scratch", "baseline", "image_auroc").values()])
    posterior = sps.t(df=delta.size - 1, loc=delta.mean(), scale=delta.std(ddof=1) / math.sqrt(delta.size))
    assert _f(row["p_rope"]) == pytest.approx(posterior.cdf(0.5) - posterior.cdf(-0.5), rel=1e-9)
    assert _f(row["p_rope"]) > 0.95
    assert row["verdict"] == "equivalent"
    assert "practically equivalent on image AUROC within ±0.5 pp" in row["sentence"]
    no_rope, _ = _run(fake, tmp_path / "plain")
    assert all(r["verdict"] != "equivalent" and "equivalent" not in r["sentence"] for r in no_rope)


def test_language_lint_over_varied_studies(default_run, fake_results_factory, tmp_path):
    studies = [
        (fake_results_factory(nan_categories=("grid",), ceiling_categories=("tile",)), {"rope": 0.5}),
        (fake_results_factory(effects={}, shared_noise=0.002, arm_noise=0.0005), {"rope": 1.0}),
        (fake_results_factory(test_datasets={"x": tuple("abcd")}), {"rope": 0.5}),
    ]
    tables = [default_run[1]] + [
        _run(fake, tmp_path / str(i), **cfg)[0] for i, (fake, cfg) in enumerate(studies)
    ]
    seen = set()
    for rows in tables:
        for row in rows:
            sentence, verdict = row["sentence"], row["verdict"]
            seen.add(verdict.split(" with ")[0])
            if re.search(r"\bsignificant\b", sentence, flags=re.IGNORECASE):
                assert verdict == "significant" and _f(row["p_adjusted"]) < ALPHA, sentence
            if verdict == "significant":
                assert _f(row["p_adjusted"]) < ALPHA and row["testable"] == "True"
            if re.search(r"equivalen", sentence, flags=re.IGNORECASE) or verdict == "equivalent":
                assert _f(row["p_rope"]) > 0.95, sentence
            if verdict.startswith("not testable"):
                assert f"not testable with n = {row['n_units']}" in sentence
                assert "p = " not in sentence.replace("attainable two-sided p = ", "")
            for banned in ("slightly better", "trend", "comparable", "no difference"):
                assert banned not in sentence
            assert verdict_sentence(row) == sentence  # the sentence can be rebuilt from the CSV row
    assert seen >= {"significant", "not significant", "not testable", "equivalent"}


def test_undefined_categories_are_dropped_and_counted(fake_results_factory, tmp_path):
    fake = fake_results_factory(nan_categories=("grid",))
    rows, paths = _run(fake, tmp_path)
    for row in (r for r in rows if r["scope"] == "all"):
        pixel = row["metric"].startswith("pixel_")
        assert (int(row["n_units"]), int(row["n_dropped"])) == ((8, 1) if pixel else (9, 0))
    dropped = read_json(paths["stats_json"])["dropped"]
    assert {(d["category"], d["metric"]) for d in dropped} == {
        ("grid", m) for m in METRICS if m.startswith("pixel_")
    }
    assert {d["reason"] for d in dropped} == {"metric undefined (NaN) for every common seed"}


def test_pairing_uses_only_seeds_present_for_both_arms(fake_results_factory, tmp_path):
    fake = fake_results_factory(skip=(("xattn_from_base", 2),))
    rows, paths = _run(fake, tmp_path)
    row = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline")
    delta = [v[0] for v in _deltas(fake, "xattn_from_base", "baseline", "image_auroc", seeds=(0, 1)).values()]
    assert row["n_seeds"] == "2"
    assert _f(row["mean_delta"]) == pytest.approx(np.mean(delta), rel=1e-12)
    other = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_scratch-baseline")
    assert other["n_seeds"] == "3"
    missing = read_json(paths["stats_json"])["missing"]
    assert {(m["comparison"], m["seed"]) for m in missing} == {
        ("xattn_from_base-baseline", 2),
        ("xattn_from_base-xattn_scratch", 2),
        ("xattn_from_base-baseline_continued", 2),
    }


def test_missing_arm_is_reported_as_no_data_and_keeps_the_family_size(fake_results_factory, tmp_path):
    fake = fake_results_factory(arms=("baseline", "xattn_from_base", "xattn_scratch"))
    rows, paths = _run(fake, tmp_path)
    primary = [r for r in rows if r["primary"] == "True"]
    gone = primary[-1]
    assert gone["comparison"] == "xattn_from_base-baseline_continued"
    assert (gone["n_units"], gone["verdict"]) == ("0", "no data")
    assert "nothing to compare" in gone["sentence"]
    raw = [_f(r["p_value"]) for r in primary[:3]]
    expected = multipletests([*raw, 1.0], method="holm")[1][:3]
    np.testing.assert_allclose([_f(r["p_adjusted"]) for r in primary[:3]], expected, rtol=1e-12)
    assert read_json(paths["stats_json"])["missing_arms"][0]["arms"] == ["baseline_continued"]


def test_by_category_rows_are_descriptive_below_six_seeds(default_run):
    fake_results, _, paths = default_run
    rows = read_csv(paths["comparisons_by_category"])
    row = next(
        r
        for r in rows
        if r["comparison"] == "xattn_from_base-baseline"
        and r["metric"] == "image_auroc"
        and r["category"] == "cable"
    )
    d = np.array(
        [
            100
            * (
                fake_results.values[("synth_a", "4", s, "xattn_from_base", "synth_a", "cable", "image_auroc")]
                - fake_results.values[("synth_a", "4", s, "baseline", "synth_a", "cable", "image_auroc")]
            )
            for s in (0, 1, 2)
        ]
    )
    assert _f(row["mean_delta"]) == pytest.approx(d.mean(), rel=1e-9)
    assert _f(row["sd_delta"]) == pytest.approx(d.std(ddof=1), rel=1e-9)
    low, high = sps.t.interval(0.95, 2, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(3))
    assert (_f(row["ci_low"]), _f(row["ci_high"])) == (pytest.approx(low), pytest.approx(high))
    assert row["improved"] == f"{int((d > 0).sum())} of 3 seeds improved"
    assert row["verdict"] == "descriptive" and row["p_value"] == "nan"


def test_by_category_p_values_with_six_seeds_are_bh_adjusted(fake_results_factory, tmp_path):
    fake = fake_results_factory(seeds=(0, 1, 2, 3, 4, 5))
    _, paths = _run(fake, tmp_path)
    rows = [
        r
        for r in read_csv(paths["comparisons_by_category"])
        if r["comparison"] == "xattn_from_base-baseline" and r["metric"] == "image_auroc"
    ]
    raw = []
    for r in rows:
        d = np.array(
            [
                100
                * (
                    fake.values[
                        (
                            "synth_a",
                            "4",
                            s,
                            "xattn_from_base",
                            r["test_dataset"],
                            r["category"],
                            "image_auroc",
                        )
                    ]
                    - fake.values[
                        ("synth_a", "4", s, "baseline", r["test_dataset"], r["category"], "image_auroc")
                    ]
                )
                for s in range(6)
            ]
        )
        raw.append(sps.ttest_1samp(d, 0.0).pvalue)
    np.testing.assert_allclose([_f(r["p_value"]) for r in rows], raw, rtol=1e-9)
    np.testing.assert_allclose(
        [_f(r["p_adjusted"]) for r in rows], multipletests(raw, method="fdr_bh")[1], rtol=1e-9
    )
    assert {r["verdict"] for r in rows} <= {"significant", "not significant"}


def test_power_table_observed_row_matches_the_comparison(default_run):
    _, rows, paths = default_run
    power = read_csv(paths["power"])
    row = next(r for r in rows if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline")
    obs = next(
        p
        for p in power
        if p["comparison"] == "xattn_from_base-baseline"
        and p["metric"] == "image_auroc"
        and p["axis"] == "categories"
        and p["observed"] == "True"
    )
    assert obs["n_categories"] == "9"
    assert _f(obs["mde_pp"]) == pytest.approx(_f(row["mde_pp"]), rel=1e-9)


# --- simulation: error rates of the primary test -------------------------------------------------


def _simulate(rng, n_studies, effect, n_cat=10, n_seeds=3, tau=0.5, sigma=1.0):
    """Return seed-mean δ per category for many simulated studies, shape (n_studies, n_cat)."""
    category = rng.normal(0.0, tau, size=(n_studies, n_cat))
    seeds = rng.normal(0.0, sigma, size=(n_studies, n_cat, n_seeds)).mean(axis=2)
    return effect + category + seeds


def _primary_p_values(deltas):
    """p-values of the primary test for many studies at once: scipy's wilcoxon (zsplit, auto) along axis 1
    — the call ``compute_paired_test`` makes — checked against ``compute_paired_test`` on a subset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = sps.wilcoxon(deltas, zero_method="zsplit", method="auto", axis=1).pvalue
    for d, q in zip(deltas[:10], p[:10], strict=True):
        assert compute_paired_test(d)["p_value"] == pytest.approx(q, rel=1e-12)
    return p


def test_simulated_false_positive_rate_stays_at_alpha_and_planted_effect_is_found():
    rng = np.random.default_rng(20240607)
    null = _primary_p_values(_simulate(rng, 500, 0.0))
    assert np.mean(null < ALPHA) <= ALPHA + 0.03
    # families of four null comparisons under Holm: family-wise error ≤ α (+ tolerance); Holm rejects
    # anything exactly when its first step does (min p < α/m)
    fam = _primary_p_values(_simulate(rng, 4 * 300, 0.0)).reshape(300, 4)
    assert np.array_equal(
        fam.min(axis=1) * 4 < ALPHA,
        [multipletests(p, method="holm")[0].any() for p in fam[:5]] + list(fam.min(axis=1)[5:] * 4 < ALPHA),
    )
    assert np.mean(fam.min(axis=1) * 4 < ALPHA) <= ALPHA + 0.03
    # a consistent effect of 1 pp (d_z ≈ 1.3 with SD(δ) ≈ 0.76) is found in most studies
    planted = _primary_p_values(_simulate(rng, 300, 1.0))
    assert np.mean(planted < ALPHA) > 0.8


# --- config ---------------------------------------------------------------------------------------


def test_stats_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"stats: unknown key\(s\) alpah; valid keys: primary_metric"):
        StatsConfig.from_mapping({"alpah": 0.05})
    with pytest.raises(ValueError, match="stats.primary_metric: 'auroc' is not a metric"):
        StatsConfig.from_mapping({"primary_metric": "auroc"})
    with pytest.raises(
        ValueError, match="stats.bootstrap_resamples: expected an integer >= 10000, found 999"
    ):
        StatsConfig.from_mapping({"bootstrap_resamples": 999})
    with pytest.raises(ValueError, match=r"stats.comparisons\[0\]: compares 'baseline' with itself"):
        StatsConfig.from_mapping({"comparisons": [["baseline", "baseline"]]})
    with pytest.raises(ValueError, match=r"stats.comparisons\[1\]: baseline vs a is listed twice"):
        StatsConfig.from_mapping({"comparisons": [["a", "baseline"], ["baseline", "a"]]})
    with pytest.raises(ValueError, match="stats.alpha: expected a number in"):
        StatsConfig.from_mapping({"alpha": 1.5})
    with pytest.raises(ValueError, match="stats.correction: 'hs' is not supported"):
        StatsConfig.from_mapping({"correction": "hs"})
    cfg = StatsConfig.from_mapping({"rope": 1, "comparisons": [["xattn_from_base", "baseline"]]})
    assert cfg.rope == 1.0 and cfg.comparisons == (("xattn_from_base", "baseline"),)
    path = tmp_path / "config.yaml"
    path.write_text("datasets: [a]\nstats:\n  alpha: 0.01\n  primary_metric: pixel_aupro\n")
    assert StatsConfig.from_file(path) == StatsConfig(alpha=0.01, primary_metric="pixel_aupro")
    path.write_text("stats:\n  seeds: 3\n")
    with pytest.raises(ValueError, match=r"config.yaml: stats: unknown key\(s\) seeds"):
        StatsConfig.from_file(path)
