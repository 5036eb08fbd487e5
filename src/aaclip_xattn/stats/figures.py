"""Report figures as reproducible SVG: loss curves, per-category dot plots, forest plots, power curves, maps.

Every figure is drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``, no ``pyplot``, so
no GUI backend and no global figure state) and saved as SVG with a fixed ``svg.hashsalt`` and no date or RDF metadata, so
two renders of the same records are byte-identical. Data artists carry SVG ids (``gid``) such as
``loss-text-seed0-baseline`` so that tests and readers can find each series.

Inputs are result files only: ``runs/.../train_log.csv``, ``stats/metrics_long.csv`` (or the evaluation
CSVs when it is absent), ``stats/comparisons.csv``, ``stats/comparisons_by_category.csv`` and
``stats/power.csv`` (each computed here when absent), and PNG overlays under ``eval/.../<test_dataset>_maps/<category>/``.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator
from scipy import stats as sps

from aaclip_xattn.fileio import atomic_write_bytes, read_csv
from aaclip_xattn.stats.checklist import comparison_pairs, parse_shot_dir, scan_results, shot_dir

__all__ = [
    "ARM_COLORS",
    "FigureBundle",
    "FigureRecord",
    "category_deltas",
    "load_metric_values",
    "plot_anomaly_maps",
    "plot_category_dots",
    "plot_forest",
    "plot_loss_curves",
    "plot_power_curve",
    "render_figures",
    "rope_for",
    "save_svg",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Fixed colours per arm (colour-blind-safe Okabe-Ito), so an arm looks the same in every figure.
ARM_COLORS: Final = {
    "baseline": "#0072B2",
    "xattn_from_base": "#D55E00",
    "xattn_scratch": "#009E73",
    "baseline_continued": "#CC79A7",
}
_EXTRA_COLORS: Final = ("#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Line styles in arm order, so overlapping curves (identical schedules) stay distinguishable.
_ARM_LINESTYLES: Final = ("-", "--", ":", "-.")
_COMPARISON_COLORS: Final = ("#D55E00", "#009E73", "#0072B2", "#CC79A7", "#E69F00", "#56B4E9")
_RC: Final = {
    "svg.hashsalt": "aaclip_xattn",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_STAGE_NAMES: Final = {
    "text": "text",
    "1": "text",
    "stage1": "text",
    "image": "image",
    "2": "image",
    "stage2": "image",
}
_STAGE_TITLES: Final = {"text": "stage 1 (text adapter)", "image": "stage 2 (image adapter)"}
MAX_MAP_IMAGES: Final = 3
#: No date (reproducible files) and no RDF block (no external namespace links in the report).
_SVG_METADATA: Final = {"Date": None, "Creator": None, "Format": None, "Type": None}
#: Smallest n drawn on each power axis (below it the MDE is so large that it flattens the rest).
_POWER_MIN_N: Final = {"seeds": 2, "categories": 5}


@dataclass(frozen=True)
class FigureRecord:
    """One written figure.

    Attributes:
        name: Stable key, e.g. ``forest_synth_a_shot8``.
        path: The SVG file.
        title: Heading for the report.
        caption: One or two sentences saying what the figure shows and where its numbers come from.
    """

    name: str
    path: Path
    title: str
    caption: str


@dataclass(frozen=True)
class FigureBundle:
    """The figures of one report and the ones that were skipped (with why).

    Attributes:
        figures: Written figures, in report order.
        skipped: One sentence per figure that could not be drawn.
    """

    figures: tuple[FigureRecord, ...]
    skipped: tuple[str, ...]


def _color(arm: str, arms: Sequence[str]) -> str:
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    extra = [a for a in arms if a not in ARM_COLORS]
    return _EXTRA_COLORS[extra.index(arm) % len(_EXTRA_COLORS)] if arm in extra else "#555555"


def _arm_order(arms: Sequence[str]) -> list[str]:
    known = [arm for arm in ARM_COLORS if arm in arms]
    return known + sorted(set(arms) - set(known))


def save_svg(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a reproducible SVG (fixed hash salt, no date) atomically and return the path."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": _RC["svg.hashsalt"], "svg.fonttype": _RC["svg.fonttype"]}):
        fig.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    path = atomic_write_bytes(path, buffer.getvalue())
    logger.info("wrote %s", path)
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _styled(function: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under the report's rcParams (restored afterwards, no global change)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context(_RC):
            return function(*args, **kwargs)

    return wrapper


def rope_for(cfg: Any, metric: str) -> float | None:
    """Return the ROPE half-width in pp for ``metric`` (``cfg.rope`` may be a number, a mapping, or None)."""
    rope = getattr(cfg, "rope", None)
    if isinstance(rope, Mapping):
        rope = rope.get(metric)
    if rope is None:
        return None
    value = float(rope)
    return value if value > 0 and math.isfinite(value) else None


def load_metric_values(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Return the long metric rows (``train_dataset, shot, seed, arm, test_dataset, category, metric, value``).

    Reads ``stats/metrics_long.csv`` when present, otherwise the evaluation CSVs (category rows only, the
    derived ``mean`` row excluded). ``seed`` is an int, ``value`` a float fraction (NaN when undefined).
    """
    root = Path(results_dir)
    long_csv = root / "stats" / "metrics_long.csv"
    rows: list[dict[str, Any]] = []
    if long_csv.is_file():
        for row in read_csv(long_csv):
            rows.append(
                {**row, "shot": str(row["shot"]), "seed": int(row["seed"]), "value": _float(row["value"])}
            )
        return rows
    tree = scan_results(root)
    for (key, test_dataset), record in sorted(tree.evals.items()):
        for row in record.category_rows:
            for metric in record.metric_names:
                rows.append(
                    {
                        "train_dataset": key.train_dataset,
                        "shot": key.shot,
                        "seed": key.seed,
                        "arm": key.arm,
                        "test_dataset": test_dataset,
                        "category": row["category"],
                        "metric": metric,
                        "value": _float(row[metric]),
                    }
                )
    return rows


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _groups(values: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    found = {(row["train_dataset"], str(row["shot"])) for row in values}
    return sorted(found, key=lambda g: (g[0], int(g[1]) if g[1].isdigit() else 1 << 30))


def _group_label(group: tuple[str, str]) -> str:
    return f"{group[0]}/{shot_dir(group[1])}"


def _group_slug(group: tuple[str, str]) -> str:
    return f"{group[0]}_{shot_dir(group[1])}"


def _read_train_log(path: Path) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in read_csv(path):
        stage = _STAGE_NAMES.get(str(row.get("stage", "")).strip().lower())
        if stage is None:
            continue
        curves[stage].append((_float(row.get("epoch")), _float(row.get("loss"))))
    return {stage: sorted(points) for stage, points in curves.items()}


@_styled
def plot_loss_curves(
    results_dir: str | os.PathLike, group: tuple[str, str], out_path: str | os.PathLike
) -> Path | None:
    """Draw the training loss per epoch of every arm: one row per seed, stage 1 and stage 2 side by side.

    Args:
        results_dir: The results directory (reads ``runs/<td>/<shot_dir>/seed<s>/<arm>/train_log.csv``).
        group: ``(train_dataset, shot)``.
        out_path: SVG path to write.

    Returns:
        The written path, or ``None`` when no training log exists for the group.
    """
    base = Path(results_dir) / "runs" / group[0] / shot_dir(group[1])
    logs: dict[int, dict[str, dict[str, list[tuple[float, float]]]]] = defaultdict(dict)
    for path in sorted(base.glob("seed*/*/train_log.csv")):
        seed_name = path.parent.parent.name.removeprefix("seed")
        if not seed_name.isdigit():
            continue
        logs[int(seed_name)][path.parent.name] = _read_train_log(path)
    if not logs:
        return None
    seeds = sorted(logs)
    arms = _arm_order({arm for by_arm in logs.values() for arm in by_arm})
    fig = _figure(7.5, 2.1 * len(seeds) + 0.6)
    axes = fig.subplots(len(seeds), 2, squeeze=False)
    for row, seed in enumerate(seeds):
        for col, stage in enumerate(("text", "image")):
            ax = axes[row][col]
            ax.set_gid(f"panel-loss-{stage}-seed{seed}")
            for arm in arms:
                points = logs[seed].get(arm, {}).get(stage)
                if not points:
                    continue
                x, y = zip(*points, strict=True)
                style = _ARM_LINESTYLES[arms.index(arm) % len(_ARM_LINESTYLES)]
                (line,) = ax.plot(
                    x, y, marker="o", markersize=3, ls=style, color=_color(arm, arms), label=arm
                )
                line.set_gid(f"loss-{stage}-seed{seed}-{arm}")
            ax.set_title(f"seed {seed}: {_STAGE_TITLES[stage]}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("mean training loss")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(len(labels), 1), frameon=False)
    fig.suptitle(f"Training loss per epoch, {_group_label(group)}")
    return save_svg(fig, out_path)


def _select(
    values: Sequence[Mapping[str, Any]], group: tuple[str, str], metric: str
) -> list[Mapping[str, Any]]:
    return [
        row
        for row in values
        if row["train_dataset"] == group[0] and str(row["shot"]) == group[1] and row["metric"] == metric
    ]


@_styled
def plot_category_dots(
    values: Sequence[Mapping[str, Any]], group: tuple[str, str], metric: str, out_path: str | os.PathLike
) -> Path | None:
    """Draw the metric per category: one dot per seed and arm (arms side by side), with the seed mean.

    Args:
        values: Long metric rows (``load_metric_values``).
        group: ``(train_dataset, shot)``.
        metric: The metric to show (the primary one).
        out_path: SVG path to write.

    Returns:
        The written path, or ``None`` when the group has no value of ``metric``.
    """
    rows = _select(values, group, metric)
    if not rows:
        return None
    tests = sorted({row["test_dataset"] for row in rows})
    arms = _arm_order({row["arm"] for row in rows})
    table: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["test_dataset"], r["category"], r["arm"], r["seed"])):
        table[(row["test_dataset"], row["category"], row["arm"])].append(100.0 * row["value"])
    n_max = max(len({r["category"] for r in rows if r["test_dataset"] == td}) for td in tests)
    fig = _figure(max(5.0, 0.55 * n_max * max(len(arms), 2) / 2 + 2.0), 2.6 * len(tests) + 0.6)
    axes = fig.subplots(len(tests), 1, squeeze=False)
    width = 0.8 / max(len(arms), 1)
    for ax_row, td in enumerate(tests):
        ax = axes[ax_row][0]
        ax.set_gid(f"panel-dots-{td}")
        categories = sorted({r["category"] for r in rows if r["test_dataset"] == td})
        for index, arm in enumerate(arms):
            xs, ys, mx, my = [], [], [], []
            for position, category in enumerate(categories):
                seed_values = [v for v in table.get((td, category, arm), []) if math.isfinite(v)]
                offset = position - 0.4 + width * (index + 0.5)
                xs.extend([offset] * len(seed_values))
                ys.extend(seed_values)
                if seed_values:
                    mx.append(offset)
                    my.append(float(np.mean(seed_values)))
            points = ax.scatter(xs, ys, s=12, color=_color(arm, arms), alpha=0.7, label=arm, zorder=3)
            points.set_gid(f"dots-{td}-{arm}")
            means = ax.scatter(mx, my, s=60, marker="_", color=_color(arm, arms), linewidths=2, zorder=4)
            means.set_gid(f"means-{td}-{arm}")
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{td}: {metric} per category (dots: seeds, bars: seed mean)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=max(len(labels), 1), frameon=False)
    fig.suptitle(f"Per-category {metric} across seeds, {_group_label(group)}")
    return save_svg(fig, out_path)


def category_deltas(
    values: Sequence[Mapping[str, Any]], group: tuple[str, str], metric: str, arm_a: str, arm_b: str
) -> dict[tuple[str, str], np.ndarray]:
    """Return the seed-level paired differences A − B in pp per ``(test_dataset, category)``.

    Only seeds where both arms have a finite value are paired; categories without any pair are omitted.
    """
    table: dict[tuple[str, str, str, int], float] = {}
    for row in _select(values, group, metric):
        table[(row["arm"], row["test_dataset"], row["category"], row["seed"])] = row["value"]
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (arm, td, category, seed), value in sorted(table.items()):
        if arm != arm_a:
            continue
        other = table.get((arm_b, td, category, seed))
        if other is not None and math.isfinite(value) and math.isfinite(other):
            out[(td, category)].append(100.0 * (value - other))
    return {key: np.asarray(d) for key, d in sorted(out.items())}


def _t_interval(d: np.ndarray, alpha: float) -> tuple[float, float]:
    if d.size < 3:
        return (math.nan, math.nan)
    half = sps.t.ppf(1 - alpha / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return (float(d.mean() - half), float(d.mean() + half))


def _category_rows(
    by_category: Sequence[Mapping[str, str]] | None,
    values: Sequence[Mapping[str, Any]],
    group: tuple[str, str],
    metric: str,
    pair: tuple[str, str],
    alpha: float,
) -> list[tuple[str, str, float, float, float]]:
    """Per-category ``(test_dataset, category, mean Δ, low, high)`` from the stats table or the values."""
    name = f"{pair[0]}-{pair[1]}"
    rows = [
        r
        for r in by_category or []
        if r.get("train_dataset") == group[0]
        and str(r.get("shot")) == group[1]
        and r.get("comparison") == name
        and r.get("metric") == metric
    ]
    if rows:
        return sorted(
            (
                r["test_dataset"],
                r["category"],
                _float(r["mean_delta"]),
                _float(r.get("ci_low")),
                _float(r.get("ci_high")),
            )
            for r in rows
        )
    out = []
    for (td, category), d in category_deltas(values, group, metric, *pair).items():
        low, high = _t_interval(d, alpha)
        out.append((td, category, float(d.mean()), low, high))
    return out


def _pooled_rows(
    comparisons: Sequence[Mapping[str, str]] | None,
    categories: Sequence[tuple[str, str, float, float, float]],
    group: tuple[str, str],
    metric: str,
    pair: tuple[str, str],
    alpha: float,
) -> dict[str, tuple[float, float, float]]:
    """Pooled ``scope → (mean Δ, low, high)``: from comparisons.csv, else a t-interval over categories."""
    name = f"{pair[0]}-{pair[1]}"
    out = {}
    for r in comparisons or []:
        if (
            r.get("train_dataset") == group[0]
            and str(r.get("shot")) == group[1]
            and r.get("comparison") == name
            and r.get("metric") == metric
        ):
            out[r.get("scope", "all")] = (
                _float(r["mean_delta"]),
                _float(r.get("ci_low")),
                _float(r.get("ci_high")),
            )
    if out:
        return out
    scopes: dict[str, list[float]] = defaultdict(list)
    for td, _category, mean, _low, _high in categories:
        scopes[td].append(mean)
        scopes["all"].append(mean)
    for scope, deltas in scopes.items():
        d = np.asarray(deltas)
        half = (
            sps.t.ppf(1 - alpha / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
            if d.size >= 2
            else math.nan
        )
        out[scope] = (float(d.mean()), float(d.mean() - half), float(d.mean() + half))
    return out


def _diamond(ax: Any, y: float, mean: float, low: float, high: float, color: str, gid: str) -> None:
    if not all(math.isfinite(v) for v in (mean, low, high)):
        low = high = mean
    patch = Polygon(
        [(low, y), (mean, y + 0.35), (high, y), (mean, y - 0.35)],
        closed=True,
        color=color,
        alpha=0.9,
        zorder=4,
    )
    patch.set_gid(gid)
    ax.add_patch(patch)


@_styled
def plot_forest(
    values: Sequence[Mapping[str, Any]],
    group: tuple[str, str],
    metric: str,
    pairs: Sequence[tuple[str, str]],
    out_path: str | os.PathLike,
    *,
    comparisons: Sequence[Mapping[str, str]] | None = None,
    by_category: Sequence[Mapping[str, str]] | None = None,
    rope: float | None = None,
    alpha: float = 0.05,
) -> Path | None:
    """Draw a forest plot of Δ (pp) per comparison: one row per category (seed-mean Δ ± t-interval),
    grouped by test dataset, with per-dataset and pooled diamonds, a line at 0 and the ROPE shaded.

    Args:
        values: Long metric rows (for categories when ``by_category`` has none).
        group: ``(train_dataset, shot)``.
        metric: The metric (the primary one).
        pairs: Comparisons ``(A, B)``, Δ = A − B.
        out_path: SVG path to write.
        comparisons: ``comparisons.csv`` rows (pooled diamonds), or ``None`` to use a t-interval over categories.
        by_category: ``comparisons_by_category.csv`` rows, or ``None`` to compute from ``values``.
        rope: ROPE half-width in pp, or ``None``.
        alpha: Level of the t-intervals computed here.

    Returns:
        The written path, or ``None`` when no comparison has paired values.
    """
    panels = []
    for pair in pairs:
        categories = _category_rows(by_category, values, group, metric, pair, alpha)
        if categories:
            panels.append(
                (pair, categories, _pooled_rows(comparisons, categories, group, metric, pair, alpha))
            )
    if not panels:
        return None
    n_rows = max(len(c) + 2 * len({td for td, *_ in c}) + 2 for _, c, _ in panels)
    fig = _figure(3.3 * len(panels) + 1.2, 0.22 * n_rows + 1.4)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    ticks: list[tuple[float, str]] = []
    for index, (pair, categories, pooled) in enumerate(panels):
        ax = axes[index]
        name = f"{pair[0]}-{pair[1]}"
        ax.set_gid(f"panel-forest-{name}")
        if rope is not None:
            ax.axvspan(-rope, rope, color="#999999", alpha=0.2, lw=0, label=f"ROPE ±{rope:g} pp").set_gid(
                f"rope-{name}"
            )
        ax.axvline(0.0, color="black", lw=0.8)
        y = 0.0
        ticks = []
        for td in sorted({c[0] for c in categories}):
            for _td, category, mean, low, high in [c for c in categories if c[0] == td]:
                y -= 1
                err = [[mean - low], [high - mean]] if math.isfinite(low) and math.isfinite(high) else None
                container = ax.errorbar(mean, y, xerr=err, fmt="o", ms=4, color="#333333", capsize=2, lw=1)
                container.lines[0].set_gid(f"row-{name}-{td}-{category}")
                ticks.append((y, f"{td}/{category}"))
            if td in pooled:
                y -= 1
                _diamond(ax, y, *pooled[td], "#777777", f"diamond-{name}-{td}")
                ticks.append((y, f"{td} (dataset)"))
            y -= 0.5
        if "all" in pooled:
            y -= 1
            _diamond(ax, y, *pooled["all"], _color(pair[0], [pair[0]]), f"diamond-{name}-all")
            ticks.append((y, "pooled (all categories)"))
        ax.set_title(f"{pair[0]}\n− {pair[1]}")
        ax.set_xlabel(f"Δ {metric} (pp)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(y - 1, 0.5)
    axes[0].set_yticks([t for t, _ in ticks], [label for _, label in ticks])
    source = "stats/comparisons.csv" if comparisons else "a t-interval over categories"
    fig.suptitle(
        f"Paired Δ per category (seed mean ± t-interval), pooled diamonds from {source}, {_group_label(group)}"
    )
    return save_svg(fig, out_path)


def _power_rows(
    power: Sequence[Mapping[str, str]] | None,
    values: Sequence[Mapping[str, Any]],
    group: tuple[str, str],
    metric: str,
    pair: tuple[str, str],
    alpha: float,
    target: float,
) -> list[dict[str, Any]]:
    name = f"{pair[0]}-{pair[1]}"
    rows = [
        {
            **r,
            "n_seeds": int(float(r["n_seeds"])),
            "n_categories": int(float(r["n_categories"])),
            "mde_pp": _float(r["mde_pp"]),
            "observed": str(r.get("observed")).lower() in {"true", "1"},
        }
        for r in power or []
        if r.get("train_dataset") == group[0]
        and str(r.get("shot")) == group[1]
        and r.get("comparison") == name
        and r.get("metric") == metric
    ]
    if rows:
        return rows
    from aaclip_xattn.stats.power import compute_power_curve

    deltas = list(category_deltas(values, group, metric, *pair).values())
    return compute_power_curve(deltas, alpha=alpha, power=target) if deltas else []


@_styled
def plot_power_curve(
    values: Sequence[Mapping[str, Any]],
    group: tuple[str, str],
    metric: str,
    pairs: Sequence[tuple[str, str]],
    out_path: str | os.PathLike,
    *,
    power: Sequence[Mapping[str, str]] | None = None,
    rope: float | None = None,
    alpha: float = 0.05,
    target_power: float = 0.8,
) -> Path | None:
    """Draw the minimum detectable Δ (pp, 80 % power) against the number of seeds and of categories.

    Args:
        values: Long metric rows (used when ``power`` has no rows for a comparison).
        group: ``(train_dataset, shot)``.
        metric: The metric (the primary one).
        pairs: Comparisons ``(A, B)``.
        out_path: SVG path to write.
        power: ``stats/power.csv`` rows (``axis`` seeds/categories, ``n_seeds``, ``n_categories``,
            ``mde_pp``, ``observed``), or ``None`` to compute with ``stats.power.compute_power_curve``.
        rope: ROPE half-width in pp, drawn as the smallest effect worth detecting.
        alpha: Two-sided level of the power calculation when computed here.
        target_power: Power of the MDE when computed here.

    Returns:
        The written path, or ``None`` when no comparison has data.
    """
    curves = {pair: _power_rows(power, values, group, metric, pair, alpha, target_power) for pair in pairs}
    curves = {pair: rows for pair, rows in curves.items() if rows}
    if not curves:
        return None
    fig = _figure(8.0, 3.2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for col, (axis, key, label) in enumerate(
        (
            ("seeds", "n_seeds", "number of seeds S (categories fixed)"),
            ("categories", "n_categories", "number of categories T (seeds fixed)"),
        )
    ):
        ax = axes[col]
        ax.set_gid(f"panel-power-{axis}")
        for pair, rows in curves.items():
            points = sorted(
                (r[key], r["mde_pp"])
                for r in rows
                if r["axis"] == axis and math.isfinite(r["mde_pp"]) and r[key] >= _POWER_MIN_N[axis]
            )
            if not points:
                continue
            name = f"{pair[0]}-{pair[1]}"
            x, y = zip(*points, strict=True)
            color = _COMPARISON_COLORS[list(curves).index(pair) % len(_COMPARISON_COLORS)]
            (line,) = ax.plot(x, y, color=color, label=name)
            line.set_gid(f"power-{axis}-{name}")
            observed = [(r[key], r["mde_pp"]) for r in rows if r["axis"] == axis and r["observed"]]
            if observed:
                ax.plot(*observed[0], marker="o", color=line.get_color(), ms=6)
        if rope is not None:
            ax.axhline(rope, color="#999999", ls="--", lw=1, label=f"ROPE {rope:g} pp")
        ax.set_xlabel(label)
        ax.set_ylabel(f"MDE of Δ {metric} (pp)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"detectable Δ vs {axis} (dot: this study)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), frameon=False)
    fig.suptitle(f"Power: minimum detectable effect at 80 % power, {_group_label(group)}")
    return save_svg(fig, out_path)


def find_anomaly_maps(
    results_dir: str | os.PathLike, group: tuple[str, str]
) -> dict[int, dict[str, list[Path]]]:
    """Return ``{seed: {arm: [png, ...]}}`` for the evaluation's overlays.

    The evaluation writes them to ``eval/<td>/<shot_dir>/seed<s>/<arm>/<test_dataset>_maps/<category>/``.
    """
    base = Path(results_dir) / "eval" / group[0] / shot_dir(group[1])
    found: dict[int, dict[str, list[Path]]] = defaultdict(dict)
    for png in sorted(base.glob("seed*/*/*_maps/*/*.png")):
        arm_dir = png.parent.parent.parent
        seed_name = arm_dir.parent.name.removeprefix("seed")
        if seed_name.isdigit():
            found[int(seed_name)].setdefault(arm_dir.name, []).append(png)
    return dict(found)


@_styled
def plot_anomaly_maps(
    results_dir: str | os.PathLike,
    group: tuple[str, str],
    out_path: str | os.PathLike,
    *,
    n_images: int = MAX_MAP_IMAGES,
) -> Path | None:
    """Show the anomaly-map overlays of a few test images per arm side by side (the lowest seed with maps).

    Args:
        results_dir: The results directory.
        group: ``(train_dataset, shot)``.
        out_path: SVG path to write.
        n_images: How many images (rows) at most.

    Returns:
        The written path, or ``None`` when the evaluation wrote no overlays.
    """
    import matplotlib.image as mpimg

    maps = find_anomaly_maps(results_dir, group)
    if not maps:
        return None
    seed = min(maps)
    arms = _arm_order(list(maps[seed]))
    rel = {
        arm: {f"{p.parent.parent.name}/{p.parent.name}/{p.name}": p for p in paths}
        for arm, paths in maps[seed].items()
    }
    names = sorted(set.intersection(*(set(r) for r in rel.values())))[:n_images]
    if not names:
        names = sorted(set().union(*(set(r) for r in rel.values())))[:n_images]
    fig = _figure(1.9 * len(arms) + 0.4, 1.9 * len(names) + 0.6)
    axes = fig.subplots(len(names), len(arms), squeeze=False)
    for row, name in enumerate(names):
        for col, arm in enumerate(arms):
            ax = axes[row][col]
            ax.set_gid(f"panel-map-{row}-{arm}")
            ax.set_xticks([])
            ax.set_yticks([])
            if name in rel[arm]:
                ax.imshow(mpimg.imread(rel[arm][name]), interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "no map", ha="center", va="center", transform=ax.transAxes)
            if row == 0:
                ax.set_title(arm)
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"Anomaly maps, seed {seed}, {_group_label(group)}")
    return save_svg(fig, out_path)


def _optional_csv(path: Path) -> list[dict[str, str]] | None:
    return read_csv(path) if path.is_file() else None


def render_figures(results_dir: str | os.PathLike, figures_dir: str | os.PathLike, cfg: Any) -> FigureBundle:
    """Draw every report figure for every ``train_dataset × shot`` into ``figures_dir``.

    Args:
        results_dir: The results directory.
        figures_dir: Where the SVGs go (``results/report/figures``).
        cfg: A ``StatsConfig`` (``primary_metric``, ``comparisons``, ``rope``, ``alpha``).

    Returns:
        The figures written (in report order) and the ones skipped with the reason.
    """
    root, out = Path(results_dir), Path(figures_dir)
    metric = str(cfg.primary_metric)
    alpha = float(getattr(cfg, "alpha", 0.05))
    rope = rope_for(cfg, metric)
    values = load_metric_values(root)
    stats_dir = root / "stats"
    comparisons = _optional_csv(stats_dir / "comparisons.csv")
    by_category = _optional_csv(stats_dir / "comparisons_by_category.csv")
    power = _optional_csv(stats_dir / "power.csv")
    groups = _groups(values)
    run_groups = sorted(
        {
            (p.parent.name, shot)
            for p in (root / "runs").glob("*/*")
            if p.is_dir() and (shot := parse_shot_dir(p.name)) is not None
        }
    )
    figures: list[FigureRecord] = []
    skipped: list[str] = []
    for group in sorted(set(groups) | set(run_groups)):
        slug, label = _group_slug(group), _group_label(group)
        arms = {row["arm"] for row in values if (row["train_dataset"], str(row["shot"])) == group}
        pairs = [pair for pair in comparison_pairs(cfg) if set(pair) <= arms]

        def add(name: str, path: Path | None, title: str, caption: str, why: str, slug: str = slug) -> None:
            if path is None:
                skipped.append(why)
            else:
                figures.append(FigureRecord(f"{name}_{slug}", path, title, caption))

        add(
            "loss_curves",
            plot_loss_curves(root, group, out / f"loss_curves_{slug}.svg"),
            f"Training loss, {label}",
            "Mean training loss per epoch of every arm (from train_log.csv), one row per seed; stage 1 trains "
            "the text adapter, stage 2 the image adapter. From-base arms should start below the baseline "
            "(guide step 8).",
            f"{label}: no train_log.csv found, loss curves skipped.",
        )
        add(
            "category_dots",
            plot_category_dots(values, group, metric, out / f"category_dots_{slug}.svg"),
            f"Per-category {metric}, {label}",
            f"{metric} (%) per category: one dot per seed and arm, the bar is the seed mean.",
            f"{label}: no {metric} values, dot plot skipped.",
        )
        rope_words = f"; the grey band is the ROPE ±{rope:g} pp" if rope is not None else ""
        add(
            "forest",
            plot_forest(
                values,
                group,
                metric,
                pairs,
                out / f"forest_{slug}.svg",
                comparisons=comparisons,
                by_category=by_category,
                rope=rope,
                alpha=alpha,
            ),
            f"Forest plot of Δ {metric}, {label}",
            "Paired difference A − B in percentage points per category (seed mean ± t-interval, drawn when "
            "S ≥ 3), per-dataset and pooled diamonds (mean Δ and its CI from stats/comparisons.csv), and a "
            f"line at 0{rope_words}.",
            f"{label}: no comparison with paired values, forest plot skipped.",
        )
        add(
            "power",
            plot_power_curve(
                values,
                group,
                metric,
                pairs,
                out / f"power_{slug}.svg",
                power=power,
                rope=rope,
                alpha=alpha,
                target_power=float(getattr(cfg, "power", 0.8)),
            ),
            f"Power curve, {label}",
            "Minimum detectable Δ (pp) at 80 % power for the category-level paired test, against the number "
            "of seeds (SD(δ) = √(τ² + σ_d²/S)) and of categories; the dot marks this study.",
            f"{label}: no paired values, power curve skipped.",
        )
        add(
            "anomaly_maps",
            plot_anomaly_maps(root, group, out / f"anomaly_maps_{slug}.svg"),
            f"Anomaly maps, {label}",
            "Anomaly-map overlays of the same test images for each arm side by side.",
            f"{label}: the evaluation wrote no anomaly-map overlays (eval/.../<test_dataset>_maps/<category>/*.png), "
            "so the anomaly-map figure is skipped.",
        )
    return FigureBundle(tuple(figures), tuple(skipped))
