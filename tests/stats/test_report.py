"""The report: checklist first, honest verdict wording, self-contained HTML, Markdown, deterministic output."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from html import escape

import pytest
from records import edit_run, make_cfg, make_study, run_rel, write_comparisons, write_metrics_long

from aaclip_xattn.fileio import read_csv
from aaclip_xattn.stats import compare, figures
from aaclip_xattn.stats.checklist import CHECK_IDS, run_checklist
from aaclip_xattn.stats.report import FAIL_BANNER, lint_language, render_report


@pytest.fixture
def fast_figures(monkeypatch):
    """Skip the slow drawing where a test is about the page, not the figures (tested in test_figures.py)."""
    for name in ("plot_loss_curves", "plot_category_dots", "plot_power_curve", "plot_anomaly_maps"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)


def _study(tmp_path, *, sentence=True):
    results = make_study(tmp_path)
    write_metrics_long(results)
    rows = write_comparisons(results, sentence=sentence)
    return results, rows


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results, rows = _study(root)
    run_checklist(results, make_cfg())
    paths = render_report(results, results / "report", make_cfg())
    return results, rows, paths


def test_render_report_writes_html_markdown_and_figures(clean_report):
    results, _, paths = clean_report
    assert paths["html"] == results / "report/index.html"
    assert paths["markdown"] == results / "report/report.md"
    svgs = sorted(p.name for p in (results / "report/figures").glob("*.svg"))
    assert svgs == sorted(f"{name}.svg" for name in paths if name not in ("html", "markdown"))
    assert len(svgs) == 4  # no anomaly maps in this study


def test_html_shows_checklist_before_verdicts_then_tables_and_figures(clean_report):
    _, rows, paths = clean_report
    html = paths["html"].read_text()
    order = [
        html.index(f'id="{anchor}"')
        for anchor in ("checklist", "verdicts", "table1", "table2", "figures", "appendix")
    ]
    assert order == sorted(order)
    for check_id in CHECK_IDS:
        assert f"<code>{check_id}</code>" in html
    assert html.count('<td class="status PASS">PASS</td>') == len(CHECK_IDS)
    assert escape(FAIL_BANNER) not in html
    primary = [row for row in rows if row["primary"]]
    assert len(primary) == 4
    for row in primary:
        assert row["sentence"] in html or row["sentence"].replace("'", "&#x27;") in html
        assert f"{row['mean_delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in html
    assert "training: synth_a/shot4; seeds: 0, 1, 2;" in html
    assert (
        "test datasets: synth_b (8 categories), synth_c (4 categories); primary metric: pixel_auroc" in html
    )


def test_html_is_self_contained_with_inline_svgs_and_unique_ids(clean_report):
    _, _, paths = clean_report
    html = paths["html"].read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, flags=re.IGNORECASE)
    assert "<link" not in html and "<script" not in html and "<img" not in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 4
    for svg in svgs:
        ET.fromstring(svg)  # each inline figure is well-formed XML
    ids = Counter(re.findall(r'\bid="([^"]+)"', html))
    assert [name for name, count in ids.items() if count > 1] == []
    for svg in svgs:  # every internal reference points at an id of the page
        for ref in re.findall(r'(?:url\(#|href="#)([^")]+)', svg):
            assert ref in ids


def test_markdown_has_the_same_sections_and_links_figures(clean_report):
    results, rows, paths = clean_report
    md = paths["markdown"].read_text()
    assert (
        md.index("## 1. Fair-comparison checklist") < md.index("## 2. Verdicts") < md.index("## 3. Table 1")
    )
    for row in rows:
        if row["primary"]:
            assert row["sentence"] in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4
    for link in links:
        assert (results / "report" / link).is_file()
    assert "| **PASS** | Base model fully trained" in md


def test_rendering_is_deterministic(tmp_path, fast_figures):
    results, _ = _study(tmp_path)
    run_checklist(results, make_cfg())
    one = render_report(results, tmp_path / "one", make_cfg())
    two = render_report(results, tmp_path / "two", make_cfg())
    assert "<svg" in one["html"].read_text()  # the forest plot is drawn and inlined
    assert one["html"].read_bytes() == two["html"].read_bytes()
    assert one["markdown"].read_bytes() == two["markdown"].read_bytes()


def test_failed_check_puts_banner_first_and_flags_positive_verdicts(tmp_path, fast_figures):
    results, _ = _study(tmp_path)
    rel = edit_run(results, 1, "xattn_from_base", lambda d: d["hyperparameters"].update(text_lr=5e-06))
    run_checklist(results, make_cfg())
    html = render_report(results, results / "report", make_cfg())["html"].read_text()
    banner = html.index(escape(FAIL_BANNER))
    assert banner < html.index('id="verdicts"')
    assert "Failed: same_hyperparameters." in html
    assert f"{rel}: text_lr = 5e-06, other runs 1e-05" in html
    assert '<td class="status FAIL">FAIL</td>' in html
    assert "(not claimable: the checklist has a FAIL)" in html


def test_checklist_is_computed_without_writing_when_json_is_missing(tmp_path, fast_figures):
    results, _ = _study(tmp_path)
    html = render_report(results, results / "report", make_cfg())["html"].read_text()
    assert "computed by the report (stats/checklist.json not found)" in html
    assert not (results / "stats/checklist.json").exists()


def test_without_sentence_column_uses_compare_verdict_sentence_or_fallback(
    tmp_path, monkeypatch, fast_figures
):
    results, rows = _study(tmp_path, sentence=False)
    run_checklist(results, make_cfg())
    html = render_report(results, results / "report", make_cfg())["html"].read_text()
    first = next(row for row in rows if row["primary"] and row["comparison"] == "xattn_from_base-baseline")
    csv_row = next(
        r
        for r in read_csv(results / "stats/comparisons.csv")
        if r["primary"] == "True" and r["comparison"] == "xattn_from_base-baseline"
    )
    assert escape(compare.verdict_sentence(csv_row)) in html

    monkeypatch.delattr(compare, "verdict_sentence")
    html = render_report(results, tmp_path / "fallback", make_cfg())["html"].read_text()
    assert (
        f"Across the 12 categories, xattn_from_base improved pixel_auroc over baseline by "
        f"{first['mean_delta']:+.2f} pp on average" in html
    )
    assert f"Holm-adjusted p = {first['p_adjusted']:.4f}" in html


def test_report_without_comparisons_still_renders_checklist(tmp_path, fast_figures):
    results = make_study(tmp_path)
    html = render_report(results, results / "report", make_cfg())["html"].read_text()
    assert "No comparisons.csv: no verdict can be given." in html
    assert html.count('<td class="status') == len(CHECK_IDS)


def test_planted_dishonest_sentence_shows_the_lint_banner(tmp_path, fast_figures):
    results, rows = _study(tmp_path)
    path = results / "stats/comparisons.csv"
    text = path.read_text()
    row = next(r for r in rows if r["primary"] and r["comparison"] == "xattn_from_base-baseline_continued")
    text = text.replace(row["sentence"], "xattn_from_base and baseline_continued are practically equivalent.")
    path.write_text(text)
    html = render_report(results, results / "report", make_cfg())["html"].read_text()
    assert "Language lint (statistics.md §10 #14) failed" in html
    assert (
        "&#x27;practically equivalent&#x27; for xattn_from_base-baseline_continued (all, pixel_auroc) whose "
        "P(ROPE) is — (needs &gt; 0.95)" in html
    )


ROWS = [
    {"comparison": "xattn_from_base-baseline", "scope": "all", "metric": "pixel_auroc", "primary": "True",
     "p_adjusted": "0.002", "p_rope": "0.01", "verdict": "significant", "n_units": "12"},
    {"comparison": "xattn_scratch-baseline", "scope": "all", "metric": "pixel_auroc", "primary": "True",
     "p_adjusted": "0.31", "p_rope": "0.97", "verdict": "not significant", "n_units": "12"},
    {"comparison": "xattn_scratch-baseline", "scope": "synth_c", "metric": "pixel_auroc", "primary": "False",
     "p_adjusted": "nan", "p_rope": "nan", "verdict": "not testable with n = 4", "n_units": "4"},
    {"comparison": "xattn_from_base-baseline_continued", "scope": "all", "metric": "pixel_auroc", "primary": "True",
     "p_adjusted": "0.2", "p_rope": "", "verdict": "not significant", "n_units": "12"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("xattn_from_base is significantly better than baseline (Holm-adjusted p = 0.002).", None),
        (
            "xattn_scratch is significantly worse than baseline.",
            "'significant' for xattn_scratch-baseline (all",
        ),
        ("The improvement is significant.", "'significant' without naming a comparison"),
        ("xattn_scratch and baseline are practically equivalent within ±0.5 pp.", None),
        ("xattn_from_base and baseline_continued are equivalent.", "whose P(ROPE) is — (needs > 0.95)"),
        ("xattn_from_base and baseline are comparable.", "'comparable' for xattn_from_base-baseline"),
        ("xattn_scratch vs baseline on synth_c: not significant.", "which is not testable with n = 4"),
        ("xattn_scratch vs baseline: not significant (p = 0.31).", None),
        ("xattn_scratch vs baseline is not statistically significant.", None),
        ("xattn_from_base and baseline_continued are not equivalent.", None),
        (
            "xattn_scratch vs baseline on synth_c: no significant difference.",
            "which is not testable with n = 4",
        ),
        ("xattn_from_base is slightly better than baseline_continued.", "forbidden phrase 'slightly better'"),
        ("xattn_from_base vs baseline_continued shows a trend towards significance.", "forbidden phrase"),
    ],
)
def test_lint_language_flags_each_planted_violation(text, expected):
    problems = lint_language(text, ROWS, alpha=0.05)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems


def test_lint_language_ties_a_sentence_to_its_paragraph_and_metric():
    text = "xattn_from_base vs baseline: fine.\nxattn_scratch vs baseline on pixel AUROC. It is significant."
    assert lint_language(text, ROWS, alpha=0.05)[0].startswith("'significant' for xattn_scratch-baseline")
    assert lint_language("xattn_from_base vs baseline: significant on pixel AUROC.", ROWS) == []


def test_lint_passes_the_real_verdict_sentences(clean_report):
    _, rows, _ = clean_report
    sentences = "\n".join(compare.verdict_sentence(row) for row in rows)
    assert lint_language(sentences, rows, alpha=0.05) == []


def test_report_names_checklist_run_paths(clean_report):
    _, _, paths = clean_report
    assert run_rel(0, "xattn_from_base") in paths["html"].read_text()
