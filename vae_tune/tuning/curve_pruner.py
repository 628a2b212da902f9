"""A pruner for VAE learning curves: stop a trial once it can no longer catch the best one.

A VAE's validation ELBO climbs steeply over the first epoch or two and slowly after, and a
study's trials share the shape of that climb (the same data, epochs and learning-rate
schedule). The median pruner compares trials at one epoch and waits for its start-up trials,
so on a 20-trial budget it stops little. This pruner reads the best finished trial's curve
instead: what that trial still gained from epoch t to its end, times `slack`, is what a trial
at epoch t is allowed to gain; a trial that would finish behind the best even so is stopped,
at the first epoch where that is clear. Replayed on recorded curves (`bench/pruner_replay.py`)
it trains about half the median pruner's epochs and kept the best trial of every study.

Steps may be epochs or training seconds (`pruner.fidelity: seconds`). In seconds two trials
rarely report at the same step, so the best trial's curve is read at this trial's step by
linear interpolation between its reports (past its last report: its final value, so a trial
that has run longer than the best one is held to the best's value with no gain left; before
its first report: no judgement).
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class LearningCurvePruner(BasePruner):
    """Prune when value + `slack` x (what the best completed trial gained from this step to
    its end) is still worse than that trial's value.

    Args:
        n_startup_trials: completed trials (with a value at this step) before any pruning.
        n_warmup_steps: steps (epochs) before which a trial is never pruned.
        slack: how much more than the best trial's remaining gain another trial may still
            make; 1.0 prunes every curve flatter than the best one's, 1.5 (the default) lets
            a trial that started slower climb half as much again.
    """

    def __init__(self, n_startup_trials: int = 1, n_warmup_steps: int = 0, slack: float = 1.5):
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, got {n_startup_trials}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must not be negative, got {n_warmup_steps}")
        if not slack >= 1.0:
            raise ValueError(f"slack must be at least 1.0, got {slack}")
        self._n_startup_trials = n_startup_trials
        self._n_warmup_steps = n_warmup_steps
        self._slack = slack

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and _at(t.intermediate_values, step) is not None
        ]
        if len(done) < self._n_startup_trials:
            return False
        best = max(done, key=lambda t: sign * t.value)
        then = _at(best.intermediate_values, step)
        gain = max(0.0, sign * (best.value - then))
        return sign * value + self._slack * gain < sign * best.value


def _at(curve: dict[int, float], step: int) -> float | None:
    """The curve's value at `step`: reported there, interpolated between the reports around it,
    its last value past its end; None before its first report."""
    if step in curve:
        return curve[step]
    steps = sorted(curve)
    if not steps or step < steps[0]:
        return None
    if step > steps[-1]:
        return curve[steps[-1]]
    right = next(s for s in steps if s > step)
    left = max(s for s in steps if s < step)
    w = (step - left) / (right - left)
    return (1 - w) * curve[left] + w * curve[right]
