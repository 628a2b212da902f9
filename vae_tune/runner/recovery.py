"""Trials whose worker is gone: failed by a heartbeat that stopped, and queued again.

Every `interval` seconds a running trial records a heartbeat; a RUNNING trial without one for
the grace period is failed by the next process that looks, and the storage's retry callback
queues a WAITING copy that resumes from the trial's checkpoint.

* Database storages: Optuna's own heartbeats (`RDBStorage.record_heartbeat`, judged by
  `optuna.storages.fail_stale_trials` on the database's clock).
* The gRPC proxy and the journal: Optuna has no heartbeats there, so vae-tune writes the beat
  as a trial system attribute (`BEAT_ATTR`, seconds since the epoch) and judges it the same way
  on the looking host's clock (keep the hosts' clocks in sync, NTP); the retry is the same
  Optuna callback.

Optuna does this only when a trial starts, so idle workers and a new `run` call `recover` too.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from vae_tune.tuning.faults import RetryingStorage
from vae_tune.tuning.storage import Heartbeat, retry_callback

BEAT_ATTR = "vae_tune:heartbeat"


def record_beat(storage: RetryingStorage, trial_id: int) -> None:
    """Record that the trial `trial_id` is alive (see the module)."""
    if storage.heartbeats:
        storage.outage.call(storage.raw.record_heartbeat, trial_id)
    else:
        storage.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())


def recover(
    study: optuna.Study,
    storage: RetryingStorage,
    beat: Heartbeat,
    trials: Sequence[FrozenTrial] | None = None,
) -> list[int]:
    """Fail (and queue again) RUNNING trials whose worker is gone; return their numbers.
    `trials`: the study's trials, if just read (saves reading them again)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if not running:
        return []
    if storage.heartbeats:
        storage.outage.call(_fail_stale_rdb, study.study_name, storage)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        numbers = {t.number for t in running}
        return sorted(t.number for t in failed if t.number in numbers)
    now, gone = time.time(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in running:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - trial.system_attrs.get(BEAT_ATTR, started) <= beat.grace:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another process failed it first, and queues its retry
        retry_callback(beat.max_retry)(study, storage.get_trial(trial_id))
        gone.append(trial.number)
    return gone


def _fail_stale_rdb(study_name: str, storage: RetryingStorage) -> None:
    """Optuna's own stale-trial check, on a study over the heartbeat-capable storage."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        view = optuna.load_study(study_name=study_name, storage=storage.inner)
        optuna.storages.fail_stale_trials(view)


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
