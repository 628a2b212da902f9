"""Trials whose worker is gone: failed by Optuna's heartbeat machinery and queued again.

A RUNNING trial whose heartbeat is older than the grace period is failed by
`optuna.storages.fail_stale_trials` (the database's clock decides, as in Optuna), and the
storage's retry callback queues a WAITING copy that resumes from the trial's checkpoint.
Optuna does this only when a trial starts, so idle workers and a new `run` call `recover` too.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import TrialState

from vae_tune.tuning.storage import retry_callback


def recover(study: optuna.Study) -> list[int]:
    """Fail (and queue again) RUNNING trials whose worker is gone; return their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sorted(t.number for t in failed if t.number in running)


def requeue(
    study: optuna.Study, storage: optuna.storages.BaseStorage, trial_id: int, max_retry: int
) -> int | None:
    """Fail an interrupted trial if still RUNNING and queue its retry (unless already queued);
    return the retry's trial number (None: max_retry reached, or queued already)."""
    try:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass
    trial = storage.get_trial(trial_id)
    trials = study.get_trials(deepcopy=False)
    if trial.state != TrialState.FAIL or any(
        trial.number in t.system_attrs.get("retry_history", ()) for t in trials
    ):
        return None
    retry_callback(max_retry)(study, trial)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.system_attrs.get("retry_history", [None])[-1] == trial.number:
            return t.number
    return None
