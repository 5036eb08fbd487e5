"""Measure training and evaluation throughput: the reference compute shape against the project's fast path.

One process, one run: for (a) the **reference** compute shape (fp32, TF32 off, gradients computed for the
whole backbone — ``requires_grad=True`` — batch 2, one seed, eager, explicit-softmax V-V attention) and
(b) the **fast** path (frozen backbone, ``resolve_perf(device)``: bf16 autocast, fused attention,
``torch.compile`` with eager fallback, TF32, channels-last, device-side loss; seed-batched training with
``--seeds`` seeds at batch 2 each) it times

* stage-1 training steps (frozen V-V features + text tower with the text adapters, batch ``--text_batch``
  per seed),
* stage-2 training steps (adapted image forward, loss, backward, Adam step; batch 2 per seed),
* evaluation (anomaly maps + raw image scores; batch 2 for the reference, ``--eval_batch`` for the fast
  path, which does not change a number) followed by the exact pixel and image metrics of the maps,

after ``--warmup`` untimed steps, and prints a table with images/s, the fast/reference ratios, the
fraction of the hardware limit, peak GPU memory, and a whole-study estimate. The hardware limit uses a
measured bf16 matmul peak (a large square bf16 product is timed first) and an analytic FLOP count of the
vision tower: evaluation costs one forward ``F`` per image, stage 2 a forward plus an input-gradient
backward (``2F``), stage 1 the unmodified pass plus the V-V pass from ``vv_start_block`` on. The study
estimate is 4 arms × 6 seeds of VisA → MVTec AD full-shot: 2162 training images × (5 stage-1 + 20
stage-2 epochs) and 1725 test images per run, at the measured rates.

Usage::

    python benchmarks/gpu_bench.py                       # ViT-L-14-336, random init, 518 px, cuda
    python benchmarks/gpu_bench.py --backbone tiny --device cpu --steps 2 --json /tmp/bench.json

JSON fields (``--json``): ``device``, ``versions``, ``backbone``, ``image_size``, ``tokens``,
``flops_per_image_forward``, ``peak_bf16_tflops``, ``settings`` (steps, warmup, seeds, batch, text_batch,
eval_batch), ``modes.{reference,fast}.{perf, stage1, stage2, eval}`` (each with ``images_per_s``,
``step_s``, ``images``, ``peak_mem_gib``; eval adds ``metrics_s``), ``compile_fell_back``, ``ratios``
(fast / reference per section), ``hardware_limit_images_per_s``, ``fraction_of_limit.{reference,fast}``,
``study_estimate_hours.{reference,fast,assumptions}``, ``wall_s``.

Running it on the device machine (see ``/work/.library/device/README.md``): the image has torch, timm,
scipy and the rest, but not open_clip. Once, here, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy wcwidth

then call the device tool's ``run`` with ``carry: [".whl"]``, ``timeout_s: 420`` and the command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && \\
        python3 benchmarks/gpu_bench.py --json $OUT/gpu_bench.json 2>&1 | tee $OUT/gpu_bench.log

It is sized to finish within 5 minutes on one H100/H200 (model build, compilation and ~10 timed steps
per section); lower ``--steps``/``--seeds`` if a run gets close. Nothing is asserted: the table is the
result (issue #8's targets: stage 2 ≥ 200 img/s and ≥ 15× the reference, evaluation ≥ 400 img/s and ≥ 10×).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

STUDY = {
    "arms": 4,
    "seeds": 6,
    "train_images": 2162,
    "stage1_epochs": 5,
    "stage2_epochs": 20,
    "test_images": 1725,
    "note": "VisA -> MVTec AD full-shot; fast path seed-batched (all seeds of an arm in one process)",
}
CATEGORIES = ("candle", "capsules")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure_bf16_peak(device: torch.device) -> float:
    """Return the measured bf16 matmul throughput in TFLOP/s (8192³ on CUDA, 512³ on CPU)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    reps = 10 if device.type == "cuda" else 3
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def vision_forward_flops(model: Any) -> float:
    """Return the FLOPs of one image through the vision tower (patch embedding, blocks), multiply-add = 2."""
    visual = model.clip.visual
    width = int(visual.transformer.width)
    layers = len(visual.transformer.resblocks)
    grid = int(model.grid_size)
    tokens = grid * grid + 1
    patch = int(visual.conv1.kernel_size[0])
    mlp = int(visual.transformer.resblocks[0].mlp.c_fc.out_features)
    per_block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    return float(2 * grid * grid * 3 * patch * patch * width + layers * per_block)


def _build(args: argparse.Namespace, device: torch.device, count: int) -> list[Any]:
    from aaclip_xattn.factory import create_model

    image_size = args.image_size
    if image_size is None and args.backbone == "ViT-L-14-336":
        image_size = 518
    first = create_model(args.kind, args.backbone, image_size=image_size, device=device)
    models = [first] + [type(first)(first.clip, first.config) for _ in range(count - 1)]
    return [m.to(device) for m in models]


def _timed(step, *, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / max(steps, 1)


def _inputs(count: int, size: int, device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    images = torch.randn(count, 3, size, size, generator=gen).to(device)
    masks = torch.zeros(count, 1, size, size)
    masks[1::2, :, size // 4 : size // 2, size // 3 : size // 2] = 1
    labels = torch.tensor([i % 2 for i in range(count)])
    return {"images": images, "masks": masks.to(device), "labels": labels.to(device)}


def bench_mode(args: argparse.Namespace, device: torch.device, mode: str) -> dict[str, Any]:
    """Time stage 1, stage 2 and evaluation for ``mode`` (``reference`` or ``fast``)."""
    from aaclip_xattn import model as model_lib
    from aaclip_xattn.evaluate.metrics import compute_image_metrics, compute_pixel_metrics
    from aaclip_xattn.perf import PerfConfig, autocast, backend_settings, compile_with_fallback, resolve_perf
    from aaclip_xattn.train.seed_batched import (
        grouped_condition_anchors,
        grouped_encode_image,
        grouped_text_anchors,
        stage1_total_loss,
        stage2_total_loss,
    )

    reference = mode == "reference"
    perf = PerfConfig() if reference else resolve_perf(device, overrides=_perf_overrides(args))
    if reference and device.type == "cuda":
        perf = PerfConfig(reproduce_reference=True)
    seeds = 1 if reference else args.seeds
    out: dict[str, Any] = {"perf": perf.to_dict(), "seeds": seeds}
    gen = torch.Generator().manual_seed(0)
    with backend_settings(perf, device):
        _reset_memory(device)
        models = _build(args, device, seeds)
        first = models[0]
        if reference:
            first.clip.requires_grad_(True)  # the reference computes gradients for the whole backbone
        size = first.image_size
        vv_groups = seeds

        # ---------------- stage 1 ----------------
        batch1 = args.text_batch * seeds
        data1 = _inputs(batch1, size, device, gen)
        text_opts = [
            torch.optim.Adam(m.text_adapter.parameters(), lr=1e-5, betas=(0.5, 0.999)) for m in models
        ]
        categories = [CATEGORIES[i % 2] for i in range(args.text_batch)]

        def stage1_step() -> None:
            with torch.no_grad(), autocast(perf, device):
                feats = first.stage1_features(
                    data1["images"], vv_axis="batch", fused=perf.fused_attention, groups=vv_groups
                )
            feats = [f.float() for f in feats]
            with autocast(perf, device):
                anchors = grouped_text_anchors(models, list(CATEGORIES))
                idx = torch.tensor([CATEGORIES.index(c) for c in categories], device=device)
                rows = torch.cat([anchors[g][idx] for g in range(seeds)])
                rows = grouped_condition_anchors(models, rows, feats[-1])
                losses = []
                for g in range(seeds):
                    sl = slice(g * args.text_batch, (g + 1) * args.text_batch)
                    losses.append(
                        stage1_total_loss(
                            [f[sl] for f in feats], rows[sl].float(), data1["masks"][sl], levels="last"
                        )
                    )
            for opt in text_opts:
                opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for opt in text_opts:
                opt.step()
            if perf.device_loss is False:
                float(losses[0].detach())  # the plain loop's per-step host read

        _reset_memory(device)
        step_s = _timed(stage1_step, warmup=args.warmup, steps=args.steps, device=device)
        out["stage1"] = _section(batch1, step_s, device)

        # ---------------- stage 2 ----------------
        for m in models:
            m.text_adapter.requires_grad_(False)
        with torch.no_grad():
            anchors_all = [m.text_anchors(list(CATEGORIES)).detach() for m in models]
        batch2 = args.batch * seeds
        data2 = _inputs(batch2, size, device, gen)
        if perf.channels_last:
            data2["images"] = data2["images"].contiguous(memory_format=torch.channels_last)
        image_opts = [
            torch.optim.Adam(m.image_adapter.parameters(), lr=5e-4, betas=(0.5, 0.999)) for m in models
        ]
        idx2 = torch.tensor([i % 2 for i in range(args.batch)], device=device)
        anchors2 = torch.cat([a[idx2] for a in anchors_all])
        prompts2 = None
        if hasattr(first, "image_cross_attn"):
            with torch.no_grad():
                prompts2 = torch.cat([m.prompt_embeddings(list(CATEGORIES))[idx2] for m in models])
        forward = {"fn": compile_with_fallback(grouped_encode_image, perf, name="bench image forward")}

        def stage2_step() -> None:
            with autocast(perf, device):
                feats = forward["fn"](models, data2["images"], prompt_embeddings=prompts2)
                seg = [t.float() for t in feats.seg_tokens]
                anchors = grouped_condition_anchors(models, anchors2, seg[-1])
                losses = []
                for g in range(seeds):
                    sl = slice(g * args.batch, (g + 1) * args.batch)
                    losses.append(
                        stage2_total_loss(
                            [t[sl] for t in seg],
                            feats.det_token[sl].float(),
                            anchors[sl].float(),
                            data2["masks"][sl],
                            data2["labels"][sl],
                        )
                    )
            for opt in image_opts:
                opt.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for opt in image_opts:
                opt.step()
            if perf.device_loss is False:
                float(losses[0].detach())

        _reset_memory(device)
        backward_failed = False
        if perf.compile:
            # The compiled backward is built lazily, outside compile_with_fallback's reach: try one step.
            try:
                stage2_step()
            except Exception as exc:  # noqa: BLE001 - report and go on eager
                print(
                    f"compiled stage-2 step failed ({type(exc).__name__}: {exc}); running eager",
                    file=sys.stderr,
                )
                forward["fn"] = grouped_encode_image
                backward_failed = True
        step_s = _timed(stage2_step, warmup=args.warmup, steps=args.steps, device=device)
        out["stage2"] = _section(batch2, step_s, device)
        out["compile_fell_back"] = backward_failed or bool(getattr(forward["fn"], "failed", False))

        # ---------------- evaluation ----------------
        first.clip.requires_grad_(False)
        eval_batch = args.batch if reference else args.eval_batch
        data3 = _inputs(eval_batch, size, device, gen)
        anchors3 = anchors_all[0][torch.tensor([i % 2 for i in range(eval_batch)], device=device)]
        prompts3 = None
        if hasattr(first, "image_cross_attn"):
            with torch.no_grad():
                prompts3 = first.prompt_embeddings(list(CATEGORIES))[
                    anchors3.new_tensor([i % 2 for i in range(eval_batch)]).long()
                ]
        encode = compile_with_fallback(first.encode_image, perf, name="bench eval forward")
        collected: list[tuple[torch.Tensor, torch.Tensor]] = []

        def eval_step() -> None:
            with torch.inference_mode(), autocast(perf, device):
                feats = encode(data3["images"], prompt_embeddings=prompts3)
                anchors = first.condition_anchors(anchors3.to(feats.det_token.dtype), feats.seg_tokens[-1])
                maps = model_lib.anomaly_map(feats.seg_tokens, anchors, size, "industrial").float()
                scores = model_lib.image_score(feats.det_token, anchors).float()
            collected.append((maps, scores))

        _reset_memory(device)
        step_s = _timed(eval_step, warmup=args.warmup, steps=args.steps, device=device)
        timed = collected[args.warmup :]
        start = time.perf_counter()
        maps = torch.cat([m for m, _ in timed]).cpu().numpy()
        scores = torch.cat([s for _, s in timed]).cpu().numpy()
        masks = np.repeat(data3["masks"][:, 0].cpu().numpy() > 0, len(timed), axis=0)
        labels = np.tile(data3["labels"].cpu().numpy(), len(timed))
        compute_pixel_metrics(maps, masks)
        compute_image_metrics(scores, labels)
        metrics_s = time.perf_counter() - start
        images = eval_batch * len(timed)
        out["eval"] = _section(eval_batch, step_s + metrics_s / max(len(timed), 1), device)
        out["eval"]["metrics_s"] = metrics_s
        out["eval"]["images"] = images
        out["flops_per_image_forward"] = vision_forward_flops(first)
        out["tokens"] = int(first.grid_size) ** 2 + 1
        out["image_size"] = int(size)
        out["vv_fraction"] = 1 - first.config.vv_start_block / len(first.clip.visual.transformer.resblocks)
    return out


def _perf_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.no_compile:
        overrides["compile"] = False
    if args.amp:
        overrides["amp"] = True
    return overrides


def _section(images: int, step_s: float, device: torch.device) -> dict[str, Any]:
    return {
        "images_per_s": images / step_s if step_s > 0 else math.inf,
        "step_s": step_s,
        "images": images,
        "peak_mem_gib": _peak_memory_gib(device),
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Add ratios, hardware limits, fractions of the limit and the study estimate to ``result``."""
    ref, fast = result["modes"]["reference"], result["modes"]["fast"]
    sections = ("stage1", "stage2", "eval")
    result["ratios"] = {s: fast[s]["images_per_s"] / ref[s]["images_per_s"] for s in sections}
    flops = result["flops_per_image_forward"]
    peak = result["peak_bf16_tflops"] * 1e12
    cost = {"stage1": flops * (1 + ref["vv_fraction"]), "stage2": 2 * flops, "eval": flops}
    result["hardware_limit_images_per_s"] = {s: peak / cost[s] for s in sections}
    result["fraction_of_limit"] = {
        mode: {
            s: result["modes"][mode][s]["images_per_s"] / result["hardware_limit_images_per_s"][s]
            for s in sections
        }
        for mode in ("reference", "fast")
    }
    runs = STUDY["arms"] * STUDY["seeds"]
    hours = {}
    for mode in ("reference", "fast"):
        rates = result["modes"][mode]
        seconds = runs * (
            STUDY["train_images"] * STUDY["stage1_epochs"] / rates["stage1"]["images_per_s"]
            + STUDY["train_images"] * STUDY["stage2_epochs"] / rates["stage2"]["images_per_s"]
            + STUDY["test_images"] / rates["eval"]["images_per_s"]
        )
        hours[mode] = seconds / 3600
    result["study_estimate_hours"] = {**hours, "assumptions": dict(STUDY)}
    return result


def render_table(result: dict[str, Any]) -> str:
    """Return the printed table."""
    lines = [
        f"device: {result['device']} | backbone {result['backbone']} @ {result['image_size']} px "
        f"({result['tokens']} tokens, {result['flops_per_image_forward'] / 1e12:.3f} TFLOP/img fwd) | "
        f"bf16 matmul peak {result['peak_bf16_tflops']:.1f} TFLOP/s",
        f"{'section':<8} {'reference img/s':>16} {'fast img/s':>12} {'ratio':>8} {'limit img/s':>12} "
        f"{'ref %lim':>9} {'fast %lim':>10} {'ref GiB':>8} {'fast GiB':>9}",
    ]
    for s in ("stage1", "stage2", "eval"):
        ref, fast = result["modes"]["reference"][s], result["modes"]["fast"][s]

        def gib(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        lines.append(
            f"{s:<8} {ref['images_per_s']:>16.1f} {fast['images_per_s']:>12.1f} {result['ratios'][s]:>8.2f} "
            f"{result['hardware_limit_images_per_s'][s]:>12.1f} "
            f"{100 * result['fraction_of_limit']['reference'][s]:>8.1f}% "
            f"{100 * result['fraction_of_limit']['fast'][s]:>9.1f}% "
            f"{gib(ref['peak_mem_gib']):>8} {gib(fast['peak_mem_gib']):>9}"
        )
    est = result["study_estimate_hours"]
    lines.append(
        f"study estimate (4 arms x 6 seeds, VisA->MVTec full-shot): reference {est['reference']:.1f} h, "
        f"fast {est['fast']:.1f} h | fast path: {result['settings']['seeds']} seeds x batch "
        f"{result['settings']['batch']}, eval batch {result['settings']['eval_batch']}, "
        f"compile fell back: {result['compile_fell_back']} | wall {result['wall_s']:.0f} s"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="ViT-L-14-336", help="open_clip name or 'tiny' (random init)")
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="input size (default: 518 for ViT-L-14-336, else the backbone's)",
    )
    parser.add_argument("--kind", default="baseline", choices=["baseline", "xattn"], help="model kind")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per section")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed warm-up steps per section (default 3 on cuda, 1 on cpu)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per seed-batched group, fast path (default 8 on cuda, 2 on cpu)",
    )
    parser.add_argument("--batch", type=int, default=2, help="stage-2 batch per seed (the reference's 2)")
    parser.add_argument(
        "--text_batch", type=int, default=16, help="stage-1 batch per seed (the reference's 16)"
    )
    parser.add_argument(
        "--eval_batch",
        type=int,
        default=None,
        help="evaluation batch of the fast path (default 32 on cuda, 4 on cpu)",
    )
    parser.add_argument("--no_compile", action="store_true", help="fast path without torch.compile")
    parser.add_argument("--amp", action="store_true", help="force bf16 autocast on (e.g. on CPU)")
    parser.add_argument("--json", default=None, help="write the result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table (and write the JSON)."""
    args = build_parser().parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    for key, on_cuda, on_cpu in (("warmup", 3, 1), ("seeds", 8, 2), ("eval_batch", 32, 4)):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)
    if args.steps < 1 or args.warmup < 0 or args.seeds < 1 or args.batch < 1:
        print(
            "gpu_bench.py: error: --steps and --seeds, --batch must be >= 1, --warmup >= 0", file=sys.stderr
        )
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench.py: error: --device cuda but torch sees no GPU; use --device cpu", file=sys.stderr)
        return 2
    import open_clip

    start = time.perf_counter()
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()})",
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "python": platform.python_version(),
        },
        "backbone": args.backbone,
        "peak_bf16_tflops": measure_bf16_peak(device),
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "seeds": args.seeds,
            "batch": args.batch,
            "text_batch": args.text_batch,
            "eval_batch": args.eval_batch,
            "kind": args.kind,
        },
        "modes": {},
    }
    for mode in ("reference", "fast"):
        with contextlib.ExitStack():
            result["modes"][mode] = bench_mode(args, device, mode)
    fast = result["modes"]["fast"]
    for key in ("flops_per_image_forward", "tokens", "image_size"):
        result[key] = fast.pop(key)
        result["modes"]["reference"].pop(key)
    result["compile_fell_back"] = fast.pop("compile_fell_back")
    result["modes"]["reference"].pop("compile_fell_back")
    result["wall_s"] = time.perf_counter() - start
    summarize(result)
    print(render_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
