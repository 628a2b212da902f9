"""The learning-curve pruner on a real Optuna study: a trial is stopped once even the largest
remaining gain a finished trial made cannot bring it to the best value; never before the
study has a finished curve to learn from."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from vae_tune.tuning.curve_pruner import LearningCurvePruner

# a finished trial's curve: validation ELBO per epoch, gaining 10 nats after epoch 1
FINISHED = {1: -120.0, 2: -114.0, 3: -111.0, 4: -110.0}


def _study(pruner: LearningCurvePruner, *curves: dict[int, float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in curves:
        trial = study.ask()
        for step, value in curve.items():
            trial.report(value, step)
        study.tell(trial, curve[max(curve)])
    return study


def _pruned_at(study: optuna.Study, curve: dict[int, float]) -> int | None:
    trial = study.ask()
    for step, value in curve.items():
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, curve[max(curve)])
    return None


def test_a_trial_that_cannot_catch_the_best_stops_at_the_first_epoch():
    study = _study(LearningCurvePruner(slack=1.0), FINISHED)
    # -131 + 10 (the most a finished trial gained after epoch 1) < -110
    assert _pruned_at(study, {1: -131.0, 2: -125.0}) == 1


def test_a_trial_within_reach_runs_on_until_it_falls_out_of_reach():
    study = _study(LearningCurvePruner(slack=1.0), FINISHED)
    # epoch 1: -119 + 10 >= -110 is not ruled out; epoch 2: -117 + 4 < -110 is
    assert _pruned_at(study, {1: -119.0, 2: -117.0, 3: -116.0}) == 2


def test_slack_allows_steeper_curves_than_the_study_has_seen():
    study = _study(LearningCurvePruner(slack=1.5), FINISHED)
    assert _pruned_at(study, {1: -124.0, 2: -113.0, 3: -109.0, 4: -108.0}) is None
    assert study.best_value == -108.0  # the new best was kept


def test_no_pruning_before_a_trial_has_finished_or_during_warm_up():
    study = optuna.create_study(direction="maximize", pruner=LearningCurvePruner())
    assert _pruned_at(study, {1: -500.0, 2: -400.0}) is None  # nothing finished yet
    study = _study(LearningCurvePruner(n_warmup_steps=2, slack=1.0), FINISHED)
    assert _pruned_at(study, {1: -200.0, 2: -190.0, 3: -180.0}) == 2


def test_minimizing_studies_are_mirrored():
    study = optuna.create_study(direction="minimize", pruner=LearningCurvePruner(slack=1.0))
    trial = study.ask()
    for step, value in FINISHED.items():
        trial.report(-value, step)
    study.tell(trial, -FINISHED[4])
    assert _pruned_at(study, {1: 131.0}) == 1
    assert _pruned_at(study, {1: 119.0, 2: 112.0, 3: 110.5, 4: 109.0}) is None


@pytest.mark.parametrize(
    "options, wrong",
    [({"slack": 0.5}, "slack"), ({"n_startup_trials": 0}, "n_startup_trials")],
)
def test_bad_options_are_refused_by_name(cli, write_spec, tmp_path, options, wrong):
    result = cli("run", write_spec({"pruner": {"name": "curve", "options": options}}))
    assert result.exit_code == 2 and "pruner.options" in result.output and wrong in result.output
    assert not (tmp_path / "study.db").exists()
