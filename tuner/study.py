"""The study driver: validate everything, then create or resume the study and run trials.

All checks (spec, sampler/pruner options, grid, device, data) happen in `prepare`, before the
database is touched, so a bad spec never leaves a half-made study behind.

Trials are run by *workers*: this process (`vae-tune run`), processes it starts
(`run --workers N`) or `vae-tune worker` anywhere that reaches the storage. They share one
budget stored on the study (user attr `budget`), and it is exact however many there are:

* A trial is *committed* when it is RUNNING, COMPLETE or PRUNED, or FAILED without having been
  retried. A trial failed by a crash (no heartbeat) or by Ctrl-C is queued again as a WAITING
  retry and no longer counts; its retry counts once it runs. So crashes cost no budget.
* `run` sets `target` = committed trials + retries waiting + n_trials (grid: + the points
  left), i.e. "n more trials, plus finishing the interrupted ones".
* Before each trial a worker takes the study lock (`tuner.storage.StudyLock`), fails stale
  trials, counts, and claims a trial only while committed < target. The lock is held until the
  new trial is RUNNING in the database, so two workers can never both take the last slot.
* A worker whose budget is spent stays while other trials are RUNNING: if their worker dies, it
  fails them after the heartbeat grace period and runs the retry (resuming from the trial's
  last checkpoint, `tuner.checkpoint`). It leaves when nothing is running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__
from tuner.artifacts import open_artifact_store
from tuner.checkpoint import TrialCheckpoints, discard
from tuner.datasets import Splits, load_splits
from tuner.errors import ServiceError, UserError
from tuner.objective import Objective
from tuner.samplers import build_pruner, build_sampler
from tuner.search_space import grid_points
from tuner.spec import StudySpec
from tuner.storage import (
    Heartbeat,
    StudyLock,
    db_reason,
    mask_url,
    open_storage,
    retry_callback,
)
from tuner.train import resolve_device

if TYPE_CHECKING:
    from tuner.workers import Interrupts

DEFAULT_N_TRIALS = 20
MARKER_ATTR = "vae_tune_version"  # study user attr: made by vae-tune (which version)
BUDGET_ATTR = "budget"
HEARTBEAT_ATTR = "heartbeat"
WORKER_ATTR = "worker"  # trial user attr: host:pid of the process that runs it
Callback = Callable[[optuna.Study, FrozenTrial], None]
Echo = Callable[[str], None]


@dataclass
class Prepared:
    spec: StudySpec
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    grid: list[dict[str, Any]] | None
    splits: Splits


def prepare(spec: StudySpec) -> Prepared:
    """Build every object a study needs and load its data; raises UserError on bad input."""
    sampler = build_sampler(spec.sampler.name, spec.sampler.options, spec.seed)
    pruner = build_pruner(spec.pruner)
    grid = grid_points(spec.search_space) if spec.sampler.name == "grid" else None
    resolve_device(spec.training.device)
    splits = load_splits(spec.dataset, spec.seed)
    return Prepared(spec, sampler, pruner, grid, splits)


def stored_spec(spec: StudySpec) -> dict[str, Any]:
    """The spec as kept on the study for workers and readers: the password masked."""
    dump = spec.model_dump(mode="json")
    dump["storage"] = mask_url(spec.storage)
    return dump


def study_heartbeat(study: optuna.Study, overrides: dict[str, int] | None = None) -> Heartbeat:
    """The study's heartbeat settings (defaults if none stored), with `overrides` applied."""
    stored = study.user_attrs.get(HEARTBEAT_ATTR) or {}
    return Heartbeat.from_dict({**stored, **(overrides or {})})


def require_vae_tune(study: optuna.Study) -> optuna.Study:
    """Refuse a study that vae-tune did not make (a plain Optuna study of the same name): its
    trials carry no configs to export or train, and appending ours would mix two studies."""
    if MARKER_ATTR not in study.user_attrs:
        raise UserError(
            f"study {study.study_name!r} exists in this storage but was not made by vae-tune "
            f"(it has no {MARKER_ATTR!r} attribute): choose another study name",
            "study_name",
        )
    return study


def load_vae_study(study_name: str, storage_url: str, **kwargs: Any) -> optuna.Study:
    """Load an existing vae-tune study (exit 2 if there is none of that name, or a foreign one);
    the storage must exist already: readers never create a database."""
    storage = kwargs.pop("storage", None) or open_storage(storage_url, must_exist=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, **kwargs)
    except KeyError:
        raise UserError(
            f"no study named {study_name!r} in {mask_url(storage_url)}", "study_name"
        ) from None
    return require_vae_tune(study)


def open_study(prepared: Prepared, heartbeat: dict[str, int] | None = None) -> optuna.Study:
    """Create the study, or load it if it exists (so running a spec again resumes it).
    Call with the study lock held, so that a concurrent `run` sees a study with its marker.

    The spec (credentials masked) and the heartbeat settings are written on the study every
    time: workers that join follow the latest `run`.
    """
    spec = prepared.spec
    storage = open_storage(spec.storage, Heartbeat())
    if spec.study_name in optuna.get_all_study_names(storage):
        study = load_vae_study(
            spec.study_name,
            spec.storage,
            storage=storage,
            sampler=prepared.sampler,
            pruner=prepared.pruner,
        )
    else:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            sampler=prepared.sampler,
            pruner=prepared.pruner,
            direction="maximize",
        )
        study.set_user_attr(MARKER_ATTR, __version__)  # makes it self-describing, and ours
        study.set_user_attr("objective", "validation ELBO at beta=1, nats per example (maximize)")
    beat = study_heartbeat(study, heartbeat)
    use_heartbeat(storage, beat)
    study.set_user_attr("spec", stored_spec(spec))
    study.set_user_attr(HEARTBEAT_ATTR, beat.to_dict())
    return study


def load_study(prepared: Prepared, heartbeat: dict[str, int] | None = None) -> optuna.Study:
    """Join an existing study (a worker): its own heartbeat settings unless overridden."""
    spec = prepared.spec
    storage = open_storage(spec.storage, Heartbeat())
    study = load_vae_study(
        spec.study_name,
        spec.storage,
        storage=storage,
        sampler=prepared.sampler,
        pruner=prepared.pruner,
    )
    use_heartbeat(storage, study_heartbeat(study, heartbeat))
    return study


def use_heartbeat(storage: optuna.storages.RDBStorage, beat: Heartbeat) -> None:
    """Switch an opened storage to these heartbeat settings (they are plain attributes)."""
    storage.heartbeat_interval = beat.interval
    storage.grace_period = beat.grace
    storage.heartbeat_stale_trial_callback = retry_callback(beat.max_retry)
    storage.failed_trial_callback = storage.heartbeat_stale_trial_callback


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


@dataclass(frozen=True)
class Tally:
    """The study's trials as the budget sees them."""

    committed: int  # RUNNING + COMPLETE + PRUNED + FAIL not retried
    running: int
    waiting: int
    retries_waiting: int
    finished: int  # COMPLETE + PRUNED

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
        )


def set_budget(
    study: optuna.Study,
    prepared: Prepared,
    n_trials: int | None,
    timeout: float | None,
) -> dict[str, Any]:
    """Add this run's trials to the study-wide budget (call with the study lock held): n_trials
    more (default: the rest of the grid, or 20), started within `timeout` seconds.

    Budgets add up: trials an earlier `run` asked for and that have not run yet (it is still
    running, or it was interrupted) stay in the target, so two concurrent `run --n-trials 3`
    finish 6 trials, and `carried` says how many were left over.
    """
    grid = prepared.grid is not None
    waiting = enqueue_grid(study, prepared.grid) if prepared.grid is not None else 0
    tally = Tally.of(study.get_trials(deepcopy=False))
    old = study.user_attrs.get(BUDGET_ATTR) or {}
    now = time.time()
    old_deadline = old.get("deadline")
    live = old_deadline is None or old_deadline > now
    outstanding = 0
    if old.get("target") is not None and live:
        outstanding = max(0, old["target"] - tally.committed)
    carried = max(outstanding, tally.retries_waiting)
    target: int | None
    if grid:
        n_trials = min(n_trials or waiting, waiting)
        target = tally.committed + min(carried + n_trials, waiting)
    else:
        if n_trials is None and timeout is None:
            n_trials = DEFAULT_N_TRIALS
        target = None if n_trials is None else tally.committed + carried + n_trials
    deadline = None
    if timeout:
        deadline = max(now + timeout, old_deadline if outstanding and old_deadline else 0)
    budget = {
        "target": target,
        "n_trials": n_trials,
        "carried": carried if target is not None else 0,
        "deadline": deadline,
        "grid": grid,
        "set_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    study.set_user_attr(BUDGET_ATTR, budget)
    return budget


START, WAIT, DONE = "start", "wait", "done"


def next_step(study: optuna.Study) -> tuple[str, Tally]:
    """START a trial, WAIT for running ones (to take over if their worker dies) or be DONE."""
    budget = study.user_attrs.get(BUDGET_ATTR) or {}
    tally = Tally.of(study.get_trials(deepcopy=False))
    deadline, target = budget.get("deadline"), budget.get("target")
    if deadline is not None and time.time() >= deadline:
        return DONE, tally
    spent = (budget.get("grid") and tally.waiting == 0) or (
        target is not None and tally.committed >= target
    )
    if spent:
        return (WAIT if tally.running else DONE), tally
    return START, tally


def recover(study: optuna.Study, heartbeat: Heartbeat) -> list[int]:
    """Fail (and queue again) RUNNING trials whose worker is gone; return their numbers.

    Optuna only does this when a trial starts, so an idle worker or a new `run` calls it too.
    Also catches RUNNING trials that never wrote a heartbeat (their process died in the instant
    before the first one, or an older vae-tune ran them) once they are older than the grace.
    """
    storage = study._storage
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    callback = storage.get_heartbeat_stale_trial_callback()
    study_id = storage.get_study_id_from_name(study.study_name)
    cutoff = dt.datetime.now() - dt.timedelta(seconds=heartbeat.grace + heartbeat.interval)
    engine = getattr(storage, "_backend", storage).engine  # Optuna wraps RDBStorage in a cache
    with engine.connect() as conn:
        orphans = list(
            conn.execute(
                sqlalchemy.text(
                    "SELECT t.trial_id FROM trials t WHERE t.study_id = :sid"
                    " AND t.state = 'RUNNING' AND t.datetime_start < :cutoff AND NOT EXISTS"
                    " (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"
                ),
                {"sid": study_id, "cutoff": cutoff},
            ).scalars()
        )
    for trial_id in orphans:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL) and callback:
                callback(study, storage.get_trial(trial_id))
        except UpdateFinishedTrialError:
            pass
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return sorted(t.number for t in failed if t.number in running)


def requeue(study: optuna.Study, trial_id: int, max_retry: int) -> int | None:
    """Fail an interrupted trial if still RUNNING and queue its retry (unless already queued);
    return the retry's trial number."""
    storage = study._storage
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
    return None  # max_retry reached


def _is_running(study: optuna.Study, trial_id: int) -> bool:
    return study._storage.get_trial(trial_id).state == TrialState.RUNNING


def _number(study: optuna.Study, trial_id: int) -> int:
    return study._storage.get_trial(trial_id).number


class StorageFailure(BaseException):
    """The storage failed under a trial (disk full, server gone): not the trial's fault, so it
    must not be caught as a failed trial (Optuna catches Exception); the worker stops with the
    database's one-line reason instead."""

    def __init__(self, err: Exception):
        cause = getattr(err, "__cause__", None) or err
        self.reason = (
            db_reason(cause) if isinstance(cause, sqlalchemy.exc.SQLAlchemyError) else str(cause)
        )
        super().__init__(self.reason)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trials(
    study: optuna.Study,
    prepared: Prepared,
    heartbeat: Heartbeat,
    callbacks: Sequence[Callback] = (),
    interrupts: Interrupts | None = None,
    echo: Echo | None = None,
) -> int:
    """Run trials in this process until the study's budget is spent; return how many ran.

    On Ctrl-C the running trial is marked FAIL and queued to resume, then KeyboardInterrupt
    propagates (the caller exits 130).
    """
    from tuner.workers import Interrupts

    spec = prepared.spec
    interrupts = interrupts or Interrupts()
    echo = echo or (lambda _line: None)
    store = open_artifact_store(spec.storage, spec.artifact_dir)
    objective = Objective(
        spec, prepared.splits, checkpoints_factory=lambda trial: TrialCheckpoints(trial, store)
    )
    lock = StudyLock(spec.storage, spec.study_name)
    me = worker_name()
    current: list[int] = []

    def trial_fn(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING in the database: others may count and claim now
        current.append(trial._trial_id)
        try:
            trial.set_user_attr(WORKER_ATTR, me)
            return interrupts.run(objective, trial)
        except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as err:
            raise StorageFailure(err) from None

    every = [*callbacks, lambda s, t: discard(s, t, store)]
    poll = min(2.0, heartbeat.interval)
    ran, told_waiting = 0, False
    try:
        while True:
            if interrupts.requested or not lock.acquire(lambda: interrupts.requested):
                raise KeyboardInterrupt
            try:
                for number in recover(study, heartbeat):
                    echo(
                        f"trial {number:>4}  its worker stopped (no heartbeat for "
                        f"{heartbeat.grace} s): marked FAIL and queued to resume"
                    )
                step, tally = next_step(study)
                if step == START:
                    told_waiting = False
                    current.clear()
                    try:
                        study.optimize(
                            trial_fn,
                            n_trials=1,
                            callbacks=every,
                            catch=(Exception,),  # an unexpected error fails that trial only
                            gc_after_trial=False,
                        )
                    except (UpdateFinishedTrialError, ValueError):
                        # Optuna could not record our trial's end because another worker had
                        # already failed it (our heartbeats were late) and queued its retry,
                        # which resumes from our last checkpoint: carry on with the next trial
                        if not current or _is_running(study, current[-1]):
                            raise
                        echo(
                            f"trial {_number(study, current[-1]):>4}  taken over by another "
                            "worker (its heartbeats were late)"
                        )
                    ran += 1
                    current.clear()
            finally:
                lock.release()
            if step == DONE:
                return ran
            if step == WAIT:
                if not told_waiting:
                    echo(
                        f"budget spent; waiting for {tally.running} running trial(s) "
                        "to finish (taking over if their worker dies)"
                    )
                    told_waiting = True
                interrupts.sleep(poll)
    except KeyboardInterrupt:
        for trial_id in current:
            requeue(study, trial_id, heartbeat.max_retry)
        raise
    except StorageFailure as failure:
        for trial_id in current:  # best effort: the storage may refuse this write too
            with contextlib.suppress(Exception):
                requeue(study, trial_id, heartbeat.max_retry)
        raise ServiceError(f"storage: {failure.reason}") from None
    finally:
        lock.close()


def optimize(
    study: optuna.Study,
    prepared: Prepared,
    n_trials: int | None,
    timeout: float | None,
    callbacks: Sequence[Callback] = (),
    heartbeat: dict[str, int] | None = None,
    interrupts: Interrupts | None = None,
    echo: Echo | None = None,
) -> int:
    """Set this run's budget, then run trials in this process: `n_trials` more (default: the
    rest of the grid, or 20). Returns how many trials ran here."""
    with StudyLock(prepared.spec.storage, prepared.spec.study_name):
        budget = set_budget(study, prepared, n_trials, timeout)
    if budget["carried"] and echo is not None:
        echo(f"  budget: {budget['carried']} trial(s) left from an earlier run, plus these")
    beat = study_heartbeat(study, heartbeat)
    return run_trials(study, prepared, beat, callbacks, interrupts=interrupts, echo=echo)


def counts(study: optuna.Study) -> dict[str, int]:
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s.name: states.get(s.name, 0) for s in TrialState}
