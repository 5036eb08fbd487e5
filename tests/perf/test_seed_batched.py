"""Seed-batched training equals separate ``run_training`` runs of each seed (float tolerance).

Why a tolerance and not bit equality: the frozen backbone runs on ``2 × S`` images instead of 2, and a
CPU GEMM's rounding depends on the batch (one open_clip block differs by ~5e-7 between batch 2 and 4),
so the two paths agree to float rounding per step (losses to ~1e-6 relative). Adam then turns rounding
noise in near-zero gradients into steps of up to ``lr``; so weights are compared in units of the stage's
``lr`` (measured on this machine: max ``|Δw|`` ≤ 0.27·lr, mean ≤ 1.3e-3·lr; one seed's weights travel up
to steps·lr) and the Adam moments relative to the optimizer's largest moment (measured ≤ 2.3e-6). The
same seed trained on another data order breaks the bounds by far (checked below).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import aaclip_xattn.train.runner as runner
import aaclip_xattn.train.seed_batched as seed_batched
from aaclip_xattn.checkpoint import load_checkpoint_file, tensor_fingerprint
from aaclip_xattn.train import ResumeMismatchError, TrainConfig, run_training
from aaclip_xattn.train.records import read_train_log
from aaclip_xattn.train.runner import RESUME_DIR
from aaclip_xattn.train.seed_batched import (
    PREVIOUS_SUFFIX,
    SeedGroupResumeError,
    SeedMember,
    group_resume_epoch,
    grouped_condition_anchors,
    grouped_encode_image,
    grouped_text_anchors,
    stacked_apply,
    stage1_total_loss,
    stage2_total_loss,
    train_seed_group,
)

LR_TEXT = 1e-5
LR_IMAGE = 5e-4
#: Weight tolerance in units of the stage's lr (max and mean over each tensor's elements).
MAX_DW_LR = 0.5
MEAN_DW_LR = 1e-2
#: Adam moments: absolute tolerance relative to the optimizer's largest moment of that kind.
MOMENT_RTOL = 1e-4
#: Epoch losses: relative tolerance.
LOSS_RTOL = 1e-5


def _cfg(**kw) -> TrainConfig:
    base = dict(
        backbone="tiny",
        image_size=64,
        text_epoch=1,
        image_epoch=2,
        text_batch_size=3,
        image_batch_size=3,
        text_lr=LR_TEXT,
        image_lr=LR_IMAGE,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights_and_optimizer(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    content = torch.load(path, weights_only=True)
    stage = "text" if "text_adapter" in content else "image"
    weights = {}
    for component in (f"{stage}_adapter", f"{stage}_cross_attn"):
        for key, value in content.get(component, {}).items():
            weights[f"{component}.{key}"] = value
    return weights, content[f"{stage}_optimizer"], stage


def _drift(sep_dir: Path, grp_dir: Path) -> dict[str, float]:
    """Return the worst weight/moment differences of two run directories (units as the module says)."""
    out = {"max_dw_lr": 0.0, "mean_dw_lr": 0.0, "moment": 0.0}
    for name, lr in (("text_adapter.pth", LR_TEXT), ("image_adapter.pth", LR_IMAGE)):
        wa, oa, _ = _weights_and_optimizer(sep_dir / name)
        wb, ob, _ = _weights_and_optimizer(grp_dir / name)
        assert wa.keys() == wb.keys()
        for key in wa:
            diff = (wa[key] - wb[key]).abs()
            out["max_dw_lr"] = max(out["max_dw_lr"], diff.max().item() / lr)
            out["mean_dw_lr"] = max(out["mean_dw_lr"], diff.mean().item() / lr)
        assert oa["state"].keys() == ob["state"].keys()
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = max(s[moment].abs().max().item() for s in oa["state"].values())
            for pid, state in oa["state"].items():
                assert torch.equal(state["step"], ob["state"][pid]["step"])
                diff = (state[moment] - ob["state"][pid][moment]).abs().max().item()
                out["moment"] = max(out["moment"], diff / scale)
    return out


def _assert_same(sep_dir: Path, grp_dir: Path) -> dict[str, float]:
    drift = _drift(sep_dir, grp_dir)
    print(f"seed-batched drift {grp_dir.name}: {drift}")
    assert drift["max_dw_lr"] <= MAX_DW_LR, drift
    assert drift["mean_dw_lr"] <= MEAN_DW_LR, drift
    assert drift["moment"] <= MOMENT_RTOL, drift
    ra = json.loads((sep_dir / "run.json").read_text())
    rb = json.loads((grp_dir / "run.json").read_text())
    assert ra["initial_fingerprints"] == rb["initial_fingerprints"]
    assert ra["steps_completed"] == rb["steps_completed"]
    assert ra["epochs_completed"] == rb["epochs_completed"]
    assert ra["manifest"]["sha256"] == rb["manifest"]["sha256"]
    assert ra["loaded_checkpoints"] == rb["loaded_checkpoints"]
    assert ra["optimizer_state_loaded"] == rb["optimizer_state_loaded"]
    for stage in ("text", "image"):
        assert rb["epoch_losses"][stage] == pytest.approx(ra["epoch_losses"][stage], rel=LOSS_RTOL)
    assert rb["status"] == "completed" and rb["seed_batched"]["group_size"] >= 2
    assert rb["hyperparameters"] == ra["hyperparameters"]
    return drift


@pytest.fixture(scope="module")
def baseline_pair(small_manifest_factory, tmp_path_factory):
    """Baseline arm, seeds 0 and 1: separate runs and one seed-batched group (batch 3, short last batch)."""
    root = tmp_path_factory.mktemp("seed_batched_baseline")
    cfg = _cfg()
    seeds = (0, 1)
    for seed in seeds:
        run_training(
            dataclasses.replace(cfg, seed=seed),
            run_dir=root / f"sep{seed}",
            manifest_path=small_manifest_factory(seed),
            arm="baseline",
        )
    members = [SeedMember(s, root / f"grp{s}", small_manifest_factory(s)) for s in seeds]
    records = train_seed_group(cfg, members, arm="baseline")
    return root, seeds, records


def test_seed_batched_baseline_matches_separate_runs(baseline_pair):
    root, seeds, records = baseline_pair
    assert [r["seed"] for r in records] == list(seeds)
    for seed in seeds:
        _assert_same(root / f"sep{seed}", root / f"grp{seed}")
        for name in ("text_adapter.pth", "image_adapter.pth", "run.json", "train_log.csv", "train.log"):
            assert (root / f"grp{seed}" / name).is_file()


def test_seed_batched_comparison_detects_another_data_order(baseline_pair, small_manifest_factory, tmp_path):
    # Seed 0's init and streams, but seed 1's manifest (other images and order): the check must fail by far.
    root, _, _ = baseline_pair
    run_training(
        _cfg(seed=0), run_dir=tmp_path / "other", manifest_path=small_manifest_factory(1), arm="baseline"
    )
    drift = _drift(tmp_path / "other", root / "grp0")
    assert drift["max_dw_lr"] > 2 * MAX_DW_LR
    assert drift["mean_dw_lr"] > 10 * MEAN_DW_LR
    assert drift["moment"] > 100 * MOMENT_RTOL


def test_seed_batched_from_base_carries_each_seeds_optimizer(baseline_pair, small_manifest_factory, tmp_path):
    # xattn_from_base on each seed's own baseline: adapters and Adam state loaded per seed, then trained.
    root, seeds, _ = baseline_pair
    cfg = _cfg(text_epoch=1, image_epoch=1)
    for seed in seeds:
        run_training(
            dataclasses.replace(cfg, seed=seed),
            run_dir=tmp_path / f"sep{seed}",
            manifest_path=small_manifest_factory(seed),
            arm="xattn_from_base",
            base_dir=root / f"sep{seed}",
        )
    members = [
        SeedMember(s, tmp_path / f"grp{s}", small_manifest_factory(s), base_dir=root / f"sep{s}")
        for s in seeds
    ]
    train_seed_group(cfg, members, arm="xattn_from_base")
    for seed in seeds:
        _assert_same(tmp_path / f"sep{seed}", tmp_path / f"grp{seed}")
        record = json.loads((tmp_path / f"grp{seed}" / "run.json").read_text())
        assert record["optimizer_state_loaded"] == {"text": True, "image": True}


def test_seed_batched_unequal_manifests_and_token_axis(small_manifest_factory, tmp_path):
    # Seed 2 has 4 images, seed 3 has 8: steps run in sub-groups of equal batch size, and seed 2's epoch
    # ends early. The token V-V axis without augmentation also exercises the per-seed feature cache.
    cfg = _cfg(text_epoch=2, image_epoch=1, vv_axis="token", augment=False)
    plan = {2: small_manifest_factory(2, shot=2), 3: small_manifest_factory(3, shot=4)}
    for seed, manifest in plan.items():
        run_training(
            dataclasses.replace(cfg, seed=seed),
            run_dir=tmp_path / f"sep{seed}",
            manifest_path=manifest,
            arm="xattn_scratch",
        )
    members = [SeedMember(s, tmp_path / f"grp{s}", m) for s, m in plan.items()]
    records = train_seed_group(cfg, members, arm="xattn_scratch")
    assert [r["steps_completed"]["image"] for r in records] == [2, 3]
    assert all(r["feature_cache"] for r in records)
    for seed in plan:
        _assert_same(tmp_path / f"sep{seed}", tmp_path / f"grp{seed}")


# ---------------------------------------------------------------------------------------------------
# building blocks


def test_grouped_forward_matches_each_seeds_model(tiny_model_factory):
    torch.manual_seed(0)
    first = tiny_model_factory("xattn", seed=0)
    models = [first] + [type(first)(first.clip, first.config, generator=_gen(s)).eval() for s in (1, 2)]
    for m in models:  # non-zero gates so the cross-attention paths count
        with torch.no_grad():
            m.image_cross_attn.gate.fill_(0.3)
            m.text_cross_attn.gate.fill_(-0.2)
    images = torch.randn(6, 3, first.image_size, first.image_size)
    anchors, prompts = first.anchors_for(["brick", "grass"] * 3)
    with torch.no_grad():
        grouped = grouped_encode_image(models, images, prompt_embeddings=prompts)
        conditioned = grouped_condition_anchors(models, anchors, grouped.seg_tokens[-1])
        text = grouped_text_anchors(models, ["brick", "grass"])
        for g, model in enumerate(models):
            rows = slice(2 * g, 2 * g + 2)
            alone = model.encode_image(images[rows], prompt_embeddings=prompts[rows])
            for a, b in zip(grouped.seg_tokens, alone.seg_tokens, strict=True):
                torch.testing.assert_close(a[rows], b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(grouped.det_token[rows], alone.det_token, rtol=1e-5, atol=1e-5)
            expected = model.condition_anchors(anchors[rows], alone.seg_tokens[-1])
            torch.testing.assert_close(conditioned[rows], expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(text[g], model.text_anchors(["brick", "grass"]), rtol=1e-5, atol=1e-5)


def test_grouped_vv_batch_axis_attends_within_each_seed(tiny_model_factory):
    model = tiny_model_factory("baseline")
    images = torch.randn(6, 3, model.image_size, model.image_size)
    grouped = model.stage1_features(images, vv_axis="batch", groups=3)
    for g in range(3):
        alone = model.stage1_features(images[2 * g : 2 * g + 2], vv_axis="batch")
        for a, b in zip(grouped, alone, strict=True):
            torch.testing.assert_close(a[2 * g : 2 * g + 2], b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="groups=4 must be a positive divisor of the 6 images"):
        model.stage1_features(images, vv_axis="batch", groups=4)


def test_stacked_apply_gives_each_module_its_rows_and_gradients(tiny_model_factory):
    first = tiny_model_factory("baseline", seed=0)
    second = tiny_model_factory("baseline", seed=1)
    modules = [first.image_adapter["layer_adapters"][0], second.image_adapter["layer_adapters"][0]]
    x = torch.randn(4, 5, first.vision_width)
    out = stacked_apply(modules, x)
    torch.testing.assert_close(out[:2], modules[0](x[:2]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[2:], modules[1](x[2:]), rtol=1e-6, atol=1e-6)
    out[:2].sum().backward()
    assert modules[0].fc[0].weight.grad.abs().sum() > 0
    assert modules[1].fc[0].weight.grad is None or modules[1].fc[0].weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="5 rows cannot be split into 2 equal seed groups"):
        stacked_apply(modules, torch.randn(5, 3, first.vision_width))


def test_total_losses_equal_the_stage_losses():
    from aaclip_xattn.train.losses import stage1_loss, stage2_loss

    gen = torch.Generator().manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(2, 16, 8, generator=gen), dim=-1) for _ in range(4)]
    anchors = torch.nn.functional.normalize(torch.randn(2, 8, 2, generator=gen), dim=1)
    masks = (torch.rand(2, 1, 32, 32, generator=gen) > 0.7).float()
    labels = torch.tensor([0, 1])
    det = torch.randn(2, 8, generator=gen)
    for levels in ("last", "all"):
        assert torch.equal(
            stage1_total_loss(feats, anchors, masks, levels=levels),
            stage1_loss(feats, anchors, masks, levels=levels)[0],
        )
    assert torch.equal(
        stage2_total_loss(feats, det, anchors, masks, labels),
        stage2_loss(feats, det, anchors, masks, labels)[0],
    )


def test_train_seed_group_rejects_bad_groups(small_manifest_factory, tmp_path):
    cfg = _cfg()
    manifest = small_manifest_factory(0)
    with pytest.raises(ValueError, match=r"seeds must be distinct, got \[0, 0\]"):
        train_seed_group(
            cfg,
            [SeedMember(0, tmp_path / "a", manifest), SeedMember(0, tmp_path / "b", manifest)],
            arm="baseline",
        )
    with pytest.raises(ValueError, match="every seed needs its own run_dir"):
        train_seed_group(
            cfg,
            [SeedMember(0, tmp_path / "a", manifest), SeedMember(1, tmp_path / "a", manifest)],
            arm="baseline",
        )
    with pytest.raises(ValueError, match="unknown key"):
        SeedMember.from_mapping({"seed": 0, "run_dir": "a", "manifest_path": "m", "shot": 4})


def _gen(seed: int) -> torch.Generator:
    from aaclip_xattn.seeding import make_generator

    return make_generator(seed, "init")


# ---------------------------------------------------------------------------------------------------
# resume of an interrupted group


class _Killed(Exception):
    pass


def _kill_epoch(patch: pytest.MonkeyPatch, stage: str, epoch: int) -> None:
    """Raise from the group's epoch loop when ``stage`` reaches 0-based ``epoch`` (after the previous one saved)."""
    original = seed_batched._run_epoch

    def wrapper(*args, **kwargs):
        if kwargs["stage"] == stage and args[3] == epoch:
            raise _Killed(f"{stage} epoch {epoch}")
        return original(*args, **kwargs)

    patch.setattr(seed_batched, "_run_epoch", wrapper)


def _kill_save(patch: pytest.MonkeyPatch, stage: str, epoch: int, call: int) -> None:
    """Raise from the ``call``-th resume save (0-based) of ``stage`` after ``epoch``: a kill mid-save."""
    original = runner._save_resume
    calls = []

    def wrapper(path, save_stage, model, optimizer, scheduler, save_epoch, *args):
        if save_stage == stage and save_epoch == epoch:
            if len(calls) == call:
                raise _Killed(f"saving {stage} epoch {epoch}")
            calls.append(path)
        return original(path, save_stage, model, optimizer, scheduler, save_epoch, *args)

    patch.setattr(runner, "_save_resume", wrapper)


def _bits(run_dir: Path) -> dict[str, str]:
    """Fingerprints of the final adapters, cross-attention and Adam states of a run directory."""
    out = {}
    for stage in ("text", "image"):
        content = load_checkpoint_file(run_dir / f"{stage}_adapter.pth")
        for key in (f"{stage}_adapter", f"{stage}_cross_attn"):
            if key in content:
                out[key] = tensor_fingerprint(content[key])
        state = content[f"{stage}_optimizer"]["state"]
        out[f"{stage}_optimizer"] = tensor_fingerprint(
            {f"{i}.{k}": v for i, s in state.items() for k, v in s.items()}
        )
    return out


def _resume_epoch(run_dir: Path, name: str) -> int:
    return int(load_checkpoint_file(run_dir / RESUME_DIR / name)["epoch"])


def test_killed_group_resumes_bit_identical_to_an_uninterrupted_group(
    small_manifest_factory, tmp_path, monkeypatch
):
    # 4 images per seed at batch 2: 2 steps per epoch.
    cfg = _cfg(text_epoch=2, image_epoch=2, text_batch_size=2, image_batch_size=2)
    seeds = (0, 1)

    def members(prefix: str) -> list[SeedMember]:
        return [SeedMember(s, tmp_path / f"{prefix}{s}", small_manifest_factory(s, shot=2)) for s in seeds]

    full = train_seed_group(cfg, members("full"), arm="xattn_scratch")
    killed = members("killed")
    dirs = [m.run_dir for m in killed]
    # 1) dies during text epoch 2: both seeds saved text epoch 1, nothing final.
    with monkeypatch.context() as patch:
        _kill_epoch(patch, "text", 1)
        with pytest.raises(_Killed):
            train_seed_group(cfg, killed, arm="xattn_scratch")
    assert [_resume_epoch(d, "text.pth") for d in dirs] == [1, 1]
    assert not any((d / "text_adapter.pth").exists() for d in dirs)
    # 2) the rerun dies during image epoch 2.
    with monkeypatch.context() as patch:
        _kill_epoch(patch, "image", 1)
        with pytest.raises(_Killed):
            train_seed_group(cfg, killed, arm="xattn_scratch")
    assert [_resume_epoch(d, "text.pth") for d in dirs] == [2, 2]
    assert [_resume_epoch(d, "image.pth") for d in dirs] == [1, 1]
    # 3) the next rerun dies while saving image epoch 2: seed 0 saved it; seed 1's epoch-1 state was
    # already moved aside as its previous state, its new state not yet written.
    with monkeypatch.context() as patch:
        _kill_save(patch, "image", 2, call=1)
        with pytest.raises(_Killed):
            train_seed_group(cfg, killed, arm="xattn_scratch")
    assert _resume_epoch(dirs[0], "image.pth") == 2
    assert not (dirs[1] / RESUME_DIR / "image.pth").exists()
    assert [_resume_epoch(d, "image" + PREVIOUS_SUFFIX) for d in dirs] == [1, 1]
    # 4) the group continues both seeds after epoch 1 (seed 0 from its previous state) and completes.
    resumed = train_seed_group(cfg, killed, arm="xattn_scratch")
    for seed, done, again, run_dir in zip(seeds, full, resumed, dirs, strict=True):
        assert again["resumed_from"] == {"text": 2, "image": 1}, seed
        assert _bits(run_dir) == _bits(tmp_path / f"full{seed}"), seed
        assert again["final_fingerprints"] == done["final_fingerprints"]
        assert again["epoch_losses"] == done["epoch_losses"]
        assert again["steps_completed"] == done["steps_completed"] == {"text": 4, "image": 4}
        rows = read_train_log(run_dir / "train_log.csv")
        assert [(r["stage"], r["epoch"], r["steps"]) for r in rows] == [
            ("text", 1, 2),
            ("text", 2, 4),
            ("image", 1, 2),
            ("image", 2, 4),
        ]
    # A completed group rerun trains nothing more and keeps the weights.
    again = train_seed_group(cfg, killed, arm="xattn_scratch")
    assert [r["resumed_from"] for r in again] == [{"text": 2, "image": 2}] * 2
    assert _bits(dirs[1]) == _bits(tmp_path / "full1")
    # Another grouping (or a per-seed run) of the same seed is refused, naming the group.
    with pytest.raises(ResumeMismatchError, match=r"differing: seed_group"):
        train_seed_group(cfg, killed[:1], arm="xattn_scratch")
    with pytest.raises(ResumeMismatchError, match=r"differing: seed_group"):
        run_training(cfg, run_dir=dirs[0], manifest_path=killed[0].manifest_path, arm="xattn_scratch")


def test_group_resume_without_a_common_epoch_is_refused(small_manifest_factory, tmp_path):
    cfg = _cfg(text_epoch=2, image_epoch=0, text_batch_size=2)
    group = [SeedMember(s, tmp_path / f"grp{s}", small_manifest_factory(s, shot=2)) for s in (0, 1)]
    train_seed_group(cfg, group, arm="baseline")
    # Seed 0 keeps only text epoch 2, seed 1 only epoch 1: no epoch both can continue from.
    (tmp_path / "grp0" / RESUME_DIR / f"text{PREVIOUS_SUFFIX}").unlink()
    resume1 = tmp_path / "grp1" / RESUME_DIR
    (resume1 / f"text{PREVIOUS_SUFFIX}").replace(resume1 / "text.pth")
    with pytest.raises(
        SeedGroupResumeError,
        match=r"grp0/\.resume: seed 0 holds text resume state of epoch\(s\) \[2\], but the seed group "
        r"\[0, 1\] continues after epoch 1",
    ):
        train_seed_group(cfg, group, arm="baseline")
    records = train_seed_group(cfg, group, arm="baseline", restart=True)
    assert [r["resumed_from"]["text"] for r in records] == [0, 0]
    assert [r["steps_completed"]["text"] for r in records] == [4, 4]


@pytest.mark.parametrize(
    ("saved", "epochs", "expected"),
    [
        ([{}, {}], [2, 2], [0, 0]),  # fresh group
        ([{1: "p", 2: "c"}, {1: "c"}], [3, 3], [1, 1]),  # seed 0 one epoch ahead
        ([{2: "c"}, {2: "c"}], [2, 2], [2, 2]),  # completed
        ([{1: "c"}, {1: "p", 2: "c"}], [1, 3], [1, 2]),  # seed 0 finished its shorter schedule
        ([{1: "c"}, {2: "c", 3: "p"}], [1, 3], [1, 3]),  # both done
        ([{3: "c"}, {}], [4, 4], [0, 0]),  # seed 1 saved nothing: back to the start
    ],
)
def test_group_resume_epoch_is_the_last_epoch_every_unfinished_seed_completed(saved, epochs, expected):
    assert group_resume_epoch(saved, epochs) == expected
