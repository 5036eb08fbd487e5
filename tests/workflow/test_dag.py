"""The workflow plans what the config says: lint clean, job counts, SLURM profile, placeholder paths rejected.

Every test runs the Snakemake command line (dry runs only: seconds each) in a copy of the workflow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import (
    AGGREGATES,
    ARMS,
    ROOT,
    TRAIN_RULES,
    copy_workflow,
    job_counts,
    job_resources,
    snakemake,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("dag"))


@pytest.fixture(scope="module")
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def default_dry_run(workdir) -> str:
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout + result.stderr


def test_lint_is_clean(workdir):
    result = snakemake(workdir, "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Congratulations, your workflow is in a good condition!" in output
    assert "Lints for" not in output


def test_dry_run_plans_the_default_study(default_dry_run, default_config):
    study = default_config["study"]
    runs = len(study["seeds"]) * len(study["shots"])  # per arm, one training dataset
    counts = job_counts(default_dry_run)
    expected = {
        "make_synthetic_dataset": len(default_config["datasets"]),
        "fewshot_split": runs,
        **{rule: runs for rule in TRAIN_RULES},
        "evaluate_synth_train": runs * len(study["arms"]),
        **{rule: 1 for rule in AGGREGATES},
    }
    assert counts == {**expected, "total": sum(expected.values())}
    assert "Using workflow specific profile profiles/default" in default_dry_run


def test_cpu_jobs_claim_no_gpu_so_two_run_side_by_side(default_dry_run):
    for rule in ["train_baseline", "evaluate_synth_train"]:
        resources = job_resources(default_dry_run, rule)
        assert resources and all("gpu=0" in r for r in resources), (rule, resources[:2])


def test_cuda_device_makes_training_and_evaluation_claim_one_gpu(workdir):
    result = snakemake(workdir, "-n", "--config", "compute={'device': 'cuda'}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ["train_xattn_from_base", "evaluate_synth_train"]:
        resources = job_resources(output, rule)
        assert resources and all("gpu=1" in r for r in resources), (rule, resources[:2])
    assert all("gpu" not in r for r in job_resources(output, "fewshot_split"))


def test_slurm_profile_dry_runs_with_one_gpu_per_training_job(workdir):
    result = snakemake(workdir, "--workflow-profile", "profiles/slurm", "-n")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Using workflow specific profile profiles/slurm" in output
    resources = job_resources(output, "train_baseline")
    assert len(resources) == 6
    assert all("gpu=1" in r and "cpus_per_gpu=8" in r and "runtime=720" in r for r in resources)


def test_aggregation_rules_are_local():
    text = "\n".join(
        p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]
    )
    for rule in AGGREGATES:
        block = re.search(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", text, flags=re.MULTILINE | re.DOTALL)
        assert block and "localrule: True" in block.group(1), rule


def test_paper_config_with_placeholders_fails_naming_the_keys(workdir):
    result = snakemake(workdir, "-n", "--configfile", "config/paper.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets[0].root (dataset 'mvtec'): directory '/path/to/mvtec_ad' does not exist" in output
    assert "datasets[1].root (dataset 'visa')" in output
    assert "backbone.weights: file '/path/to/ViT-L-14-336px.pt' does not exist" in output
    assert "placeholder" in output


def test_paper_config_with_real_paths_plans_both_directions_and_modes(workdir, tmp_path):
    for name in ["mvtec_ad", "VisA_20220922"]:
        (tmp_path / name).mkdir()
    (tmp_path / "ViT-L-14-336px.pt").write_bytes(b"")
    text = (ROOT / "config" / "paper.yaml").read_text().replace("/path/to/", f"{tmp_path}/")
    (tmp_path / "paper.yaml").write_text(text)
    result = snakemake(workdir, "-n", "--configfile", str(tmp_path / "paper.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    # seeds x shot folders per training dataset and arm: visa 2/16/64 + full, mvtec 2/16 + full
    visa_runs, mvtec_runs = 6 * (3 + 1), 6 * (2 + 1)
    assert counts["check_dataset"] == 2
    assert counts["fewshot_split"] == visa_runs + mvtec_runs
    assert all(counts[rule] == visa_runs + mvtec_runs for rule in TRAIN_RULES)
    assert counts["evaluate_visa"] == 4 * visa_runs and counts["evaluate_mvtec"] == 4 * mvtec_runs
    assert "results/splits/visa/full/seed111.json" in output
    assert "results/eval/visa/shot64/seed116/xattn_from_base/mvtec.csv" in output
    assert "results/eval/mvtec/shot16/seed116/xattn_from_base/visa.csv" in output
    assert "results/splits/mvtec/shot64/" not in output


def test_inconsistent_config_fails_naming_the_key(workdir, tmp_path):
    override = {
        "study": {
            "train_datasets": [{"name": "synth_train", "test_datasets": ["mvtec"]}],
            "arms": ["xattn_from_base"],
        }
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    result = snakemake(workdir, "-n", "--configfile", str(tmp_path / "bad.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "study.train_datasets[0].test_datasets[0]: 'mvtec' is not a dataset in `datasets`" in output
    assert "study.arms: xattn_from_base and baseline_continued start from `baseline`" in output
    assert "stats.comparisons[1]: arm 'xattn_scratch' is not in study.arms" in output


def test_unknown_config_key_fails_before_planning(workdir):
    result = snakemake(workdir, "-n", "--config", "trian={'text_epoch': 1}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'trian' was unexpected" in output


def _seed_batch_config(tmp_path: Path, seed_batch: int, name: str = "seed_batch.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"compute": {"seed_batch": seed_batch}}))
    return str(path)


def _job_blocks(output: str, rule: str) -> list[str]:
    return [
        b for b in re.split(r"\n(?=(?:local)?rule \w+:)", output) if re.match(rf"(?:local)?rule {rule}:", b)
    ]


def test_seed_batch_plans_one_job_per_seed_group_and_arm(workdir, default_config, tmp_path):
    # 6 seeds in groups of 4, in config order: [0, 1, 2, 3] and [4, 5] (the last group is shorter).
    seeds = default_config["study"]["seeds"]
    assert len(seeds) == 6
    result = snakemake(workdir, "-n", "--configfile", _seed_batch_config(tmp_path, 4))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    study = default_config["study"]
    runs = len(seeds) * len(study["shots"])
    groups = {f"train_group_{arm}_{k}": 1 for arm in ARMS for k in (1, 2)}
    expected = {
        "make_synthetic_dataset": len(default_config["datasets"]),
        "fewshot_split": runs,
        **groups,
        "evaluate_synth_train": runs * len(ARMS),  # evaluation is per seed and run, unchanged
        **{rule: 1 for rule in AGGREGATES},
    }
    assert counts == {**expected, "total": sum(expected.values())}
    assert not set(TRAIN_RULES) & set(counts)
    # The second from-base group: its seeds' manifests and baselines in, every seed's run files out.
    (block,) = _job_blocks(output, "train_group_xattn_from_base_2")
    inputs = re.search(r"input: (.*)", block).group(1).split(", ")
    outputs = re.search(r"output: (.*)", block).group(1).split(", ")
    run = "results/runs/synth_train/shot8"
    assert sorted(inputs) == sorted(
        [f"results/splits/synth_train/shot8/seed{s}.json" for s in (4, 5)]
        + [
            f"{run}/seed{s}/baseline/{f}"
            for s in (4, 5)
            for f in ("text_adapter.pth", "image_adapter.pth", "run.json")
        ]
    )
    per_seed = ["text_adapter.pth", "image_adapter.pth", "run.json", "train_log.csv", "train.log"]
    assert sorted(outputs) == sorted(f"{run}/seed{s}/xattn_from_base/{f}" for s in (4, 5) for f in per_seed)
    assert "log: results/logs/train_group_xattn_from_base/synth_train/shot8/seeds4-5.log" in block
    assert "benchmark: results/benchmarks/train_group_xattn_from_base/synth_train/shot8/seeds4-5.tsv" in block
    assert "resources: tmpdir=" in block and "gpu=0" in block
    (first,) = _job_blocks(output, "train_group_baseline_1")
    assert re.search(r"input: (.*)", first).group(1).split(", ") == [
        f"results/splits/synth_train/shot8/seed{s}.json" for s in (0, 1, 2, 3)
    ]


def test_seed_batch_covering_all_seeds_is_one_job_per_arm_and_lint_clean(workdir, tmp_path):
    configfile = _seed_batch_config(tmp_path, 64)
    result = snakemake(workdir, "-n", "--configfile", configfile)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    assert {rule: n for rule, n in counts.items() if rule.startswith("train_")} == {
        f"train_group_{arm}_1": 1 for arm in ARMS
    }
    lint = snakemake(workdir, "--lint", "--configfile", configfile)
    lint_output = lint.stdout + lint.stderr
    assert lint.returncode == 0, lint_output
    assert "Congratulations, your workflow is in a good condition!" in lint_output
    assert "Lints for" not in lint_output


def test_slurm_profile_gives_seed_group_jobs_a_gpu(workdir, tmp_path):
    result = snakemake(
        workdir, "--workflow-profile", "profiles/slurm", "-n", "--configfile", _seed_batch_config(tmp_path, 2)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for arm in ARMS:
        for k in (1, 2, 3):
            (resources,) = job_resources(output, f"train_group_{arm}_{k}")
            assert "gpu=1" in resources and "cpus_per_gpu=8" in resources and "runtime=2880" in resources


def test_seed_batch_zero_fails_naming_the_key(workdir, tmp_path):
    result = snakemake(workdir, "-n", "--configfile", _seed_batch_config(tmp_path, 0))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "0 is less than the minimum of 1" in output and "seed_batch" in output
