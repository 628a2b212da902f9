"""Every finished trial says where its wall time went (training, validation, IW-NLL,
pictures, the rest); the run summary and the report add it up, so a user sees the fixed cost
of a trial beside the work it is there for."""

from __future__ import annotations

import html

import optuna
import pytest
from optuna.trial import TrialState

from vae_tune.tuning.objective import TIME_PARTS
from vae_tune.tuning.record import read
from vae_tune.tuning.study import time_summary

PARTS = tuple(TIME_PARTS)


def _timed(db_url: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tiny", storage=db_url)
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.integration
def test_a_completed_trial_splits_its_wall_time(cli, write_spec, db_url, tmp_path):
    spec = write_spec({"training": {"iw_samples": 5, "pictures": True}})
    result = cli("run", spec, "--n-trials", "2")
    assert result.exit_code == 0, result.output
    trials = _timed(db_url)
    assert len(trials) == 2
    for t in trials:
        s = read(t).seconds
        assert set(s) == {"trial", *PARTS}
        assert s["train"] > 0 and s["validation"] > 0 and s["iw_nll"] > 0 and s["pictures"] > 0
        assert sum(s[p] for p in PARTS) == pytest.approx(s["trial"], abs=1e-3)
        # the trial's own clock lies inside what the storage saw of it
        stored = (t.datetime_complete - t.datetime_start).total_seconds()
        assert s["trial"] <= stored + 0.05
    line = next(x for x in result.output.splitlines() if x.startswith("Trial time"))
    assert "training" in line and "IW-NLL" in line and "pictures" in line
    assert "per trial (median)" in line
    assert line == time_summary(optuna.load_study(study_name="tiny", storage=db_url))
    page = tmp_path / "report.html"
    report = cli("report", "--study-name", "tiny", "--storage", db_url, "--output", page)
    assert report.exit_code == 0, report.output
    assert html.escape(line) in page.read_text()


@pytest.mark.integration
def test_a_pruned_trial_is_timed_too_and_pays_no_diagnostics(cli, write_spec, db_url):
    spec = write_spec(
        {
            "training": {"epochs": 3, "iw_samples": 5, "pictures": True},
            # curve pruning with no slack to spare: trials behind the first one stop early
            "pruner": {"name": "curve", "options": {"slack": 1.0}},
            "sampler": {"name": "random"},
        }
    )
    result = cli("run", spec, "--n-trials", "6")
    assert result.exit_code == 0, result.output
    pruned = [t for t in _timed(db_url) if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned: the test shows nothing"
    for t in pruned:
        s = read(t).seconds
        assert s["train"] > 0 and s["iw_nll"] == 0 and s["pictures"] == 0


def test_no_summary_before_any_trial_timed_itself():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert time_summary(study) is None
