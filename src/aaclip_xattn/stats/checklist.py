"""Fair-comparison checklist: every item of the seed guide's steps 7-9, verified from the result records.

The checklist reads ``run.json`` files, few-shot manifests, evaluation CSVs and their JSON sidecars (never
the model) and returns one ``{id, title, status, evidence}`` item per check, in the order of
``CHECK_IDS``. ``status`` is ``PASS``, ``WARN`` or ``FAIL``; ``evidence`` is a list of short strings naming
the files (relative to the results directory) and the values compared. Any FAIL blocks a "better" claim in
the rendered report (statistics.md §10).

Decisions documented here because the specs leave them open:

* ``same_hyperparameters``: any value that differs between runs of one training dataset × shot (across
  arms or across seeds) is a FAIL, the schedule ``preset`` label included; a non-conservative preset used
  identically by every run (all values equal) is a WARN, since the guide recommends the conservative
  schedule for a fair comparison but the arms are still matched.
* Items that find nothing to verify (no baseline runs, no evaluation sidecars) fail when the evidence is
  required for any comparison (evaluation sidecars) and warn when an arm is simply not part of the study.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aaclip_xattn.fileio import read_csv, read_json, sha256_file, write_json

__all__ = [
    "CHECK_IDS",
    "CHECK_TITLES",
    "FAIL",
    "PASS",
    "WARN",
    "EvalRecord",
    "ResultsTree",
    "RunKey",
    "RunRecord",
    "build_checklist",
    "comparison_pairs",
    "load_expected_runs",
    "min_units_for_alpha",
    "parse_shot_dir",
    "run_checklist",
    "scan_results",
    "shot_dir",
]

logger = logging.getLogger(__name__)

PASS: Final = "PASS"
WARN: Final = "WARN"
FAIL: Final = "FAIL"

CHECK_IDS: Final = (
    "base_fully_trained",
    "init_from_base",
    "same_hyperparameters",
    "same_split",
    "same_metrics",
    "same_test_set",
    "significance_testing",
    "optimizer_carried_over",
    "budget_matched",
    "no_missing_runs",
    "expected_loss_behaviour",
)

CHECK_TITLES: Final = {
    "base_fully_trained": "Base model fully trained (epochs completed = configured, per seed)",
    "init_from_base": "Cross-attention initialised with the same seed's base weights",
    "same_hyperparameters": "Same hyperparameters across arms and seeds (lr, batch sizes, epochs, preset, modes)",
    "same_split": "Same dataset split (few-shot manifest sha256 per seed)",
    "same_metrics": "Same evaluation metrics and conventions",
    "same_test_set": "Same test set (test-list sha256)",
    "significance_testing": "Multiple seeds and a primary test that can reach alpha",
    "optimizer_carried_over": "Optimizer state carried over from the base, not reset",
    "budget_matched": "Equal training budget for the budget-matched pairs",
    "no_missing_runs": "No missing or failed run",
    "expected_loss_behaviour": "From-base first-epoch loss below the baseline's (guide step 8)",
}

#: Arms that start from the same seed's baseline adapters and optimizer state (DESIGN.md, arms table).
FROM_BASE_ARMS: Final = ("xattn_from_base", "baseline_continued")

#: Hyperparameters that must be identical across the arms and seeds of one training dataset × shot.
HYPERPARAMETER_KEYS: Final = (
    "text_lr",
    "image_lr",
    "text_batch_size",
    "image_batch_size",
    "text_epoch",
    "image_epoch",
    "preset",
    "backbone",
    "pretrained",
    "image_size",
    "vv_axis",
    "stage1_levels",
    "noise_aug",
    "augment",
    "fusion",
    "descriptions_sha256",
    "evaluated_checkpoint",
)

CONSERVATIVE_PRESET: Final = "conservative"

#: Pairs whose training budget must be equal: (arm, its budget-matched control).
BUDGET_PAIRS: Final = (("xattn_from_base", "baseline_continued"), ("xattn_scratch", "baseline"))

HARD_MIN_SEEDS: Final = 3
STAGES: Final = ("text", "image")
EXPECTED_RUNS_FILE: Final = "expected_runs.json"

_EVAL_META_COLUMNS: Final = frozenset({"category", "n_images", "n_normal", "n_anomalous"})
_SEED_DIR = re.compile(r"^seed(\d+)$")
_SHOT_DIR = re.compile(r"^shot(\d+)$")
_HASH_CHARS: Final = 12


@dataclass(frozen=True, order=True)
class RunKey:
    """Identity of one training run: ``train_dataset × shot × seed × arm``.

    Attributes:
        train_dataset: Training dataset name.
        shot: ``"<k>"`` for few-shot or ``"full"``.
        seed: Seed of the comparison.
        arm: Arm name (``baseline``, ``xattn_from_base``, ...).
    """

    train_dataset: str
    shot: str
    seed: int
    arm: str

    @property
    def run_rel(self) -> str:
        """Path of the run directory relative to the results directory."""
        return f"runs/{self.train_dataset}/{shot_dir(self.shot)}/seed{self.seed}/{self.arm}"

    @property
    def eval_rel(self) -> str:
        """Path of the evaluation directory relative to the results directory."""
        return f"eval/{self.train_dataset}/{shot_dir(self.shot)}/seed{self.seed}/{self.arm}"

    @property
    def group(self) -> tuple[str, str]:
        """The ``(train_dataset, shot)`` study this run belongs to."""
        return (self.train_dataset, self.shot)

    def label(self) -> str:
        """Short human-readable name, e.g. ``synth_a/shot8 seed 1 xattn_from_base``."""
        return f"{self.train_dataset}/{shot_dir(self.shot)} seed {self.seed} {self.arm}"


@dataclass(frozen=True)
class RunRecord:
    """One ``run.json`` as read from disk.

    Attributes:
        key: The run's identity (from its directory).
        rel: ``run.json`` path relative to the results directory.
        data: Parsed JSON (empty when unreadable).
        error: Why the file could not be read, else ``None``.
    """

    key: RunKey
    rel: str
    data: Mapping[str, Any]
    error: str | None = None

    @property
    def completed(self) -> bool:
        """Whether the run finished (``status == "completed"``)."""
        return self.error is None and self.data.get("status") == "completed"


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation table ``<test_dataset>.csv`` and its JSON sidecar.

    Attributes:
        key: The evaluated run.
        test_dataset: Test dataset name.
        csv_rel: CSV path relative to the results directory.
        json_rel: Sidecar path relative to the results directory.
        rows: CSV rows (category rows and the ``mean`` row), values as strings.
        sidecar: Parsed sidecar, or ``None`` when missing or unreadable.
    """

    key: RunKey
    test_dataset: str
    csv_rel: str
    json_rel: str
    rows: tuple[Mapping[str, str], ...]
    sidecar: Mapping[str, Any] | None

    @property
    def category_rows(self) -> list[Mapping[str, str]]:
        """Rows of single categories (the derived ``mean`` row excluded)."""
        return [row for row in self.rows if row.get("category") != "mean"]

    @property
    def metric_names(self) -> list[str]:
        """Metric columns of the table, in file order."""
        if not self.rows:
            return []
        return [name for name in self.rows[0] if name not in _EVAL_META_COLUMNS]


@dataclass(frozen=True)
class ResultsTree:
    """Every record found under a results directory.

    Attributes:
        root: The results directory.
        runs: ``run.json`` records by run key.
        evals: Evaluation records by ``(run key, test dataset)``.
    """

    root: Path
    runs: Mapping[RunKey, RunRecord] = field(default_factory=dict)
    evals: Mapping[tuple[RunKey, str], EvalRecord] = field(default_factory=dict)

    def groups(self) -> list[tuple[str, str]]:
        """Sorted ``(train_dataset, shot)`` pairs present in runs or evaluations."""
        found = {key.group for key in self.runs} | {key.group for key, _ in self.evals}
        return sorted(found, key=_group_sort_key)

    def runs_of(self, group: tuple[str, str]) -> list[RunRecord]:
        """Runs of one ``(train_dataset, shot)``, sorted by seed then arm."""
        return [self.runs[key] for key in sorted(self.runs) if key.group == group]


def shot_dir(shot: str | int) -> str:
    """Return the directory level for a shot: ``shot<k>`` for few-shot, ``full`` for full-shot."""
    shot = str(shot)
    return "full" if shot == "full" else f"shot{shot}"


def parse_shot_dir(name: str) -> str | None:
    """Return the shot value (``"<k>"`` or ``"full"``) of a directory name, or ``None`` if it is not one."""
    if name == "full":
        return "full"
    match = _SHOT_DIR.match(name)
    return match.group(1) if match else None


def _group_sort_key(group: tuple[str, str]) -> tuple[str, int, str]:
    dataset, shot = group
    return (dataset, int(shot) if shot.isdigit() else 1 << 30, shot)


def _iter_run_dirs(base: Path) -> Iterable[tuple[str, str, int, str, Path]]:
    """Yield ``(train_dataset, shot, seed, arm, dir)`` for ``base/<td>/<shot_dir>/seed<s>/<arm>/``."""
    if not base.is_dir():
        return
    for td_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for sd in sorted(p for p in td_dir.iterdir() if p.is_dir()):
            shot = parse_shot_dir(sd.name)
            if shot is None:
                logger.debug("ignoring %s: not a shot<k>/full directory", sd)
                continue
            for seed_dir in sorted(p for p in sd.iterdir() if p.is_dir()):
                match = _SEED_DIR.match(seed_dir.name)
                if match is None:
                    logger.debug("ignoring %s: not a seed<s> directory", seed_dir)
                    continue
                for arm_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
                    yield td_dir.name, shot, int(match.group(1)), arm_dir.name, arm_dir


def scan_results(results_dir: str | os.PathLike) -> ResultsTree:
    """Read every ``run.json`` and evaluation table/sidecar under ``results_dir``.

    Unreadable ``run.json`` files are kept with their error so that the checklist can list them; a missing
    or unreadable sidecar is recorded as ``None``.

    Args:
        results_dir: The workflow's ``results/`` directory.

    Returns:
        The records found.

    Raises:
        FileNotFoundError: If ``results_dir`` is not a directory.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: results directory not found (expected runs/, eval/ and stats/ below it)"
        )
    runs: dict[RunKey, RunRecord] = {}
    for td, shot, seed, arm, run_dir in _iter_run_dirs(root / "runs"):
        path = run_dir / "run.json"
        if not path.is_file():
            continue
        key = RunKey(td, shot, seed, arm)
        rel = f"{key.run_rel}/run.json"
        try:
            data = read_json(path)
        except RuntimeError as exc:
            runs[key] = RunRecord(key, rel, {}, error=str(exc))
            continue
        if not isinstance(data, dict):
            runs[key] = RunRecord(key, rel, {}, error=f"{rel}: expected a JSON object")
            continue
        runs[key] = RunRecord(key, rel, data)
    evals: dict[tuple[RunKey, str], EvalRecord] = {}
    for td, shot, seed, arm, eval_dir in _iter_run_dirs(root / "eval"):
        key = RunKey(td, shot, seed, arm)
        for csv_path in sorted(eval_dir.glob("*.csv")):
            test_dataset = csv_path.stem
            json_path = csv_path.with_suffix(".json")
            sidecar: Mapping[str, Any] | None = None
            if json_path.is_file():
                try:
                    sidecar = read_json(json_path)
                except RuntimeError:
                    logger.warning("%s: unreadable evaluation sidecar", json_path)
            evals[(key, test_dataset)] = EvalRecord(
                key=key,
                test_dataset=test_dataset,
                csv_rel=f"{key.eval_rel}/{csv_path.name}",
                json_rel=f"{key.eval_rel}/{json_path.name}",
                rows=tuple(read_csv(csv_path)),
                sidecar=sidecar,
            )
    logger.info("found %d run records and %d evaluation tables under %s", len(runs), len(evals), root)
    return ResultsTree(root=root, runs=runs, evals=evals)


def load_expected_runs(results_dir: str | os.PathLike) -> list[dict[str, Any]] | None:
    """Read the launch manifest ``results/stats/expected_runs.json`` if it exists.

    The file holds a list (or ``{"runs": [...]}``) of ``{train_dataset, shot, seed, arm, test_datasets}``.

    Args:
        results_dir: The results directory.

    Returns:
        The validated entries, or ``None`` when the file does not exist.

    Raises:
        RuntimeError: If the file is not a list of such entries.
    """
    path = Path(results_dir) / "stats" / EXPECTED_RUNS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    return _validate_expected(data, str(path))


def _validate_expected(data: Any, source: str) -> list[dict[str, Any]]:
    if isinstance(data, Mapping) and "runs" in data:
        data = data["runs"]
    if not isinstance(data, list):
        raise RuntimeError(f"{source}: expected a list of runs, found {type(data).__name__}")
    required = ("train_dataset", "shot", "seed", "arm", "test_datasets")
    entries = []
    for index, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise RuntimeError(f"{source}: entry {index} is {type(entry).__name__}, expected an object")
        missing = [name for name in required if name not in entry]
        if missing:
            raise RuntimeError(
                f"{source}: entry {index} lacks {', '.join(missing)} (each entry needs {', '.join(required)})"
            )
        if isinstance(entry["test_datasets"], str) or not isinstance(entry["test_datasets"], Sequence):
            raise RuntimeError(f"{source}: entry {index} 'test_datasets' must be a list of dataset names")
        entries.append(
            {
                "train_dataset": str(entry["train_dataset"]),
                "shot": str(entry["shot"]),
                "seed": int(entry["seed"]),
                "arm": str(entry["arm"]),
                "test_datasets": [str(name) for name in entry["test_datasets"]],
            }
        )
    return entries


def comparison_pairs(cfg: Any) -> list[tuple[str, str]]:
    """Return the configured comparisons as ``(arm_a, arm_b)`` pairs (Δ = a − b).

    Accepts ``"a-b"`` / ``"a vs b"`` strings, two-item sequences and mappings with ``a``/``b`` (or
    ``treatment``/``control``) keys, so that any reasonable ``StatsConfig.comparisons`` works.

    Raises:
        ValueError: If an entry has another form.
    """
    pairs = []
    for entry in getattr(cfg, "comparisons", ()) or ():
        if isinstance(entry, str):
            parts = re.split(r"\s+vs\.?\s+|-", entry.strip())
            if len(parts) == 2 and all(parts):
                pairs.append((parts[0].strip(), parts[1].strip()))
                continue
        elif isinstance(entry, Mapping):
            for first, second in (("a", "b"), ("treatment", "control"), ("arm", "reference")):
                if first in entry and second in entry:
                    pairs.append((str(entry[first]), str(entry[second])))
                    break
            else:
                raise ValueError(f"comparisons: entry {dict(entry)!r} needs keys 'a' and 'b'")
            continue
        elif isinstance(entry, Sequence) and len(entry) == 2:
            pairs.append((str(entry[0]), str(entry[1])))
            continue
        raise ValueError(f"comparisons: cannot read {entry!r}; expected 'arm_a-arm_b' or [arm_a, arm_b]")
    return pairs


def min_units_for_alpha(alpha: float, m: int) -> int:
    """Return the smallest n whose best two-sided signed-rank p (2/2ⁿ) passes Holm's first step α/m.

    Matches statistics.md §7: 6 for m = 1, 7 for m = 2-3, 8 for m = 4-6 at α = 0.05.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    threshold = alpha / max(int(m), 1)
    n = 1
    while 2.0 / 2.0**n >= threshold:
        n += 1
    return n


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > _HASH_CHARS and re.fullmatch(r"[0-9a-f]+", value):
        return value[:_HASH_CHARS]
    return repr(value) if isinstance(value, str) else str(value)


def _item(check_id: str, status: str, evidence: list[str]) -> dict[str, Any]:
    return {"id": check_id, "title": CHECK_TITLES[check_id], "status": status, "evidence": evidence}


def _status(bad: Sequence[str], warn: Sequence[str] = ()) -> str:
    return FAIL if bad else WARN if warn else PASS


def _get(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    return value


def _modal(values: Mapping[str, Any], preferred: str | None = None) -> Any:
    """Most common value (by JSON text); ties go to ``preferred``'s value, then to the first in sort order."""
    counts = Counter(json.dumps(v, sort_keys=True) for v in values.values())
    top = max(counts.values())
    winners = {text for text, count in counts.items() if count == top}
    if preferred is not None and preferred in values:
        text = json.dumps(values[preferred], sort_keys=True)
        if text in winners:
            return values[preferred]
    return json.loads(sorted(winners)[0])


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _by_seed(runs: Iterable[RunRecord]) -> dict[tuple[str, str, int], dict[str, RunRecord]]:
    table: dict[tuple[str, str, int], dict[str, RunRecord]] = defaultdict(dict)
    for run in runs:
        table[(run.key.train_dataset, run.key.shot, run.key.seed)][run.key.arm] = run
    return dict(sorted(table.items(), key=lambda kv: (_group_sort_key(kv[0][:2]), kv[0][2])))


def _check_base_fully_trained(tree: ResultsTree) -> dict[str, Any]:
    bad, ok = [], []
    baselines = [run for run in tree.runs.values() if run.key.arm == "baseline" and run.error is None]
    for run in sorted(baselines, key=lambda r: r.key):
        parts, failed = [], False
        for stage in STAGES:
            want = _get(run.data, "hyperparameters", f"{stage}_epoch")
            got = _get(run.data, "epochs_completed", stage)
            if want is None or got is None:
                failed = True
                parts.append(f"{stage}: no {stage}_epoch / epochs_completed.{stage} recorded")
            else:
                failed |= got != want
                parts.append(f"{stage} {got}/{want} epochs")
        if run.data.get("status") != "completed":
            failed = True
            parts.append(f"status {run.data.get('status')!r}")
        line = f"seed {run.key.seed}: {run.rel}: {', '.join(parts)}"
        (bad if failed else ok).append(line)
    if not baselines:
        return _item("base_fully_trained", WARN, ["no readable baseline run.json under runs/"])
    if bad:
        bad.insert(0, f"baseline trained fewer epochs than configured in seeds {_seeds_of(bad)}")
    return _item("base_fully_trained", _status(bad), bad + ok)


def _seeds_of(lines: Sequence[str]) -> str:
    seeds = sorted({int(m.group(1)) for line in lines if (m := re.match(r"seed (\d+)", line))})
    return ", ".join(str(s) for s in seeds)


def _resolve_checkpoint(tree: ResultsTree, run: RunRecord, recorded_path: Any) -> Path | None:
    if not recorded_path:
        return None
    candidates = [Path(str(recorded_path)), tree.root / run.key.run_rel / Path(str(recorded_path)).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _check_init_from_base(tree: ResultsTree) -> dict[str, Any]:
    bad, ok = [], []
    runs = [run for run in tree.runs.values() if run.error is None]
    baselines = {run.key.group + (run.key.seed,): run for run in runs if run.key.arm == "baseline"}
    final_owner: dict[str, RunRecord] = {}
    for base in baselines.values():
        for component in ("text_adapter", "image_adapter"):
            digest = _get(base.data, "final_checkpoints", component, "sha256")
            if digest:
                final_owner[digest] = base
    from_base = sorted((run for run in runs if run.key.arm in FROM_BASE_ARMS), key=lambda r: r.key)
    if not from_base:
        return _item("init_from_base", WARN, [f"no {' / '.join(FROM_BASE_ARMS)} runs in this study"])
    for run in from_base:
        seed = run.key.seed
        base = baselines.get(run.key.group + (seed,))
        if base is None:
            bad.append(f"seed {seed}: {run.rel}: no baseline run.json for seed {seed} to compare against")
            continue
        loaded = {str(entry.get("role", "")): entry for entry in run.data.get("loaded_checkpoints") or []}
        run_bad = []
        for component, stage in (("text_adapter", "text"), ("image_adapter", "image")):
            entry = loaded.get(f"base_{component}") or next(
                (e for role, e in loaded.items() if stage in role), None
            )
            want = _get(base.data, "final_checkpoints", component, "sha256")
            if entry is None:
                run_bad.append(
                    f"loaded no base {component} checkpoint (loaded_checkpoints has no base_{component})"
                )
                continue
            got = entry.get("sha256")
            if got != want:
                owner = final_owner.get(got)
                where = (
                    f"it matches {owner.rel} (seed {owner.key.seed} baseline)"
                    if owner is not None
                    else "it matches no baseline's final checkpoint"
                )
                run_bad.append(
                    f"loaded {component} sha256 {_short(got)} != seed {seed} baseline's final {_short(want)}; {where}"
                )
            got_fp = _get(run.data, "loaded_fingerprints", component)
            want_fp = _get(base.data, "final_fingerprints", component)
            if got_fp != want_fp:
                run_bad.append(
                    f"loaded {component} tensor fingerprint {_short(got_fp)} != baseline's final {_short(want_fp)}"
                )
            on_disk = _resolve_checkpoint(tree, base, _get(base.data, "final_checkpoints", component, "path"))
            if on_disk is not None and want and sha256_file(on_disk) != want:
                run_bad.append(
                    f"{base.key.run_rel}/{on_disk.name} on disk no longer has the sha256 {_short(want)} recorded "
                    "in the baseline's run.json (baseline overwritten after this run?)"
                )
        if run_bad:
            bad.extend(f"seed {seed}: {run.rel}: {reason}" for reason in run_bad)
        else:
            ok.append(
                f"seed {seed}: {run.rel}: text/image adapter sha256 and tensor fingerprints equal "
                f"{base.rel} final checkpoints ({_short(_get(base.data, 'final_checkpoints', 'text_adapter', 'sha256'))}"
                f", {_short(_get(base.data, 'final_checkpoints', 'image_adapter', 'sha256'))})"
            )
    return _item("init_from_base", _status(bad), bad + ok)


def _check_same_hyperparameters(tree: ResultsTree) -> dict[str, Any]:
    bad, warn, ok = [], [], []
    for group in tree.groups():
        runs = [run for run in tree.runs_of(group) if run.error is None]
        if not runs:
            continue
        label = f"{group[0]}/{shot_dir(group[1])}"
        preferred = next((run.rel for run in runs if run.key.arm == "baseline"), None)
        agreed = []
        for name in HYPERPARAMETER_KEYS:
            values = {
                run.rel: _get(run.data, "hyperparameters", name)
                for run in runs
                if name in (run.data.get("hyperparameters") or {})
            }
            if not values:
                continue
            missing = [run.rel for run in runs if run.rel not in values]
            reference = _modal(values, preferred)
            deviating = [(rel, value) for rel, value in values.items() if not _same(value, reference)]
            for rel, value in deviating:
                bad.append(f"{label}: {rel}: {name} = {_short(value)}, other runs {_short(reference)}")
            for rel in missing:
                bad.append(f"{label}: {rel}: {name} not recorded, other runs {_short(reference)}")
            if not deviating and not missing:
                agreed.append(f"{name}={_short(reference)}")
        presets = {_get(run.data, "hyperparameters", "preset") for run in runs}
        if len(presets) == 1:
            (preset,) = presets
            if preset is not None and preset != CONSERVATIVE_PRESET:
                warn.append(
                    f"{label}: every run uses the non-conservative preset {preset!r}; the guide (step 6) "
                    f"recommends {CONSERVATIVE_PRESET!r} for a fair comparison"
                )
        ok.append(f"{label}: {len(runs)} runs agree on " + ", ".join(agreed))
    if not tree.runs:
        return _item("same_hyperparameters", FAIL, ["no run.json found under runs/"])
    return _item("same_hyperparameters", _status(bad, warn), bad + warn + ok)


def _split_hashes(path: Path) -> set[str]:
    hashes = {sha256_file(path)}
    try:
        data = read_json(path)
    except RuntimeError:
        return hashes
    if isinstance(data, Mapping):
        hashes |= {str(v) for k, v in data.items() if k.endswith("sha256") and isinstance(v, str)}
    return hashes


def _check_same_split(tree: ResultsTree) -> dict[str, Any]:
    bad, ok = [], []
    for (td, shot, seed), arms in _by_seed(r for r in tree.runs.values() if r.error is None).items():
        values = {arm: _get(run.data, "manifest", "sha256") for arm, run in arms.items()}
        reference = _modal(values, "baseline")
        ref_arm = "baseline" if _same(values.get("baseline"), reference) else "the other arms"
        seed_bad = []
        for arm, value in sorted(values.items()):
            if not _same(value, reference):
                seed_bad.append(
                    f"seed {seed}: {arms[arm].rel}: {arm} manifest sha256 {_short(value)} != "
                    f"{ref_arm} {_short(reference)}"
                )
        split_rel = f"splits/{td}/{shot_dir(shot)}/seed{seed}.json"
        split_path = tree.root / split_rel
        if reference and split_path.is_file() and reference not in _split_hashes(split_path):
            seed_bad.append(
                f"seed {seed}: {split_rel} does not have the sha256 {_short(reference)} the runs recorded"
            )
        if seed_bad:
            bad.extend(seed_bad)
        else:
            ok.append(
                f"{td}/{shot_dir(shot)} seed {seed}: {len(arms)} arms read manifest {_short(reference)}"
            )
    if not tree.runs:
        return _item("same_split", FAIL, ["no run.json found under runs/"])
    return _item("same_split", _status(bad), bad + ok)


def _check_same_metrics(tree: ResultsTree) -> dict[str, Any]:
    bad = []
    records = sorted(tree.evals.values(), key=lambda e: (e.key, e.test_dataset))
    with_conventions = {}
    for record in records:
        conventions = _get(record.sidecar or {}, "conventions")
        if not isinstance(conventions, Mapping):
            bad.append(f"{record.json_rel}: missing or without 'conventions'")
        else:
            with_conventions[record.json_rel] = conventions
    if not records:
        return _item("same_metrics", FAIL, ["no evaluation tables under eval/: nothing evaluated"])
    names = sorted({name for conv in with_conventions.values() for name in conv})
    agreed = []
    for name in names:
        values = {rel: conv.get(name) for rel, conv in with_conventions.items()}
        reference = _modal(values)
        deviating = [(rel, v) for rel, v in values.items() if not _same(v, reference)]
        for rel, value in deviating:
            bad.append(f"{rel}: {name} = {_short(value)}, other sidecars {_short(reference)}")
        if not deviating:
            agreed.append(f"{name}={_short(reference)}")
    columns = {record.csv_rel: tuple(record.metric_names) for record in records}
    reference_columns = _modal({rel: list(cols) for rel, cols in columns.items()})
    for rel, cols in columns.items():
        if list(cols) != reference_columns:
            bad.append(f"{rel}: metric columns {list(cols)} != {reference_columns}")
    ok = [f"{len(with_conventions)} evaluation sidecars agree: " + ", ".join(agreed)]
    ok.append("metrics: " + ", ".join(reference_columns))
    return _item("same_metrics", _status(bad), bad + ok)


def _check_same_test_set(tree: ResultsTree) -> dict[str, Any]:
    bad, ok = [], []
    by_dataset: dict[str, dict[str, Any]] = defaultdict(dict)
    for record in sorted(tree.evals.values(), key=lambda e: (e.key, e.test_dataset)):
        by_dataset[record.test_dataset][record.json_rel] = _get(record.sidecar or {}, "test_list_sha256")
    if not by_dataset:
        return _item("same_test_set", FAIL, ["no evaluation tables under eval/: nothing evaluated"])
    for test_dataset in sorted(by_dataset):
        values = by_dataset[test_dataset]
        reference = _modal(values)
        deviating = [(rel, v) for rel, v in values.items() if not _same(v, reference)]
        for rel, value in deviating:
            bad.append(
                f"{rel}: test_list_sha256 {_short(value)} != {_short(reference)} of the other "
                f"{len(values) - len(deviating)} {test_dataset} evaluations"
            )
        if reference is None:
            bad.append(f"{test_dataset}: no sidecar records test_list_sha256")
        elif not deviating:
            ok.append(f"{test_dataset}: {len(values)} evaluations, test list {_short(reference)}")
    return _item("same_test_set", _status(bad), bad + ok)


def _categories(tree: ResultsTree, group: tuple[str, str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for (key, test_dataset), record in tree.evals.items():
        if key.group == group:
            found[test_dataset] |= {row["category"] for row in record.category_rows}
    return dict(found)


def _read_comparisons(root: Path) -> list[dict[str, str]] | None:
    path = root / "stats" / "comparisons.csv"
    return read_csv(path) if path.is_file() else None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def _check_significance_testing(tree: ResultsTree, cfg: Any) -> dict[str, Any]:
    bad, warn, ok = [], [], []
    alpha = float(getattr(cfg, "alpha", 0.05))
    min_seeds = max(int(getattr(cfg, "min_seeds", HARD_MIN_SEEDS)), HARD_MIN_SEEDS)
    recommended = int(getattr(cfg, "recommended_seeds", 5))
    pairs = comparison_pairs(cfg)
    m = max(len(pairs), 1)
    needed = min_units_for_alpha(alpha, m)
    comparisons = _read_comparisons(tree.root)
    if not tree.runs:
        return _item("significance_testing", FAIL, ["no run.json found under runs/"])
    for group in tree.groups():
        label = f"{group[0]}/{shot_dir(group[1])}"
        seeds: dict[str, set[int]] = defaultdict(set)
        for run in tree.runs_of(group):
            if run.completed:
                seeds[run.key.arm].add(run.key.seed)
        for arm in sorted(seeds):
            n = len(seeds[arm])
            line = f"{label}: {arm}: {n} completed seeds ({', '.join(map(str, sorted(seeds[arm])))})"
            if n < min_seeds:
                bad.append(f"{line}; at least {min_seeds} needed")
            elif n < recommended:
                warn.append(f"{line}; {recommended} recommended")
            else:
                ok.append(line)
        union = set().union(*seeds.values()) if seeds else set()
        for arm in sorted(seeds):
            lacking = sorted(union - seeds[arm])
            if lacking:
                bad.append(
                    f"{label}: {arm} lacks seeds {', '.join(map(str, lacking))} that other arms have "
                    "(seed sets must be identical across arms)"
                )
        categories = _categories(tree, group)
        total = sum(len(c) for c in categories.values())
        detail = ", ".join(f"{td}: {len(c)}" for td, c in sorted(categories.items()))
        rule = (
            f"Holm over m = {m} comparisons at alpha = {alpha:g}: the smallest two-sided signed-rank p "
            f"2/2^T must be below {alpha / m:.4g}, so T >= {needed}"
        )
        rows = [
            row
            for row in comparisons or []
            if row.get("train_dataset") == group[0]
            and str(row.get("shot")) == group[1]
            and _truthy(row.get("primary"))
            and row.get("scope", "all") == "all"
        ]
        if rows:
            for row in rows:
                n_units = int(float(row.get("n_units") or 0))
                line = f"{label}: stats/comparisons.csv {row.get('comparison')}: n_units = {n_units}"
                (bad if n_units < needed else ok).append(
                    f"{line}, below the floor ({rule})" if n_units < needed else f"{line} ({rule})"
                )
        elif total < needed:
            bad.append(f"{label}: T = {total} categories ({detail}) cannot reach alpha; {rule}")
        else:
            ok.append(f"{label}: T = {total} categories ({detail}); {rule}")
    return _item("significance_testing", _status(bad, warn), bad + warn + ok)


def _check_optimizer_carried_over(tree: ResultsTree) -> dict[str, Any]:
    bad, warn, ok = [], [], []
    runs = sorted(
        (r for r in tree.runs.values() if r.error is None and r.key.arm in FROM_BASE_ARMS),
        key=lambda r: r.key,
    )
    if not runs:
        return _item("optimizer_carried_over", WARN, [f"no {' / '.join(FROM_BASE_ARMS)} runs in this study"])
    for run in runs:
        loaded = {stage: _get(run.data, "optimizer_state_loaded", stage) for stage in STAGES}
        reset = [stage for stage, value in loaded.items() if value is not True]
        line = f"seed {run.key.seed}: {run.rel}: optimizer_state_loaded text={loaded['text']}, image={loaded['image']}"
        if not reset:
            ok.append(line)
        elif _get(run.data, "hyperparameters", "optimizer_carryover") is False:
            warn.append(f"{line} (disabled by configuration: optimizer_carryover = false)")
        else:
            bad.append(f"{line}: {'/'.join(reset)} optimizer reset although carry-over is configured")
    return _item("optimizer_carried_over", _status(bad, warn), bad + warn + ok)


def _budget(run: RunRecord) -> dict[str, tuple[Any, Any]]:
    return {
        stage: (_get(run.data, "epochs_completed", stage), _get(run.data, "steps_completed", stage))
        for stage in STAGES
    }


def _fmt_budget(budget: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{stage} {e} epochs/{s} steps" for stage, (e, s) in budget.items())


def _check_budget_matched(tree: ResultsTree) -> dict[str, Any]:
    bad, warn, ok = [], [], []
    table = _by_seed(r for r in tree.runs.values() if r.error is None)
    arms = {arm for arms in table.values() for arm in arms}
    for arm, control in BUDGET_PAIRS:
        if arm not in arms:
            continue
        if control not in arms:
            warn.append(f"{arm} has no budget-matched control {control!r} in this study")
            continue
        for (td, shot, seed), runs in table.items():
            if arm not in runs or control not in runs:
                continue
            a, b = _budget(runs[arm]), _budget(runs[control])
            if a != b or any(v is None for pair in a.values() for v in pair):
                bad.append(
                    f"seed {seed}: {runs[arm].rel}: {_fmt_budget(a)} != {control} "
                    f"({runs[control].rel}): {_fmt_budget(b)}"
                )
            else:
                ok.append(f"{td}/{shot_dir(shot)} seed {seed}: {arm} = {control}: {_fmt_budget(a)}")
    if "xattn_from_base" in arms and "baseline" in arms:
        example = next(
            (runs for runs in table.values() if {"xattn_from_base", "baseline"} <= runs.keys()), None
        )
        note = (
            "note: xattn_from_base vs baseline is unequal by construction (from-base continues from the "
            "baseline's final weights, so it trains the baseline's budget plus its own"
        )
        if example is not None:
            note += f": {_fmt_budget(_budget(example['baseline']))} + {_fmt_budget(_budget(example['xattn_from_base']))}"
        note += "); the budget-matched control is baseline_continued"
        if "baseline_continued" not in arms:
            warn.append(note.replace("the budget-matched control is", "missing control:"))
        else:
            ok.append(note)
    if not bad and not warn and not ok:
        warn.append(
            "no budget-matched pair (xattn_from_base/baseline_continued, xattn_scratch/baseline) found"
        )
    return _item("budget_matched", _status(bad, warn), bad + warn + ok)


def _infer_expected(tree: ResultsTree) -> list[dict[str, Any]]:
    expected = []
    for group in tree.groups():
        keys = [key for key in tree.runs if key.group == group] + [
            key for key, _ in tree.evals if key.group == group
        ]
        seeds = sorted({key.seed for key in keys})
        arms = sorted({key.arm for key in keys})
        tests = sorted({td for key, td in tree.evals if key.group == group})
        for seed in seeds:
            for arm in arms:
                expected.append(
                    {
                        "train_dataset": group[0],
                        "shot": group[1],
                        "seed": seed,
                        "arm": arm,
                        "test_datasets": tests,
                    }
                )
    return expected


def _is_nan(text: Any) -> bool:
    try:
        return math.isnan(float(text))
    except (TypeError, ValueError):
        return True


def _check_no_missing_runs(
    tree: ResultsTree, cfg: Any, expected: Sequence[Mapping[str, Any]], inferred: bool
) -> dict[str, Any]:
    bad, warn, ok = [], [], []
    metric = str(getattr(cfg, "primary_metric", "") or "")
    if inferred:
        warn.append(
            f"launch manifest stats/{EXPECTED_RUNS_FILE} missing: the expected runs were inferred from the "
            "directories found (every seed x arm x test dataset seen), so a seed never launched cannot be detected"
        )
    expected_keys = set()
    n_evals = 0
    for entry in expected:
        key = RunKey(entry["train_dataset"], str(entry["shot"]), int(entry["seed"]), entry["arm"])
        expected_keys.add(key)
        run = tree.runs.get(key)
        if run is None:
            bad.append(f"missing run: {key.run_rel}/run.json ({key.label()})")
        elif run.error is not None:
            bad.append(f"unreadable run: {run.rel}: {run.error}")
        elif run.data.get("status") != "completed":
            bad.append(f"failed run: {run.rel}: status {run.data.get('status')!r} ({key.label()})")
        for test_dataset in entry["test_datasets"]:
            record = tree.evals.get((key, test_dataset))
            if record is None:
                bad.append(f"missing evaluation: {key.eval_rel}/{test_dataset}.csv ({key.label()})")
                continue
            n_evals += 1
            if metric:
                if record.rows and metric not in record.rows[0]:
                    bad.append(f"{record.csv_rel}: no primary-metric column {metric!r}")
                    continue
                nan = [row.get("category") for row in record.category_rows if _is_nan(row.get(metric))]
                if nan:
                    bad.append(f"{record.csv_rel}: {metric} is NaN for {', '.join(map(str, nan))}")
                if not record.category_rows:
                    bad.append(f"{record.csv_rel}: no category rows")
            if record.sidecar is None:
                bad.append(f"missing sidecar: {record.json_rel}")
            elif run is not None and run.error is None:
                stale = _stale_evaluation(run, record)
                if stale:
                    bad.append(stale)
    for key in sorted(set(tree.runs) - expected_keys):
        warn.append(
            f"{tree.runs[key].rel} exists but is not in the launch manifest (dropped from the study?)"
        )
    ok.append(f"{len(expected_keys)} expected runs and {n_evals} expected evaluation tables checked")
    return _item("no_missing_runs", _status(bad, warn), bad + warn + ok)


def _stale_evaluation(run: RunRecord, record: EvalRecord) -> str | None:
    evaluated = _get(record.sidecar or {}, "checkpoint", "sha256")
    final = _get(run.data, "final_checkpoints", "image_adapter", "sha256")
    path = _get(record.sidecar or {}, "checkpoint", "path")
    final_path = _get(run.data, "final_checkpoints", "image_adapter", "path")
    if not (evaluated and final and path and final_path):
        return None
    if Path(str(path)).name != Path(str(final_path)).name or evaluated == final:
        return None
    return (
        f"stale evaluation: {record.json_rel} evaluated image_adapter sha256 {_short(evaluated)}, but "
        f"{run.rel} final image_adapter is {_short(final)}"
    )


def _check_expected_loss_behaviour(tree: ResultsTree) -> dict[str, Any]:
    warn, ok = [], []
    for (_td, _shot, seed), runs in _by_seed(r for r in tree.runs.values() if r.error is None).items():
        if "xattn_from_base" not in runs or "baseline" not in runs:
            continue
        run, base = runs["xattn_from_base"], runs["baseline"]
        for stage, label in (("text", "stage 1"), ("image", "stage 2")):
            first = (_get(run.data, "epoch_losses", stage) or [None])[0]
            base_first = (_get(base.data, "epoch_losses", stage) or [None])[0]
            line = (
                f"seed {seed}: {label} first-epoch loss xattn_from_base {_fmt_loss(first)} vs "
                f"baseline {_fmt_loss(base_first)} ({run.rel})"
            )
            if first is None or base_first is None:
                warn.append(f"{line}: epoch_losses not recorded")
            elif not first < base_first:
                warn.append(f"{line}: not lower than the baseline's (guide step 8 expects lower)")
            else:
                ok.append(line)
    if not warn and not ok:
        warn.append("no seed has both a baseline and an xattn_from_base run: nothing to compare")
    return _item("expected_loss_behaviour", _status((), warn), warn + ok)


def _fmt_loss(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4g}"


def build_checklist(
    results_dir: str | os.PathLike,
    cfg: Any,
    *,
    expected: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Verify every checklist item from the records under ``results_dir`` without writing anything.

    Args:
        results_dir: The workflow's ``results/`` directory.
        cfg: A ``StatsConfig`` (any object with ``alpha``, ``primary_metric``, ``comparisons``, ``rope``,
            ``min_seeds`` and ``recommended_seeds``).
        expected: The planned runs ``{train_dataset, shot, seed, arm, test_datasets}``; ``None`` reads
            ``results/stats/expected_runs.json`` or, when absent, infers them from the directories (WARN).

    Returns:
        One ``{id, title, status, evidence}`` dict per id of ``CHECK_IDS``, in that order.
    """
    tree = scan_results(results_dir)
    inferred = False
    if expected is None:
        expected = load_expected_runs(tree.root)
    else:
        expected = _validate_expected(list(expected), "expected")
    if expected is None:
        logger.warning(
            "%s: launch manifest stats/%s is missing; inferring the expected runs from the directories found",
            tree.root,
            EXPECTED_RUNS_FILE,
        )
        expected = _infer_expected(tree)
        inferred = True
    items = [
        _check_base_fully_trained(tree),
        _check_init_from_base(tree),
        _check_same_hyperparameters(tree),
        _check_same_split(tree),
        _check_same_metrics(tree),
        _check_same_test_set(tree),
        _check_significance_testing(tree, cfg),
        _check_optimizer_carried_over(tree),
        _check_budget_matched(tree),
        _check_no_missing_runs(tree, cfg, expected, inferred),
        _check_expected_loss_behaviour(tree),
    ]
    assert [item["id"] for item in items] == list(CHECK_IDS)
    for item in items:
        if item["status"] != PASS:
            logger.warning("checklist %s: %s (%s)", item["id"], item["status"], item["evidence"][0])
    return items


def run_checklist(
    results_dir: str | os.PathLike,
    cfg: Any,
    *,
    expected: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Verify the fair-comparison checklist and write ``results_dir/stats/checklist.json``.

    Args:
        results_dir: The workflow's ``results/`` directory.
        cfg: A ``StatsConfig`` (see ``build_checklist``).
        expected: The planned runs, see ``build_checklist``.

    Returns:
        The checklist items as written.
    """
    items = build_checklist(results_dir, cfg, expected=expected)
    path = write_json(Path(results_dir) / "stats" / "checklist.json", items)
    counts = Counter(item["status"] for item in items)
    logger.info(
        "wrote %s: %d PASS, %d WARN, %d FAIL",
        path,
        counts.get(PASS, 0),
        counts.get(WARN, 0),
        counts.get(FAIL, 0),
    )
    return items
