"""Paired comparisons of arms: Wilcoxon over categories, Holm/BH, bootstrap CIs, effect sizes, verdicts."""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from aaclip_xattn.fileio import write_csv, write_json
from aaclip_xattn.stats.bayes import bayesian_signed_rank, paired_t_posterior
from aaclip_xattn.stats.bootstrap import bootstrap_ci, bootstrap_replicates, make_bootstrap_rng
from aaclip_xattn.stats.collect import MetricRecord, read_metrics_long
from aaclip_xattn.stats.config import METRICS, StatsConfig, comparison_name
from aaclip_xattn.stats.power import (
    POWER_COLUMNS,
    compute_power_curve,
    mde_dz,
    seed_variance_components,
    seeds_needed,
)

__all__ = [
    "BY_CATEGORY_COLUMNS",
    "COMPARISON_COLUMNS",
    "DESIGN_COLUMNS",
    "Unit",
    "compute_paired_test",
    "is_testable",
    "min_attainable_p",
    "run_comparisons",
    "verdict_sentence",
]

logger = logging.getLogger(__name__)

#: The columns DESIGN.md fixes for ``comparisons.csv``, in order.
DESIGN_COLUMNS: Final[tuple[str, ...]] = (
    "train_dataset",
    "shot",
    "comparison",
    "scope",
    "metric",
    "primary",
    "n_units",
    "mean_delta",
    "median_delta",
    "ci_low",
    "ci_high",
    "wins",
    "ties",
    "losses",
    "statistic",
    "p_value",
    "p_adjusted",
    "effect_size",
    "verdict",
)

#: Extra columns of ``comparisons.csv`` after the DESIGN ones (see docs/architecture.md).
EXTRA_COLUMNS: Final[tuple[str, ...]] = (
    "arm_a",
    "arm_b",
    "family",
    "correction",
    "family_size",
    "n_seeds",
    "n_seeds_max",
    "n_dropped",
    "n_zero",
    "n_ceiling",
    "w_plus",
    "w_minus",
    "min_attainable_p",
    "testable",
    "ci_level",
    "seed_ci_low",
    "seed_ci_high",
    "sd_delta",
    "sigma_d",
    "t_statistic",
    "t_p_value",
    "d_z",
    "g_z",
    "paired_win_rate",
    "mde_dz",
    "mde_pp",
    "mde_power",
    "rope",
    "p_better",
    "p_rope",
    "p_worse",
    "bsr_p_better",
    "bsr_p_rope",
    "bsr_p_worse",
    "seeds_needed",
    "alpha",
    "sentence",
)

COMPARISON_COLUMNS: Final[tuple[str, ...]] = DESIGN_COLUMNS + EXTRA_COLUMNS

#: Columns of ``comparisons_by_category.csv`` (seed-level, descriptive unless S ≥ 6).
BY_CATEGORY_COLUMNS: Final[tuple[str, ...]] = (
    "train_dataset",
    "shot",
    "comparison",
    "metric",
    "primary",
    "test_dataset",
    "category",
    "n_seeds",
    "mean_delta",
    "sd_delta",
    "ci_low",
    "ci_high",
    "seeds_improved",
    "seeds_tied",
    "seeds_worse",
    "improved",
    "mean_a",
    "sd_a",
    "mean_b",
    "sd_b",
    "p_value",
    "p_adjusted",
    "verdict",
)

#: Scope label of the analysis over every test dataset of a training run.
SCOPE_ALL: Final = "all"
#: |δ| below this (pp) counts as a zero difference (floating-point noise of identical scores).
ZERO_TOLERANCE_PP: Final = 1e-9
#: Largest n for which scipy's ``wilcoxon(method="auto")`` runs an exact permutation test with ties/zeros.
_PERMUTATION_MAX_N: Final = 13
#: Seeds per category from which a seed-level p-value is shown (statistics.md §6.4).
MIN_SEEDS_FOR_CATEGORY_TEST: Final = 6

_METRIC_WORDS: Final = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "pixel_aupro": "pixel AUPRO",
}
_FDR_METHODS: Final = {"fdr_bh": "bh", "fdr_by": "by"}
_CORRECTION_WORDS: Final = {"holm": "Holm", "bonferroni": "Bonferroni", "fdr_bh": "BH", "fdr_by": "BY"}


@dataclass(frozen=True)
class Unit:
    """One category's paired seed-level differences.

    Attributes:
        test_dataset: Stratum of the bootstrap.
        category: Category name.
        seeds: Seeds present (with finite values) for both arms, sorted.
        d: Differences A − B per seed in pp, shape (S,), aligned with ``seeds``.
        a: Arm A's values per seed in percent, shape (S,).
        b: Arm B's values per seed in percent, shape (S,).
    """

    test_dataset: str
    category: str
    seeds: tuple[int, ...]
    d: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @property
    def delta(self) -> float:
        """Seed-mean difference δ in pp (|δ| below ``ZERO_TOLERANCE_PP`` snapped to 0)."""
        value = float(self.d.mean())
        return 0.0 if abs(value) < ZERO_TOLERANCE_PP else value


def min_attainable_p(n: int) -> float:
    """Return the smallest two-sided p-value of a signed-rank (or sign-flip) test with n pairs: 2/2ⁿ."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0**n)


def is_testable(n: int, *, alpha: float, family_size: int = 1) -> bool:
    """Return whether n units can reach significance at ``alpha`` after the first Holm (or Bonferroni)
    step over ``family_size`` tests: 2/2ⁿ · m < α (statistics.md §7; n ≥ 6 for m = 1, 8 for m = 4)."""
    return n >= 1 and min_attainable_p(n) * max(family_size, 1) < alpha


def compute_paired_test(delta: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Run the primary test on category-level differences: two-sided Wilcoxon signed-rank.

    ``scipy.stats.wilcoxon(delta, zero_method="zsplit", method="auto")``: zero differences split their
    ranks between the signs instead of being dropped. ``method="auto"`` is exact for n ≤ 50 without
    ties or zeros; with ties or zeros scipy uses the normal approximation (or exact permutations for
    small n in recent versions) — the count of zeros is returned so the report can state it.

    Args:
        delta: Category-level differences δ (pp), shape (n,).

    Returns:
        ``n, statistic, p_value, w_plus, w_minus, effect_size`` (matched-pairs rank-biserial
        r = (W⁺ − W⁻)/(W⁺ + W⁻) with zero ranks split evenly), ``n_zero, wins, ties, losses``.
        ``statistic`` and ``p_value`` are NaN for n = 0.
    """
    delta = np.asarray(delta, dtype=float)
    n = int(delta.size)
    wins = int((delta > 0).sum())
    losses = int((delta < 0).sum())
    ties = n - wins - losses
    out: dict[str, float] = {
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "n_zero": ties,
        "statistic": math.nan,
        "p_value": math.nan,
        "w_plus": math.nan,
        "w_minus": math.nan,
        "effect_size": math.nan,
    }
    if n == 0:
        return out
    ranks = sps.rankdata(np.abs(delta))
    zero_half = 0.5 * ranks[delta == 0].sum()
    w_plus = float(ranks[delta > 0].sum() + zero_half)
    w_minus = float(ranks[delta < 0].sum() + zero_half)
    out["w_plus"], out["w_minus"] = w_plus, w_minus
    out["effect_size"] = (w_plus - w_minus) / (w_plus + w_minus)
    out["statistic"] = min(w_plus, w_minus)
    has_ties = np.unique(ranks).size < n
    if n <= _PERMUTATION_MAX_N and (ties > 0 or has_ties):
        out["p_value"] = _signflip_p(delta, ranks, w_plus)
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(delta, zero_method="zsplit", alternative="two-sided", method="auto")
    out["statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    return out


def _signflip_p(delta: np.ndarray, ranks: np.ndarray, w_plus: float) -> float:
    """Exact two-sided sign-flip p-value of W⁺ with ties or zeros, as ``scipy.stats.wilcoxon(method="auto")``
    computes it for n ≤ 13 (``permutation_test`` over all 2ⁿ sign patterns, relative tolerance
    100·eps), but vectorised: flipping signs keeps |δ| and so the ranks, hence W⁺ over all patterns is
    a constant plus a binary matrix times the non-zero ranks. scipy's generic loop takes ~0.2 s per
    call; this takes microseconds, and a test checks the two agree."""
    nonzero = ranks[delta != 0]
    base = 0.5 * ranks[delta == 0].sum()
    k = nonzero.size
    patterns = (np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1
    null = base + patterns @ nonzero
    gamma = abs(np.finfo(float).eps * 100 * w_plus)
    less = np.count_nonzero(null <= w_plus + gamma) / null.size
    greater = np.count_nonzero(null >= w_plus - gamma) / null.size
    return float(min(1.0, 2.0 * min(less, greater)))


def _index_records(records: Iterable[MetricRecord]) -> dict[tuple[str, str], dict]:
    """Nest records as ``{(train_dataset, shot): {arm: {(test_dataset, category): {metric: {seed: value}}}}}``."""
    index: dict[tuple[str, str], dict] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    )
    for r in records:
        slot = index[(r.train_dataset, r.shot)][r.arm][(r.test_dataset, r.category)][r.metric]
        if r.seed in slot:
            raise ValueError(
                f"metrics_long: two values for {r.train_dataset}/{r.shot}/seed{r.seed}/{r.arm}/"
                f"{r.test_dataset}/{r.category}/{r.metric}"
            )
        slot[r.seed] = r.value
    return index


def _build_units(
    arm_a: dict, arm_b: dict, metric: str, audit: dict[str, list], key: dict[str, str]
) -> tuple[list[Unit], list[dict]]:
    """Pair the two arms per category on the seeds both have with finite values."""
    units, dropped = [], []
    for unit_key in sorted(set(arm_a) | set(arm_b)):
        test_dataset, category = unit_key
        if unit_key not in arm_a or unit_key not in arm_b:
            if metric == METRICS[0]:
                audit["missing"].append(
                    {
                        **key,
                        "test_dataset": test_dataset,
                        "category": category,
                        "reason": f"only in {key['arm_a'] if unit_key in arm_a else key['arm_b']}",
                    }
                )
            continue
        values_a, values_b = arm_a[unit_key].get(metric, {}), arm_b[unit_key].get(metric, {})
        common = sorted(set(values_a) & set(values_b))
        if metric == METRICS[0]:
            for seed in sorted(set(values_a) ^ set(values_b)):
                audit["missing"].append(
                    {
                        **key,
                        "test_dataset": test_dataset,
                        "category": category,
                        "seed": seed,
                        "reason": f"seed only in {key['arm_a'] if seed in values_a else key['arm_b']}",
                    }
                )
        seeds = tuple(s for s in common if math.isfinite(values_a[s]) and math.isfinite(values_b[s]))
        if not seeds:
            reason = (
                "metric undefined (NaN) for every common seed" if common else "no seed present for both arms"
            )
            dropped.append(
                {
                    **key,
                    "metric": metric,
                    "test_dataset": test_dataset,
                    "category": category,
                    "reason": reason,
                }
            )
            continue
        a = np.array([values_a[s] for s in seeds]) * 100.0
        b = np.array([values_b[s] for s in seeds]) * 100.0
        units.append(Unit(test_dataset, category, seeds, a - b, a, b))
    return units, dropped


def _analyse(units: list[Unit], cfg: StatsConfig, rng_key: str, *, bayes_sr: bool) -> dict[str, Any]:
    """Compute every statistic of one comparisons.csv row except the family-dependent ones."""
    delta = np.array([u.delta for u in units])
    test = compute_paired_test(delta)
    n = test["n"]
    row: dict[str, Any] = {
        "n_units": n,
        "wins": test["wins"],
        "ties": test["ties"],
        "losses": test["losses"],
        "n_zero": test["n_zero"],
        "statistic": test["statistic"],
        "p_value": test["p_value"],
        "w_plus": test["w_plus"],
        "w_minus": test["w_minus"],
        "effect_size": test["effect_size"],
        "min_attainable_p": min_attainable_p(n),
        "ci_level": 1.0 - cfg.alpha,
        "rope": cfg.rope if cfg.rope is not None else math.nan,
        "alpha": cfg.alpha,
        "mde_power": cfg.power,
    }
    nan_keys = (
        "mean_delta median_delta ci_low ci_high seed_ci_low seed_ci_high sd_delta sigma_d t_statistic "
        "t_p_value d_z g_z paired_win_rate mde_dz mde_pp p_better p_rope p_worse bsr_p_better bsr_p_rope "
        "bsr_p_worse"
    ).split()
    row.update(dict.fromkeys(nan_keys, math.nan))
    row.update({"n_seeds": 0, "n_seeds_max": 0, "n_ceiling": 0, "seeds_needed": ""})
    if n == 0:
        return row
    sizes = [u.d.size for u in units]
    row["n_seeds"], row["n_seeds_max"] = min(sizes), max(sizes)
    row["n_ceiling"] = sum(bool(np.all(u.a == 100.0) and np.all(u.b == 100.0)) for u in units)
    row["mean_delta"] = float(delta.mean())
    row["median_delta"] = float(np.median(delta))
    strata = [u.test_dataset for u in units]
    d_units = [u.d for u in units]
    rng = make_bootstrap_rng(cfg.bootstrap_seed, rng_key)
    reps = bootstrap_replicates(d_units, strata, n_resamples=cfg.bootstrap_resamples, rng=rng)
    row["ci_low"], row["ci_high"] = bootstrap_ci(reps, level=1.0 - cfg.alpha)
    reps = bootstrap_replicates(
        d_units, strata, n_resamples=cfg.bootstrap_resamples, rng=rng, resample_categories=False
    )
    row["seed_ci_low"], row["seed_ci_high"] = bootstrap_ci(reps, level=1.0 - cfg.alpha)
    sd_delta, sigma_d, tau = seed_variance_components(d_units)
    row["sd_delta"], row["sigma_d"] = sd_delta, sigma_d
    row["paired_win_rate"] = float(
        np.mean([(np.sum(u.d > 0) + 0.5 * np.sum(u.d == 0)) / u.d.size for u in units])
    )
    if n >= 2 and sd_delta > 0:
        t_res = sps.ttest_1samp(delta, 0.0)
        row["t_statistic"], row["t_p_value"] = float(t_res.statistic), float(t_res.pvalue)
        row["d_z"] = float(delta.mean() / sd_delta)
        row["g_z"] = row["d_z"] * (1.0 - 3.0 / (4.0 * (n - 1) - 1.0))
    row["mde_dz"] = mde_dz(n, alpha=cfg.alpha, power=cfg.power)
    # With no spread in δ the MDE is not informative (0 pp); leave it undefined rather than claim power.
    row["mde_pp"] = row["mde_dz"] * sd_delta if n >= 2 and sd_delta > 0 else math.nan
    if cfg.rope is not None:
        row.update(paired_t_posterior(delta, cfg.rope))
        needed = seeds_needed(n, sigma_d, tau, cfg.rope, alpha=cfg.alpha, power=cfg.power)
        row["seeds_needed"] = "" if needed is None else needed
        if bayes_sr:
            bsr = bayesian_signed_rank(
                delta,
                cfg.rope,
                n_samples=cfg.bayes_samples,
                rng=make_bootstrap_rng(cfg.bootstrap_seed, rng_key + "|bsr"),
            )
            row.update({f"bsr_{k}": v for k, v in bsr.items()})
    return row


def _adjust(p_values: list[float], method: str) -> list[float]:
    """Adjust a family; a NaN p counts as 1 so m stays the declared family size, and its adjusted p
    stays NaN. Holm/Bonferroni: statsmodels ``multipletests`` with the method passed explicitly (its
    default is Holm–Šidák). BH/BY: ``scipy.stats.false_discovery_control`` (equal to statsmodels'
    ``fdr_bh``/``fdr_by``; statsmodels runs ``gc.collect()`` on every call, ~0.1 s each, which the many
    per-category families cannot afford)."""
    if not p_values:
        return []
    filled = np.array([1.0 if math.isnan(p) else p for p in p_values])
    if method in _FDR_METHODS:
        adjusted = sps.false_discovery_control(filled, method=_FDR_METHODS[method])
    else:
        adjusted = multipletests(filled, method=method)[1]
    return [math.nan if math.isnan(p) else float(q) for p, q in zip(p_values, adjusted, strict=True)]


def _verdict(row: Mapping[str, Any], cfg: StatsConfig) -> str:
    n = int(row["n_units"])
    if n == 0:
        return "no data"
    p_adj = row["p_adjusted"]
    if row["testable"] and not math.isnan(p_adj) and p_adj < cfg.alpha:
        return "significant"
    if cfg.rope is not None and not math.isnan(row["p_rope"]) and row["p_rope"] > 0.95:
        return "equivalent"
    if row["testable"]:
        return "not significant"
    return f"not testable with n = {n}"


def _by_category_rows(units: list[Unit], key: dict[str, Any], cfg: StatsConfig) -> list[dict[str, Any]]:
    rows = []
    for u in units:
        s = u.d.size
        mean = float(u.d.mean())
        sd = float(u.d.std(ddof=1)) if s >= 2 else math.nan
        low = high = math.nan
        if s >= 3:
            half = sps.t.ppf(1.0 - cfg.alpha / 2.0, s - 1) * sd / math.sqrt(s)
            low, high = mean - half, mean + half
        improved, worse = int(np.sum(u.d > 0)), int(np.sum(u.d < 0))
        p = math.nan
        if s >= MIN_SEEDS_FOR_CATEGORY_TEST and sd > 0:
            p = float(sps.ttest_1samp(u.d, 0.0).pvalue)
        rows.append(
            {
                **key,
                "test_dataset": u.test_dataset,
                "category": u.category,
                "n_seeds": s,
                "mean_delta": mean,
                "sd_delta": sd,
                "ci_low": low,
                "ci_high": high,
                "seeds_improved": improved,
                "seeds_tied": s - improved - worse,
                "seeds_worse": worse,
                "improved": f"{improved} of {s} seeds improved",
                "mean_a": float(u.a.mean()),
                "sd_a": float(u.a.std(ddof=1)) if s >= 2 else math.nan,
                "mean_b": float(u.b.mean()),
                "sd_b": float(u.b.std(ddof=1)) if s >= 2 else math.nan,
                "p_value": p,
                "p_adjusted": math.nan,
                "verdict": "descriptive" if s < MIN_SEEDS_FOR_CATEGORY_TEST else "",
            }
        )
    testable = [r for r in rows if not math.isnan(r["p_value"])]
    for r, q in zip(
        testable, _adjust([r["p_value"] for r in testable], cfg.secondary_correction), strict=True
    ):
        r["p_adjusted"] = q
        r["verdict"] = "significant" if q < cfg.alpha else "not significant"
    for r in rows:
        if not r["verdict"]:
            r["verdict"] = "descriptive"
    return rows


def run_comparisons(
    metrics_long_csv: str | os.PathLike, out_dir: str | os.PathLike, cfg: StatsConfig
) -> dict[str, Path]:
    """Run every configured comparison and write the stats tables.

    For each train_dataset × shot (never pooled), comparison (A, B), scope (``all`` test datasets, then
    each test dataset) and metric (primary first): category-level seed-mean differences δ in pp, the
    two-sided Wilcoxon signed-rank test (zsplit), Holm over the primary rows (primary metric, scope
    ``all``) and BH over all other rows of that train_dataset × shot, two-stage bootstrap CIs, effect
    sizes, the paired t-test as sensitivity, MDE, Bayesian ROPE probabilities when a ROPE is set, and a
    verdict with its sentence. A row whose n cannot reach α after the first step of its correction is
    "not testable with n = …"; its raw and adjusted p are still recorded but never worded as a finding.

    Args:
        metrics_long_csv: The long table written by ``collect_metrics``.
        out_dir: Directory of the outputs (``results/stats``).
        cfg: The analysis settings.

    Returns:
        ``{"comparisons", "comparisons_by_category", "power", "stats_json"}`` → written paths.

    Raises:
        FileNotFoundError: If the table is missing.
        ValueError: If the table is malformed or holds none of the configured arms.
    """
    records = read_metrics_long(metrics_long_csv)
    if not records:
        raise ValueError(f"{metrics_long_csv}: the table has no rows")
    index = _index_records(records)
    out_dir = Path(out_dir)
    metrics = (cfg.primary_metric, *[m for m in METRICS if m != cfg.primary_metric])
    rows: list[dict[str, Any]] = []
    by_category: list[dict[str, Any]] = []
    power_rows: list[dict[str, Any]] = []
    audit: dict[str, list] = {"missing": [], "dropped": [], "missing_arms": [], "families": []}
    for train_dataset, shot in sorted(index, key=lambda k: (k[0], k[1] == "full", k[1].zfill(8))):
        arms = index[(train_dataset, shot)]
        group_rows: list[dict[str, Any]] = []
        for arm_a, arm_b in cfg.comparisons:
            comparison = comparison_name(arm_a, arm_b)
            key = {"train_dataset": train_dataset, "shot": shot, "comparison": comparison}
            absent = [arm for arm in (arm_a, arm_b) if arm not in arms]
            if absent:
                logger.warning(
                    "%s/%s: %s has no results for arm(s) %s", train_dataset, shot, comparison, absent
                )
                audit["missing_arms"].append({**key, "arms": absent})
            arm_a_data, arm_b_data = arms.get(arm_a, {}), arms.get(arm_b, {})
            test_datasets = sorted({td for td, _ in (*arm_a_data, *arm_b_data)})
            for metric in metrics:
                units, dropped = _build_units(
                    arm_a_data, arm_b_data, metric, audit, {**key, "arm_a": arm_a, "arm_b": arm_b}
                )
                audit["dropped"].extend(dropped)
                primary_metric = metric == cfg.primary_metric
                by_category.extend(
                    _by_category_rows(units, {**key, "metric": metric, "primary": primary_metric}, cfg)
                )
                for prow in compute_power_curve([u.d for u in units], alpha=cfg.alpha, power=cfg.power):
                    power_rows.append(
                        {
                            **key,
                            "metric": metric,
                            "primary": primary_metric,
                            **prow,
                            "alpha": cfg.alpha,
                            "power": cfg.power,
                        }
                    )
                for scope in (SCOPE_ALL, *test_datasets):
                    scoped = units if scope == SCOPE_ALL else [u for u in units if u.test_dataset == scope]
                    is_primary = primary_metric and scope == SCOPE_ALL
                    rng_key = f"{train_dataset}|{shot}|{comparison}|{scope}|{metric}"
                    row = {
                        **key,
                        "scope": scope,
                        "metric": metric,
                        "primary": is_primary,
                        "arm_a": arm_a,
                        "arm_b": arm_b,
                        "n_dropped": sum(1 for d in dropped if scope in (SCOPE_ALL, d["test_dataset"])),
                    }
                    row.update(_analyse(scoped, cfg, rng_key, bayes_sr=is_primary))
                    group_rows.append(row)
        group_dropped = [
            d for d in audit["dropped"] if (d["train_dataset"], d["shot"]) == (train_dataset, shot)
        ]
        if group_dropped:
            pairs = sorted({f"{d['test_dataset']}/{d['category']}:{d['metric']}" for d in group_dropped})
            logger.warning(
                "%s/%s: dropped %d undefined category × metric pair(s) (listed in stats.json): %s",
                train_dataset,
                shot,
                len(pairs),
                ", ".join(pairs),
            )
        primary = [r for r in group_rows if r["primary"]]
        secondary = [r for r in group_rows if not r["primary"]]
        for family, members, method in (
            ("primary", primary, cfg.correction),
            ("secondary", secondary, cfg.secondary_correction),
        ):
            adjusted = _adjust([r["p_value"] for r in members], method)
            for r, q in zip(members, adjusted, strict=True):
                r.update(
                    {"p_adjusted": q, "family": family, "correction": method, "family_size": len(members)}
                )
                floor_m = len(members) if family == "primary" else 1
                r["testable"] = is_testable(r["n_units"], alpha=cfg.alpha, family_size=floor_m)
                r["verdict"] = _verdict(r, cfg)
                r["sentence"] = verdict_sentence(r)
            audit["families"].append(
                {
                    "train_dataset": train_dataset,
                    "shot": shot,
                    "family": family,
                    "correction": method,
                    "size": len(members),
                    "rows": [f"{r['comparison']}|{r['scope']}|{r['metric']}" for r in members]
                    if family == "primary"
                    else None,
                }
            )
        rows.extend(group_rows)
    if not rows:
        raise ValueError(f"{metrics_long_csv}: no train_dataset × shot group to compare")
    rows, by_category, power_rows = (list(map(_plain, table)) for table in (rows, by_category, power_rows))
    paths = {
        "comparisons": write_csv(out_dir / "comparisons.csv", rows, COMPARISON_COLUMNS),
        "comparisons_by_category": write_csv(
            out_dir / "comparisons_by_category.csv", by_category, BY_CATEGORY_COLUMNS
        ),
        "power": write_csv(out_dir / "power.csv", power_rows, POWER_COLUMNS),
    }
    paths["stats_json"] = write_json(
        out_dir / "stats.json", _settings_record(cfg, audit, metrics_long_csv, paths)
    )
    for path in paths.values():
        logger.info("wrote %s", path)
    return paths


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """Turn numpy scalars into Python ones so the CSV holds ``repr(float)`` text, not ``np.float64(...)``."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def _settings_record(cfg: StatsConfig, audit: dict[str, list], source: Any, paths: dict[str, Path]) -> dict:
    versions = {}
    for dist in ("aaclip-xattn", "numpy", "scipy", "statsmodels"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "format": "aaclip_xattn.stats/1",
        "source": str(source),
        "outputs": {k: str(v) for k, v in paths.items()},
        "settings": cfg.to_dict(),
        "units": "percentage points (metric × 100); differences are A − B",
        "unit_of_analysis": "category (seed-mean δ per test dataset × category); seeds pair within a category",
        "zero_tolerance_pp": ZERO_TOLERANCE_PP,
        "methods": {
            "primary_test": "scipy.stats.wilcoxon(delta, zero_method='zsplit', alternative='two-sided', method='auto')",
            "primary_correction": f"statsmodels.stats.multitest.multipletests(method={cfg.correction!r}) over the primary rows",
            "secondary_correction": f"scipy.stats.false_discovery_control(method="
            f"{cfg.secondary_correction.removeprefix('fdr_')!r}) (= statsmodels {cfg.secondary_correction!r}) "
            "over all other rows of the train_dataset × shot",
            "testability": "2/2^n * m < alpha (m = primary family size for primary rows, 1 otherwise)",
            "effect_size": "matched-pairs rank-biserial r = (W+ - W-)/(W+ + W-), zero ranks split evenly",
            "sensitivity": "scipy.stats.ttest_1samp(delta, 0) (= paired t on seed-mean values); d_z, Hedges g_z",
            "ci": "two-stage stratified percentile bootstrap: categories within test dataset, then seeds "
            "within category (drawn jointly across categories), residuals inflated by sqrt(S/(S-1))",
            "seed_ci": "seed-only bootstrap, conditional on these categories",
            "bootstrap_rng": "numpy default_rng(SeedSequence([bootstrap_seed, crc32(row key)])), row key = "
            "'train_dataset|shot|comparison|scope|metric'",
            "mde": f"statsmodels TTestPower.solve_power (two-sided, alpha, power={cfg.power}) * SD(delta)",
            "bayes": "Student-t posterior of the mean difference (df n-1, loc mean, scale sd/sqrt(n)); "
            "'equivalent' only when P(ROPE) > 0.95",
            "bayes_signed_rank": "Benavoli et al. signed-rank, prior weight 0.5 at 0, primary rows only, "
            "cross-check (not used for the verdict)",
            "by_category": f"descriptive (mean ± SD, t-interval when S >= 3, k of S seeds improved); paired t p "
            f"with {cfg.secondary_correction} across categories only when S >= {MIN_SEEDS_FOR_CATEGORY_TEST}",
        },
        "bootstrap": {
            "resamples": cfg.bootstrap_resamples,
            "seed": cfg.bootstrap_seed,
            "interval": "percentile",
        },
        "families": audit["families"],
        "missing_arms": audit["missing_arms"],
        "missing": audit["missing"],
        "dropped": audit["dropped"],
        "versions": versions,
    }


# --- verdict sentences (statistics.md §9) ---------------------------------------------------------


def _num(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key, "")
    if value is None or value == "":
        return math.nan
    return float(value)


def _flag(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key, False)
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _fmt_p(p: float) -> str:
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}"


def _pp(x: float) -> str:
    return f"{x:+.2f}"


def verdict_sentence(row: Mapping[str, Any]) -> str:
    """Return the §9 wording for one comparisons row (a dict from ``run_comparisons`` or a CSV row).

    "significant" appears only when the verdict is significant (adjusted p < α on a testable n);
    "equivalent" only when P(ROPE) > 0.95; an untestable n is said to be "not testable", never "no
    difference".

    Args:
        row: A comparisons.csv row (values may be strings as read back from the CSV).

    Returns:
        One or more sentences.
    """
    arm_a, arm_b = row.get("arm_a") or "", row.get("arm_b") or ""
    if not arm_a or not arm_b:
        arm_a, _, arm_b = str(row["comparison"]).partition("-")
    metric = _METRIC_WORDS.get(str(row["metric"]), str(row["metric"]))
    scope = str(row.get("scope", SCOPE_ALL))
    scope_words = "" if scope == SCOPE_ALL else f" on {scope}"
    n = int(_num(row, "n_units"))
    verdict = str(row["verdict"])
    if n == 0 or verdict == "no data":
        return f"{arm_a} vs {arm_b} on {metric}{scope_words}: no category has results from both arms; nothing to compare."
    mean, median = _num(row, "mean_delta"), _num(row, "median_delta")
    low, high = _num(row, "ci_low"), _num(row, "ci_high")
    level = _num(row, "ci_level")
    level_words = f"{100 * (0.95 if math.isnan(level) else level):g} %"
    wins = int(_num(row, "wins"))
    alpha = _num(row, "alpha")
    alpha = 0.05 if math.isnan(alpha) else alpha
    correction = _CORRECTION_WORDS.get(
        str(row.get("correction", "")), str(row.get("correction", "")) or "Holm"
    )
    p_adj = _num(row, "p_adjusted")
    rope = _num(row, "rope")
    p_rope = _num(row, "p_rope")
    p_better, p_worse = _num(row, "p_better"), _num(row, "p_worse")
    where = f"Across the {n} categories" + ("" if scope == SCOPE_ALL else f" of {scope}")
    if verdict == "significant":
        r = _num(row, "effect_size")
        up = r > 0 if not math.isnan(r) else mean > 0
        text = (
            f"{where}, {arm_a} {'improved' if up else 'lowered'} {metric} {'over' if up else 'relative to'} "
            f"{arm_b} by {_pp(mean)} pp on average (median {_pp(median)}; {level_words} CI over categories "
            f"and seeds [{_pp(low)}, {_pp(high)}]). It was better in {wins}/{n} categories (two-sided Wilcoxon "
            f"signed-rank, {correction}-adjusted {_fmt_p(p_adj)}, r_rb = {r:+.2f})."
        )
        if not math.isnan(rope) and not math.isnan(p_rope):
            outside = p_better if up else p_worse
            relevance = (
                "probably below practical relevance"
                if p_rope > 0.95
                else "probably relevant"
                if outside > 0.95
                else "of uncertain practical relevance"
            )
            text += (
                f" With a ROPE of ±{rope:g} pp the difference is {relevance} (P(within ROPE) = {p_rope:.3f})."
            )
        return text
    if verdict == "equivalent":
        return (
            f"{arm_a} and {arm_b} are practically equivalent on {metric}{scope_words} within ±{rope:g} pp "
            f"(P = {p_rope:.3f}); mean difference {_pp(mean)} pp ({level_words} CI [{_pp(low)}, {_pp(high)}]), "
            f"{wins}/{n} categories improved."
        )
    rope_words = ""
    if not math.isnan(rope) and not math.isnan(p_rope):
        rope_words = (
            f" P({arm_a} better by > {rope:g} pp) = {p_better:.3f}, P(within ±{rope:g} pp) = {p_rope:.3f}, "
            f"P({arm_b} better by > {rope:g} pp) = {p_worse:.3f}."
        )
    if verdict == "not significant":
        mde = _num(row, "mde_pp")
        power = _num(row, "mde_power")
        power_words = f"{100 * (0.8 if math.isnan(power) else power):g} %"
        mde_words = f"{mde:.2f} pp" if not math.isnan(mde) else "an undetermined size (no spread in δ)"
        return (
            f"{arm_a} vs {arm_b} on {metric}{scope_words}: {_pp(mean)} pp (median {_pp(median)}; {level_words} CI "
            f"[{_pp(low)}, {_pp(high)}]); {wins}/{n} categories improved; {correction}-adjusted {_fmt_p(p_adj)}. "
            f"This does not show that the variants are equal. With T = {n} categories the test had "
            f"{power_words} power only for effects ≥ {mde_words}.{rope_words}"
        )
    # not testable
    min_p = _num(row, "min_attainable_p")
    m = int(_num(row, "family_size")) if not math.isnan(_num(row, "family_size")) else 1
    if _flag(row, "primary") and m > 1:
        reach = (
            f"{correction}-adjusted p < {alpha:g} (smallest attainable two-sided p = {min_p:.4g}; the first "
            f"{correction} step over m = {m} comparisons needs p < {alpha / m:.4g})"
        )
    else:
        reach = f"p < {alpha:g} (smallest attainable two-sided p = {min_p:.4g})"
    return (
        f"{arm_a} vs {arm_b} on {metric}{scope_words} is not testable with n = {n} {'category' if n == 1 else 'categories'}: no category-level "
        f"rank test can reach {reach}. "
        f"Observed {_pp(mean)} pp (median {_pp(median)}; {level_words} CI [{_pp(low)}, {_pp(high)}]); "
        f"{wins}/{n} categories improved; these results are descriptive.{rope_words}"
    )
