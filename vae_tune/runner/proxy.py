"""The storage proxy: Optuna's gRPC proxy server in front of a database, guarding each claim.

Workers that use `grpc://host:port` hold no database connection: the proxy holds a small pool
(`vae_tune.tuning.storage.PROXY_POOL`) for all of them, and Optuna's client caches finished
trials, so hundreds of workers cost the database a handful of connections.

A worker can hold no study lock through the proxy (Optuna's protocol has none), so the proxy
checks claims itself: `ClaimGuard` wraps the storage it serves and, one claim at a time per
study (and under the study's `StudyLock` in the database, so workers that connect directly and
other proxies agree), starts a trial only while the study's stored budget allows it
(`vae_tune.runner.budget.decide`). A refused claim reaches the worker as a KeyError carrying
`REFUSAL`; it then waits or stops as it would under the lock. Budgets through the proxy are as
exact as direct ones. (A plain Optuna proxy, not started by vae-tune, has no guard: there the
last trials of a budget may overshoot by up to one per worker.)
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from vae_tune.runner.budget import BUDGET_ATTR, START, Tally, decide
from vae_tune.tuning.faults import RetryingStorage
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.storage import PROXY_POOL, db_now, mask_url, open_storage

REFUSAL = "vae-tune: the study's budget allows no trial to start now"
THREADS = 32  # requests the proxy serves at once (Optuna's default is 10)
_log = logging.getLogger("vae_tune")


class BudgetRefused(KeyError):
    """A claim the study's budget does not allow (sent to the worker as gRPC NOT_FOUND)."""


def is_refusal(err: KeyError) -> bool:
    """Whether a KeyError from `study.ask()` is the proxy refusing the claim."""
    details = getattr(err.__cause__, "details", None)
    texts = [str(err), str(details()) if callable(details) else ""]
    return any(REFUSAL in text for text in texts)


class ClaimGuard(RetryingStorage):
    """The storage a proxy serves: every call passed on, claims checked (see the module)."""

    def __init__(self, storage: RetryingStorage):
        super().__init__(
            storage.inner,
            storage.outage.where,
            raw=storage.raw,
            close=storage.close,
            kind=storage.kind,
            path=storage.path,
        )
        self.outage = storage.outage
        self._claims: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
        self._study_of: dict[int, int] = {}  # trial id -> study id, for popped trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # enqueue_trial or a retry's copy: queued, not claimed
            return super().create_new_trial(study_id, template_trial)
        with self._claims[study_id]:
            self._check(study_id)
            return super().create_new_trial(study_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        study_id = self._study_of_trial(trial_id)
        with self._claims[study_id]:
            try:
                self._check(study_id)
            except BudgetRefused:
                return False  # Optuna reads this as "taken by another worker" and moves on
            return super().set_trial_state_values(trial_id, state, values)

    def _check(self, study_id: int) -> None:
        """Raise BudgetRefused unless the study's budget allows one more trial now."""
        budget = self.get_study_user_attrs(study_id).get(BUDGET_ATTR)
        if budget is None:  # not a vae-tune study, or no budget yet: Optuna's rules
            return
        with StudyLock(self, self.get_study_name_from_id(study_id)) as _:
            tally = Tally.of(self.get_all_trials(study_id, deepcopy=False))
            if decide(budget, tally, lambda: db_now(self)) != START:
                raise BudgetRefused(REFUSAL)

    def _study_of_trial(self, trial_id: int) -> int:
        """The study of a (WAITING) trial, from the public storage API."""
        if trial_id not in self._study_of:
            number = self.get_trial_number_from_id(trial_id)
            for study in self.get_all_studies():
                study_id = self.get_study_id_from_name(study.study_name)
                try:
                    found = self.get_trial_id_from_study_id_trial_number(study_id, number)
                except KeyError:
                    continue
                if found == trial_id:
                    self._study_of[trial_id] = study_id
                    break
        return self._study_of[trial_id]


def serve_proxy(storage_url: str, host: str, port: int) -> None:
    """Serve `storage_url` to workers at grpc://host:port until stopped (blocks)."""
    storage = ClaimGuard(open_storage(storage_url, pool=PROXY_POOL))
    _log.warning(
        "storage proxy for %s listening on %s:%d (workers: --storage grpc://%s:%d)",
        mask_url(storage_url),
        host,
        port,
        host if host not in ("0.0.0.0", "::") else "THIS_HOST",
        port,
    )
    try:
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2; we rely on it
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(
                storage, host=host, port=port, thread_pool=ThreadPoolExecutor(THREADS)
            )
    finally:
        storage.close()
