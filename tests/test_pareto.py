"""`objective: rate_distortion`: a two-objective study (rate, distortion), its Pareto front in
`studies`, the report and `export-best`, and `train` reproducing a chosen point."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

RD = {
    "objective": "rate_distortion",
    "search_space": {"beta": {"low": 0.1, "high": 8.0, "log": True}},
    "budget": {"n_trials": 6},
}


@pytest.fixture
def front(cli, write_spec, db_url) -> optuna.Study:
    result = cli("run", write_spec(RD))
    assert result.exit_code == 0, result.output
    assert "Pareto front (rate, distortion in nats/example)" in result.output
    assert "Pick one: vae-tune export-best --study-name tiny --trial N" in result.output
    return optuna.load_study(study_name="tiny", storage=db_url)


@pytest.mark.integration
def test_the_study_minimizes_rate_and_distortion(front: optuna.Study):
    assert [d.name for d in front.directions] == ["MINIMIZE", "MINIMIZE"]
    assert front.metric_names == [
        "rate: KL (nats/example)",
        "distortion: -E[log p(x|z)] (nats/example)",
    ]
    done = [t for t in front.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6
    for t in done:
        assert t.values == pytest.approx([t.user_attrs["val_kl"], -t.user_attrs["val_recon"]])
        assert len(t.user_attrs["val_elbo_curve"]) == 2  # one validation ELBO per epoch
    assert front.best_trials


@pytest.mark.integration
def test_the_front_shows_in_studies_report_and_exports(cli, front, db_url, tmp_path: Path):
    listed = cli("studies", "--storage", db_url, "--json")
    row = json.loads(listed.output)[0]
    assert row["objective"] == "rate_distortion"
    assert sorted(row["pareto_front"]) == sorted(t.number for t in front.best_trials)
    report = tmp_path / "r.html"
    result = cli("report", "--study-name", "tiny", "--storage", db_url, "--output", report)
    assert result.exit_code == 0 and "Pareto front" in result.output

    points = sorted(front.best_trials, key=lambda t: t.values[0])
    chosen = points[-1]  # the highest rate: the least distortion
    out = tmp_path / "point.yaml"
    args = ("export-best", "--study-name", "tiny", "--storage", db_url, "--output", out)
    result = cli(*args, "--max-rate", chosen.values[0] + 1e-9)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["source"]["trial"] == chosen.number
    result = cli(*args, "--trial", points[0].number)
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(out.read_text())
    assert exported["source"]["trial"] == points[0].number
    assert exported["source"]["rate"] == pytest.approx(points[0].values[0])
    retrained = cli("train", out)
    assert retrained.exit_code == 0, retrained.output
    last = [ln for ln in retrained.output.splitlines() if ln.startswith("epoch")][-1]
    kl = float(last.split("KL ")[1].split(",")[0])
    assert kl == pytest.approx(points[0].values[0], abs=0.01)  # the same point again
    too_low = cli(*args, "--max-rate", 0)
    assert (too_low.exit_code == 2) == (min(t.values[0] for t in points) > 0)


@pytest.mark.parametrize(
    ("changes", "flags", "named"),
    [
        ({"pruner": "median"}, (), "pruner.name"),
        ({}, ("--pruner", "median"), "--pruner"),
        ({"sampler": "cmaes"}, (), "sampler.name"),
    ],
)
def test_two_objectives_refuse_pruners_and_cmaes(cli, write_spec, tmp_path, changes, flags, named):
    result = cli("run", write_spec({**RD, **changes}), *flags)
    assert result.exit_code == 2
    assert named in result.output
    assert not (tmp_path / "study.db").exists()


@pytest.mark.integration
def test_an_elbo_study_is_not_resumed_as_rate_distortion(cli, write_spec):
    assert cli("run", write_spec({"budget": {"n_trials": 1}})).exit_code == 0
    result = cli("run", write_spec(RD))
    assert result.exit_code == 2 and "another objective" in result.output
