"""Settings of the statistical analysis (``StatsConfig``): primary metric, comparison family, alpha, ROPE."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aaclip_xattn.fileio import read_yaml_mapping

__all__ = [
    "CORRECTIONS",
    "DEFAULT_COMPARISONS",
    "METRICS",
    "SECONDARY_CORRECTIONS",
    "StatsConfig",
    "comparison_name",
]

#: Every metric an evaluation CSV carries (fractions in [0, 1], higher is better), in table order.
METRICS: Final[tuple[str, ...]] = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
)

#: The comparisons of issue #7: (A, B) tests A − B.
DEFAULT_COMPARISONS: Final[tuple[tuple[str, str], ...]] = (
    ("xattn_from_base", "baseline"),
    ("xattn_scratch", "baseline"),
    ("xattn_from_base", "xattn_scratch"),
    ("xattn_from_base", "baseline_continued"),
)

#: Family-wise corrections for the primary family, as statsmodels ``multipletests`` method names.
CORRECTIONS: Final[tuple[str, ...]] = ("holm", "bonferroni")

#: False-discovery corrections for the secondary family (statsmodels method names).
SECONDARY_CORRECTIONS: Final[tuple[str, ...]] = ("fdr_bh", "fdr_by")

#: The spec's minimum number of bootstrap resamples (statistics.md §5).
MIN_BOOTSTRAP_RESAMPLES: Final[int] = 10_000


def comparison_name(arm_a: str, arm_b: str) -> str:
    """Return the ``comparison`` column value for ``A − B`` (e.g. ``xattn_from_base-baseline``)."""
    return f"{arm_a}-{arm_b}"


@dataclass(frozen=True)
class StatsConfig:
    """Pre-declared settings of the comparison analysis (statistics.md §4–§8).

    Attributes:
        primary_metric: The pre-declared primary metric; image AUROC by default (a detection claim,
            statistics.md §3). Use ``pixel_auroc`` or ``pixel_aupro`` for a localisation claim.
        comparisons: Pairs ``(A, B)``; each tests the paired difference A − B. Together they form the
            primary family that Holm corrects.
        alpha: Two-sided significance level of every test; CIs are ``1 − alpha`` intervals.
        correction: Family-wise correction of the primary family (``holm`` or ``bonferroni``).
        secondary_correction: False-discovery correction of the secondary family (``fdr_bh`` or ``fdr_by``).
        rope: Half-width of the region of practical equivalence in percentage points, or None (then no
            Bayesian verdict and never the word "equivalent").
        bootstrap_resamples: Number of two-stage bootstrap resamples (at least 10,000).
        bootstrap_seed: Seed of the bootstrap and Bayesian RNGs (recorded in ``stats.json``).
        min_seeds: Hard minimum of seeds per arm (the checklist's FAIL threshold).
        recommended_seeds: Recommended number of seeds (the checklist's WARN threshold).
        bayes_samples: Posterior samples of the Bayesian signed-rank cross-check.
        power: Target power of the minimum-detectable-effect calculation.
    """

    primary_metric: str = "image_auroc"
    comparisons: tuple[tuple[str, str], ...] = DEFAULT_COMPARISONS
    alpha: float = 0.05
    correction: str = "holm"
    secondary_correction: str = "fdr_bh"
    rope: float | None = None
    bootstrap_resamples: int = MIN_BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = 12345
    min_seeds: int = 3
    recommended_seeds: int = 5
    bayes_samples: int = 50_000
    power: float = 0.8
    _source: str = field(default="stats", repr=False, compare=False)

    def __post_init__(self) -> None:
        src = self._source
        if self.primary_metric not in METRICS:
            raise ValueError(
                f"{src}.primary_metric: {self.primary_metric!r} is not a metric; expected one of {', '.join(METRICS)}"
            )
        _check_comparisons(self.comparisons, src)
        _check_float(self.alpha, f"{src}.alpha", low=0.0, high=1.0)
        if self.correction not in CORRECTIONS:
            raise ValueError(
                f"{src}.correction: {self.correction!r} is not supported; expected one of {', '.join(CORRECTIONS)}"
            )
        if self.secondary_correction not in SECONDARY_CORRECTIONS:
            raise ValueError(
                f"{src}.secondary_correction: {self.secondary_correction!r} is not supported; "
                f"expected one of {', '.join(SECONDARY_CORRECTIONS)}"
            )
        if self.rope is not None:
            _check_float(self.rope, f"{src}.rope", low=0.0, high=math.inf)
        _check_int(self.bootstrap_resamples, f"{src}.bootstrap_resamples", low=MIN_BOOTSTRAP_RESAMPLES)
        _check_int(self.bootstrap_seed, f"{src}.bootstrap_seed", low=0)
        _check_int(self.min_seeds, f"{src}.min_seeds", low=1)
        _check_int(self.recommended_seeds, f"{src}.recommended_seeds", low=self.min_seeds)
        _check_int(self.bayes_samples, f"{src}.bayes_samples", low=1000)
        _check_float(self.power, f"{src}.power", low=0.0, high=1.0)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, *, source: str = "stats") -> StatsConfig:
        """Build the config from a mapping (a config section), rejecting unknown keys.

        Args:
            mapping: Keys are field names; missing keys take the defaults. ``None`` means all defaults.
            source: Name of the mapping used in error messages (e.g. ``config.yaml: stats``).

        Returns:
            The validated config.

        Raises:
            ValueError: On an unknown key or a value of the wrong type or range; the message names the key.
        """
        mapping = dict(mapping or {})
        valid = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        unknown = sorted(set(mapping) - set(valid))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        if "comparisons" in mapping:
            mapping["comparisons"] = _as_pairs(mapping["comparisons"], source)
        for key in ("alpha", "rope", "power"):
            if isinstance(mapping.get(key), int) and not isinstance(mapping[key], bool):
                mapping[key] = float(mapping[key])
        return cls(**mapping, _source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> StatsConfig:
        """Read the config from a YAML or JSON file: either the stats section itself or a whole
        workflow config with a top-level ``stats`` key.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a mapping or holds an invalid setting.
        """
        path = Path(path)
        data = read_yaml_mapping(
            path,
            missing="no such file (expected a YAML/JSON stats config)",
            not_mapping="expected a mapping of stats settings, found {type}",
        )
        if "stats" in data and isinstance(data["stats"], Mapping | None):
            return cls.from_mapping(data["stats"], source=f"{path}: stats")
        return cls.from_mapping(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict (comparisons as lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["comparisons"] = [list(pair) for pair in self.comparisons]
        return out


def _as_pairs(value: Any, source: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(
            f"{source}.comparisons: expected a list of [A, B] arm pairs, found {type(value).__name__}"
        )
    pairs = []
    for i, pair in enumerate(value):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(
                f"{source}.comparisons[{i}]: expected a pair [A, B] of arm names, found {pair!r}"
            )
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _check_comparisons(pairs: Any, src: str) -> None:
    if not isinstance(pairs, tuple) or not pairs:
        raise ValueError(f"{src}.comparisons: expected a non-empty list of [A, B] arm pairs, found {pairs!r}")
    seen = set()
    for i, pair in enumerate(pairs):
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(isinstance(arm, str) and arm for arm in pair)
        ):
            raise ValueError(f"{src}.comparisons[{i}]: expected a pair [A, B] of arm names, found {pair!r}")
        if pair[0] == pair[1]:
            raise ValueError(
                f"{src}.comparisons[{i}]: compares {pair[0]!r} with itself; expected two different arms"
            )
        key = frozenset(pair)
        if key in seen:
            raise ValueError(f"{src}.comparisons[{i}]: {pair[0]} vs {pair[1]} is listed twice")
        seen.add(key)


def _check_float(value: Any, name: str, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, float) or not (low < value < high):
        bound = f"in ({low:g}, {high:g})" if math.isfinite(high) else f"> {low:g}"
        raise ValueError(f"{name}: expected a number {bound}, found {value!r}")


def _check_int(value: Any, name: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, found {value!r}")
