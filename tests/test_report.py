"""`vae-tune report` as a user sees it: the page opened in a real headless Chromium, offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import browse

from vae_tune.reporting.figures import pareto_front

pytestmark = pytest.mark.integration  # processes, servers, browsers or whole tutorials


@pytest.fixture
def report(cli, write_spec, db_url, tmp_path: Path) -> tuple[Path, str]:
    spec = write_spec({"budget": {"n_trials": 4}, "training": {"pictures": True}})
    assert cli("run", spec).exit_code == 0
    out = tmp_path / "report.html"
    result = cli("report", "--study-name", "tiny", "--storage", db_url, "--output", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_report_renders_every_figure_offline_in_a_browser(report, tmp_path: Path):
    out, printed = report
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script src=" not in html  # plotly.js is embedded, not fetched
    drawn = printed.split(": ", 1)[1].strip().split(", ")
    for title in ("Rate–distortion plane", "Collapse: active units against latent size"):
        assert title in drawn
    dom, console = browse(
        out.as_uri(), f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,5000"
    )
    dom, console = browse(out.as_uri(), "--dump-dom")
    assert console == []  # no script errors, no failed loads
    rendered = re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)
    assert len(rendered) == len(drawn) >= 7  # every figure became a plot
    assert dom.count('class="main-svg"') >= len(drawn)
    assert (tmp_path / "report.png").stat().st_size > 50_000  # a page, not a blank


def test_report_shows_outcomes_and_the_best_trials_pictures(report):
    html = report[0].read_text()
    assert "Outcomes" in html and "collapsed (no active units)" in html
    baseline = r"Baseline \(the knobs&#x27; defaults\): trial 0, validation ELBO -[\d.]+; tuning"
    assert re.search(baseline, html)
    pictures = re.findall(r"src='data:image/png;base64,", html)
    assert len(pictures) == 2  # reconstructions and samples of the best trial, inline
    assert "rate: KL(q(z|x)" in html and "distortion: \\u2212E[log p(x|z)]" in html


def test_pareto_front_keeps_only_points_nothing_beats():
    points = [(1.0, 5.0), (2.0, 3.0), (2.5, 4.0), (3.0, 1.0), (0.5, 9.0), (3.0, 2.0)]
    assert pareto_front(points) == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0), (3.0, 1.0)]
