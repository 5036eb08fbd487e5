"""Exact metrics against independent oracles: a brute-force loop over thresholds, scikit-learn, invariances."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from aaclip_xattn.errors import UndefinedMetricWarning
from aaclip_xattn.evaluate.metrics import (
    IMAGE_METRICS,
    METRIC_NAMES,
    PIXEL_METRICS,
    PixelMetricAccumulator,
    compute_image_metrics,
    compute_pixel_metrics,
    label_regions,
    list_aupro_modes,
    mean_over_categories,
)

TOL = 1e-9


# --------------------------------------------------------------------------------------------------
# independent oracles (loops over every distinct threshold; skimage labelling)


def _regions(masks: np.ndarray) -> list[np.ndarray]:
    out = []
    for index, mask in enumerate(masks):
        labelled = measure.label(mask, connectivity=2)
        for region_id in range(1, labelled.max() + 1):
            full = np.zeros(masks.shape, dtype=bool)
            full[index] = labelled == region_id
            out.append(full)
    return out


def _oracle_integrals(fprs, tprs, precisions, pros, limit):
    """Integrate (FPR, TPR), (Recall, Precision), (FPR, PRO) point lists that start with the zero point."""
    auroc = 0.0
    ap = 0.0
    for k in range(1, len(fprs)):
        auroc += (fprs[k] - fprs[k - 1]) * (tprs[k] + tprs[k - 1]) / 2
        ap += (tprs[k] - tprs[k - 1]) * precisions[k]
    f1 = max(
        (2 * p * r / (p + r) for p, r in zip(precisions[1:], tprs[1:], strict=True) if p + r > 0), default=0.0
    )
    aupro = None
    if pros is not None:
        area = 0.0
        for k in range(1, len(fprs)):
            x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
            if x1 <= limit:
                area += (x1 - x0) * (y0 + y1) / 2
            else:
                if x0 < limit:
                    y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                    area += (limit - x0) * (y0 + y_at) / 2
                break
        aupro = area / limit
    return auroc, ap, f1, aupro


def oracle_pixel_metrics(maps, masks, limit=0.3):
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    regions = _regions(masks)
    background = ~masks
    n_pos, n_bg = masks.sum(), background.sum()
    fprs, tprs, precisions, pros = [0.0], [0.0], [None], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        tp = int((pred & masks).sum())
        fp = int((pred & background).sum())
        fprs.append(fp / n_bg)
        tprs.append(tp / n_pos)
        precisions.append(tp / (tp + fp))
        pros.append(min(1.0, float(np.mean([(pred & r).sum() / r.sum() for r in regions]))))
    auroc, ap, f1, aupro = _oracle_integrals(fprs, tprs, precisions, pros, limit)
    return {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1_max": f1, "pixel_aupro": aupro}


def oracle_image_metrics(scores, labels):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    fprs, tprs, precisions = [0.0], [0.0], [None]
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        fprs.append(fp / (~labels).sum())
        tprs.append(tp / labels.sum())
        precisions.append(tp / (tp + fp))
    auroc, ap, f1, _ = _oracle_integrals(fprs, tprs, precisions, None, 0.3)
    return {"image_auroc": auroc, "image_ap": ap, "image_f1_max": f1}


def naive_legacy200(maps, masks, limit=0.3):
    """The cflow-ad / APRIL-GAN loop: relabel every mask at every one of the 200 thresholds."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    lo, hi = maps.min(), maps.max()
    step = (hi - lo) / 200
    inverse = ~masks
    pros, fprs = [], []
    for i in range(200):
        th = lo + i * step
        binary = maps > th
        pro = []
        for binary_map, mask in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(mask, connectivity=2)):
                hits = binary_map[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(hits / region.area)
        pros.append(np.mean(pro))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


# --------------------------------------------------------------------------------------------------
# inputs


def _blob_masks(rng, n, size, n_blobs=3, empty_first=True):
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(1 if empty_first else 0, n):
        for _ in range(rng.integers(1, n_blobs + 1)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.uniform(0.8, size / 5)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return masks


def _random_case(seed, *, n=4, size=7, levels=None, density=0.25):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, size, size)) < density
    masks[0] = False  # one normal image
    scores = rng.random((n, size, size)) + 0.4 * masks
    if levels is not None:
        scores = np.round(scores * levels) / levels
    return scores.astype(np.float32), masks


def _assert_metrics_close(got, want, tol=TOL):
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tol, rel=0), name


def _adversarial_cases():
    rng = np.random.default_rng(7)
    cases = {}
    # several regions per image, diagonal contacts, ties everywhere
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 1, 1] = masks[1, 2, 2] = masks[1, 3, 3] = True  # one 8-connected diagonal region
    masks[1, 6:8, 5:8] = True
    masks[2, 0, 7] = True  # single-pixel region
    masks[2, 3:6, 0:3] = True
    masks[2, 7, 7] = True
    scores = np.round(rng.random((3, 8, 8)) * 3) / 3 + 0.2 * masks
    cases["ties_several_regions"] = (scores.astype(np.float32), masks)
    cases["constant_map"] = (np.full((3, 8, 8), 0.7, dtype=np.float32), masks)
    outlier = rng.random((3, 8, 8)).astype(np.float32)
    outlier[0, 4, 4] = 1e30
    cases["huge_outlier_background"] = (outlier, masks)
    outlier2 = outlier.copy()
    outlier2[0, 4, 4] = 0.5
    outlier2[2, 0, 7] = 1e30
    cases["huge_outlier_in_tiny_region"] = (outlier2, masks)
    negative = (rng.standard_normal((3, 8, 8)) * 1e-3).astype(np.float32)
    negative[0, 0, :4] = [-0.0, 0.0, -0.0, 0.0]
    cases["negative_and_signed_zero"] = (negative, masks)
    two_levels = np.where(rng.random((3, 8, 8)) < 0.5, 1.0, 2.0).astype(np.float32)
    cases["two_levels"] = (two_levels, masks)
    return cases


# --------------------------------------------------------------------------------------------------
# brute-force oracle


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 4])
def test_pixel_metrics_equal_brute_force_oracle_on_random_maps(seed, levels):
    maps, masks = _random_case(seed, levels=levels)
    _assert_metrics_close(compute_pixel_metrics(maps, masks), oracle_pixel_metrics(maps, masks))


@pytest.mark.parametrize("name", list(_adversarial_cases()))
def test_pixel_metrics_equal_brute_force_oracle_on_adversarial_maps(name):
    maps, masks = _adversarial_cases()[name]
    _assert_metrics_close(compute_pixel_metrics(maps, masks), oracle_pixel_metrics(maps, masks))


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.77, 1.0])
def test_aupro_interpolates_at_any_fpr_limit_like_the_oracle(limit):
    maps, masks = _random_case(11, levels=6, size=9)
    got = compute_pixel_metrics(maps, masks, fpr_limit=limit)["pixel_aupro"]
    assert got == pytest.approx(oracle_pixel_metrics(maps, masks, limit)["pixel_aupro"], abs=TOL)


def test_float64_maps_are_ranked_exactly_and_match_the_float32_path():
    maps, masks = _adversarial_cases()["negative_and_signed_zero"]
    as32 = compute_pixel_metrics(maps, masks)
    as64 = compute_pixel_metrics(maps.astype(np.float64), masks)
    _assert_metrics_close(as32, as64, tol=1e-12)
    fine = np.random.default_rng(3).random((3, 8, 8))  # values that float32 would merge must stay apart
    fine[0, 0, 0], fine[0, 0, 1] = 0.5, 0.5 + 1e-12
    _assert_metrics_close(compute_pixel_metrics(fine, masks), oracle_pixel_metrics(fine, masks))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 3])
def test_image_metrics_equal_brute_force_oracle(seed, levels):
    rng = np.random.default_rng(100 + seed)
    labels = rng.random(30) < 0.6
    labels[:2] = [0, 1]
    scores = rng.random(30) + 0.3 * labels
    if levels:
        scores = np.round(scores * levels) / levels
    _assert_metrics_close(compute_image_metrics(scores, labels), oracle_image_metrics(scores, labels))


# --------------------------------------------------------------------------------------------------
# scikit-learn oracle


def _sklearn_f1_max(y, s):
    precision, recall, _ = precision_recall_curve(y, s)
    keep = precision + recall > 0
    return float(np.max(2 * precision[keep] * recall[keep] / (precision[keep] + recall[keep])))


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_ap_f1_equal_scikit_learn(ties):
    rng = np.random.default_rng(5)
    masks = _blob_masks(rng, 6, 24)
    maps = rng.random((6, 24, 24)) + 0.5 * masks
    if ties:
        maps = np.round(maps * 10) / 10
    maps = maps.astype(np.float32)
    got = compute_pixel_metrics(maps, masks)
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert got["pixel_f1_max"] == pytest.approx(_sklearn_f1_max(y, s), abs=TOL)


@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_equal_scikit_learn(ties):
    rng = np.random.default_rng(9)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = rng.standard_normal(200) + labels
    if ties:
        scores = np.round(scores)
    got = compute_image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=TOL)
    assert got["image_f1_max"] == pytest.approx(_sklearn_f1_max(labels, scores), abs=TOL)


# --------------------------------------------------------------------------------------------------
# invariances


@pytest.mark.parametrize(
    "transform",
    [np.exp, lambda x: 3.0 * x - 7.0, lambda x: x**3, np.arctan],
    ids=["exp", "affine", "cube", "atan"],
)
def test_exact_metrics_are_invariant_under_strictly_increasing_transforms(transform):
    maps, masks = _random_case(21, levels=8, size=10)
    maps = maps.astype(np.float64)
    base = compute_pixel_metrics(maps, masks)
    _assert_metrics_close(compute_pixel_metrics(transform(maps), masks), base, tol=1e-12)
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2))
    _assert_metrics_close(
        compute_image_metrics(transform(scores), labels), compute_image_metrics(scores, labels), tol=1e-12
    )


def test_pixel_metrics_are_invariant_to_image_order_and_batch_accumulation():
    rng = np.random.default_rng(31)
    masks = _blob_masks(rng, 9, 16)
    maps = (rng.random((9, 16, 16)) + 0.4 * masks).astype(np.float32)
    base = compute_pixel_metrics(maps, masks)
    order = rng.permutation(9)
    _assert_metrics_close(compute_pixel_metrics(maps[order], masks[order]), base, tol=1e-12)
    accumulator = PixelMetricAccumulator()
    for start in (0, 2, 7):
        stop = {0: 2, 2: 7, 7: 9}[start]
        accumulator.update(maps[start:stop], masks[start:stop])
    assert accumulator.n_images == 9
    _assert_metrics_close(accumulator.compute(), base, tol=1e-12)


def test_category_metrics_are_isolated_from_other_categories():
    rng = np.random.default_rng(41)
    masks_a, masks_b = _blob_masks(rng, 4, 12), _blob_masks(rng, 5, 12)
    maps_a = (rng.random((4, 12, 12)) + masks_a).astype(np.float32)
    maps_b = (rng.random((5, 12, 12)) * 5).astype(np.float32)
    alone = compute_pixel_metrics(maps_a, masks_a)
    rows = [alone, compute_pixel_metrics(maps_b, masks_b)]
    _assert_metrics_close(compute_pixel_metrics(maps_a, masks_a), alone, tol=0)
    means, skipped = mean_over_categories(rows, PIXEL_METRICS)
    for name in PIXEL_METRICS:
        assert means[name] == pytest.approx((rows[0][name] + rows[1][name]) / 2, abs=1e-15)
        assert skipped[name] == 0


# --------------------------------------------------------------------------------------------------
# sanity table (metrics-and-datasets.md §5)


def test_perfect_inverted_and_constant_maps_give_the_sanity_values():
    rng = np.random.default_rng(51)
    masks = _blob_masks(rng, 5, 20)
    pi = masks.mean()
    perfect = compute_pixel_metrics(
        masks.astype(np.float32) + 0.1 * rng.random((5, 20, 20)).astype(np.float32), masks
    )
    for name in PIXEL_METRICS:
        assert perfect[name] == pytest.approx(1.0, abs=1e-12), name
    inverted = compute_pixel_metrics(-masks.astype(np.float32), masks)
    assert inverted["pixel_auroc"] == 0.0
    assert inverted["pixel_aupro"] == 0.0
    constant = compute_pixel_metrics(np.zeros((5, 20, 20), dtype=np.float32), masks)
    assert constant["pixel_auroc"] == pytest.approx(0.5, abs=1e-15)
    assert constant["pixel_ap"] == pytest.approx(pi, abs=1e-15)
    assert constant["pixel_f1_max"] == pytest.approx(2 * pi / (1 + pi), abs=1e-15)
    assert constant["pixel_aupro"] == pytest.approx(0.15, abs=1e-15)


def test_iid_random_maps_give_chance_values():
    rng = np.random.default_rng(61)
    masks = _blob_masks(rng, 20, 48, n_blobs=4)
    got = compute_pixel_metrics(rng.random((20, 48, 48)).astype(np.float32), masks)
    assert got["pixel_auroc"] == pytest.approx(0.5, abs=0.02)
    assert got["pixel_ap"] == pytest.approx(masks.mean(), abs=0.02)
    assert got["pixel_aupro"] == pytest.approx(0.15, abs=0.01)


# --------------------------------------------------------------------------------------------------
# test_common style: every metric


def _metric(name, maps, masks, *, invert=False):
    sign = -1.0 if invert else 1.0
    if name in IMAGE_METRICS:
        return compute_image_metrics(sign * maps.max(axis=(1, 2)), masks.any(axis=(1, 2)))[name]
    return compute_pixel_metrics(sign * maps, masks)[name]


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_is_order_invariant_perfect_is_one_and_inverted_is_minimal(name):
    rng = np.random.default_rng(71)
    masks = _blob_masks(rng, 8, 14)
    noisy = (rng.random((8, 14, 14)) + 0.6 * masks).astype(np.float32)
    order = rng.permutation(8)
    assert _metric(name, noisy[order], masks[order]) == pytest.approx(_metric(name, noisy, masks), abs=1e-12)
    perfect = masks.astype(np.float32) * 2 + rng.random((8, 14, 14)).astype(np.float32)
    assert _metric(name, perfect, masks) == pytest.approx(1.0, abs=1e-12)
    inverted = _metric(name, perfect, masks, invert=True)
    if name.endswith(("auroc", "aupro")):
        assert inverted == pytest.approx(0.0, abs=1e-12)
    else:  # AP and F1-max bottom out near the positive rate, not at 0
        assert inverted < _metric(name, noisy, masks)


# --------------------------------------------------------------------------------------------------
# undefined cases


def test_single_class_image_sets_give_nan_with_a_warning():
    for labels in ([0, 0, 0], [1, 1, 1]):
        with pytest.warns(
            UndefinedMetricWarning,
            match=r"image_(auroc|ap|f1_max) is undefined \(no (anomalous|normal) images among 3\)",
        ):
            got = compute_image_metrics([0.1, 0.5, 0.9], labels)
        assert all(math.isnan(got[name]) for name in IMAGE_METRICS)


def test_maskless_category_gives_nan_pixel_metrics():
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    with pytest.warns(UndefinedMetricWarning, match="no anomalous pixels among 75"):
        got = compute_pixel_metrics(maps, np.zeros((3, 5, 5), dtype=bool))
    assert all(math.isnan(got[name]) for name in PIXEL_METRICS)


def test_all_anomalous_pixels_make_auroc_and_aupro_nan_but_keep_ap():
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    with pytest.warns(UndefinedMetricWarning, match="no background pixels"):
        got = compute_pixel_metrics(maps, np.ones((2, 4, 4), dtype=bool))
    assert math.isnan(got["pixel_auroc"]) and math.isnan(got["pixel_aupro"])
    assert got["pixel_ap"] == 1.0 and got["pixel_f1_max"] == 1.0


def test_mean_over_categories_skips_nan_and_reports_the_count():
    rows = [
        {"image_auroc": 0.8, "pixel_auroc": 0.9},
        {"image_auroc": math.nan, "pixel_auroc": 0.7},
        {"image_auroc": math.nan, "pixel_auroc": math.nan},
    ]
    means, skipped = mean_over_categories(rows, ["image_auroc", "pixel_auroc"])
    assert means == {"image_auroc": 0.8, "pixel_auroc": pytest.approx(0.8)}
    assert skipped == {"image_auroc": 2, "pixel_auroc": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" RuntimeWarning
        means, skipped = mean_over_categories(rows[2:], ["image_auroc"])
    assert math.isnan(means["image_auroc"]) and skipped["image_auroc"] == 1


# --------------------------------------------------------------------------------------------------
# regions


def test_label_regions_uses_8_connectivity_and_unique_ids_across_images():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal: one region under 8-connectivity
    masks[0, 4, 4] = True
    masks[1, 0:2, 0:2] = True
    labels, areas = label_regions(masks)
    assert areas.tolist() == [50 - 7, 2, 1, 4]
    assert labels[0, 0, 0] == labels[0, 1, 1] != labels[0, 4, 4]
    assert set(np.unique(labels[1])) == {0, 3}


# --------------------------------------------------------------------------------------------------
# legacy200


@pytest.mark.parametrize("seed", range(3))
def test_legacy200_equals_the_naive_relabelling_loop(seed):
    rng = np.random.default_rng(200 + seed)
    masks = _blob_masks(rng, 4, 16)
    maps = rng.random((4, 16, 16)) + 0.5 * masks
    if seed == 2:
        maps = np.round(maps * 7) / 7  # ties and thresholds landing on score values
    maps = maps.astype(np.float32)
    got = compute_pixel_metrics(maps, masks, aupro_mode="legacy200")["pixel_aupro"]
    assert got == pytest.approx(naive_legacy200(maps, masks), abs=TOL)


def test_legacy200_changes_under_a_monotone_rescaling_while_exact_does_not():
    rng = np.random.default_rng(300)
    masks = _blob_masks(rng, 4, 16)
    maps = (rng.random((4, 16, 16)) + 0.5 * masks).astype(np.float64)
    skewed = np.exp(6 * maps)
    legacy = compute_pixel_metrics(maps, masks, aupro_mode="legacy200")["pixel_aupro"]
    legacy_skewed = compute_pixel_metrics(skewed, masks, aupro_mode="legacy200")["pixel_aupro"]
    assert legacy_skewed == pytest.approx(naive_legacy200(skewed, masks), abs=TOL)
    assert abs(legacy - legacy_skewed) > 1e-3
    exact = compute_pixel_metrics(maps, masks)["pixel_aupro"]
    assert compute_pixel_metrics(skewed, masks)["pixel_aupro"] == pytest.approx(exact, abs=1e-12)


def test_legacy200_on_a_constant_map_is_nan():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, 1, 1] = True
    with pytest.warns(UndefinedMetricWarning, match="constant score map"):
        got = compute_pixel_metrics(np.ones((2, 4, 4), dtype=np.float32), masks, aupro_mode="legacy200")
    assert math.isnan(got["pixel_aupro"])
    assert "legacy200" in list_aupro_modes()


# --------------------------------------------------------------------------------------------------
# input validation


def test_non_finite_scores_are_rejected_naming_the_argument():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    maps[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"maps must be finite; found 1 non-finite value\(s\) \(e.g. nan\)"):
        compute_pixel_metrics(maps, np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="scores must be finite"):
        compute_image_metrics([0.1, np.inf], [0, 1])


def test_shape_and_value_errors_name_the_argument_and_echo_what_was_found():
    with pytest.raises(
        ValueError, match=r"masks must have the shape of the scores \(2, 3, 3\); got \(2, 3, 4\)"
    ):
        compute_pixel_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\); got an array of shape \(3, 3\)"):
        compute_pixel_metrics(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(
        ValueError, match=r"masks must be binary \(values 0 and 1 only\); found other values, e.g. \[255\]"
    ):
        compute_pixel_metrics(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels must be binary .* e.g. \[2\]"):
        compute_image_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="aupro_mode must be one of exact, legacy200; got 'legacy'"):
        compute_pixel_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), aupro_mode="legacy")
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]; got 1.5"):
        compute_pixel_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), fpr_limit=1.5)
