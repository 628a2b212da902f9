"""`vae-tune evaluate` on models trained here on the digits: the numbers behave as the theory
says (IW-NLL bounds and tightens, collapse shows as no information, optimizing q per image
never loses ELBO), and the block lands in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg
from support import train_run_dir
from typer.testing import CliRunner

from vae_tune.cli import app
from vae_tune.runs.frechet import frechet_distance


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    return train_run_dir(tmp_path_factory.mktemp("healthy"))


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory) -> Path:
    return train_run_dir(tmp_path_factory.mktemp("collapsed"), beta=50.0)


def evaluate(run: Path, *flags: str) -> dict:
    result = CliRunner().invoke(app, ["evaluate", str(run), *flags])
    assert result.exit_code == 0, result.output
    return json.loads((run / "metrics.json").read_text())["evaluation"]


@pytest.mark.integration
def test_the_evaluation_block_lands_in_metrics_json(healthy):
    result = CliRunner().invoke(app, ["evaluate", str(healthy), "--k", "20"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((healthy / "metrics.json").read_text())
    block = metrics["evaluation"]
    assert "test" in metrics and "epochs" in metrics  # what train wrote stays
    # over every test image, the ELBO is the very number `train` reported
    assert block["test_elbo"]["elbo"] == pytest.approx(metrics["test"]["elbo"], abs=1e-9)
    assert block["examples"] == 270 and block["iw_nll"]["se"] > 0
    assert len(block["kl_per_dim"]) == block["latent_dim"] == 6
    assert "IW-NLL, k = 20: done" in result.output  # plain progress lines without a terminal
    assert "\r" not in result.output and "Fréchet classifier distance" in result.output
    assert not list(healthy.glob(".*.tmp"))


@pytest.mark.integration
def test_iw_nll_is_below_the_negative_elbo_and_tightens_with_k(healthy):
    nll = {}
    for k in (1, 30, 600):
        block = evaluate(healthy, "--k", str(k), "--examples", "150", "--gap-examples", "0")
        nll[k] = block["iw_nll"]["nll"]
        assert block["examples"] == block["iw_nll"]["examples"] == 150
    neg_elbo = -block["test_elbo"]["elbo"]
    assert nll[1] == pytest.approx(neg_elbo, rel=0.05)  # k = 1 is a one-sample ELBO
    assert nll[600] <= nll[30] + 0.05 and nll[30] <= nll[1] + 0.05
    assert nll[600] < neg_elbo - 0.1  # a strictly tighter bound than the ELBO


@pytest.mark.integration
def test_a_collapsed_posterior_carries_no_information(healthy, collapsed):
    sick = evaluate(collapsed, "--k", "10", "--gap-examples", "0")
    well = evaluate(healthy, "--k", "10", "--gap-examples", "0")
    assert sick["active_units"] == 0 and abs(sick["mutual_information"]["mi"]) < 0.05
    assert well["active_units"] >= 2 and well["mutual_information"]["mi"] > 1.0
    info = well["mutual_information"]
    assert info["mi"] <= info["bound"] + 1e-9  # at most log N
    assert info["mi"] + info["marginal_kl"] == pytest.approx(info["kl"])


def test_an_optimized_posterior_never_loses_elbo(healthy):
    gap = evaluate(healthy, "--k", "10", "--gap-examples", "40", "--gap-steps", "200")[
        "amortization_gap"
    ]
    assert gap["examples"] == 40 and gap["steps"] == 200
    assert gap["gap"] > -2 * gap["gap_se"]  # >= 0 up to noise
    assert gap["gap"] == pytest.approx(gap["optimized_elbo"] - gap["encoder_elbo"])
    assert gap["gap"] > 0.01  # the optimization found something: it ran


@pytest.mark.integration
def test_sample_quality_against_its_real_floor_with_a_cached_classifier(
    healthy, collapsed, tmp_path, monkeypatch
):
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path))
    first = evaluate(healthy, "--k", "5", "--gap-examples", "0")["frechet_classifier_distance"]
    again = evaluate(collapsed, "--k", "5", "--gap-examples", "0")["frechet_classifier_distance"]
    assert not first["cached"] and again["cached"]  # trained once per dataset and split
    assert again["classifier"] == first["classifier"] and again["accuracy"] == first["accuracy"]
    assert first["accuracy"] > 0.9 and Path(first["classifier"]).parent == tmp_path / "classifiers"
    assert first["examples"] == 270
    # real images are closer to real images than any model's samples, a collapsed one's most
    assert 0 < first["floor"] < first["distance"] < again["distance"]


def test_without_labels_the_distance_is_skipped_with_a_reason(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (80, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    run = train_run_dir(
        tmp_path,
        dataset={"name": "array", "path": str(tmp_path / "x.npy")},
        epochs=1,
    )
    block = evaluate(run, "--k", "5", "--gap-examples", "5", "--gap-steps", "5")
    assert "labels_key" in block["frechet_classifier_distance"]["skipped"]


def test_frechet_distance_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(400, 5)) * 2 + 1
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    textbook = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
