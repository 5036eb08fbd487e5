"""Tests of ``python -m aaclip_xattn.stats RESULTS_DIR``."""

from __future__ import annotations

import sys
import types

import pytest

from aaclip_xattn.fileio import read_csv, read_json
from aaclip_xattn.stats import __main__ as cli
from aaclip_xattn.stats.__main__ import main
from aaclip_xattn.stats.config import StatsConfig


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    """``main`` installs its own root handler; keep pytest's capture handlers in place."""
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


def test_main_collects_and_compares_a_results_tree(fake_results, tmp_path, capsys):
    config = tmp_path / "stats.yaml"
    config.write_text("stats:\n  primary_metric: pixel_auroc\n  rope: 0.5\n")
    assert main([str(fake_results.root), "--config", str(config), "--stats-only"]) == 0
    stats_dir = fake_results.root / "stats"
    assert len(read_csv(stats_dir / "metrics_long.csv")) == len(fake_results.values)
    rows = read_csv(stats_dir / "comparisons.csv")
    assert {r["metric"] for r in rows if r["primary"] == "True"} == {"pixel_auroc"}
    assert {r["rope"] for r in rows} == {"0.5"}
    assert "comparisons:" in capsys.readouterr().out


def test_main_reuses_an_existing_long_table_unless_asked_to_recollect(fake_results):
    assert main([str(fake_results.root), "--stats-only"]) == 0
    long_csv = fake_results.root / "stats" / "metrics_long.csv"
    long_csv.write_text(long_csv.read_text().replace("xattn_scratch", "other_arm"))
    assert main([str(fake_results.root), "--stats-only"]) == 0
    assert "xattn_scratch" not in long_csv.read_text()
    assert main([str(fake_results.root), "--stats-only", "--recollect"]) == 0
    assert "xattn_scratch" in long_csv.read_text()


def test_main_names_a_bad_config_key_and_a_missing_directory(fake_results, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("alpah: 0.05\n")
    with pytest.raises(SystemExit) as exc:
        main([str(fake_results.root), "--config", str(config)])
    assert exc.value.code == 2
    assert "--config: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere")])
    assert "RESULTS_DIR" in capsys.readouterr().err


def test_main_reports_a_tree_without_evaluations(tmp_path):
    (tmp_path / "results").mkdir()
    assert main([str(tmp_path / "results"), "--stats-only"]) == 2


def test_main_calls_the_checklist_and_report_through_their_agreed_signatures(fake_results, monkeypatch):
    calls = {}
    checklist = types.ModuleType("aaclip_xattn.stats.checklist")
    report = types.ModuleType("aaclip_xattn.stats.report")

    def run_checklist(results_dir, cfg):
        calls["checklist"] = (results_dir, cfg)
        return [{"id": "same_split", "title": "Same dataset split", "status": "PASS", "evidence": "x"}]

    def render_report(results_dir, out_dir, cfg):
        calls["report"] = (results_dir, out_dir, cfg)
        return {"index_html": out_dir / "index.html"}

    checklist.run_checklist, report.render_report = run_checklist, render_report
    monkeypatch.setitem(sys.modules, "aaclip_xattn.stats.checklist", checklist)
    monkeypatch.setitem(sys.modules, "aaclip_xattn.stats.report", report)
    assert main([str(fake_results.root)]) == 0
    assert calls["checklist"] == (fake_results.root, StatsConfig())
    assert calls["report"] == (fake_results.root, fake_results.root / "report", StatsConfig())
    assert read_json(fake_results.root / "stats" / "checklist.json")[0]["id"] == "same_split"


def test_main_without_the_report_modules_says_to_use_stats_only(fake_results, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "aaclip_xattn.stats.checklist", None)
    assert main([str(fake_results.root)]) == 2
    assert "aaclip_xattn.stats.checklist.run_checklist is not available" in caplog.text
    assert "--stats-only" in caplog.text
