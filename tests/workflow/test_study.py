"""End to end: the embedded study on a reduced config through Snakemake's command line (minutes).

Two seeds and one epoch per stage instead of six seeds and 1 + 2 epochs, so the significance item of the
checklist may WARN or FAIL; the test checks that every output exists and is well-formed, that a second
invocation does nothing, and that adding a seed plans exactly that seed's jobs plus the aggregates.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import AGGREGATES, TRAIN_RULES, copy_workflow, job_counts

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[2]
ARMS = ["baseline", "xattn_from_base", "xattn_scratch", "baseline_continued"]
METRICS = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
]
CHECKLIST_IDS = {
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
}
COMPARISON_COLUMNS = [
    "train_dataset", "shot", "comparison", "scope", "metric", "primary", "n_units", "mean_delta",
    "median_delta", "ci_low", "ci_high", "wins", "ties", "losses", "statistic", "p_value", "p_adjusted",
    "effect_size", "verdict",
]  # fmt: skip


def reduced_config(seeds: list[int]) -> dict:
    """The default config with fewer seeds, one epoch per stage and fewer test images."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["study"]["seeds"] = seeds
    cfg["train"]["text_epoch"] = 1
    cfg["train"]["image_epoch"] = 1
    for dataset in cfg["datasets"]:
        dataset["synthetic"].update({"n_train_good": 2, "n_test_good": 6, "n_test_anomalous": 6})
    return cfg


def snakemake(workdir: Path, *args: str, timeout: int = 400) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("study"))
    (workdir / "config" / "test.yaml").write_text(yaml.safe_dump(reduced_config([0, 1])))
    snakemake(workdir, "--cores", "all", "--resources", "gpu=1")
    return workdir


def test_study_writes_every_record(study):
    results = study / "results"
    expected = json.loads((results / "stats" / "expected_runs.json").read_text())
    assert len(expected) == 2 * len(ARMS)
    assert {(r["seed"], r["arm"]) for r in expected} == {(s, a) for s in (0, 1) for a in ARMS}
    assert all(r["train_dataset"] == "synth_train" and r["shot"] == "8" for r in expected)
    assert all(r["test_datasets"] == ["synth_test"] for r in expected)
    for seed in (0, 1):
        assert (results / "splits" / "synth_train" / "shot8" / f"seed{seed}.json").is_file()
        for arm in ARMS:
            run = results / "runs" / "synth_train" / "shot8" / f"seed{seed}" / arm
            record = json.loads((run / "run.json").read_text())
            assert (record["arm"], record["seed"], record["shot"]) == (arm, seed, "8")
            assert record["status"] == "completed"
            assert record["epochs_completed"] == {"text": 1, "image": 1}
            for name in ["text_adapter.pth", "image_adapter.pth", "train_log.csv", "train.log"]:
                assert (run / name).stat().st_size > 0
            table = read_rows(
                results / "eval" / "synth_train" / "shot8" / f"seed{seed}" / arm / "synth_test.csv"
            )
            assert [row["category"] for row in table][-1] == "mean"
            assert len(table) == 8 + 1
            assert all(0.0 <= float(row["image_auroc"]) <= 1.0 for row in table)
            sidecar = results / "eval" / "synth_train" / "shot8" / f"seed{seed}" / arm / "synth_test.json"
            assert json.loads(sidecar.read_text())["conventions"]["aupro_fpr_limit"] == 0.3


def test_study_tables_are_long_and_complete(study):
    stats = study / "results" / "stats"
    metrics = read_rows(stats / "metrics_long.csv")
    assert list(metrics[0]) == [
        "train_dataset",
        "shot",
        "seed",
        "arm",
        "test_dataset",
        "category",
        "metric",
        "value",
    ]
    assert len(metrics) == 2 * len(ARMS) * 8 * len(METRICS)
    assert {row["metric"] for row in metrics} == set(METRICS)
    assert "mean" not in {row["category"] for row in metrics}

    benchmarks = read_rows(stats / "benchmarks.csv")
    assert list(benchmarks[0])[:6] == ["rule", "train_dataset", "shot", "seed", "arm", "s"]
    assert len(benchmarks) == 2 * 2 * len(ARMS)  # a training and an evaluation job per run
    assert {row["rule"] for row in benchmarks} == {*TRAIN_RULES, "evaluate"}
    assert all(float(row["s"]) > 0 for row in benchmarks)

    comparisons = read_rows(stats / "comparisons.csv")
    assert list(comparisons[0])[: len(COMPARISON_COLUMNS)] == COMPARISON_COLUMNS
    assert {row["comparison"] for row in comparisons} >= {
        "xattn_from_base-baseline",
        "xattn_from_base-baseline_continued",
    }

    checklist = json.loads((stats / "checklist.json").read_text())
    assert {item["id"] for item in checklist} == CHECKLIST_IDS
    assert all(item["status"] in {"PASS", "WARN", "FAIL"} and item["evidence"] for item in checklist)
    status = {item["id"]: item["status"] for item in checklist}
    # Pairing and bookkeeping hold by construction of the workflow, whatever the seed count.
    for item in ["init_from_base", "same_split", "same_test_set", "same_metrics", "no_missing_runs"]:
        assert status[item] == "PASS", (item, checklist)

    report = study / "results" / "report"
    assert "<html" in (report / "index.html").read_text().lower()
    assert (report / "report.md").stat().st_size > 0


def test_second_invocation_does_nothing(study):
    output = snakemake(study, "--cores", "all", "--resources", "gpu=1")
    assert "Nothing to be done" in output


def test_snakemake_report_bundles_the_outputs(study):
    snakemake(study, "--report", "report.html", timeout=200)
    html = (study / "report.html").read_text()
    for caption_word in ["Checklist", "Statistics", "Evaluation", "Training"]:
        assert caption_word in html


def test_adding_a_seed_plans_only_that_seed_and_the_aggregates(study):
    (study / "config" / "test.yaml").write_text(yaml.safe_dump(reduced_config([0, 1, 2])))
    try:
        output = snakemake(study, "-n")
    finally:
        (study / "config" / "test.yaml").write_text(yaml.safe_dump(reduced_config([0, 1])))
    counts = job_counts(output)
    expected = {
        "fewshot_split": 1,
        **{rule: 1 for rule in TRAIN_RULES},
        "evaluate_synth_train": len(ARMS),
        **{rule: 1 for rule in AGGREGATES},
    }
    assert counts == {**expected, "total": sum(expected.values())}
    per_run = re.findall(r"wildcards: dataset=synth_train, shotdir=shot8, seed=(\d+)", output)
    assert per_run and set(per_run) == {"2"}


def test_seed_batched_training_writes_every_seeds_run_files(tmp_path):
    # compute.seed_batch 2 with seeds [0, 1]: one group job per arm trains both seeds, writing the same
    # per-seed files as the per-seed jobs; the from-base group reads each seed's own baseline.
    workdir = copy_workflow(tmp_path / "seed_batched")
    cfg = reduced_config([0, 1])
    cfg["compute"]["seed_batch"] = 2
    (workdir / "config" / "test.yaml").write_text(yaml.safe_dump(cfg))
    run = workdir / "results" / "runs" / "synth_train" / "shot8"
    targets = [f"results/runs/synth_train/shot8/seed{s}/xattn_from_base/run.json" for s in (0, 1)]
    output = snakemake(workdir, "--resources", "gpu=1", "--cores", "all", *targets)
    assert "train_group_baseline_1" in output and "train_group_xattn_from_base_1" in output
    for seed in (0, 1):
        for arm in ("baseline", "xattn_from_base"):
            record = json.loads((run / f"seed{seed}" / arm / "run.json").read_text())
            assert (record["arm"], record["seed"], record["status"]) == (arm, seed, "completed")
            assert record["seed_batched"] == {"seeds": [0, 1], "group_size": 2}
            for name in ["text_adapter.pth", "image_adapter.pth", "train_log.csv", "train.log"]:
                assert (run / f"seed{seed}" / arm / name).stat().st_size > 0
        loaded = {c["role"]: c for c in record["loaded_checkpoints"]}
        base = run / f"seed{seed}" / "baseline"
        assert loaded["base_text_adapter"]["path"] == str(
            Path("results/runs/synth_train/shot8") / f"seed{seed}" / "baseline" / "text_adapter.pth"
        )
        assert (
            loaded["base_image_adapter"]["sha256"]
            == hashlib.sha256((base / "image_adapter.pth").read_bytes()).hexdigest()
        )
    for arm in ("baseline", "xattn_from_base"):
        assert (
            workdir / "results" / "logs" / f"train_group_{arm}" / "synth_train" / "shot8" / "seeds0-1.log"
        ).is_file()
        bench = (
            workdir
            / "results"
            / "benchmarks"
            / f"train_group_{arm}"
            / "synth_train"
            / "shot8"
            / "seeds0-1.tsv"
        )
        assert bench.stat().st_size > 0
    again = snakemake(workdir, "--resources", "gpu=1", "--cores", "all", *targets)
    assert "Nothing to be done" in again


def test_killed_training_job_resumes_to_the_same_weights(tmp_path):
    """Kill Snakemake (SIGKILL) during a training job's stage 2; unlock and rerun; the run resumes
    from its last completed epoch and ends with the weights of an uninterrupted run."""
    import os
    import signal
    import time

    target = "results/runs/synth_train/shot8/seed0/baseline/run.json"
    cfg = reduced_config([0])
    cfg["train"]["image_epoch"] = 4
    dirs = {}
    for name in ("killed", "clean"):
        dirs[name] = copy_workflow(tmp_path / name)
        (dirs[name] / "config" / "test.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(dirs["clean"], "--cores", "1", target)

    workdir = dirs["killed"]
    command = [sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml", "--cores", "1", target]
    resume = workdir / "results/runs/synth_train/shot8/seed0/baseline/.resume/image.pth"
    process = subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not resume.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert resume.exists(), "stage 2 never wrote its first epoch's resume state"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (workdir / target).exists()

    snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "1", target)
    resumed = json.loads((workdir / target).read_text())
    clean = json.loads((dirs["clean"] / target).read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"]["image"] >= 1
    assert resumed["final_fingerprints"] == clean["final_fingerprints"]
    assert resumed["epoch_losses"] == clean["epoch_losses"]
