"""The study report: ``results/report/index.html`` (self-contained) and ``report.md``, checklist first.

Layout (statistics.md §11): title and the study settings line; the fair-comparison checklist (with a
banner when any item FAILs, since a FAIL blocks any "better" claim); the verdict sentence of each primary
comparison (``comparisons.csv`` ``sentence`` column, else ``compare.verdict_sentence``, else the §9
templates rendered here); Table 1 (primary metric per comparison); Table 2 (per test dataset × metric:
arm means ± SD over seeds, then the paired comparisons); the figures (SVG inlined in the HTML, linked
from the Markdown); an appendix with every declared setting, library versions, missing runs and zero
counts. The HTML has inline CSS and no external resource, so it can be mailed or archived as one file.
Rendering is deterministic: the same records give byte-identical files.

``lint_language`` is check #14 of statistics.md §10: "significant" only where the adjusted p < α,
"equivalent" / "no difference" only where P(ROPE) > 0.95, never the §9 "Never" phrases.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from aaclip_xattn.fileio import atomic_write_text, read_csv, read_json
from aaclip_xattn.stats.checklist import (
    FAIL,
    PASS,
    WARN,
    build_checklist,
    comparison_pairs,
    scan_results,
    shot_dir,
)
from aaclip_xattn.stats.figures import ARM_COLORS, FigureBundle, load_metric_values, render_figures, rope_for

__all__ = [
    "FAIL_BANNER",
    "REPORT_TITLE",
    "ReportContent",
    "build_report_content",
    "lint_language",
    "render_report",
]

logger = logging.getLogger(__name__)

REPORT_TITLE: Final = "Does cross-attention beat the AA-CLIP baseline? Fair-comparison report"
FAIL_BANNER: Final = "A FAIL blocks any 'better' claim"
_EQUIVALENCE_THRESHOLD: Final = 0.95
_NEVER_PHRASES: Final = (
    r"slightly better",
    r"trend(?:ing|s)? towards? significance",
    r"marginally significant",
    r"approach(?:ed|es|ing)? significance",
)
_P_ROPE_COLUMNS: Final = ("p_rope", "p_equivalent", "bsr_p_rope")
_CSS: Final = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px; margin: 2em auto;
  padding: 0 1em; color: #1f2328; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
h3 { margin-top: 1.4em; }
.settings { color: #57606a; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.status { font-weight: 700; text-align: center; white-space: nowrap; }
.PASS { background: #dafbe1; color: #116329; } .WARN { background: #fff8c5; color: #7d4e00; }
.FAIL { background: #ffebe9; color: #a40e26; }
.banner { border: 2px solid #cf222e; background: #ffebe9; color: #a40e26; padding: .7em 1em; font-weight: 700;
  border-radius: 6px; margin: 1em 0; }
.note { border-left: 4px solid #d0d7de; padding: .3em .8em; color: #57606a; }
ul.evidence { margin: 0; padding-left: 1.1em; font-size: .92em; } ul.evidence li { overflow-wrap: anywhere; }
details summary { cursor: pointer; color: #0969da; }
.verdict { margin: .5em 0 .9em; } .blocked { color: #a40e26; font-weight: 600; }
figure { margin: 1.2em 0; } figure svg { max-width: 100%; height: auto; } figcaption { color: #57606a; font-size: .9em; }
code { background: #f6f8fa; padding: 0 .25em; border-radius: 3px; }
"""
_EVIDENCE_VISIBLE: Final = 4


@dataclass(frozen=True)
class ReportContent:
    """Everything the two renderers show, already formatted as text.

    Attributes:
        title: Report title.
        settings_line: One-line summary of the study design and the declared analysis.
        checklist: Checklist items ``{id, title, status, evidence}``.
        checklist_source: Where the checklist came from (file or computed).
        verdicts: ``(heading, sentence, blocked)`` per primary comparison.
        lint: Language-lint violations (empty when clean).
        table1: ``(header, rows)`` of Table 1.
        table2_scores: ``(header, rows)`` of Table 2a (arm means ± SD).
        table2_deltas: ``(header, rows)`` of Table 2b (paired comparisons per dataset × metric).
        figures: The figures written.
        appendix: ``(heading, lines)`` sections of the appendix.
    """

    title: str
    settings_line: str
    checklist: tuple[Mapping[str, Any], ...]
    checklist_source: str
    verdicts: tuple[tuple[str, str, bool], ...]
    lint: tuple[str, ...]
    table1: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]
    table2_scores: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]
    table2_deltas: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]
    figures: FigureBundle
    appendix: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def has_fail(self) -> bool:
        """Whether any checklist item failed."""
        return any(item.get("status") == FAIL for item in self.checklist)


def _num(row: Mapping[str, Any], key: str) -> float:
    try:
        return float(row.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def _pp(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.2f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _prob(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"


def _arms(row: Mapping[str, Any]) -> tuple[str, str]:
    arm_a, arm_b = str(row.get("arm_a") or ""), str(row.get("arm_b") or "")
    if not arm_a or not arm_b:
        arm_a, _, arm_b = str(row.get("comparison", "")).partition("-")
    return arm_a, arm_b


def _row_alpha(row: Mapping[str, Any], alpha: float | None) -> float:
    value = _num(row, "alpha")
    if math.isfinite(value):
        return value
    return 0.05 if alpha is None else alpha


def _p_rope(row: Mapping[str, Any]) -> float:
    for key in _P_ROPE_COLUMNS:
        value = _num(row, key)
        if math.isfinite(value):
            return value
    return math.nan


def _word(token: str) -> str:
    return rf"(?<![A-Za-z0-9_]){re.escape(token)}(?![A-Za-z0-9_])"


def _metric_pattern(metric: str) -> str:
    return (
        r"(?<![A-Za-z0-9])"
        + r"[\s_\-]?".join(re.escape(part) for part in metric.split("_"))
        + r"(?![A-Za-z0-9])"
    )


def _rows_for(text: str, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows a sentence talks about: both arms named; then the scope and metric it names (default: primary)."""
    found = [row for row in rows if all(arm and re.search(_word(arm), text) for arm in _arms(row))]
    if not found:
        return []
    scopes = {str(row.get("scope", "all")) for row in found} - {"all"}
    named = {scope for scope in scopes if re.search(_word(scope), text)}
    found = [row for row in found if str(row.get("scope", "all")) in (named or {"all"})]
    metrics = {str(row.get("metric", "")) for row in found}
    named_metrics = {m for m in metrics if m and re.search(_metric_pattern(m), text, flags=re.IGNORECASE)}
    if named_metrics:
        return [row for row in found if row.get("metric") in named_metrics]
    primary = [row for row in found if _truthy(row.get("primary"))]
    return primary or found


def _sentences(text: str) -> list[tuple[str, str]]:
    """Split into ``(sentence, its paragraph)``; a sentence ends at . ! ? followed by white space."""
    out = []
    for paragraph in re.split(r"\n\s*\n|\n", text):
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph.strip()):
            if sentence:
                out.append((sentence, paragraph))
    return out


def _affirmed(pattern: str, text: str) -> re.Match[str] | None:
    """First match of ``pattern`` not negated by "not", "no" or "non" in the one or two words before it."""
    for match in re.finditer(pattern, text):
        before = text[: match.start()]
        if match.group(0) == "no difference" or not re.search(r"\b(?:not|non-?|no)\s*(?:\w+\s+)?$", before):
            return match
    return None


def lint_language(text: str, rows: Sequence[Mapping[str, Any]], *, alpha: float | None = None) -> list[str]:
    """Check the wording of verdict text against the numbers (statistics.md §10 check 14).

    A sentence is tied to the comparisons.csv rows whose two arms it names (then narrowed to the test
    dataset and metric it names; by default the primary rows); when it names none, the rows named elsewhere
    in its paragraph. Rules:

    * "significant"/"significantly" (not "not significant", "non-significant", "insignificant") only when
      every tied row has ``p_adjusted < alpha`` (the row's ``alpha`` column, else ``alpha``, else 0.05);
    * "equivalent", "no difference" and "comparable" only when every tied row has P(ROPE) > 0.95
      (``p_rope`` column);
    * "not significant" / "n.s." / "no difference" never for a row whose verdict is "not testable";
    * never "slightly better", "trend towards significance", "marginally significant".

    Args:
        text: The rendered text (verdict sentences, one paragraph per comparison).
        rows: comparisons.csv rows (CSV strings or numbers).
        alpha: Significance level when a row has no ``alpha`` column.

    Returns:
        One message per violation, quoting the sentence; empty when the wording is honest.
    """
    problems = []
    for sentence, paragraph in _sentences(text):
        lower = sentence.lower()
        quote = sentence if len(sentence) <= 160 else sentence[:157] + "..."
        for phrase in _NEVER_PHRASES:
            if re.search(phrase, lower):
                problems.append(f"forbidden phrase {phrase!r} (statistics.md §9 'Never'): {quote!r}")
        positive_significant = _affirmed(r"\bsignificant(?:ly)?\b", lower)
        equivalent = _affirmed(r"\b(?:practically )?equivalent\b|\bno difference\b|\bcomparable\b", lower)
        negative = re.search(
            r"\bno(?:t)? (?:statistically )?significant\b|\bnon-?significant\b|\bn\.s\.|\bno difference\b",
            lower,
        )
        if not (positive_significant or equivalent or negative):
            continue
        tied = _rows_for(sentence, rows) or _rows_for(paragraph, rows)
        if positive_significant:
            if not tied:
                problems.append(
                    f"'significant' without naming a comparison with adjusted p < alpha: {quote!r}"
                )
            for row in tied:
                p_adj = _num(row, "p_adjusted")
                if not (math.isfinite(p_adj) and p_adj < _row_alpha(row, alpha)):
                    problems.append(
                        f"'significant' for {row.get('comparison')} ({row.get('scope', 'all')}, {row.get('metric')}) "
                        f"whose adjusted p is {_p(p_adj)} (alpha {_row_alpha(row, alpha):g}): {quote!r}"
                    )
        if equivalent:
            if not tied:
                problems.append(
                    f"'{equivalent.group(0)}' without naming a comparison with P(ROPE) > 0.95: {quote!r}"
                )
            for row in tied:
                p_rope = _p_rope(row)
                if not (math.isfinite(p_rope) and p_rope > _EQUIVALENCE_THRESHOLD):
                    problems.append(
                        f"'{equivalent.group(0)}' for {row.get('comparison')} ({row.get('scope', 'all')}, "
                        f"{row.get('metric')}) whose P(ROPE) is {_prob(p_rope)} (needs > 0.95): {quote!r}"
                    )
        if negative:
            for row in tied:
                if str(row.get("verdict", "")).startswith("not testable"):
                    problems.append(
                        f"'{negative.group(0)}' for {row.get('comparison')} ({row.get('scope', 'all')}, "
                        f"{row.get('metric')}), which is not testable with n = {row.get('n_units')}: {quote!r}"
                    )
    return problems


def _fallback_sentence(row: Mapping[str, Any], alpha: float) -> str:
    """Render the §9 wording template for one row (used when compare.verdict_sentence is unavailable)."""
    arm_a, arm_b = _arms(row)
    metric = str(row.get("metric"))
    n = int(_num(row, "n_units")) if math.isfinite(_num(row, "n_units")) else 0
    mean, median = _num(row, "mean_delta"), _num(row, "median_delta")
    low, high = _num(row, "ci_low"), _num(row, "ci_high")
    wins = int(_num(row, "wins")) if math.isfinite(_num(row, "wins")) else 0
    p_adj = _num(row, "p_adjusted")
    verdict = str(row.get("verdict", ""))
    row_alpha = _row_alpha(row, alpha)
    if verdict.startswith("not testable") or (n and 2.0 / 2.0**n >= row_alpha):
        return (
            f"{arm_a} vs {arm_b} on {metric} is not testable with n = {n} categories: no category-level rank "
            f"test can reach p < {row_alpha:g} (smallest attainable two-sided p = {2.0 / 2.0**n:.4g}). Observed "
            f"{_pp(mean)} pp (95 % CI [{_pp(low)}, {_pp(high)}]); {wins}/{n} categories improved; descriptive only."
        )
    if math.isfinite(p_adj) and p_adj < row_alpha:
        r = _num(row, "effect_size")
        return (
            f"Across the {n} categories, {arm_a} improved {metric} over {arm_b} by {_pp(mean)} pp on average "
            f"(median {_pp(median)}; 95 % CI over categories and seeds [{_pp(low)}, {_pp(high)}]). It was better in "
            f"{wins}/{n} categories (two-sided Wilcoxon signed-rank, Holm-adjusted p = {_p(p_adj)}, r_rb = {r:+.2f})."
        )
    p_rope = _p_rope(row)
    rope = _num(row, "rope")
    if math.isfinite(p_rope) and p_rope > _EQUIVALENCE_THRESHOLD and math.isfinite(rope):
        return f"{arm_a} and {arm_b} are practically equivalent on {metric} within ±{rope:g} pp (P = {p_rope:.3f})."
    mde = _num(row, "mde_pp")
    mde_words = f"{mde:.2f} pp" if math.isfinite(mde) else "an effect size not computed here"
    return (
        f"{arm_a} vs {arm_b}: {_pp(mean)} pp (95 % CI [{_pp(low)}, {_pp(high)}]); {wins}/{n} categories improved; "
        f"Holm-adjusted p = {_p(p_adj)}. This does not show that the variants are equal. With T = {n} categories "
        f"the test had 80 % power only for effects ≥ {mde_words}."
    )


def _sentence(row: Mapping[str, Any], alpha: float) -> str:
    text = str(row.get("sentence") or "").strip()
    if text:
        return text
    try:
        from aaclip_xattn.stats.compare import verdict_sentence
    except ImportError:
        return _fallback_sentence(row, alpha)
    return verdict_sentence(row)


def _group_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return (str(row.get("train_dataset", "")), str(row.get("shot", "")))


def _group_label(group: tuple[str, str]) -> str:
    return f"{group[0]}/{shot_dir(group[1])}"


def _primary_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [row for row in rows if _truthy(row.get("primary")) and str(row.get("scope", "all")) == "all"]


def _comparison_order(cfg: Any) -> dict[str, int]:
    return {f"{a}-{b}": index for index, (a, b) in enumerate(comparison_pairs(cfg))}


def _sorted_rows(rows: Sequence[Mapping[str, Any]], cfg: Any) -> list[Mapping[str, Any]]:
    order = _comparison_order(cfg)
    return sorted(
        rows,
        key=lambda r: (
            _group_key(r),
            str(r.get("scope", "all")) != "all",
            str(r.get("scope", "all")),
            str(r.get("metric", "")),
            order.get(str(r.get("comparison")), len(order)),
            str(r.get("comparison")),
        ),
    )


def _table1(
    rows: Sequence[Mapping[str, Any]], cfg: Any
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    header = (
        "train / shot",
        "comparison (A − B)",
        "n categories (seeds)",
        "mean Δ pp [95 % CI]",
        "median Δ pp",
        "W/T/L",
        "Wilcoxon p (raw)",
        "p adjusted",
        "r_rb",
        "P(better / ROPE / worse)",
        "paired win rate",
        "MDE pp",
        "verdict",
    )
    body = []
    for row in _sorted_rows(_primary_rows(rows), cfg):
        seeds = row.get("n_seeds")
        probs = [_num(row, k) for k in ("p_better", "p_rope", "p_worse")]
        body.append(
            (
                _group_label(_group_key(row)),
                str(row.get("comparison")),
                f"{row.get('n_units')}" + (f" ({seeds})" if seeds not in (None, "") else ""),
                f"{_pp(_num(row, 'mean_delta'))} [{_pp(_num(row, 'ci_low'))}, {_pp(_num(row, 'ci_high'))}]",
                _pp(_num(row, "median_delta")),
                f"{row.get('wins')}/{row.get('ties')}/{row.get('losses')}",
                _p(_num(row, "p_value")),
                _p(_num(row, "p_adjusted")),
                _pp(_num(row, "effect_size")),
                " / ".join(_prob(p) for p in probs) if any(math.isfinite(p) for p in probs) else "—",
                _prob(_num(row, "paired_win_rate")),
                "—" if not math.isfinite(_num(row, "mde_pp")) else f"{_num(row, 'mde_pp'):.2f}",
                str(row.get("verdict", "")),
            )
        )
    return header, tuple(body)


def _table2_scores(
    values: Sequence[Mapping[str, Any]],
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Arm mean ± SD over seeds of the category macro-average (%), per train × test dataset × metric."""
    macro: dict[tuple, list[float]] = defaultdict(list)
    for row in values:
        if math.isfinite(row["value"]):
            key = (
                row["train_dataset"],
                str(row["shot"]),
                row["test_dataset"],
                row["metric"],
                row["arm"],
                row["seed"],
            )
            macro[key].append(100.0 * row["value"])
    per_seed: dict[tuple, list[float]] = defaultdict(list)
    for (td, shot, test, metric, arm, _seed), vals in sorted(macro.items()):
        per_seed[(td, shot, test, metric, arm)].append(float(np.mean(vals)))
    found = {key[4] for key in per_seed}
    arms = [arm for arm in ARM_COLORS if arm in found] + sorted(found - set(ARM_COLORS))
    metric_order = {
        metric: index for index, metric in enumerate(dict.fromkeys(row["metric"] for row in values))
    }
    header = ("train / shot", "test dataset", "metric", *arms)
    cells: dict[tuple, dict[str, str]] = defaultdict(dict)
    for (td, shot, test, metric, arm), vals in per_seed.items():
        arr = np.asarray(vals)
        sd = f" ± {arr.std(ddof=1):.2f}" if arr.size >= 2 else ""
        cells[(td, shot, test, metric)][arm] = f"{arr.mean():.2f}{sd} (S={arr.size})"
    body = tuple(
        (
            _group_label((td, shot)),
            test,
            metric,
            *(cells[(td, shot, test, metric)].get(arm, "—") for arm in arms),
        )
        for (td, shot, test, metric) in sorted(
            cells, key=lambda k: (k[0], k[1], k[2], metric_order.get(k[3], 0))
        )
    )
    return header, body


def _table2_deltas(
    rows: Sequence[Mapping[str, Any]], cfg: Any
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    header = (
        "train / shot",
        "scope",
        "metric",
        "comparison",
        "n",
        "mean Δ pp [CI]",
        "W/T/L",
        "p adjusted",
        "verdict",
    )
    body = []
    primary = {id(row) for row in _primary_rows(rows)}
    for row in _sorted_rows([row for row in rows if id(row) not in primary], cfg):
        verdict = str(row.get("verdict", ""))
        p_adj = _num(row, "p_adjusted")
        body.append(
            (
                _group_label(_group_key(row)),
                str(row.get("scope", "all")),
                str(row.get("metric", "")) + ("" if _truthy(row.get("primary")) else " (secondary)"),
                str(row.get("comparison")),
                str(row.get("n_units")),
                f"{_pp(_num(row, 'mean_delta'))} [{_pp(_num(row, 'ci_low'))}, {_pp(_num(row, 'ci_high'))}]",
                f"{row.get('wins')}/{row.get('ties')}/{row.get('losses')}",
                "n too small"
                if verdict.startswith("not testable") or not math.isfinite(p_adj)
                else _p(p_adj),
                verdict,
            )
        )
    return header, tuple(body)


def _settings(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    names = ("primary_metric", "comparisons", "alpha", "rope", "min_seeds", "recommended_seeds")
    return {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}


def _settings_line(root: Path, cfg: Any, values: Sequence[Mapping[str, Any]]) -> str:
    tree = scan_results(root)
    groups = sorted({key.group for key in tree.runs} | {(r["train_dataset"], str(r["shot"])) for r in values})
    seeds = sorted({key.seed for key in tree.runs} | {int(r["seed"]) for r in values})
    arms = sorted({key.arm for key in tree.runs} | {r["arm"] for r in values})
    tests: dict[str, set[str]] = defaultdict(set)
    for row in values:
        tests[row["test_dataset"]].add(row["category"])
    pairs = comparison_pairs(cfg)
    rope = rope_for(cfg, str(cfg.primary_metric))
    correction = str(getattr(cfg, "correction", "holm")).capitalize()
    parts = [
        "training: " + (", ".join(_group_label(g) for g in groups) or "none found"),
        "seeds: " + (", ".join(map(str, seeds)) or "none"),
        "arms: " + (", ".join(arms) or "none"),
        "test datasets: "
        + (", ".join(f"{td} ({len(c)} categories)" for td, c in sorted(tests.items())) or "none"),
        f"primary metric: {cfg.primary_metric}",
        f"alpha = {float(getattr(cfg, 'alpha', 0.05)):g}, {correction} over m = {len(pairs)} comparisons",
        f"ROPE ±{rope:g} pp"
        if rope is not None
        else "no ROPE declared (the word 'equivalent' is never used)",
    ]
    return "; ".join(parts) + "."


def _load_checklist(root: Path, cfg: Any) -> tuple[list[Mapping[str, Any]], str]:
    path = root / "stats" / "checklist.json"
    if path.is_file():
        items = read_json(path)
        if not isinstance(items, list):
            raise RuntimeError(f"{path}: expected a list of checklist items, found {type(items).__name__}")
        return items, "stats/checklist.json"
    logger.warning("%s missing: computing the checklist for the report without writing it", path)
    return build_checklist(root, cfg), "computed by the report (stats/checklist.json not found)"


def _evidence_lines(evidence: Any) -> list[str]:
    if isinstance(evidence, Mapping):
        return [f"{key}: {value}" for key, value in evidence.items()]
    if isinstance(evidence, str):
        return [evidence]
    return [str(line) for line in evidence or []]


def _appendix(
    root: Path, cfg: Any, checklist: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    settings = _settings(cfg)
    declared = tuple(f"{key}: {settings[key]}" for key in sorted(settings))
    tree = scan_results(root)
    versions: Counter[str] = Counter()
    for run in tree.runs.values():
        stamp = ", ".join(f"{k} {v}" for k, v in sorted((run.data.get("versions") or {}).items()))
        versions[f"{stamp or 'versions not recorded'}; device {run.data.get('device', '?')}"] += 1
    version_lines = tuple(f"{text} ({count} runs)" for text, count in sorted(versions.items())) or (
        "no run.json found",
    )
    missing_item = next((item for item in checklist if item.get("id") == "no_missing_runs"), None)
    missing = tuple(
        line
        for line in _evidence_lines(missing_item.get("evidence") if missing_item else [])
        if re.match(r"(missing|failed|unreadable|stale)", line) or "NaN" in line
    ) or ("none: every expected run and evaluation table is present",)
    zeros = tuple(
        f"{_group_label(_group_key(row))} {row.get('comparison')}: {row.get('n_zero') or row.get('ties')} zero "
        f"differences of {row.get('n_units')} (zero_method='zsplit')"
        + (
            f", {row.get('n_ceiling')} categories at the ceiling"
            if row.get("n_ceiling") not in (None, "")
            else ""
        )
        for row in _sorted_rows(_primary_rows(rows), cfg)
    ) or ("no comparisons.csv: no test was run",)
    conventions: set[str] = set()
    for record in tree.evals.values():
        conv = (record.sidecar or {}).get("conventions")
        if isinstance(conv, Mapping):
            conventions.add(", ".join(f"{k}={v}" for k, v in sorted(conv.items())))
    stats_files = tuple(
        f"stats/{name}"
        for name in (
            "metrics_long.csv",
            "comparisons.csv",
            "comparisons_by_category.csv",
            "power.csv",
            "stats.json",
            "checklist.json",
        )
        if (root / "stats" / name).is_file()
    )
    return (
        ("Declared settings", declared),
        ("Evaluation conventions", tuple(sorted(conventions)) or ("no evaluation sidecar found",)),
        ("Library versions and devices", version_lines),
        ("Missing, failed or stale runs", missing),
        ("Zero differences (ties) in the primary tests", zeros),
        ("Tables behind this report", stats_files or ("none",)),
    )


def build_report_content(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: Any
) -> ReportContent:
    """Gather and format everything the report shows; draws the figures into ``out_dir/figures``.

    Args:
        results_dir: The results directory.
        out_dir: The report directory (``results/report``).
        cfg: A ``StatsConfig``.

    Returns:
        The formatted content.
    """
    root, out = Path(results_dir), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: results directory not found (expected runs/, eval/ and stats/ below it)"
        )
    alpha = float(getattr(cfg, "alpha", 0.05))
    checklist, source = _load_checklist(root, cfg)
    comparisons_csv = root / "stats" / "comparisons.csv"
    rows = read_csv(comparisons_csv) if comparisons_csv.is_file() else []
    values = load_metric_values(root)
    has_fail = any(item.get("status") == FAIL for item in checklist)
    verdicts = []
    for row in _sorted_rows(_primary_rows(rows), cfg):
        heading = f"{_group_label(_group_key(row))}: {row.get('comparison')} ({row.get('metric')})"
        claim = str(row.get("verdict", "")) == "significant" and _num(row, "mean_delta") > 0
        verdicts.append((heading, _sentence(row, alpha), has_fail and claim))
    lint = lint_language("\n".join(sentence for _, sentence, _ in verdicts), rows, alpha=alpha)
    for problem in lint:
        logger.warning("language lint: %s", problem)
    bundle = render_figures(root, out / "figures", cfg)
    return ReportContent(
        title=REPORT_TITLE,
        settings_line=_settings_line(root, cfg, values),
        checklist=tuple(checklist),
        checklist_source=source,
        verdicts=tuple(verdicts),
        lint=tuple(lint),
        table1=_table1(rows, cfg),
        table2_scores=_table2_scores(values),
        table2_deltas=_table2_deltas(rows, cfg),
        figures=bundle,
        appendix=_appendix(root, cfg, checklist, rows),
    )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], numeric_from: int = 99) -> str:
    header, body = table
    if not body:
        return '<p class="note">No rows (stats/comparisons.csv or the metric table is missing).</p>'
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    lines = []
    for row in body:
        cells = "".join(
            f'<td class="num">{_e(cell)}</td>' if index >= numeric_from else f"<td>{_e(cell)}</td>"
            for index, cell in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _inline_svg(path: Path, prefix: str) -> str:
    """Return the SVG markup without prolog, with ids prefixed so several figures can share one page."""
    text = path.read_text(encoding="utf-8")
    start = text.find("<svg")
    text = text[start:] if start >= 0 else text
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    ids = set(re.findall(r'\bid="([^"]+)"', text))
    if ids:
        text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', text)
        text = re.sub(
            r"(url\(#|href=\"#)([^\")]+)",
            lambda m: f"{m.group(1)}{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(0),
            text,
        )
    return text


def render_html(content: ReportContent) -> str:
    """Render the report as one self-contained HTML page (inline CSS and SVG, no external resource)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(content.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(content.title)}</h1>",
        f'<p class="settings">{_e(content.settings_line)}</p>',
        '<h2 id="checklist">1. Fair-comparison checklist</h2>',
    ]
    counts = Counter(item.get("status") for item in content.checklist)
    if content.has_fail:
        failed = ", ".join(str(item.get("id")) for item in content.checklist if item.get("status") == FAIL)
        parts.append(f'<div class="banner">{_e(FAIL_BANNER)}. Failed: {_e(failed)}.</div>')
    parts.append(
        f'<p class="note">{counts.get(PASS, 0)} PASS, {counts.get(WARN, 0)} WARN, {counts.get(FAIL, 0)} FAIL '
        f"(source: {_e(content.checklist_source)}).</p>"
    )
    parts.append("<table><thead><tr><th>status</th><th>check</th><th>evidence</th></tr></thead><tbody>")
    for item in content.checklist:
        status = str(item.get("status"))
        lines = _evidence_lines(item.get("evidence"))
        visible = "".join(f"<li>{_e(line)}</li>" for line in lines[:_EVIDENCE_VISIBLE])
        hidden = lines[_EVIDENCE_VISIBLE:]
        more = (
            f'<details><summary>{len(hidden)} more</summary><ul class="evidence">'
            + "".join(f"<li>{_e(line)}</li>" for line in hidden)
            + "</ul></details>"
            if hidden
            else ""
        )
        parts.append(
            f'<tr><td class="status {_e(status)}">{_e(status)}</td>'
            f"<td><strong>{_e(item.get('title'))}</strong><br><code>{_e(item.get('id'))}</code></td>"
            f'<td><ul class="evidence">{visible}</ul>{more}</td></tr>'
        )
    parts.append("</tbody></table>")
    parts.append('<h2 id="verdicts">2. Verdicts (primary metric)</h2>')
    if content.lint:
        parts.append(
            '<div class="banner">Language lint (statistics.md §10 #14) failed:<ul>'
            + "".join(f"<li>{_e(p)}</li>" for p in content.lint)
            + "</ul></div>"
        )
    if not content.verdicts:
        parts.append('<p class="note">No comparisons.csv: no verdict can be given.</p>')
    for heading, sentence, blocked in content.verdicts:
        flag = ' <span class="blocked">(not claimable: the checklist has a FAIL)</span>' if blocked else ""
        parts.append(f'<div class="verdict"><strong>{_e(heading)}</strong>{flag}<br>{_e(sentence)}</div>')
    parts.append('<h2 id="table1">3. Table 1: primary metric per comparison</h2>')
    parts.append(_html_table(content.table1, numeric_from=2))
    parts.append('<h2 id="table2">4. Table 2: per test dataset and metric</h2>')
    parts.append("<h3>Arm scores (%): mean ± SD over seeds of the category macro-average</h3>")
    parts.append(_html_table(content.table2_scores, numeric_from=3))
    parts.append("<h3>Paired comparisons (secondary metrics and per-dataset scopes)</h3>")
    parts.append(_html_table(content.table2_deltas, numeric_from=4))
    parts.append('<h2 id="figures">5. Figures</h2>')
    for index, figure in enumerate(content.figures.figures):
        parts.append(
            f'<figure id="{_e(figure.name)}"><h3>{_e(figure.title)}</h3>'
            f"{_inline_svg(figure.path, f'f{index}')}<figcaption>{_e(figure.caption)}</figcaption></figure>"
        )
    for note in content.figures.skipped:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append('<h2 id="appendix">6. Appendix</h2>')
    for heading, lines in content.appendix:
        parts.append(
            f"<h3>{_e(heading)}</h3><ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]) -> list[str]:
    header, body = table
    if not body:
        return ["_No rows (stats/comparisons.csv or the metric table is missing)._", ""]
    lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
    return [*lines, ""]


def render_markdown(content: ReportContent, figures_rel: str = "figures") -> str:
    """Render the report as Markdown; figures are linked by relative path."""
    lines = [f"# {content.title}", "", content.settings_line, "", "## 1. Fair-comparison checklist", ""]
    if content.has_fail:
        failed = ", ".join(str(item.get("id")) for item in content.checklist if item.get("status") == FAIL)
        lines += [f"> **{FAIL_BANNER}.** Failed: {failed}.", ""]
    lines += ["| status | check | evidence |", "|---|---|---|"]
    for item in content.checklist:
        evidence = _evidence_lines(item.get("evidence"))
        first = evidence[0] if evidence else ""
        more = f" (+{len(evidence) - 1} more below)" if len(evidence) > 1 else ""
        lines.append(
            f"| **{item.get('status')}** | {_md_cell(item.get('title'))} (`{item.get('id')}`) | {_md_cell(first)}{more} |"
        )
    lines += ["", f"Source: {content.checklist_source}.", ""]
    for item in content.checklist:
        lines += [f"<details><summary>{item.get('status')} {item.get('id')}</summary>", ""]
        lines += [f"- {line}" for line in _evidence_lines(item.get("evidence"))]
        lines += ["", "</details>", ""]
    lines += ["## 2. Verdicts (primary metric)", ""]
    if content.lint:
        lines += [
            "> **Language lint (statistics.md §10 #14) failed:**",
            *[f"> - {p}" for p in content.lint],
            "",
        ]
    if not content.verdicts:
        lines += ["_No comparisons.csv: no verdict can be given._", ""]
    for heading, sentence, blocked in content.verdicts:
        flag = " _(not claimable: the checklist has a FAIL)_" if blocked else ""
        lines += [f"**{heading}**{flag}", "", sentence, ""]
    lines += ["## 3. Table 1: primary metric per comparison", "", *_md_table(content.table1)]
    lines += ["## 4. Table 2: per test dataset and metric", ""]
    lines += ["### Arm scores (%): mean ± SD over seeds of the category macro-average", ""]
    lines += _md_table(content.table2_scores)
    lines += [
        "### Paired comparisons (secondary metrics and per-dataset scopes)",
        "",
        *_md_table(content.table2_deltas),
    ]
    lines += ["## 5. Figures", ""]
    for figure in content.figures.figures:
        lines += [
            f"### {figure.title}",
            "",
            f"![{figure.title}]({figures_rel}/{figure.path.name})",
            "",
            figure.caption,
            "",
        ]
    lines += [f"_{note}_" for note in content.figures.skipped]
    lines += ["", "## 6. Appendix", ""]
    for heading, entries in content.appendix:
        lines += [f"### {heading}", "", *[f"- {line}" for line in entries], ""]
    return "\n".join(lines).rstrip() + "\n"


def render_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: Any) -> dict[str, Path]:
    """Write ``out_dir/index.html``, ``out_dir/report.md`` and ``out_dir/figures/*.svg``.

    Args:
        results_dir: The results directory (reads ``runs/``, ``eval/``, ``stats/``).
        out_dir: The report directory (``results/report``).
        cfg: A ``StatsConfig`` (any object with ``alpha``, ``primary_metric``, ``comparisons``, ``rope``).

    Returns:
        ``{"html": ..., "markdown": ..., <figure name>: ...}`` → written paths.

    Raises:
        FileNotFoundError: If ``results_dir`` does not exist.
    """
    out = Path(out_dir)
    content = build_report_content(results_dir, out, cfg)
    paths: dict[str, Path] = {
        "html": atomic_write_text(out / "index.html", render_html(content)),
        "markdown": atomic_write_text(out / "report.md", render_markdown(content)),
    }
    for figure in content.figures.figures:
        paths[figure.name] = figure.path
    logger.info(
        "wrote %s and %s (%d figures)", paths["html"], paths["markdown"], len(content.figures.figures)
    )
    return paths
