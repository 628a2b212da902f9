"""Worker processes: `vae-tune worker` joins a study; `run --workers N` starts N of them here.

A worker needs nothing but the storage URL and the study name: the spec is read from the study
(`run` stores it, password masked), so workers on other machines need no spec file. Local
workers are separate processes (`python -m tuner.cli worker`), each with its share of the CPU
cores as torch threads or its own device; the storage URL reaches them in the environment
(`VAE_TUNE_STORAGE`), never on a command line that `ps` would show.

Ctrl-C / SIGTERM: inside a trial the first signal stops training at once (the trial is marked
FAIL and queued to resume from its checkpoint); between trials it only stops the loop, so a
signal never lands in the middle of Optuna's bookkeeping. Later signals are ignored while the
worker cleans up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner.errors import UserError
from tuner.spec import StudySpec, load_spec, validate
from tuner.storage import Heartbeat, StudyLock, mask_url, open_storage, sqlite_file

Echo = Callable[..., None]
WORKER_ENV = ("VAE_TUNE_STUDY_NAME", "VAE_TUNE_SPEC", "VAE_TUNE_THREADS", "VAE_TUNE_ARTIFACTS")
KILL_AFTER_S = 20.0  # after Ctrl-C, workers still alive this long later are killed


class Interrupts:
    """SIGINT/SIGTERM handling for a worker loop (installed while used as a context manager)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._in_trial = False
        self._event = threading.Event()
        self._saved: dict[int, Any] = {}
        self._taken_over = ""

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        for handler in logging.getLogger("optuna").handlers:
            handler.addFilter(self._quiet_after_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
        for handler in logging.getLogger("optuna").handlers:
            handler.removeFilter(self._quiet_after_signal)

    def _quiet_after_signal(self, record: logging.LogRecord) -> bool:
        """Drop Optuna's "Trial N failed" tracebacks that are no error: the KeyboardInterrupt we
        raised, or a trial another worker failed already (the loop says so in one line)."""
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], UpdateFinishedTrialError):
            self._taken_over = message.split(" failed")[0]  # "Trial 12"
            return False
        if self._taken_over and message.startswith(f"{self._taken_over} failed with value"):
            self._taken_over = ""
            return False
        return not (self.requested and "failed with" in message)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
            self._event.set()
        if first and self._in_trial:
            self._in_trial = False
            raise KeyboardInterrupt

    def request(self, signum: int = signal.SIGINT) -> None:
        """Stop as if signalled (between trials)."""
        if self.signum is None:
            self.signum = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Call `fn(arg)` (a trial) so that a signal interrupts it at once."""
        if self.requested:
            raise KeyboardInterrupt
        self._in_trial = True
        try:
            return fn(arg)
        finally:
            self._in_trial = False

    def sleep(self, seconds: float) -> None:
        self._event.wait(seconds)


def available_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def split_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that N workers share the cores instead of oversubscribing."""
    return max(1, (cores or available_cores()) // max(1, workers))


def parse_devices(devices: str | None) -> list[str]:
    """`cuda:0,cuda:1` -> ['cuda:0', 'cuda:1'], each checked (raises UserError)."""
    from tuner.spec import TrainingSpec
    from tuner.train import resolve_device

    if not devices:
        return []
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise UserError("give at least one device, e.g. cuda:0,cuda:1", "devices")
    for name in names:
        validate(TrainingSpec, {"device": name}, "--devices")
        resolve_device(name)
    return names


def check_shareable(storage_url: str, workers: int) -> None:
    """Several processes need a database they can all open: not an in-memory SQLite."""
    from sqlalchemy.engine import make_url

    if workers > 1 and make_url(storage_url).get_backend_name() == "sqlite":
        if sqlite_file(storage_url) is None:
            raise UserError("several workers need a database file or server", "storage")


@dataclass
class Joined:
    study: optuna.Study
    prepared: Any  # tuner.study.Prepared
    heartbeat: Heartbeat


def join_study(
    study_name: str,
    storage_url: str,
    *,
    spec_file: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    artifact_dir: str | None = None,
    heartbeat: dict[str, int] | None = None,
) -> Joined:
    """Open a study as a worker, reading its spec from the study.

    With `spec_file`, a study that does not exist yet is created from that spec first (as
    `run` would, budget included), so identical workers can be started together (compose).
    """
    from tuner.study import (
        BUDGET_ATTR,
        load_study,
        load_vae_study,
        open_study,
        prepare,
        set_budget,
        study_heartbeat,
    )

    with StudyLock(storage_url, study_name):  # also serializes creating the tables
        storage = open_storage(storage_url)
        if study_name not in optuna.get_all_study_names(storage) and spec_file is not None:
            new = load_spec(spec_file, {"storage": storage_url, "study_name": study_name})
            made = prepare(new)
            set_budget(open_study(made, heartbeat), made, new.budget.n_trials, new.budget.timeout)
        if study_name not in optuna.get_all_study_names(storage):
            raise UserError(
                f"no study named {study_name!r} in {mask_url(storage_url)}: start it with "
                "`vae-tune run SPEC`, or give --spec to create it",
                "study_name",
            )
        study = load_vae_study(study_name, storage_url, storage=storage)
        stored = study.user_attrs.get("spec")
        if stored is None:
            raise UserError(f"study {study_name!r} was not made by vae-tune (no spec)")
        data: dict[str, Any] = {**stored, "storage": storage_url, "study_name": study_name}
        training = dict(data.get("training") or {})
        if device is not None:
            training["device"] = device
        if threads is not None:
            training["threads"] = threads
        data["training"] = training
        if artifact_dir is not None:
            data["artifact_dir"] = artifact_dir
        spec: StudySpec = validate(StudySpec, data, f"spec stored on study {study_name!r}")
        prepared = None
        if BUDGET_ATTR not in study.user_attrs:  # made by an older vae-tune or by hand
            prepared = prepare(spec)
            set_budget(study, prepared, spec.budget.n_trials, spec.budget.timeout)
    prepared = prepared or prepare(spec)  # loading data: not while holding the lock
    prepared.sampler.reseed_rng()  # workers must not all draw the same "random" points
    study = load_study(prepared, heartbeat)
    return Joined(study, prepared, study_heartbeat(study, heartbeat))


def _relay(stream: Any, echo: Echo, err: bool, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            echo(line.rstrip("\n"), err=err)
    stream.close()


@dataclass
class Launched:
    codes: list[int]
    interrupted: bool


def launch(
    spec: StudySpec,
    workers: int,
    devices: Sequence[str],
    echo: Echo,
    interrupts: Interrupts,
    heartbeat: Heartbeat,
) -> Launched:
    """Start `workers` worker processes on this machine for the study and wait for them.

    Their output is relayed line by line. On Ctrl-C each gets one SIGTERM (they mark their
    trials FAIL and queue them to resume); any still alive after KILL_AFTER_S is killed and its
    trial failed and queued here.
    """
    from tuner.artifacts import artifact_dir
    from tuner.study import WORKER_ATTR, requeue

    threads = spec.training.threads or split_threads(workers)
    # everything a worker reads from the environment is given explicitly, as this run
    # resolved it, except the storage URL: it may hold a password
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV}
    env.update(VAE_TUNE_STORAGE=spec.storage, PYTHONUNBUFFERED="1")
    store = artifact_dir(spec.storage, spec.artifact_dir).resolve()
    procs: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    lock = threading.Lock()
    for i in range(workers):
        if interrupts.requested:  # Ctrl-C while starting: start no more
            break
        cmd = [sys.executable, "-m", "tuner.cli", "worker", "--study-name", spec.study_name]
        cmd += ["--threads", str(threads), "--artifact-dir", str(store)]
        if devices:
            cmd += ["--device", devices[i % len(devices)]]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
            # a session of its own: a terminal's Ctrl-C reaches only this process, which
            # passes it on as one SIGTERM (harmless even while the worker is still starting)
            start_new_session=True,
        )
        procs.append(proc)
        for stream, err in ((proc.stdout, False), (proc.stderr, True)):
            t = threading.Thread(target=_relay, args=(stream, echo, err, lock), daemon=True)
            t.start()
            relays.append(t)
    signalled_at: float | None = None
    killed: list[subprocess.Popen] = []
    while any(p.poll() is None for p in procs):
        if interrupts.requested and signalled_at is None:
            signalled_at = time.monotonic()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        if signalled_at is not None and time.monotonic() - signalled_at > KILL_AFTER_S:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    killed.append(p)
        interrupts.sleep(0.1)
    for t in relays:
        t.join(timeout=5)
    if killed:  # their trials are still RUNNING: fail and queue them now, not after the grace
        storage = open_storage(spec.storage)
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
        names = {f"{socket.gethostname()}:{p.pid}" for p in killed}
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(WORKER_ATTR) in names:
                requeue(study, t._trial_id, heartbeat.max_retry)
    return Launched([p.returncode for p in procs], interrupts.requested)


def run_workers(
    study: optuna.Study,
    prepared: Any,
    n_trials: int | None,
    timeout: float | None,
    workers: int,
    devices: Sequence[str],
    heartbeat: Heartbeat,
    interrupts: Interrupts,
    echo: Echo,
) -> tuple[int, bool]:
    """`run --workers N`: set the budget, start the workers, wait; return (trials finished
    meanwhile, whether all went well). Raises KeyboardInterrupt after a Ctrl-C."""
    from tuner.study import DONE, Tally, next_step, recover, set_budget

    spec = prepared.spec
    with StudyLock(spec.storage, spec.study_name):
        recover(study, heartbeat)
        before = Tally.of(study.get_trials(deepcopy=False)).finished
        budget = set_budget(study, prepared, n_trials, timeout)
        step, tally = next_step(study)
    if step == DONE:
        echo("  nothing to run: the budget is spent (a grid is covered, or no trials asked for)")
        return 0, True
    threads = spec.training.threads or split_threads(workers)
    where = ", ".join(devices) if devices else spec.training.device
    echo(
        f"  {workers} workers ({where}, {threads} torch thread(s) each); budget: "
        + (f"{budget['n_trials']} more trial(s)" if budget["target"] is not None else "")
        + (f" + {budget['carried']} left from an earlier run" if budget["carried"] else "")
        + (f" within {timeout:g} s" if timeout else "")
    )
    launched = launch(spec, workers, devices, echo, interrupts, heartbeat)
    if launched.interrupted:
        raise KeyboardInterrupt
    with StudyLock(spec.storage, spec.study_name):
        recover(study, heartbeat)
    tally = Tally.of(study.get_trials(deepcopy=False))
    bad = [(i, c) for i, c in enumerate(launched.codes, 1) if c != 0]
    for i, code in bad:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        echo(f"worker {i} {how}", err=True)
    spent = next_step(study)[0] == DONE
    if bad and spent:
        echo("the other workers took over its trials: the budget is spent", err=True)
    return tally.finished - before, spent or not bad


def heartbeat_overrides(
    interval: int | None, grace: int | None, max_retry: int | None
) -> dict[str, int]:
    """Heartbeat settings given on the command line (None: keep the study's), checked now,
    before anything is written."""
    given = {"interval": interval, "grace": grace, "max_retry": max_retry}
    overrides = {k: v for k, v in given.items() if v is not None}
    defaults = Heartbeat().to_dict()
    if (
        overrides.get("interval", defaults["interval"]) >= defaults["grace"]
        and "grace" not in overrides
    ):
        # a long interval alone: scale the grace with it (Optuna's default is 2 intervals)
        overrides["grace"] = 3 * overrides["interval"]
    Heartbeat.from_dict({**defaults, **overrides})
    return overrides
