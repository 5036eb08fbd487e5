"""Time the one-sort exact pixel metrics against the usual path on synthetic categories.

The usual path is what CLIP anomaly-detection code typically runs per category: scikit-learn's
``roc_auc_score`` and ``average_precision_score`` on the flattened pixels, plus the straightforward
200-threshold AUPRO loop (cflow-ad / APRIL-GAN) that relabels every mask at every threshold.
Ours computes pixel AUROC, AP, F1-max and exact AU-PRO from one sort (and, separately, the
``legacy200`` AUPRO from the same sort). The script also checks exactness: our AUROC and AP must equal
scikit-learn's, and our legacy200 must equal the naive loop, to 1e-9. It prints a table and asserts nothing.

Usage::

    python benchmarks/metrics_bench.py                      # 150 images at 256 and 518 px
    python benchmarks/metrics_bench.py --sizes 256 --images 50
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
from scipy import ndimage
from skimage import measure

from aaclip_xattn.evaluate.metrics import compute_pixel_metrics
from aaclip_xattn.seeding import make_numpy_generator

try:
    from sklearn.metrics import auc, average_precision_score, roc_auc_score
except ImportError as exc:  # scikit-learn is a test/benchmark dependency only
    raise SystemExit("metrics_bench.py needs scikit-learn (pip install -e '.[test]')") from exc


def make_category(n_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(maps float32 (N, S, S), masks bool (N, S, S))``: smooth maps, blob regions, 1/3 normal."""
    rng = make_numpy_generator(seed, "synthetic", size)
    masks = np.zeros((n_images, size, size), dtype=bool)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_images):
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(size / 60, size / 10, 2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        noise = rng.standard_normal((size // 8, size // 8)).astype(np.float32)
        smooth = ndimage.zoom(noise, size / noise.shape[0], order=1)[:size, :size]
        boost = ndimage.gaussian_filter(masks[i].astype(np.float32), sigma=size / 64) * 2.5
        maps[i] = smooth + boost + 0.1 * rng.standard_normal((size, size)).astype(np.float32)
    return maps, masks


def naive_legacy200(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The cflow-ad / APRIL-GAN AUPRO loop: 200 thresholds, every mask relabelled at every threshold."""
    lo, hi = float(maps.min()), float(maps.max())
    step = (hi - lo) / 200
    inverse = ~masks
    n_background = inverse.sum()
    pros, fprs = [], []
    for i in range(200):
        # float64 threshold: numpy then compares in float64, as the spec (and our legacy200) defines it
        binary = maps > np.float64(lo + i * step)
        pro = []
        for binary_map, mask in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(mask, connectivity=2)):
                hits = binary_map[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(hits / region.area)
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(inverse, binary).sum() / n_background)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[keep]))


def _timed(fn, *args, **kwargs):
    gc.collect()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def run(size: int, n_images: int, seed: int, skip_naive: bool) -> dict:
    """Benchmark one synthetic category and return one table row."""
    maps, masks = make_category(n_images, size, seed)
    ours, t_ours = _timed(compute_pixel_metrics, maps, masks)
    legacy, t_legacy = _timed(compute_pixel_metrics, maps, masks, aupro_mode="legacy200")
    y, s = masks.reshape(-1), maps.reshape(-1)
    sk_auroc, t_sk_auroc = _timed(roc_auc_score, y, s)
    sk_ap, t_sk_ap = _timed(average_precision_score, y, s)
    if skip_naive:
        naive, t_naive = float("nan"), float("nan")
    else:
        naive, t_naive = _timed(naive_legacy200, maps, masks)
    usual = t_sk_auroc + t_sk_ap + t_naive
    return {
        "size": size,
        "pixels_M": maps.size / 1e6,
        "ours_exact_s": t_ours,
        "ours_legacy200_s": t_legacy,
        "sklearn_auroc_s": t_sk_auroc,
        "sklearn_ap_s": t_sk_ap,
        "naive_legacy200_s": t_naive,
        "usual_total_s": usual,
        "ratio": usual / t_ours,
        "d_auroc": abs(ours["pixel_auroc"] - sk_auroc),
        "d_ap": abs(ours["pixel_ap"] - sk_ap),
        "d_legacy": abs(legacy["pixel_aupro"] - naive),
        "aupro_exact": ours["pixel_aupro"],
        "aupro_legacy200": legacy["pixel_aupro"],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run each size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 518], help="map side lengths in pixels")
    parser.add_argument("--images", type=int, default=150, help="images per synthetic category")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic maps")
    parser.add_argument("--skip_naive", action="store_true", help="skip the slow 200-threshold loop")
    args = parser.parse_args(argv)
    rows = [run(size, args.images, args.seed, args.skip_naive) for size in args.sizes]
    header = (
        f"{'size':>5} {'Mpx':>6} | {'ours exact':>10} {'ours leg200':>11} | {'sk AUROC':>8} {'sk AP':>7} "
        f"{'naive200':>8} {'usual':>7} | {'ratio':>6} | {'|dAUROC|':>8} {'|dAP|':>8} {'|dLeg|':>8} "
        f"| {'AUPRO ex':>8} {'leg200':>7}"
    )
    print(f"pixel metrics of one synthetic category, {args.images} images; times in seconds")
    print("usual = sklearn AUROC + sklearn AP + naive 200-threshold AUPRO loop; ratio = usual / ours exact")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['size']:>5} {r['pixels_M']:>6.1f} | {r['ours_exact_s']:>10.2f} {r['ours_legacy200_s']:>11.2f} | "
            f"{r['sklearn_auroc_s']:>8.2f} {r['sklearn_ap_s']:>7.2f} {r['naive_legacy200_s']:>8.2f} "
            f"{r['usual_total_s']:>7.2f} | {r['ratio']:>5.1f}x | {r['d_auroc']:>8.1e} {r['d_ap']:>8.1e} "
            f"{r['d_legacy']:>8.1e} | {r['aupro_exact']:>8.4f} {r['aupro_legacy200']:>7.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
