"""The study-wide budget: pure counting over the study's trials, and the target stored on it.

* A trial is *committed* when it is RUNNING, COMPLETE or PRUNED, or FAILED without having been
  retried. A trial failed by a crash (no heartbeat) or by Ctrl-C is queued again as a WAITING
  retry and no longer counts; its retry counts once it runs. So crashes cost no budget.
* `run --n-trials n` adds n to the target (grid: at most the points left); what an earlier run
  asked for and did not run stays in it, so concurrent runs add up.
* A worker claims a trial (under the study lock) only while committed < target, so the budget
  is exact however many workers there are. Deadlines are read on the database's clock, so
  workers on hosts whose clocks differ agree on them.
* `budget.seconds` (the spec) is a deadline too, `stop_training_at`: no trial starts after it,
  and every running trial's training stops at it (`seconds_left`), so a run takes those wall
  seconds plus the last trials' validation, IW-NLL and pictures, however many workers share it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vae_tune.tuning.storage import db_now
from vae_tune.tuning.study import SPEC_ATTR

DEFAULT_N_TRIALS = 20
BUDGET_ATTR = "budget"
START, WAIT, DONE = "start", "wait", "done"
HOLD = "hold"  # the budget allows a trial, but the pruner has no finished trial to judge it by
# a trial that could train for less than this before the study's seconds run out is not started
MIN_TRIAL_SECONDS = 1.0


@dataclass(frozen=True)
class Tally:
    """The study's trials as the budget sees them."""

    committed: int  # RUNNING + COMPLETE + PRUNED + FAIL not retried
    running: int
    waiting: int
    retries_waiting: int
    finished: int  # COMPLETE + PRUNED
    complete: int  # COMPLETE alone: a curve the pruner can judge by

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Tally:
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
        states = Counter(t.state for t in trials)
        failed_for_good = sum(
            1 for t in trials if t.state == TrialState.FAIL and t.number not in retried
        )
        retries = sum(
            1 for t in trials if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs
        )
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        return cls(
            committed=finished + states[TrialState.RUNNING] + failed_for_good,
            running=states[TrialState.RUNNING],
            waiting=states[TrialState.WAITING],
            retries_waiting=retries,
            finished=finished,
            complete=states[TrialState.COMPLETE],
        )


def _point(trial: FrozenTrial) -> tuple:
    params = trial.system_attrs.get("fixed_params") or trial.params
    return tuple(sorted(params.items()))


def enqueue_grid(study: optuna.Study, points: Sequence[dict[str, Any]]) -> int:
    """Queue every grid point not yet covered (failed trials are retried); return how many
    points are still waiting to run."""
    covered = Counter(
        _point(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL
    )
    for point in points:
        if covered[tuple(sorted(point.items()))] == 0:
            study.enqueue_trial(point)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def set_budget(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    grid: Sequence[dict[str, Any]] | None,
    n_trials: int | None,
    timeout: float | None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Add this run's trials to the study-wide budget (call with the study lock held): n_trials
    more (default: the rest of the grid, or 20; none with `seconds`), started within `timeout`
    seconds, trained until `seconds` from now (default: the stored spec's `budget.seconds`).

    Budgets add up: trials an earlier `run` asked for and that have not run yet (it is still
    running, or it was interrupted) stay in the target, so two concurrent `run --n-trials 3`
    finish 6 trials; `carried` says how many were left over.
    """
    waiting = enqueue_grid(study, grid) if grid is not None else 0
    tally = Tally.of(study.get_trials(deepcopy=False))
    old = study.user_attrs.get(BUDGET_ATTR) or {}
    now = db_now(storage)
    old_deadline = old.get("deadline")
    live = old_deadline is None or old_deadline > now
    outstanding = 0
    if old.get("target") is not None and live:
        outstanding = max(0, old["target"] - tally.committed)
    carried = max(outstanding, tally.retries_waiting)
    target: int | None
    if seconds is None:
        seconds = ((study.user_attrs.get(SPEC_ATTR) or {}).get("budget") or {}).get("seconds")
    if grid is not None:
        n_trials = min(n_trials or waiting, waiting)
        target = tally.committed + min(carried + n_trials, waiting)
    else:
        if n_trials is None and timeout is None and seconds is None:
            n_trials = DEFAULT_N_TRIALS
        target = None if n_trials is None else tally.committed + carried + n_trials
    deadline = None
    if timeout:
        deadline = max(now + timeout, old_deadline if outstanding and old_deadline else 0)
    stop_training_at = None
    if seconds:
        old_stop = old.get("stop_training_at")
        stop_training_at = max(now + seconds, old_stop if outstanding and old_stop else 0)
    budget = {
        "target": target,
        "n_trials": n_trials,
        "carried": carried if target is not None else 0,
        "deadline": deadline,  # seconds since the epoch on the database's clock
        "grid": grid is not None,
        "stop_training_at": stop_training_at,  # budget.seconds, on the database's clock
    }
    study.set_user_attr(BUDGET_ATTR, budget)
    return budget


def next_step(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    hold_for_reference: bool = False,
    trials: Sequence[FrozenTrial] | None = None,
) -> tuple[str, Tally]:
    """START a trial, WAIT for running ones (to take over if their worker dies) or be DONE.
    With `hold_for_reference` (a pruner that judges trials by a completed one), HOLD while
    trials run and none has completed: the first trial runs alone, so no trial can finish
    before there is a curve to hold it to. `trials`: the study's trials, if just read."""
    budget = study.user_attrs.get(BUDGET_ATTR) or {}
    tally = Tally.of(study.get_trials(deepcopy=False) if trials is None else trials)
    return decide(budget, tally, lambda: db_now(storage), hold_for_reference), tally


def decide(
    budget: dict[str, Any],
    tally: Tally,
    now: Callable[[], float],
    hold_for_reference: bool = False,
) -> str:
    """The step a study's stored budget allows, given its tally (see `next_step`); `now` is
    read only when the budget has a deadline."""
    deadline, target = budget.get("deadline"), budget.get("target")
    stop = budget.get("stop_training_at")
    at = now() if deadline is not None or stop is not None else None
    if deadline is not None and at >= deadline:
        return DONE
    if stop is not None and at >= stop - MIN_TRIAL_SECONDS:
        return DONE
    spent = (budget.get("grid") and tally.waiting == 0) or (
        target is not None and tally.committed >= target
    )
    if spent:
        return WAIT if tally.running else DONE
    if hold_for_reference and tally.running and not tally.complete:
        return HOLD
    return START


def seconds_left(study: optuna.Study, storage: optuna.storages.BaseStorage) -> float | None:
    """Training seconds the study's `budget.seconds` has left (None: it has no such budget)."""
    stop = (study.user_attrs.get(BUDGET_ATTR) or {}).get("stop_training_at")
    return None if stop is None else max(0.0, stop - db_now(storage))
