"""``benchmarks/gpu_bench.py`` runs on CPU with the tiny backbone, writes its documented JSON, and its arithmetic holds."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_runs_on_cpu_and_writes_the_documented_json(gpu_bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--backbone", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--text_batch", "4"]
    assert gpu_bench.main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for word in ("stage1", "stage2", "eval", "study estimate", "bf16 matmul peak"):
        assert word in table
    result = json.loads(out.read_text())
    for key in (
        "device",
        "versions",
        "backbone",
        "image_size",
        "tokens",
        "flops_per_image_forward",
        "peak_bf16_tflops",
        "settings",
        "modes",
        "compile_fell_back",
        "ratios",
        "hardware_limit_images_per_s",
        "fraction_of_limit",
        "study_estimate_hours",
        "wall_s",
    ):
        assert key in result, key
    assert result["image_size"] == 128 and result["tokens"] == 65
    assert result["settings"]["seeds"] == 2 and result["settings"]["eval_batch"] == 4
    ref, fast = result["modes"]["reference"], result["modes"]["fast"]
    assert ref["perf"]["amp"] is False and ref["seeds"] == 1 and fast["seeds"] == 2
    for section in ("stage1", "stage2", "eval"):
        for mode in (ref, fast):
            assert mode[section]["images_per_s"] > 0 and mode[section]["peak_mem_gib"] is None
        assert result["ratios"][section] == pytest.approx(
            fast[section]["images_per_s"] / ref[section]["images_per_s"]
        )
    assert fast["stage2"]["images"] == 4 and ref["stage2"]["images"] == 2  # 2 seeds x batch 2 vs batch 2
    assert fast["eval"]["metrics_s"] >= 0


def test_vision_flops_of_vit_l_at_518_match_the_issue(gpu_bench):
    # Issue #8: about 1.01 TFLOP per image forward for ViT-L-14-336 at 518 px (37x37 grid, 1370 tokens).
    from aaclip_xattn.factory import create_model

    model = create_model("baseline", "ViT-L-14-336", image_size=518, device="meta")
    assert model.grid_size == 37
    assert gpu_bench.vision_forward_flops(model) / 1e12 == pytest.approx(1.01, abs=0.02)


def test_summarize_computes_ratios_limits_and_the_study_estimate(gpu_bench):
    def mode(s1, s2, ev):
        return {
            "stage1": {"images_per_s": s1},
            "stage2": {"images_per_s": s2},
            "eval": {"images_per_s": ev},
            "vv_fraction": 0.75,
        }

    result = {
        "flops_per_image_forward": 1e12,
        "peak_bf16_tflops": 800.0,
        "modes": {"reference": mode(20.0, 10.0, 40.0), "fast": mode(400.0, 200.0, 400.0)},
    }
    gpu_bench.summarize(result)
    assert result["ratios"] == {"stage1": 20.0, "stage2": 20.0, "eval": 10.0}
    limits = result["hardware_limit_images_per_s"]
    assert limits["eval"] == pytest.approx(800.0)
    assert limits["stage2"] == pytest.approx(400.0)
    assert limits["stage1"] == pytest.approx(800.0 / 1.75)
    assert result["fraction_of_limit"]["fast"]["stage2"] == pytest.approx(0.5)
    runs = 24
    fast_hours = runs * (2162 * 5 / 400 + 2162 * 20 / 200 + 1725 / 400) / 3600
    assert result["study_estimate_hours"]["fast"] == pytest.approx(fast_hours)
    assert math.isclose(
        result["study_estimate_hours"]["reference"],
        runs * (2162 * 5 / 20 + 2162 * 20 / 10 + 1725 / 40) / 3600,
    )
