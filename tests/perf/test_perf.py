"""Fast paths (``aaclip_xattn.perf``): resolution per device, and each fast path against the plain path.

Tolerances (measured on the tiny backbone, CPU):

* bf16 autocast: anomaly maps cosine similarity >= 0.999 and max error <= 5 % of the map's range;
  stage-2 loss within 2 % relative (bf16 has an 8-bit mantissa: ~0.4 % per rounding).
* fused V-V attention (``scaled_dot_product_attention``) vs the explicit softmax: 1e-5.
* ``torch.compile`` vs eager: 1e-5; a failing compiler falls back to eager with a WARNING.
* channels-last images: bit-identical values.
* device-side loss accumulation: the same mean (float64 sum) and the same NaN stop, one sync per epoch.
"""

from __future__ import annotations

import logging

import pytest
import torch

from aaclip_xattn import model as model_lib
from aaclip_xattn.errors import NonFiniteLossError
from aaclip_xattn.perf import (
    PERF_SWITCHES,
    LossMeter,
    PerfConfig,
    autocast,
    backend_settings,
    compile_with_fallback,
    prepare_images,
    resolve_perf,
)
from aaclip_xattn.train.seed_batched import stage2_total_loss


def test_resolve_perf_is_off_on_cpu_and_on_on_cuda():
    cpu = resolve_perf("cpu")
    assert cpu == PerfConfig()
    assert not any(getattr(cpu, name) for name in PERF_SWITCHES)
    cuda = resolve_perf(torch.device("cuda", 0))
    assert all(getattr(cuda, name) for name in PERF_SWITCHES)
    assert not cuda.reproduce_reference


def test_resolve_perf_reproduce_reference_restores_fp32_numerics():
    ref = resolve_perf("cuda", reproduce_reference=True)
    assert ref.reproduce_reference
    for name in ("amp", "fused_attention", "compile", "tf32", "channels_last"):
        assert getattr(ref, name) is False
    assert ref.device_loss and ref.pin_memory  # no number changes with these
    with pytest.raises(ValueError, match="reproduce_reference=true restores .* but amp is on"):
        resolve_perf("cuda", reproduce_reference=True, overrides={"amp": True})


def test_resolve_perf_overrides_win_and_none_means_not_given():
    perf = resolve_perf("cuda", overrides={"compile": False, "amp": None})
    assert perf.compile is False and perf.amp is True
    assert resolve_perf("cpu", overrides={"amp": True}).amp is True


def test_perf_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"perf: unknown key\(s\) 'bf16'; valid keys: amp, fused_attention"):
        resolve_perf("cpu", overrides={"bf16": True})
    with pytest.raises(ValueError, match="PerfConfig.compile must be true or false, got 'yes'"):
        PerfConfig.from_mapping({"compile": "yes"})
    with pytest.raises(ValueError, match="compile_mode must be one of default"):
        PerfConfig(compile_mode="fast")
    assert PerfConfig.from_mapping(PerfConfig(amp=True).to_dict()) == PerfConfig(amp=True)


def test_bf16_autocast_maps_and_losses_match_fp32(tiny_model_factory):
    model = tiny_model_factory("baseline")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size, generator=gen)
    masks = torch.zeros(2, 1, model.image_size, model.image_size)
    masks[1, :, 40:80, 30:70] = 1
    labels = torch.tensor([0, 1])
    anchors, _ = model.anchors_for(["brick", "grass"])
    results = {}
    for amp in (False, True):
        perf = PerfConfig(amp=amp)
        with torch.no_grad(), autocast(perf, "cpu"):
            feats = model.encode_image(images)
            seg = [t.float() for t in feats.seg_tokens]
            maps = model_lib.anomaly_map(seg, anchors, model.image_size)
            loss = stage2_total_loss(seg, feats.det_token.float(), anchors.float(), masks, labels)
        assert (feats.det_token.dtype == torch.bfloat16) is amp
        results[amp] = (maps.float(), loss.float())
    (map32, loss32), (map16, loss16) = results[False], results[True]
    cosine = torch.nn.functional.cosine_similarity(map32.flatten(1), map16.flatten(1), dim=1)
    assert cosine.min() >= 0.999
    assert (map32 - map16).abs().max() <= 0.05 * (map32.max() - map32.min())
    assert loss16 == pytest.approx(loss32.item(), rel=2e-2)


@pytest.mark.parametrize("axis", ["batch", "token"])
def test_fused_vv_attention_matches_explicit_softmax(tiny_model_factory, axis):
    model = tiny_model_factory("baseline")
    images = torch.randn(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    plain = model.stage1_features(images, vv_axis=axis)
    fused = model.stage1_features(images, vv_axis=axis, fused=True)
    for a, b in zip(plain, fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    block = model.clip.visual.transformer.resblocks[-1]
    x = torch.randn(3, 5, model.vision_width)
    torch.testing.assert_close(
        model_lib.vv_block_forward(block, x, axis, fused=True),
        model_lib.vv_block_forward(block, x, axis),
        rtol=1e-5,
        atol=1e-5,
    )


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append("compiled")
            raise RuntimeError("inductor: no C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)

    def double(x):
        return 2 * x

    fn = compile_with_fallback(double, PerfConfig(compile=True), name="test forward")
    with caplog.at_level(logging.WARNING, logger="aaclip_xattn.perf"):
        assert torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
    assert calls == ["compiled"]  # the compiled path is not retried after a failure
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "torch.compile of test forward failed (RuntimeError: inductor: no C++ compiler)"
        in warnings[0].message
    )
    assert compile_with_fallback(double, PerfConfig(compile=False)) is double


def test_compile_unavailable_runs_eager(monkeypatch, caplog):
    def unavailable(fn, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger="aaclip_xattn.perf"):
        fn = compile_with_fallback(torch.neg, PerfConfig(compile=True), name="neg")
    assert fn is torch.neg
    assert "torch.compile of neg is unavailable" in caplog.text


@pytest.mark.slow
def test_compile_matches_eager_on_cpu(tiny_model_factory):
    # A real torch.compile (inductor, C++ on CPU; ~20 s here) of an adapter + blend step.
    model = tiny_model_factory("baseline")
    adapter = model.image_adapter["layer_adapters"][0]

    def step(x):
        from aaclip_xattn.adapters import blend_residual

        return blend_residual(x, adapter(x), 0.1)

    fn = compile_with_fallback(step, PerfConfig(compile=True), name="adapter step")
    x = torch.randn(2, 17, model.vision_width)
    with torch.no_grad():
        torch.testing.assert_close(fn(x), step(x), rtol=1e-5, atol=1e-5)
    assert not getattr(fn, "failed", False)


def test_prepare_images_channels_last_keeps_values():
    images = torch.randn(2, 3, 8, 8)
    out = prepare_images(images, PerfConfig(channels_last=True), "cpu")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, images)
    assert prepare_images(images, PerfConfig(), "cpu").is_contiguous()


def test_backend_settings_sets_and_restores_tf32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with backend_settings(PerfConfig(tf32=not before[0]), "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with backend_settings(PerfConfig(tf32=True), "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 == before[0]


@pytest.mark.parametrize("device_loss", [False, True])
def test_loss_meter_mean_and_nan_stop(device_loss):
    values = [0.5, 0.25, 1.0 / 3.0]
    meter = LossMeter("cpu", device_loss=device_loss, stage="image", epoch=0)
    for value in values:
        meter.add(torch.tensor(value, dtype=torch.float32))
    mean, steps = meter.result()
    assert steps == 3
    expected = sum(float(torch.tensor(v, dtype=torch.float32)) for v in values) / 3
    assert mean == pytest.approx(expected, rel=1e-15)

    meter = LossMeter("cpu", device_loss=device_loss, stage="text", epoch=2, step_offset=10, label="seed 3, ")
    meter.add(torch.tensor(1.0))
    message = r"non-finite loss .* in seed 3, stage text \(1\), epoch 3, step 12"
    if not device_loss:
        with pytest.raises(NonFiniteLossError, match=message):
            meter.add(torch.tensor(float("nan")))
    else:
        meter.add(torch.tensor(float("nan")))  # no host sync: nothing raised yet
        meter.add(torch.tensor(float("inf")))
        with pytest.raises(NonFiniteLossError, match=message):
            meter.result()


# ---------------------------------------------------------------------------------------------------
# threading through TrainConfig, run_training and the command line


def test_train_config_perf_defaults_follow_the_device_and_validate():
    from aaclip_xattn.train import TrainConfig

    cfg = TrainConfig()
    assert cfg.perf_settings("cpu") == PerfConfig()
    assert cfg.perf_settings("cuda") == resolve_perf("cuda")
    assert TrainConfig(amp=True).perf_settings("cpu").amp is True
    ref = TrainConfig(reproduce_reference=True).perf_settings("cuda")
    assert ref.reproduce_reference and not ref.amp and not ref.compile
    assert TrainConfig.from_mapping(TrainConfig(perf={"compile": False}).to_dict()).perf == {"compile": False}
    with pytest.raises(ValueError, match=r"cfg.yaml: perf: unknown key\(s\) 'bf16'"):
        TrainConfig.from_mapping({"perf": {"bf16": True}}, source="cfg.yaml")
    with pytest.raises(ValueError, match="reproduce_reference=true restores"):
        TrainConfig.from_mapping({"reproduce_reference": True, "amp": True})
    with pytest.raises(ValueError, match="reproduce_reference='yes' is invalid; expected true or false"):
        TrainConfig.from_mapping({"reproduce_reference": "yes"})


def test_cli_perf_flag_parses_and_names_bad_items():
    from aaclip_xattn.train.cli import _parse_perf, build_parser

    assert _parse_perf("compile=false, amp=TRUE") == {"compile": False, "amp": True}
    with pytest.raises(ValueError, match=r"--perf: 'compile' is invalid; expected KEY=true\|false"):
        _parse_perf("compile")
    args = build_parser("train").parse_args(
        ["--save_path", "x", "--reproduce_reference", "--perf", "amp=false"]
    )
    assert args.reproduce_reference is True and args.perf == "amp=false"


def test_run_training_device_side_loss_equals_the_plain_run(small_manifest_factory, tmp_path):
    # Device-side loss sums change no number: identical weights and losses, one host sync per epoch.
    import json

    from aaclip_xattn.train import TrainConfig, run_training

    base = dict(backbone="tiny", image_size=64, text_epoch=1, image_epoch=1, text_batch_size=4, device="cpu")
    manifest = small_manifest_factory(0)
    plain = run_training(
        TrainConfig(**base), run_dir=tmp_path / "plain", manifest_path=manifest, arm="baseline"
    )
    fast_cfg = TrainConfig(**base, perf={"device_loss": True})
    fast = run_training(fast_cfg, run_dir=tmp_path / "fast", manifest_path=manifest, arm="baseline")
    assert fast["epoch_losses"] == plain["epoch_losses"]
    assert fast["final_fingerprints"] == plain["final_fingerprints"]
    assert plain["perf"] == PerfConfig().to_dict()
    recorded = json.loads((tmp_path / "fast" / "run.json").read_text())
    assert recorded["perf"]["device_loss"] is True and recorded["hyperparameters"]["perf"] == {
        "device_loss": True
    }
