"""Where a worker's loop is: claim a trial under the study lock, run it, tell Optuna, repeat.

One `Worker` owns what a process needs to run a study's trials (its storage connection with
heartbeats, the study lock, the artifact store, the stop flag) and closes them when done. The
loop uses Optuna's ask-and-tell interface, so each outcome is handled here in one place:
completed, pruned, failed by an error (that trial only), interrupted (failed and queued to
resume from its checkpoint), taken over by another worker, or a storage that fails (the
worker stops with the database's reason).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from vae_tune.errors import ServiceError, UserError
from vae_tune.runner.budget import (
    BUDGET_ATTR,
    DONE,
    HOLD,
    START,
    WAIT,
    Tally,
    next_step,
    seconds_left,
    set_budget,
)
from vae_tune.runner.interrupts import Interrupts
from vae_tune.runner.proxy import is_refusal
from vae_tune.runner.recovery import record_beat, recover, requeue
from vae_tune.training.config import validate
from vae_tune.tuning import record
from vae_tune.tuning.artifacts import open_artifact_store
from vae_tune.tuning.checkpoint import TrialCheckpoints, discard, release
from vae_tune.tuning.curve_pruner import LearningCurvePruner
from vae_tune.tuning.faults import RetryingStorage, StorageDown
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.objective import Objective, Progress
from vae_tune.tuning.record import read
from vae_tune.tuning.spec import StudySpec, load_spec
from vae_tune.tuning.storage import Heartbeat, db_reason, open_storage, use_heartbeat
from vae_tune.tuning.study import (
    SPEC_ATTR,
    Prepared,
    load_vae_study,
    open_study,
    prepare,
    study_heartbeat,
)
from vae_tune.tuning.warm_start import Known, enqueue_baseline, enqueue_known

RAN = "ran"  # Worker.step ran a trial
HOLD_POLL_S = 0.25  # how often a held worker looks whether the first trial has finished
Callback = Callable[[optuna.Study, FrozenTrial], None]
Echo = Callable[[str], None]
_log = logging.getLogger("vae_tune")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Beat:
    """Records a running trial's heartbeat every `interval` seconds in a background thread
    (`vae_tune.runner.recovery.record_beat`), from the moment the trial is claimed."""

    def __init__(self, storage: RetryingStorage, trial_id: int, interval: int):
        self._stop = threading.Event()
        self._args = (storage, trial_id, interval)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        storage, trial_id, interval = self._args
        while True:
            try:
                record_beat(storage, trial_id)
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover
                _log.debug("heartbeat of trial id %s failed", trial_id, exc_info=True)
            if self._stop.wait(interval):
                return

    def __enter__(self) -> _Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """A process's seat at one study: storage, lock, artifact store and stop flag."""

    def __init__(
        self,
        prepared: Prepared,
        heartbeat: Heartbeat,
        interrupts: Interrupts,
        progress: Progress | None = None,
        storage: RetryingStorage | None = None,
        objective: Callable[[optuna.Trial], float] | None = None,
    ):
        """A pool worker passes its one `storage` to the seats of all its studies.
        `objective` replaces the VAE's training (bench/scale.py times the loop around a
        stand-in)."""
        spec = prepared.spec
        self.prepared, self.heartbeat, self.interrupts = prepared, heartbeat, interrupts
        self._owns_storage = storage is None
        self.storage = storage or open_storage(spec.storage, heartbeat)
        if not self._owns_storage:
            use_heartbeat(self.storage, heartbeat)
        self.study = load_vae_study(spec.study_name, spec.storage, self.storage, prepared)
        self.study_id = self.storage.get_study_id_from_name(spec.study_name)
        self.lock = StudyLock(self.storage, spec.study_name)
        self.store = open_artifact_store(spec.storage, spec.artifact_dir)
        self.name = worker_name()
        self._told: str | None = None  # the HOLD or WAIT line last echoed
        # the curve pruner holds a trial to a completed trial's curve: until one has finished,
        # a trial running beside the first could finish unjudged and mislead the sampler (seen:
        # a latent-2 trial finished first at -169 nats, and TPE drew four more near it)
        self.hold_for_reference = (
            isinstance(self.study.pruner, LearningCurvePruner) and len(self.study.directions) == 1
        )
        self.objective = objective or Objective(
            spec,
            prepared.splits,
            checkpoints_factory=lambda trial: TrialCheckpoints(trial, self.store),
            should_stop=lambda: interrupts.requested,
            progress=progress,
            seconds_left=lambda: seconds_left(self.study, self.storage),
        )

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lock.close()
        if self._owns_storage:
            self.storage.close()

    def run(self, callbacks: Sequence[Callback] = (), echo: Echo | None = None) -> int:
        """Run trials until the study's budget is spent; return how many ran here.

        After Ctrl-C the running trial is failed and queued to resume, then KeyboardInterrupt
        propagates (the caller exits 130). A worker whose budget is spent stays while other
        trials run, to take over any whose worker dies.
        """
        echo = echo or (lambda _line: None)
        ran = 0
        while True:
            step, tally = self.step(callbacks, echo)
            if step == RAN:
                ran += 1
            elif step == DONE:
                return ran
            elif step == HOLD:
                self.interrupts.sleep(HOLD_POLL_S)
            elif step == WAIT:
                self.interrupts.sleep(self.poll_s)

    @property
    def poll_s(self) -> float:
        """How often a worker with nothing to start looks again."""
        return min(2.0, self.heartbeat.interval)

    def step(self, callbacks: Sequence[Callback] = (), echo: Echo | None = None) -> tuple:
        """Claim one trial and run it (RAN), or say why not: HOLD, WAIT or DONE (with the
        study's tally). Raises KeyboardInterrupt after Ctrl-C."""
        echo = echo or (lambda _line: None)
        step, tally, trial = self._claim(echo)
        if trial is None:
            self._tell_why(step, tally, echo)
            return step, tally
        self._told = None
        self._run_trial(trial, callbacks, echo)
        return RAN, tally

    def _claim(self, echo: Echo) -> tuple[str, Tally, optuna.Trial | None]:
        """Under the study lock: recover dead workers' trials, count, ask for a trial."""
        if self.interrupts.requested or not self.lock.acquire(lambda: self.interrupts.requested):
            raise KeyboardInterrupt
        if not self._owns_storage:  # a pool's storage serves studies with their own settings
            use_heartbeat(self.storage, self.heartbeat)
        trial = None
        try:
            trials = self.study.get_trials(deepcopy=False)  # read once for both
            gone = recover(self.study, self.storage, self.heartbeat, trials)
            for number in gone:
                echo(
                    f"trial {number:>4}  its worker stopped (no heartbeat for "
                    f"{self.heartbeat.grace} s): marked FAIL and queued to resume"
                )
            step, tally = next_step(
                self.study, self.storage, self.hold_for_reference, None if gone else trials
            )
            if step == START:
                with warnings.catch_warnings():
                    # Optuna warns that heartbeats are meant for Study.optimize: this loop
                    # is the ask-and-tell equivalent and beats itself (_Beat)
                    warnings.simplefilter("ignore", UserWarning)
                    try:
                        trial = self.study.ask()  # RUNNING in the storage before the lock goes
                    except KeyError as err:  # the storage proxy refused: the budget is spent
                        if not is_refusal(err):
                            raise
                        step = WAIT
        finally:
            self.lock.release()
        return step, tally, trial

    def _tell_why(self, step: str, tally: Tally, echo: Echo) -> None:
        """One line when a worker starts to hold or wait (not one per poll)."""
        if step == self._told or step == DONE:
            return
        self._told = step
        if step == HOLD:
            echo(
                "waiting for the first trial to finish: the curve pruner judges every "
                "other trial by a finished one"
            )
        elif step == WAIT:
            echo(
                f"budget spent; waiting for {tally.running} running trial(s) "
                "to finish (taking over if their worker dies)"
            )

    def _run_trial(self, trial: optuna.Trial, callbacks: Sequence[Callback], echo: Echo) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        value, state, taken_over = None, TrialState.FAIL, False
        with _Beat(self.storage, trial_id, self.heartbeat.interval):
            try:
                record.write(trial, worker=self.name)
                value, state = self.objective(trial), TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                self._requeue(trial_id)
                raise
            except UpdateFinishedTrialError:
                taken_over = True  # another worker failed it meanwhile (our beats were late)
            except StorageDown:
                self._requeue(trial_id)  # if the storage is back by now; else the heartbeat's
                raise
            except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as err:
                self._requeue(trial_id)
                cause = err.__cause__ if isinstance(err, StorageInternalError) else err
                reason = db_reason(cause) if cause is not None else str(err)
                raise ServiceError(f"storage: {reason}") from None
            except Exception as err:  # noqa: BLE001 - a bug or bad config fails this trial only
                _log.warning("trial %d failed", trial.number, exc_info=True)
                record.write(trial, fail_reason=f"{type(err).__name__}: {err}")
        released = None
        if not taken_over:
            try:
                released = release(trial)
            except UpdateFinishedTrialError:
                taken_over = True  # its retry resumes from the checkpoint: keep the file
        frozen = self.study.tell(trial, value, state=state, skip_if_finished=True)
        if taken_over or frozen.state != state:
            echo(
                f"trial {trial.number:>4}  taken over by another worker (its heartbeats were "
                "late); its retry resumes from the last checkpoint"
            )
            return
        for callback in callbacks:
            callback(self.study, frozen)
        discard(self.study, frozen, self.store, released)

    def _requeue(self, trial_id: int) -> None:
        """Best effort: the storage may refuse this write too (then the heartbeat does it)."""
        try:
            requeue(self.study, self.storage, trial_id, self.heartbeat.max_retry)
        except Exception:  # noqa: BLE001
            _log.debug("could not requeue trial id %s", trial_id, exc_info=True)


def start_study(
    prepared: Prepared,
    n_trials: int | None,
    timeout: float | None,
    heartbeat: dict[str, int] | None = None,
    known: Sequence[Known] = (),
    echo: Echo | None = None,
) -> tuple[optuna.Study, dict[str, Any]]:
    """Create or resume the study, queue the `known` configs and (a new study's) baseline
    first, and add this run's trials to its budget (all under the lock)."""
    spec = prepared.spec
    with StudyLock(spec.storage, spec.study_name):  # also serializes creating the tables
        storage = open_storage(spec.storage, Heartbeat())
        try:
            study = open_study(prepared, storage, heartbeat)
            recover(study, storage, study_heartbeat(study, heartbeat))
            new = not study.get_trials(deepcopy=False)
            lines = enqueue_known(study, spec.search_space, list(known))
            if new and spec.sampler.baseline and prepared.grid is None:
                lines.append(enqueue_baseline(study, spec.search_space))
            for line in lines:
                (echo or print)(f"  {line}")
            budget = set_budget(study, storage, prepared.grid, n_trials, timeout)
        finally:
            storage.close()
    return study, budget


def stored_study_spec(
    study: optuna.Study,
    storage_url: str,
    *,
    device: str | None = None,
    threads: int | None = None,
    artifact_dir: str | None = None,
) -> StudySpec:
    """The spec `run` stored on the study, with this worker's storage URL and overrides."""
    data: dict[str, Any] = {
        **study.user_attrs[SPEC_ATTR],
        "storage": storage_url,
        "study_name": study.study_name,
    }
    training = dict(data.get("training") or {})
    training.update({k: v for k, v in (("device", device), ("threads", threads)) if v is not None})
    data["training"] = training
    if artifact_dir is not None:
        data["artifact_dir"] = artifact_dir
    return validate(StudySpec, data, f"spec stored on study {study.study_name!r}")


def join_study(
    study_name: str,
    storage_url: str,
    *,
    spec_file: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    artifact_dir: str | None = None,
    heartbeat: dict[str, int] | None = None,
    storage: RetryingStorage | None = None,
) -> tuple[Prepared, Heartbeat]:
    """What a worker needs to join a study, read from the study itself.

    With `spec_file`, a study that does not exist yet is created from that spec first (as
    `run` would, budget included), so identical workers can be started together (compose).
    A pool worker passes its opened `storage` (no connection of its own is opened then).
    """
    own = storage is None
    lock = StudyLock(storage_url if own else storage, study_name)
    with lock:  # also serializes creating the tables
        opened = open_storage(storage_url) if own else storage
        try:
            if study_name not in optuna.get_all_study_names(opened) and spec_file is not None:
                new = load_spec(spec_file, {"storage": storage_url, "study_name": study_name})
                made = prepare(new)
                study = open_study(made, opened, heartbeat)
                set_budget(study, opened, made.grid, new.budget.n_trials, new.budget.timeout)
            hint = ": start it with `vae-tune run SPEC`, or give --spec to create it"
            study = load_vae_study(study_name, storage_url, opened, hint=hint)
            if SPEC_ATTR not in study.user_attrs:
                raise UserError(f"study {study_name!r} has no stored spec", "study_name")
            spec = stored_study_spec(
                study, storage_url, device=device, threads=threads, artifact_dir=artifact_dir
            )
            if BUDGET_ATTR not in study.user_attrs:  # made by an older vae-tune or by hand
                set_budget(study, opened, None, spec.budget.n_trials, spec.budget.timeout)
            beat = study_heartbeat(study, heartbeat)
        finally:
            if own:
                opened.close()
    return prepare(spec), beat  # loading data: not while holding the lock


def requeue_trials_of(
    spec: StudySpec, workers: Sequence[str], max_retry: int, storage: RetryingStorage
) -> None:
    """Fail and queue the RUNNING trials of workers (host:pid) that were killed."""
    study = load_vae_study(spec.study_name, spec.storage, storage)
    study_id = storage.get_study_id_from_name(spec.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if read(t).worker in workers:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            requeue(study, storage, trial_id, max_retry)
