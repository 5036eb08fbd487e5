"""Report figures: valid, reproducible SVGs with the expected panels and series; numbers from the records."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pytest
from records import ARMS, PRIMARY, TEST_DATASETS, make_cfg, make_study, write_maps, write_metrics_long
from statsmodels.stats.power import TTestPower

from aaclip_xattn.fileio import read_csv
from aaclip_xattn.stats import figures
from aaclip_xattn.stats.figures import (
    category_deltas,
    load_metric_values,
    render_figures,
    rope_for,
)

GROUP = ("synth_a", "4")
N_CATEGORIES = sum(len(c) for c in TEST_DATASETS.values())


def _ids(path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [el.get("id") for el in root.iter() if el.get("id")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    results = make_study(root)
    write_maps(results)
    bundle = render_figures(results, root / "out", make_cfg())
    return results, bundle


def test_render_figures_writes_every_figure_as_valid_svg(rendered):
    _, bundle = rendered
    names = [figure.name for figure in bundle.figures]
    assert names == [
        "loss_curves_synth_a_shot4",
        "category_dots_synth_a_shot4",
        "forest_synth_a_shot4",
        "power_synth_a_shot4",
        "anomaly_maps_synth_a_shot4",
    ]
    assert bundle.skipped == ()
    for figure in bundle.figures:
        assert figure.path.suffix == ".svg" and figure.title and figure.caption
        _ids(figure.path)
        text = figure.path.read_text()
        assert "<dc:date>" not in text
        assert "<metadata>" not in text
        for element in ET.parse(figure.path).getroot().iter():
            for name, value in element.attrib.items():
                if name.endswith("href") or name == "src":
                    assert value.startswith(("#", "data:")), (figure.name, name, value[:40])


def test_loss_curves_have_one_series_per_arm_seed_and_stage(rendered):
    _, bundle = rendered
    ids = _ids(bundle.figures[0].path)
    series = sorted(i for i in ids if i.startswith("loss-"))
    assert len(series) == 3 * 2 * len(ARMS)
    assert "loss-image-seed2-xattn_from_base" in series
    assert len([i for i in ids if i.startswith("panel-loss-")]) == 6
    assert "Training loss per epoch, synth_a/shot4" in bundle.figures[0].path.read_text()


def test_category_dots_have_one_panel_per_test_dataset_and_one_series_per_arm(rendered):
    _, bundle = rendered
    ids = _ids(bundle.figures[1].path)
    assert sorted(i for i in ids if i.startswith("panel-dots-")) == [
        "panel-dots-synth_b",
        "panel-dots-synth_c",
    ]
    assert len([i for i in ids if i.startswith("dots-")]) == len(TEST_DATASETS) * len(ARMS)
    text = bundle.figures[1].path.read_text()
    for category in TEST_DATASETS["synth_c"]:
        assert f">{category}<" in text


def test_forest_has_a_row_per_category_diamonds_and_rope_per_comparison(rendered):
    _, bundle = rendered
    ids = _ids(bundle.figures[2].path)
    comparisons = make_cfg().comparisons
    assert len([i for i in ids if i.startswith("panel-forest-")]) == len(comparisons)
    assert len([i for i in ids if i.startswith("row-")]) == len(comparisons) * N_CATEGORIES
    for name in comparisons:
        assert {
            f"diamond-{name}-all",
            f"diamond-{name}-synth_b",
            f"diamond-{name}-synth_c",
            f"rope-{name}",
        } <= set(ids)


def test_power_curve_has_both_axes_and_a_line_per_comparison(rendered):
    _, bundle = rendered
    ids = _ids(bundle.figures[3].path)
    assert {"panel-power-seeds", "panel-power-categories"} <= set(ids)
    assert len([i for i in ids if i.startswith("power-seeds-")]) == 4
    assert len([i for i in ids if i.startswith("power-categories-")]) == 4


def test_anomaly_maps_show_each_arm_side_by_side(rendered):
    _, bundle = rendered
    ids = _ids(bundle.figures[4].path)
    panels = [i for i in ids if i.startswith("panel-map-")]
    assert len(panels) == 2 * len(ARMS)
    assert "data:image/png;base64," in bundle.figures[4].path.read_text()


def test_rendering_is_byte_identical_and_leaves_rcparams_alone(rendered, tmp_path):
    results, first = rendered
    salt = matplotlib.rcParams["svg.hashsalt"]
    second = render_figures(results, tmp_path / "again", make_cfg())
    assert matplotlib.rcParams["svg.hashsalt"] == salt
    assert [f.name for f in first.figures] == [f.name for f in second.figures]
    for one, two in zip(first.figures, second.figures, strict=True):
        assert one.path.read_bytes() == two.path.read_bytes(), one.name


def test_missing_maps_are_skipped_with_a_reason(tmp_path, monkeypatch):
    results = make_study(tmp_path)
    for name in ("plot_loss_curves", "plot_category_dots", "plot_forest", "plot_power_curve"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)
    bundle = render_figures(results, tmp_path / "out", make_cfg())
    assert bundle.figures == ()
    assert len(bundle.skipped) == 5
    assert bundle.skipped[-1] == (
        "synth_a/shot4: the evaluation wrote no anomaly-map overlays (eval/.../<test_dataset>_maps/<category>/*.png), "
        "so the anomaly-map figure is skipped."
    )


def test_metric_values_from_eval_csvs_equal_metrics_long(tmp_path):
    results = make_study(tmp_path)
    from_evals = load_metric_values(results)
    write_metrics_long(results)
    from_long = load_metric_values(results)
    key = lambda r: (r["arm"], r["seed"], r["test_dataset"], r["category"], r["metric"])  # noqa: E731
    assert len(from_evals) == 3 * len(ARMS) * N_CATEGORIES * 7
    assert {key(r): r["value"] for r in from_evals} == {key(r): r["value"] for r in from_long}


def test_category_deltas_match_the_eval_tables(tmp_path):
    results = make_study(tmp_path)
    deltas = category_deltas(load_metric_values(results), GROUP, PRIMARY, "xattn_from_base", "baseline")
    assert len(deltas) == N_CATEGORIES
    for seed in (0, 1, 2):
        a = {
            r["category"]: float(r[PRIMARY])
            for r in read_csv(results / f"eval/synth_a/shot4/seed{seed}/xattn_from_base/synth_c.csv")
        }
        b = {
            r["category"]: float(r[PRIMARY])
            for r in read_csv(results / f"eval/synth_a/shot4/seed{seed}/baseline/synth_c.csv")
        }
        np.testing.assert_allclose(deltas[("synth_c", "grid")][seed], 100 * (a["grid"] - b["grid"]))


def test_power_fallback_matches_statsmodels_at_the_observed_design(tmp_path):
    results = make_study(tmp_path)
    values = load_metric_values(results)
    rows = figures._power_rows(None, values, GROUP, PRIMARY, ("xattn_from_base", "baseline"), 0.05, 0.8)
    deltas = np.array(
        [d.mean() for d in category_deltas(values, GROUP, PRIMARY, "xattn_from_base", "baseline").values()]
    )
    dz = TTestPower().solve_power(
        effect_size=None, nobs=N_CATEGORIES, alpha=0.05, power=0.8, alternative="two-sided"
    )
    observed = [r for r in rows if r["axis"] == "categories" and r["observed"]]
    assert len(observed) == 1
    assert observed[0]["n_categories"] == N_CATEGORIES
    assert math.isclose(observed[0]["mde_pp"], dz * deltas.std(ddof=1), rel_tol=1e-9)


def test_forest_uses_comparisons_by_category_when_present(tmp_path):
    results = make_study(tmp_path)
    planted = [
        {
            "train_dataset": "synth_a",
            "shot": "4",
            "comparison": "xattn_from_base-baseline",
            "metric": PRIMARY,
            "test_dataset": "synth_b",
            "category": "part0",
            "mean_delta": "7.5",
            "ci_low": "7.0",
            "ci_high": "8.0",
        }
    ]
    rows = figures._category_rows(planted, [], GROUP, PRIMARY, ("xattn_from_base", "baseline"), 0.05)
    assert rows == [("synth_b", "part0", 7.5, 7.0, 8.0)]
    computed = figures._category_rows(
        None, load_metric_values(results), GROUP, PRIMARY, ("xattn_from_base", "baseline"), 0.05
    )
    assert len(computed) == N_CATEGORIES


def test_rope_for_accepts_number_mapping_and_none():
    assert rope_for(make_cfg(rope=0.5), PRIMARY) == 0.5
    assert rope_for(make_cfg(rope={PRIMARY: 1.0}), PRIMARY) == 1.0
    assert rope_for(make_cfg(rope=None), PRIMARY) is None
