"""`vae-tune run`: start or resume a study, then run its trials here or in local workers.

`run_study` is the one service function the CLI calls. With one worker the trials run in
this process; with `--workers N` (or `--devices`) it starts N `vae-tune worker` processes on
this machine, each with its share of the cores as torch threads or its own device, relays
their output, and on Ctrl-C passes one SIGTERM on (then kills stragglers after KILL_AFTER_S
and queues their trials itself). The storage URL reaches the workers in the environment,
never on a command line that `ps` would show.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from vae_tune.errors import UserError
from vae_tune.runner.budget import DONE, Tally, next_step
from vae_tune.runner.interrupts import Interrupts
from vae_tune.runner.recovery import recover
from vae_tune.runner.worker import Callback, Worker, requeue_trials_of, start_study
from vae_tune.training.config import validate
from vae_tune.training.hardware import available_cores
from vae_tune.training.trainer import resolve_device
from vae_tune.tuning.artifacts import artifact_dir
from vae_tune.tuning.faults import EXIT_STORAGE_DOWN, RetryingStorage, StorageDown
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.objective import Progress
from vae_tune.tuning.spec import StudySpec, TrainingSpec
from vae_tune.tuning.storage import (
    Heartbeat,
    mask_url,
    open_storage,
    sqlite_file,
    use_heartbeat,
)
from vae_tune.tuning.study import Prepared, load_vae_study, prepare, study_heartbeat
from vae_tune.tuning.warm_start import WarmStart

Echo = Callable[..., None]
WORKER_ENV = ("VAE_TUNE_STUDY_NAME", "VAE_TUNE_SPEC", "VAE_TUNE_THREADS", "VAE_TUNE_ARTIFACTS")
KILL_AFTER_S = 20.0  # after Ctrl-C, workers still alive this long later are killed


# The worker's interpreter drops the working folder from the import path before importing
# vae_tune: a user's own `models.py`, `tuner/` or even `vae_tune/` beside the study cannot
# shadow the package (`python -m` would put the folder first). User architectures named by
# module are still found: `models.plugins` appends the working folder at the end of the path.
WORKER_ENV_FLAG = "VAE_TUNE_WORKER_PROCESS"  # set in every worker process this launcher starts
WORKER_ENTRY = "import sys; sys.path.pop(0); from vae_tune.cli import main; main()"


def worker_command() -> list[str]:
    """The argv that starts `vae-tune worker` in a fresh interpreter of this environment."""
    return [sys.executable, "-c", WORKER_ENTRY, "worker"]


def split_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that N workers share the cores instead of oversubscribing."""
    return max(1, (cores or available_cores()) // max(1, workers))


def parse_devices(devices: str | None) -> list[str]:
    """`cuda:0,cuda:1` -> ['cuda:0', 'cuda:1'], each checked (raises UserError)."""
    if not devices:
        return []
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise UserError("give at least one device, e.g. cuda:0,cuda:1", "devices")
    for name in names:
        validate(TrainingSpec, {"device": name}, "--devices")
        resolve_device(name)
    return names


def share_devices(devices: Sequence[str], per_device: int, spec_device: str) -> list[str]:
    """Each CUDA device `per_device` times (one worker each): one small VAE leaves most of a
    modern GPU idle, so several trials share it. Without `devices`, the spec's device, which
    must then be CUDA (raises UserError on a CPU, where --workers is the knob)."""
    if per_device == 1:
        return list(devices)
    names = list(devices) or [spec_device]
    cpu = [n for n in names if resolve_device(n).type != "cuda"]
    if cpu:
        raise UserError(
            f"several trials per device are for CUDA devices, not {cpu[0]!r}; on a CPU use "
            "--workers",
            "trials-per-device",
        )
    return [n for n in names for _ in range(per_device)]


AUTO_SQLITE_MAX = 4  # SQLite takes one writer at a time: beyond this, use PostgreSQL


def parse_workers(workers: str) -> int | None:
    """`auto` -> None (decided by `auto_workers` once the device is known), else N >= 1."""
    if workers == "auto":
        return None
    if not workers.isdigit() or int(workers) < 1:
        raise UserError(f"expected a number >= 1 or auto, got {workers!r}", "workers")
    return int(workers)


def auto_workers(spec: StudySpec, devices: Sequence[str]) -> int:
    """How many local workers give the most trials per hour here.

    Single-threaded workers train small MLP VAEs faster in total than one worker with every
    core's threads (intra-op threading of small matrices scales poorly; the measurements are
    in docs/how-to/speed.md), so on a CPU: one worker per core. A GPU: one per device."""
    if devices:
        return len(devices)
    if resolve_device(spec.training.device).type == "cuda":
        return 1
    cores = available_cores()
    n = cores // spec.training.threads if spec.training.threads else cores
    if sqlite_file(spec.storage) is not None:
        n = min(n, AUTO_SQLITE_MAX)
    elif spec.storage.startswith("sqlite"):  # in-memory SQLite: one process only
        n = 1
    return max(1, n)


def check_shareable(storage_url: str, workers: int) -> None:
    """Several processes need a database they can all open: not an in-memory SQLite."""
    if workers > 1 and storage_url.startswith("sqlite") and sqlite_file(storage_url) is None:
        raise UserError("several workers need a database file or server", "storage")


@dataclass
class RunOutcome:
    """What `run_study` did: the study, trials finished meanwhile, and how it ended."""

    study: optuna.Study
    finished: int
    ok: bool = True
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)


def run_study(
    spec: StudySpec,
    *,
    workers: int | None = None,
    devices: Sequence[str] = (),
    heartbeat: dict[str, int] | None = None,
    warm_start: WarmStart | None = None,
    on_prepared: Callable[[Prepared, int], None] | None = None,
    on_trial: Callback | None = None,
    on_epoch: Progress | None = None,
    echo: Echo = print,
) -> RunOutcome:
    """Create or resume the study of `spec`, add its budget, and run trials until it is spent.

    `warm_start` names known configs to queue first (read before anything is written).
    `on_prepared(prepared, n_workers)` sees the checked spec and loaded data before the
    database is touched; `on_trial` sees each finished trial of this process, `on_epoch`
    each finished epoch (trials in local worker processes print their own).
    """
    n_workers = workers or auto_workers(spec, devices)
    check_shareable(spec.storage, n_workers)
    if n_workers == 1 and devices:
        training = spec.training.model_copy(update={"device": devices[0]})
        spec = spec.model_copy(update={"training": training})
    prepared = prepare(spec, echo)
    known = warm_start.gather(spec.storage) if warm_start else []
    if known and prepared.grid is not None:
        raise UserError("--enqueue and --warm-start do not mix with the grid sampler", "sampler")
    if on_prepared is not None:
        on_prepared(prepared, n_workers)
    with Interrupts() as interrupts:
        study, budget = start_study(
            prepared, spec.budget.n_trials, spec.budget.timeout, heartbeat, known, echo
        )
        if budget["carried"]:
            echo(f"  budget: {budget['carried']} trial(s) left from an earlier run, plus these")
        # one storage for the rest of the run (and the in-process worker): this process, too,
        # holds at most the 2 connections of one pool (start_study's is closed, unused now)
        storage = open_storage(spec.storage, Heartbeat())
        study = load_vae_study(spec.study_name, spec.storage, storage, prepared)
        beat = study_heartbeat(study)
        use_heartbeat(storage, beat)
        before = Tally.of(study.get_trials(deepcopy=False)).finished
        outcome = RunOutcome(study, 0)
        try:
            if n_workers == 1:
                with Worker(prepared, beat, interrupts, on_epoch, storage=storage) as worker:
                    worker.run([on_trial] if on_trial else [], echo)
            else:
                outcome.ok = _run_workers(
                    prepared, n_workers, devices, beat, interrupts, echo, storage
                )
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            outcome.finished = Tally.of(study.get_trials(deepcopy=False)).finished - before
            storage.close()  # a database's connections; the study reconnects if used again
    return outcome


def submit_study(
    spec: StudySpec,
    *,
    heartbeat: dict[str, int] | None = None,
    warm_start: WarmStart | None = None,
    echo: Echo = print,
) -> tuple[optuna.Study, dict[str, Any]]:
    """Create the study of `spec` (or add to its budget) for a worker pool, and return at
    once: its data and models are checked now, its trials run in `vae-tune worker --all`."""
    check_shareable(spec.storage, 2)
    prepared = prepare(spec, echo)
    known = warm_start.gather(spec.storage) if warm_start else []
    return start_study(prepared, spec.budget.n_trials, spec.budget.timeout, heartbeat, known, echo)


def _run_workers(
    prepared: Prepared,
    workers: int,
    devices: Sequence[str],
    heartbeat: Heartbeat,
    interrupts: Interrupts,
    echo: Echo,
    storage: RetryingStorage,
) -> bool:
    """Start the workers, wait; return whether all went well. KeyboardInterrupt after Ctrl-C."""
    spec = prepared.spec
    study = load_vae_study(spec.study_name, spec.storage, storage)
    if next_step(study, storage)[0] == DONE:
        echo("  nothing to run: the budget is spent (a grid covered, or no trials asked for)")
        return True
    threads = spec.training.threads or split_threads(workers)
    where = ", ".join(devices) if devices else spec.training.device
    echo(f"  {workers} workers ({where}, {threads} torch thread(s) each)")
    codes, killed = _launch(spec, workers, devices, echo, interrupts, threads)
    if killed:  # their trials are still RUNNING: fail and queue them now, not after the grace
        requeue_trials_of(spec, killed, heartbeat.max_retry, storage)
    if interrupts.requested:
        raise KeyboardInterrupt
    with StudyLock(storage, spec.study_name):
        recover(study, storage, heartbeat)
    if EXIT_STORAGE_DOWN in codes:
        raise StorageDown(
            f"a worker stopped: storage {mask_url(spec.storage)} did not answer for longer "
            "than VAE_TUNE_DB_OUTAGE_S; run again to resume once it is back"
        )
    bad = [(i, c) for i, c in enumerate(codes, 1) if c != 0]
    for i, code in bad:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        echo(f"worker {i} {how}", err=True)
    spent = next_step(study, storage)[0] == DONE
    if bad and spent:
        echo("the other workers took over its trials: the budget is spent", err=True)
    return spent or not bad


def _relay(stream: Any, echo: Echo, err: bool, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            echo(line.rstrip("\n"), err=err)
    stream.close()


def _launch(
    spec: StudySpec,
    workers: int,
    devices: Sequence[str],
    echo: Echo,
    interrupts: Interrupts,
    threads: int,
) -> tuple[list[int], list[str]]:
    """Start `workers` worker processes and wait for them; return their exit codes and the
    host:pid names of those killed after Ctrl-C."""
    # everything a worker reads from the environment is given explicitly, as this run
    # resolved it, except the storage URL: it may hold a password
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV}
    env.update(VAE_TUNE_STORAGE=spec.storage, PYTHONUNBUFFERED="1", **{WORKER_ENV_FLAG: "1"})
    store = artifact_dir(spec.storage, spec.artifact_dir).resolve()
    procs: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []
    lock = threading.Lock()
    for i in range(workers):
        if interrupts.requested:  # Ctrl-C while starting: start no more
            break
        cmd = [*worker_command(), "--study-name", spec.study_name]
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
    killed: list[str] = []
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
                    killed.append(f"{socket.gethostname()}:{p.pid}")
        interrupts.sleep(0.1)
    for t in relays:
        t.join(timeout=5)
    return [p.returncode for p in procs], killed
