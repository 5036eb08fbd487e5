"""Build a realistic fake results tree (run.json, manifests, eval CSVs + sidecars, train logs) for stats tests.

The clean study: one training dataset (``synth_a``), one shot (``4``), seeds 0-2 (or as asked), the four
arms, two test datasets (``synth_b`` with 8 categories, ``synth_c`` with 4), every record consistent with the
contracts of docs/architecture.md. Helpers edit single records afterwards to plant one unfairness each.
"""

from __future__ import annotations

import math
import shutil
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from aaclip_xattn.fileio import read_json, sha256_bytes, write_csv, write_json

__all__ = [
    "ARMS",
    "METRICS",
    "PRIMARY",
    "SHOT",
    "TEST_DATASETS",
    "TRAIN_DATASET",
    "edit_run",
    "edit_sidecar",
    "make_cfg",
    "make_study",
    "remove_run",
    "run_rel",
    "write_comparisons",
    "write_maps",
    "write_metrics_long",
]

TRAIN_DATASET = "synth_a"
SHOT = "4"
ARMS = ("baseline", "xattn_from_base", "xattn_scratch", "baseline_continued")
TEST_DATASETS = {
    "synth_b": tuple(f"part{i}" for i in range(8)),
    "synth_c": ("bottle", "cable", "grid", "screw"),
}
METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
)
PRIMARY = "pixel_auroc"
COMPARISONS = (
    ("xattn_from_base", "baseline"),
    ("xattn_scratch", "baseline"),
    ("xattn_from_base", "xattn_scratch"),
    ("xattn_from_base", "baseline_continued"),
)
#: Planted true effect per arm (fraction of the metric), so xattn_from_base - baseline = +2 pp.
ARM_EFFECT = {"baseline": 0.0, "xattn_from_base": 0.02, "xattn_scratch": -0.004, "baseline_continued": 0.006}
HYPERPARAMETERS = {
    "text_lr": 1e-05,
    "image_lr": 0.0005,
    "text_epoch": 2,
    "image_epoch": 3,
    "text_batch_size": 16,
    "image_batch_size": 2,
    "preset": "conservative",
    "backbone": "tiny",
    "pretrained": None,
    "image_size": 128,
    "vv_axis": "batch",
    "stage1_levels": "last",
    "noise_aug": "off",
    "augment": True,
    "fusion": "transductive",
    "optimizer_carryover": True,
    "descriptions_sha256": sha256_bytes(b"descriptions"),
    "evaluated_checkpoint": "last",
}
CONVENTIONS = {
    "map_resolution": 128,
    "blur": "gaussian_sigma4",
    "aupro_mode": "exact",
    "aupro_fpr_limit": 0.3,
    "fusion": "transductive",
    "mask_rule": "nonzero",
    "descriptions_sha256": sha256_bytes(b"descriptions"),
}
FROM_BASE = ("xattn_from_base", "baseline_continued")


def make_cfg(**overrides: Any) -> types.SimpleNamespace:
    """Return a duck-typed stats config (``alpha, primary_metric, comparisons, rope, min_seeds, ...``)."""
    values = {
        "alpha": 0.05,
        "primary_metric": PRIMARY,
        "comparisons": [f"{a}-{b}" for a, b in COMPARISONS],
        "rope": 0.5,
        "min_seeds": 3,
        "recommended_seeds": 3,
    }
    values.update(overrides)
    return types.SimpleNamespace(**values)


def run_rel(seed: int, arm: str) -> str:
    """Return ``runs/.../run.json`` of one fake run, relative to the results directory."""
    return f"runs/{TRAIN_DATASET}/shot{SHOT}/seed{seed}/{arm}/run.json"


def _sha_file(path: Path, payload: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return sha256_bytes(payload)


def _losses(arm: str, seed: int) -> dict[str, list[float]]:
    start = {"text": 0.9, "image": 2.0}
    if arm in FROM_BASE:
        start = {"text": 0.55, "image": 1.3}
    jitter = 0.01 * seed
    return {
        stage: [round(start[stage] * (0.85**epoch) + jitter, 6) for epoch in range(n)]
        for stage, n in (("text", HYPERPARAMETERS["text_epoch"]), ("image", HYPERPARAMETERS["image_epoch"]))
    }


def make_study(
    root: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    arms: Sequence[str] = ARMS,
    noise: float = 0.01,
    expected: bool = True,
    rng_seed: int = 0,
) -> Path:
    """Write a clean fake study under ``root/results`` and return the results directory.

    Args:
        root: A temporary directory.
        seeds: Seeds of the study.
        arms: Arms of the study.
        noise: Seed-level SD of the metric values (fraction).
        expected: Whether to write the launch manifest ``stats/expected_runs.json``.
        rng_seed: Seed of the generator that draws the metric values.
    """
    results = root / "results"
    rng = np.random.default_rng(rng_seed)
    base_level = {
        (td, cat): float(rng.uniform(0.72, 0.93)) for td, cats in TEST_DATASETS.items() for cat in cats
    }
    shot_dir = f"shot{SHOT}"
    for seed in seeds:
        split_rel = f"splits/{TRAIN_DATASET}/{shot_dir}/seed{seed}.json"
        split_sha = sha256_bytes(f"split-{seed}".encode())
        write_json(
            results / split_rel, {"dataset": TRAIN_DATASET, "seed": seed, "sha256": split_sha, "files": []}
        )
        seed_noise = {key: float(rng.normal(0.0, noise)) for key in base_level}
        baseline_final: dict[str, Any] = {}
        for arm in ARMS:
            if arm not in arms:
                continue
            run_dir = results / f"runs/{TRAIN_DATASET}/{shot_dir}/seed{seed}/{arm}"
            finals = {}
            for component in ("text_adapter", "image_adapter"):
                path = run_dir / f"{component}.pth"
                finals[component] = {
                    "path": str(path),
                    "sha256": _sha_file(path, f"{arm}/{seed}/{component}".encode()),
                }
            fingerprints = {
                c: sha256_bytes(f"fp/{arm}/{seed}/{c}".encode()) for c in ("text_adapter", "image_adapter")
            }
            if arm == "baseline":
                baseline_final = {"checkpoints": finals, "fingerprints": fingerprints}
            from_base = arm in FROM_BASE
            loaded = []
            loaded_fp: dict[str, str] = {}
            if from_base and baseline_final:
                loaded = [
                    {
                        "role": f"base_{c}",
                        "path": baseline_final["checkpoints"][c]["path"],
                        "sha256": baseline_final["checkpoints"][c]["sha256"],
                    }
                    for c in ("text_adapter", "image_adapter")
                ]
                loaded_fp = dict(baseline_final["fingerprints"])
            losses = _losses(arm, seed)
            record = {
                "format": "aaclip_xattn.run/1",
                "arm": arm,
                "seed": seed,
                "train_dataset": TRAIN_DATASET,
                "shot": SHOT,
                "training_mode": "few_shot",
                "status": "completed",
                "hyperparameters": dict(HYPERPARAMETERS),
                "epochs_completed": {
                    "text": HYPERPARAMETERS["text_epoch"],
                    "image": HYPERPARAMETERS["image_epoch"],
                },
                "steps_completed": {"text": 4, "image": 24},
                "manifest": {"path": str(results / split_rel), "sha256": split_sha},
                "loaded_checkpoints": loaded,
                "loaded_fingerprints": loaded_fp,
                "optimizer_state_loaded": {"text": from_base, "image": from_base},
                "initial_fingerprints": {},
                "verification": {},
                "final_checkpoints": finals,
                "final_fingerprints": fingerprints,
                "epoch_losses": losses,
                "skipped_keys": [],
                "versions": {"aaclip_xattn": "0.1.0", "torch": "2.14.1", "open_clip": "3.3.0"},
                "device": "cpu",
                "wall_time_s": {"text": 1.0, "image": 2.0},
            }
            write_json(run_dir / "run.json", record)
            log_rows = []
            for stage, values in losses.items():
                for epoch, loss in enumerate(values):
                    steps = (epoch + 1) * (2 if stage == "text" else 8)
                    log_rows.append(
                        {
                            "stage": stage,
                            "epoch": epoch,
                            "steps": steps,
                            "loss": loss,
                            "lr": 1e-4,
                            "seconds": 0.5,
                        }
                    )
            write_csv(
                run_dir / "train_log.csv", log_rows, ["stage", "epoch", "steps", "loss", "lr", "seconds"]
            )
            eval_dir = results / f"eval/{TRAIN_DATASET}/{shot_dir}/seed{seed}/{arm}"
            arm_noise = {key: float(rng.normal(0.0, noise / 2)) for key in base_level}
            for td, cats in TEST_DATASETS.items():
                rows = []
                for cat in cats:
                    row: dict[str, Any] = {"category": cat, "n_images": 20, "n_normal": 10, "n_anomalous": 10}
                    for offset, metric in enumerate(METRICS):
                        value = base_level[(td, cat)] - 0.03 * offset + ARM_EFFECT[arm]
                        value += seed_noise[(td, cat)] + arm_noise[(td, cat)]
                        row[metric] = float(np.clip(value, 0.0, 1.0))
                    rows.append(row)
                mean_row: dict[str, Any] = {
                    "category": "mean",
                    "n_images": 20 * len(cats),
                    "n_normal": 10 * len(cats),
                    "n_anomalous": 10 * len(cats),
                }
                for metric in METRICS:
                    mean_row[metric] = float(np.mean([r[metric] for r in rows]))
                write_csv(
                    eval_dir / f"{td}.csv",
                    [*rows, mean_row],
                    ["category", "n_images", "n_normal", "n_anomalous", *METRICS],
                )
                write_json(
                    eval_dir / f"{td}.json",
                    {
                        "conventions": dict(CONVENTIONS),
                        "test_list_sha256": sha256_bytes(f"test-list-{td}".encode()),
                        "checkpoint": {**finals["image_adapter"], "epoch": HYPERPARAMETERS["image_epoch"]},
                        "run": {"arm": arm, "seed": seed, "train_dataset": TRAIN_DATASET, "shot": SHOT},
                    },
                )
    if expected:
        write_json(
            results / "stats/expected_runs.json",
            [
                {
                    "train_dataset": TRAIN_DATASET,
                    "shot": SHOT,
                    "seed": seed,
                    "arm": arm,
                    "test_datasets": sorted(TEST_DATASETS),
                }
                for seed in seeds
                for arm in arms
            ],
        )
    return results


def edit_run(results: Path, seed: int, arm: str, change: Callable[[dict], None]) -> str:
    """Apply ``change`` to one run.json in place and return its relative path."""
    rel = run_rel(seed, arm)
    data = read_json(results / rel)
    change(data)
    write_json(results / rel, data)
    return rel


def edit_sidecar(
    results: Path, seed: int, arm: str, test_dataset: str, change: Callable[[dict], None]
) -> str:
    """Apply ``change`` to one evaluation sidecar in place and return its relative path."""
    rel = f"eval/{TRAIN_DATASET}/shot{SHOT}/seed{seed}/{arm}/{test_dataset}.json"
    data = read_json(results / rel)
    change(data)
    write_json(results / rel, data)
    return rel


def remove_run(results: Path, seed: int, arm: str) -> str:
    """Delete one run's training and evaluation directories; return the run.json path it had."""
    for level in ("runs", "eval"):
        shutil.rmtree(results / f"{level}/{TRAIN_DATASET}/shot{SHOT}/seed{seed}/{arm}")
    return run_rel(seed, arm)


def _values(results: Path) -> list[dict[str, Any]]:
    from aaclip_xattn.fileio import read_csv

    rows = []
    for path in sorted((results / "eval").glob("*/*/seed*/*/*.csv")):
        arm, seed_dir, shot_dir = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
        for row in read_csv(path):
            if row["category"] == "mean":
                continue
            for metric in METRICS:
                rows.append(
                    {
                        "train_dataset": path.parent.parent.parent.parent.name,
                        "shot": shot_dir.removeprefix("shot"),
                        "seed": int(seed_dir.removeprefix("seed")),
                        "arm": arm,
                        "test_dataset": path.stem,
                        "category": row["category"],
                        "metric": metric,
                        "value": float(row[metric]),
                    }
                )
    return rows


def write_metrics_long(results: Path) -> list[dict[str, Any]]:
    """Write ``stats/metrics_long.csv`` (DESIGN.md columns) from the eval CSVs; return its rows."""
    rows = _values(results)
    columns = ["train_dataset", "shot", "seed", "arm", "test_dataset", "category", "metric", "value"]
    write_csv(results / "stats/metrics_long.csv", rows, columns)
    return rows


def write_comparisons(results: Path, *, sentence: bool = True, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Write a fixture ``stats/comparisons.csv`` (Δ in pp; Wilcoxon zsplit; Holm over primary rows)."""
    values = _values(results)
    table: dict[tuple, float] = {}
    for row in values:
        table[(row["arm"], row["seed"], row["test_dataset"], row["category"], row["metric"])] = row["value"]
    seeds = sorted({row["seed"] for row in values})
    out = []
    for a, b in COMPARISONS:
        for scope in ("all", *TEST_DATASETS):
            for metric in METRICS:
                deltas = []
                for td, cats in TEST_DATASETS.items():
                    if scope not in ("all", td):
                        continue
                    for cat in cats:
                        d = [
                            100 * (table[(a, s, td, cat, metric)] - table[(b, s, td, cat, metric)])
                            for s in seeds
                            if (a, s, td, cat, metric) in table and (b, s, td, cat, metric) in table
                        ]
                        if d:
                            deltas.append(float(np.mean(d)))
                deltas_arr = np.asarray(deltas)
                res = sps.wilcoxon(deltas_arr, zero_method="zsplit")
                ranks = sps.rankdata(np.abs(deltas_arr))
                r_plus, r_minus = ranks[deltas_arr > 0].sum(), ranks[deltas_arr < 0].sum()
                half = sps.t.ppf(0.975, len(deltas) - 1) * deltas_arr.std(ddof=1) / math.sqrt(len(deltas))
                out.append(
                    {
                        "train_dataset": TRAIN_DATASET,
                        "shot": SHOT,
                        "comparison": f"{a}-{b}",
                        "scope": scope,
                        "metric": metric,
                        "primary": scope == "all" and metric == PRIMARY,
                        "n_units": len(deltas),
                        "mean_delta": float(deltas_arr.mean()),
                        "median_delta": float(np.median(deltas_arr)),
                        "ci_low": float(deltas_arr.mean() - half),
                        "ci_high": float(deltas_arr.mean() + half),
                        "wins": int((deltas_arr > 0).sum()),
                        "ties": int((deltas_arr == 0).sum()),
                        "losses": int((deltas_arr < 0).sum()),
                        "statistic": float(res.statistic),
                        "p_value": float(res.pvalue),
                        "p_adjusted": float(res.pvalue),
                        "effect_size": float((r_plus - r_minus) / (r_plus + r_minus)),
                        "verdict": "",
                    }
                )
    primary = [row for row in out if row["primary"]]
    adjusted = multipletests([row["p_value"] for row in primary], method="holm")[1]
    for row, p_adj in zip(primary, adjusted, strict=True):
        row["p_adjusted"] = float(p_adj)
    for row in out:
        row["verdict"] = "significant" if row["p_adjusted"] < alpha else "not significant"
        if sentence:
            a, b = row["comparison"].split("-")
            if row["verdict"] == "significant":
                row["sentence"] = (
                    f"Across the {row['n_units']} categories, {a} improved {row['metric']} over {b} by "
                    f"{row['mean_delta']:+.2f} pp on average (Holm-adjusted p = {row['p_adjusted']:.4f}); "
                    "this is significant."
                )
            else:
                row["sentence"] = (
                    f"{a} vs {b}: {row['mean_delta']:+.2f} pp; Holm-adjusted p = {row['p_adjusted']:.4f}. "
                    "This does not show that the variants are equal."
                )
    columns = [
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
    ] + (["sentence"] if sentence else [])
    write_csv(results / "stats/comparisons.csv", out, columns)
    return out


def write_maps(
    results: Path, *, seed: int = 0, categories: Sequence[str] = ("part0", "part1"), size: int = 16
) -> int:
    """Write small PNG overlays under ``eval/.../<arm>/<test_dataset>_maps/<category>/`` for every arm; return the count."""
    import matplotlib.image as mpimg

    count = 0
    rng = np.random.default_rng(seed)
    for arm in ARMS:
        arm_dir = results / f"eval/{TRAIN_DATASET}/shot{SHOT}/seed{seed}/{arm}"
        if not arm_dir.is_dir():
            continue
        for cat in categories:
            image = rng.uniform(0, 1, size=(size, size, 3))
            path = arm_dir / "synth_b_maps" / cat / "000.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            mpimg.imsave(path, image)
            count += 1
    return count
