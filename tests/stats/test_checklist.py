"""The fair-comparison checklist: a clean study passes every item; each planted unfairness fails its item."""

from __future__ import annotations

import json

import pytest
from records import (
    TEST_DATASETS,
    edit_run,
    edit_sidecar,
    make_cfg,
    make_study,
    remove_run,
    run_rel,
    write_comparisons,
)

from aaclip_xattn.stats.checklist import (
    CHECK_IDS,
    FAIL,
    PASS,
    WARN,
    build_checklist,
    comparison_pairs,
    load_expected_runs,
    min_units_for_alpha,
    run_checklist,
)


def _by_id(items):
    return {item["id"]: item for item in items}


def _evidence(item) -> str:
    return "\n".join(item["evidence"])


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path)


def test_clean_study_passes_every_item_and_writes_checklist_json(study):
    items = run_checklist(study, make_cfg())
    assert [item["id"] for item in items] == list(CHECK_IDS)
    assert {item["id"]: item["status"] for item in items} == dict.fromkeys(CHECK_IDS, PASS)
    written = json.loads((study / "stats/checklist.json").read_text())
    assert written == items
    for item in items:
        assert item["title"] and item["evidence"], item["id"]
        assert set(item) == {"id", "title", "status", "evidence"}


def test_clean_study_evidence_names_files_and_values(study):
    items = _by_id(build_checklist(study, make_cfg()))
    assert f"{run_rel(2, 'baseline')}: text 2/2 epochs, image 3/3 epochs" in _evidence(
        items["base_fully_trained"]
    )
    assert run_rel(1, "xattn_from_base") in _evidence(items["init_from_base"])
    assert "text_lr=1e-05" in _evidence(items["same_hyperparameters"])
    assert "T = 12 categories (synth_b: 8, synth_c: 4)" in _evidence(items["significance_testing"])
    assert "T >= 8" in _evidence(items["significance_testing"])
    assert "unequal by construction" in _evidence(items["budget_matched"])
    assert "12 expected runs and 24 expected evaluation tables checked" in _evidence(items["no_missing_runs"])


def test_different_split_for_one_arm_fails_same_split(study):
    rel = edit_run(study, 1, "xattn_scratch", lambda d: d["manifest"].update(sha256="f" * 64))
    item = _by_id(build_checklist(study, make_cfg()))["same_split"]
    assert item["status"] == FAIL
    assert f"seed 1: {rel}: xattn_scratch manifest sha256 ffffffffffff != baseline" in _evidence(item)


def test_from_base_run_that_loaded_another_seeds_baseline_fails_init_from_base(study):
    other = json.loads((study / run_rel(2, "baseline")).read_text())

    def load_seed2(data):
        data["loaded_checkpoints"] = [
            {"role": f"base_{c}", **other["final_checkpoints"][c]} for c in ("text_adapter", "image_adapter")
        ]
        data["loaded_fingerprints"] = dict(other["final_fingerprints"])

    rel = edit_run(study, 0, "xattn_from_base", load_seed2)
    items = _by_id(build_checklist(study, make_cfg()))
    item = items["init_from_base"]
    assert item["status"] == FAIL
    text = _evidence(item)
    assert f"seed 0: {rel}: loaded text_adapter sha256" in text
    assert f"it matches {run_rel(2, 'baseline')} (seed 2 baseline)" in text
    assert "tensor fingerprint" in text
    assert items["same_split"]["status"] == PASS


def test_changed_lr_fails_same_hyperparameters_naming_the_run(study):
    rel = edit_run(study, 1, "xattn_from_base", lambda d: d["hyperparameters"].update(text_lr=5e-06))
    item = _by_id(build_checklist(study, make_cfg()))["same_hyperparameters"]
    assert item["status"] == FAIL
    assert f"{rel}: text_lr = 5e-06, other runs 1e-05" in _evidence(item)


def test_aggressive_preset_for_one_arm_fails_but_uniform_preset_only_warns(tmp_path):
    results = make_study(tmp_path / "a")
    rel = edit_run(results, 0, "xattn_from_base", lambda d: d["hyperparameters"].update(preset="aggressive"))
    item = _by_id(build_checklist(results, make_cfg()))["same_hyperparameters"]
    assert item["status"] == FAIL
    assert f"{rel}: preset = 'aggressive', other runs 'conservative'" in _evidence(item)

    uniform = make_study(tmp_path / "b")
    for seed in (0, 1, 2):
        for arm in ("baseline", "xattn_from_base", "xattn_scratch", "baseline_continued"):
            edit_run(uniform, seed, arm, lambda d: d["hyperparameters"].update(preset="aggressive"))
    item = _by_id(build_checklist(uniform, make_cfg()))["same_hyperparameters"]
    assert item["status"] == WARN
    assert "non-conservative preset 'aggressive'" in _evidence(item)


def test_missing_seed_fails_no_missing_runs_and_significance_testing(study):
    rel = remove_run(study, 2, "xattn_scratch")
    items = _by_id(build_checklist(study, make_cfg()))
    missing = items["no_missing_runs"]
    assert missing["status"] == FAIL
    assert f"missing run: {rel}" in _evidence(missing)
    assert "missing evaluation: eval/synth_a/shot4/seed2/xattn_scratch/synth_b.csv" in _evidence(missing)
    significance = items["significance_testing"]
    assert significance["status"] == FAIL
    assert "xattn_scratch: 2 completed seeds (0, 1); at least 3 needed" in _evidence(significance)
    assert "xattn_scratch lacks seeds 2" in _evidence(significance)


def test_missing_launch_manifest_infers_expected_runs_and_warns(tmp_path):
    results = make_study(tmp_path, expected=False)
    assert load_expected_runs(results) is None
    item = _by_id(build_checklist(results, make_cfg()))["no_missing_runs"]
    assert item["status"] == WARN
    assert "launch manifest stats/expected_runs.json missing" in _evidence(item)
    rel = remove_run(results, 1, "baseline_continued")
    item = _by_id(build_checklist(results, make_cfg()))["no_missing_runs"]
    assert item["status"] == FAIL
    assert f"missing run: {rel}" in _evidence(item)


def test_failed_run_and_nan_primary_metric_fail_no_missing_runs(study):
    rel = edit_run(study, 0, "xattn_scratch", lambda d: d.update(status="failed"))
    csv_path = study / "eval/synth_a/shot4/seed1/baseline/synth_c.csv"
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index("pixel_auroc")] = "nan"
    lines[2] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    item = _by_id(build_checklist(study, make_cfg()))["no_missing_runs"]
    assert item["status"] == FAIL
    assert f"failed run: {rel}: status 'failed'" in _evidence(item)
    assert "eval/synth_a/shot4/seed1/baseline/synth_c.csv: pixel_auroc is NaN for cable" in _evidence(item)


def test_baseline_trained_fewer_epochs_fails_base_fully_trained(study):
    rel = edit_run(study, 1, "baseline", lambda d: d["epochs_completed"].update(image=2))
    items = _by_id(build_checklist(study, make_cfg()))
    item = items["base_fully_trained"]
    assert item["status"] == FAIL
    assert "seeds 1" in item["evidence"][0]
    assert f"seed 1: {rel}: text 2/2 epochs, image 2/3 epochs" in _evidence(item)
    assert items["budget_matched"]["status"] == FAIL


def test_different_test_list_fails_same_test_set(study):
    rel = edit_sidecar(study, 2, "xattn_from_base", "synth_b", lambda d: d.update(test_list_sha256="e" * 64))
    items = _by_id(build_checklist(study, make_cfg()))
    item = items["same_test_set"]
    assert item["status"] == FAIL
    assert f"{rel}: test_list_sha256 eeeeeeeeeeee != " in _evidence(item)
    assert "of the other 11 synth_b evaluations" in _evidence(item)
    assert items["same_metrics"]["status"] == PASS


def test_changed_evaluation_convention_fails_same_metrics(study):
    rel = edit_sidecar(
        study, 0, "baseline", "synth_c", lambda d: d["conventions"].update(aupro_mode="legacy")
    )
    item = _by_id(build_checklist(study, make_cfg()))["same_metrics"]
    assert item["status"] == FAIL
    assert f"{rel}: aupro_mode = 'legacy', other sidecars 'exact'" in _evidence(item)


def test_reset_optimizer_fails_unless_carryover_disabled_by_config(study):
    rel = edit_run(study, 2, "baseline_continued", lambda d: d["optimizer_state_loaded"].update(image=False))
    item = _by_id(build_checklist(study, make_cfg()))["optimizer_carried_over"]
    assert item["status"] == FAIL
    assert (
        f"seed 2: {rel}: optimizer_state_loaded text=True, image=False: image optimizer reset"
        in _evidence(item)
    )

    def disabled(data):
        data["hyperparameters"]["optimizer_carryover"] = False

    edit_run(study, 2, "baseline_continued", disabled)
    item = _by_id(build_checklist(study, make_cfg()))["optimizer_carried_over"]
    assert item["status"] == WARN
    assert "disabled by configuration" in _evidence(item)


def test_unequal_budget_fails_and_missing_control_warns(tmp_path):
    results = make_study(tmp_path / "a")
    rel = edit_run(results, 0, "xattn_from_base", lambda d: d["steps_completed"].update(image=30))
    item = _by_id(build_checklist(results, make_cfg()))["budget_matched"]
    assert item["status"] == FAIL
    assert (
        f"seed 0: {rel}: text 2 epochs/4 steps, image 3 epochs/30 steps != baseline_continued"
        in _evidence(item)
    )

    no_control = make_study(tmp_path / "b", arms=("baseline", "xattn_from_base", "xattn_scratch"))
    item = _by_id(build_checklist(no_control, make_cfg()))["budget_matched"]
    assert item["status"] == WARN
    assert "xattn_from_base has no budget-matched control 'baseline_continued'" in _evidence(item)


def test_from_base_loss_not_below_baseline_warns(study):
    rel = edit_run(study, 1, "xattn_from_base", lambda d: d["epoch_losses"].update(image=[2.5, 2.0, 1.9]))
    item = _by_id(build_checklist(study, make_cfg()))["expected_loss_behaviour"]
    assert item["status"] == WARN
    assert f"seed 1: stage 2 first-epoch loss xattn_from_base 2.5 vs baseline 2.01 ({rel})" in _evidence(item)


def test_overwritten_baseline_checkpoint_fails_init_from_base(study):
    (study / "runs/synth_a/shot4/seed0/baseline/image_adapter.pth").write_bytes(b"retrained")
    item = _by_id(build_checklist(study, make_cfg()))["init_from_base"]
    assert item["status"] == FAIL
    assert "baseline overwritten after this run?" in _evidence(item)


def test_stale_evaluation_of_an_older_checkpoint_fails_no_missing_runs(study):
    rel = edit_sidecar(
        study, 0, "xattn_scratch", "synth_b", lambda d: d["checkpoint"].update(sha256="a" * 64)
    )
    item = _by_id(build_checklist(study, make_cfg()))["no_missing_runs"]
    assert item["status"] == FAIL
    assert f"stale evaluation: {rel}" in _evidence(item)


def test_too_few_categories_for_holm_fails_significance_testing(study):
    items = _by_id(build_checklist(study, make_cfg(alpha=0.001)))
    item = items["significance_testing"]
    assert item["status"] == FAIL
    assert "T = 12 categories (synth_b: 8, synth_c: 4) cannot reach alpha" in _evidence(item)
    assert "T >= 13" in _evidence(item)


def test_significance_reads_n_units_from_comparisons_csv(study):
    write_comparisons(study)
    item = _by_id(build_checklist(study, make_cfg()))["significance_testing"]
    assert item["status"] == PASS
    assert "stats/comparisons.csv xattn_from_base-baseline: n_units = 12" in _evidence(item)


def test_fewer_than_recommended_seeds_warns(study):
    item = _by_id(build_checklist(study, make_cfg(recommended_seeds=5)))["significance_testing"]
    assert item["status"] == WARN
    assert "baseline: 3 completed seeds (0, 1, 2); 5 recommended" in _evidence(item)


@pytest.mark.parametrize(
    ("m", "n"), [(1, 6), (2, 7), (3, 7), (4, 8), (6, 8), (10, 9), (15, 10), (20, 10), (30, 11)]
)
def test_min_units_for_alpha_matches_statistics_table(m, n):
    assert min_units_for_alpha(0.05, m) == n
    assert 2 / 2**n < 0.05 / m <= 2 / 2 ** (n - 1)


def test_comparison_pairs_accepts_strings_pairs_and_mappings():
    cfg = make_cfg(
        comparisons=["xattn_from_base-baseline", ("xattn_scratch", "baseline"), {"a": "x", "b": "y"}]
    )
    assert comparison_pairs(cfg) == [
        ("xattn_from_base", "baseline"),
        ("xattn_scratch", "baseline"),
        ("x", "y"),
    ]
    with pytest.raises(ValueError, match="comparisons: cannot read 'nonsense'"):
        comparison_pairs(make_cfg(comparisons=["nonsense"]))


def test_malformed_launch_manifest_names_file_and_key(study):
    (study / "stats/expected_runs.json").write_text(json.dumps([{"train_dataset": "synth_a", "seed": 0}]))
    with pytest.raises(RuntimeError, match=r"expected_runs.json: entry 0 lacks shot, arm, test_datasets"):
        build_checklist(study, make_cfg())


def test_missing_results_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: results directory not found"):
        build_checklist(tmp_path / "nowhere", make_cfg())


def test_expected_argument_overrides_launch_manifest(study):
    expected = [
        {
            "train_dataset": "synth_a",
            "shot": 4,
            "seed": 7,
            "arm": "baseline",
            "test_datasets": sorted(TEST_DATASETS),
        }
    ]
    item = _by_id(build_checklist(study, make_cfg(), expected=expected))["no_missing_runs"]
    assert item["status"] == FAIL
    assert "missing run: runs/synth_a/shot4/seed7/baseline/run.json" in _evidence(item)
    assert f"{run_rel(0, 'baseline')} exists but is not in the launch manifest" in _evidence(item)
