"""How far each storage scales: many worker processes, the real worker loop, a stand-in trial.

For 1, 8, 32 and 64 worker processes on each storage (SQLite, PostgreSQL direct, PostgreSQL
through `vae-tune storage-proxy`, a journal file), one study with a budget of 8 trials per
worker is run by `vae_tune.runner.worker.Worker` (claim under the study lock, heartbeats,
ask/tell, the stored budget), with a stand-in objective in place of training: it draws the
spec's search space from the sampler, reports 3 intermediate values and sleeps 50 ms. Printed:

* trials/s from the first claim to the last tell;
* coordination overhead per trial (a worker's step minus the objective: lock, recovery,
  budget, ask, tell, heartbeat), p50 and p95 over all trials;
* database connections held at peak (pg_stat_activity, sampled every 50 ms; PostgreSQL only);
* peak resident memory of one worker process (with the project and torch imported);
* the exact budget (finished == target) and any worker that exited non-zero;
* then the sampler's ask time (ask + draw of the search space) on a study that already holds
  1,000 and 10,000 finished trials, per storage.

    python bench/scale.py [--workers 1,8,32,64] [--storages sqlite,postgres,proxy,journal]
                          [--ask-sizes 1000,10000] [--trials-per-worker 8]
                          > bench/results/scale.log

PostgreSQL is the local server (VAE_TUNE_TEST_POSTGRES_URL); the proxy needs
`pip install 'vae-tune[grpc]'`. With 64 workers on 2 cores the machine is saturated: the
overhead then includes waiting for a core, which is what a crowded node sees.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy

PG_URL = os.environ.get(
    "VAE_TUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TRIALS_PER_WORKER = 8
OBJECTIVE_S = 0.05


def spec_dict(url: str, name: str, art: Path, n_trials: int) -> dict[str, Any]:
    return {
        "study_name": name,
        "storage": url,
        "artifact_dir": str(art),
        "seed": 0,
        "dataset": {"name": "digits", "subset": 200},
        "search_space": {
            "architecture": "mlp",
            "latent_dim": {"low": 2, "high": 32, "log": True},
            "beta": {"low": 0.1, "high": 4.0, "log": True},
            "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "batch_size": {"choices": [32, 64, 128]},
            "mlp": {"hidden_dim": 16, "depth": 1},
        },
        "training": {"epochs": 3, "device": "cpu", "threads": 1},
        "pruner": {"name": "none"},
        "sampler": {"baseline": False},
        "budget": {"n_trials": n_trials},
    }


# --- a worker process ---------------------------------------------------------------------


def child(url: str, name: str, out: str) -> None:
    """One worker: join the study, run the real loop with a stand-in objective, write the
    per-trial overheads (s) and this process's peak memory (MiB) to `out`."""
    from vae_tune.runner.interrupts import Interrupts
    from vae_tune.runner.worker import RAN, Worker, join_study
    from vae_tune.tuning.search_space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the CLI's workers
    spent: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        values = suggest(trial, prepared.spec.search_space)
        for step in range(1, 4):
            trial.report(-100.0 / step - values["beta"], step)
        time.sleep(OBJECTIVE_S)
        spent.append(time.perf_counter() - start)
        return -100.0 / 3 - values["beta"]

    overheads, stamps = [], []
    with Interrupts() as interrupts:
        prepared, beat = join_study(name, url)
        with Worker(prepared, beat, interrupts, objective=objective) as worker:
            while True:
                before = len(spent)
                start = time.perf_counter()
                step, _ = worker.step()
                took = time.perf_counter() - start
                if step == RAN:
                    overheads.append(took - spent[before])
                    stamps.append(time.time())
                elif step == "done":
                    break
                else:
                    time.sleep(worker.poll_s / 4)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"overheads": overheads, "stamps": stamps, "mib": peak_mib}))


# --- the parent -----------------------------------------------------------------------------


class PeakConnections(threading.Thread):
    """Samples pg_stat_activity: the most connections the given processes held at once (each
    vae-tune process names its connections `vae-tune pid N`)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.names = [f"vae-tune pid {pid}" for pid in pids]
        self.peak, self.stop = 0, threading.Event()
        self.engine = sqlalchemy.create_engine(
            PG_URL, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
        )

    def run(self) -> None:
        sql = sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(:names)"
        )
        with self.engine.connect() as conn:
            while not self.stop.wait(0.05):
                count = conn.execute(sql, {"names": self.names}).scalar()
                self.peak = max(self.peak, count)

    def finish(self) -> int:
        self.stop.set()
        self.join()
        self.engine.dispose()
        return self.peak


def start_proxy(folder: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).with_name("vae-tune"))
    log = (folder / "proxy.log").open("w")
    proc = subprocess.Popen(
        [cli, "storage-proxy", "--storage", PG_URL, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "listening" not in (folder / "proxy.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the proxy did not start: {(folder / 'proxy.log').read_text()}")
        time.sleep(0.1)
    return proc, f"grpc://127.0.0.1:{port}"


def storage_url(kind: str, folder: Path, proxy_url: str | None) -> str:
    return {
        "sqlite": f"sqlite:///{folder / 'scale.db'}",
        "postgres": PG_URL,
        "proxy": proxy_url or "",
        "journal": f"journal://{folder / 'scale.log'}",
    }[kind]


def run_case(
    kind: str,
    url: str,
    workers: int,
    folder: Path,
    proxy_pid: int | None = None,
    per_worker: int = TRIALS_PER_WORKER,
) -> dict[str, Any]:
    from vae_tune.runner.launcher import submit_study
    from vae_tune.tuning.spec import load_spec
    from vae_tune.tuning.storage import open_storage

    name = f"scale-{kind}-{workers}-{uuid.uuid4().hex[:6]}"
    target = per_worker * workers
    submit_study(load_spec(spec_dict(url, name, folder / "art", target)), echo=lambda *_: None)
    outs = [folder / f"{name}-{i}.json" for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, name, str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    watch = None
    if kind in ("postgres", "proxy"):  # the workers' connections, and the proxy's
        watch = PeakConnections([p.pid for p in procs] + ([proxy_pid] if proxy_pid else []))
        watch.start()
    errors = []
    for proc in procs:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            errors.append((proc.returncode, (err or "").strip().splitlines()[-1:]))
    peak = watch.finish() if watch else None
    rows = [json.loads(o.read_text()) for o in outs if o.exists()]
    overheads = [x for r in rows for x in r["overheads"]]
    stamps = sorted(x for r in rows for x in r["stamps"])
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        if kind in ("postgres", "proxy"):
            optuna.delete_study(study_name=name, storage=storage)
    finally:
        storage.close()
    span = (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    q = statistics.quantiles(overheads, n=20) if len(overheads) >= 2 else [float("nan")] * 19
    return {
        "storage": kind,
        "workers": workers,
        "trials_per_s": (len(stamps) - 1) / span if span == span and span > 0 else float("nan"),
        "p50_ms": 1000 * statistics.median(overheads) if overheads else float("nan"),
        "p95_ms": 1000 * q[18],
        "peak_connections": peak,
        "worker_mib": max((r["mib"] for r in rows), default=float("nan")),
        "exact": finished == target,
        "finished": finished,
        "target": target,
        "errors": errors,
    }


def ask_times(kind: str, url: str, sizes: list[int], folder: Path) -> dict[int, float]:
    """Median seconds of ask + drawing the space with vae-tune's default sampler, on a study
    already holding n finished trials."""
    from optuna.distributions import FloatDistribution

    from vae_tune.tuning.search_space import suggest
    from vae_tune.tuning.spec import load_spec
    from vae_tune.tuning.storage import open_storage
    from vae_tune.tuning.study import prepare

    out = {}
    for n in sizes:
        name = f"ask-{kind}-{n}-{uuid.uuid4().hex[:6]}"
        spec = load_spec(spec_dict(url, name, folder / "art", 1))
        prepared = prepare(spec)
        storage = open_storage(url)
        study = optuna.create_study(study_name=name, storage=storage, sampler=prepared.sampler)
        dists = {
            "latent_dim": optuna.distributions.IntDistribution(2, 32, log=True),
            "beta": FloatDistribution(0.1, 4.0, log=True),
            "lr": FloatDistribution(1e-4, 1e-2, log=True),
            "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
        }
        rng = np.random.default_rng(0)
        trials = [
            optuna.trial.create_trial(
                params={
                    "latent_dim": int(rng.integers(2, 33)),
                    "beta": float(rng.uniform(0.1, 4.0)),
                    "lr": float(rng.uniform(1e-4, 1e-2)),
                    "batch_size": int(rng.choice([32, 64, 128])),
                },
                distributions=dists,
                value=float(-rng.uniform(90, 120)),
            )
            for _ in range(n)
        ]
        study.add_trials(trials)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            trial = study.ask()
            suggest(trial, prepared.spec.search_space)
            times.append(time.perf_counter() - start)
            study.tell(trial, -100.0)
        out[n] = statistics.median(times)
        if kind in ("postgres", "proxy"):
            optuna.delete_study(study_name=name, storage=storage)
        storage.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,8,32,64")
    parser.add_argument("--storages", default="sqlite,postgres,proxy,journal")
    parser.add_argument("--ask-sizes", default="1000,10000")
    parser.add_argument("--trials-per-worker", type=int, default=TRIALS_PER_WORKER)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    counts = [int(x) for x in args.workers.split(",")]
    kinds = args.storages.split(",")
    sizes = [int(x) for x in args.ask_sizes.split(",") if x]
    print(f"# bench/scale.py {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores")
    print(f"# {args.trials_per_worker} trials per worker, stand-in objective of {OBJECTIVE_S} s")
    header = (
        f"{'storage':<9} {'workers':>7} {'trials/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'peak conns':>10} {'worker MiB':>10}  budget"
    )
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        proxy, proxy_url = start_proxy(folder) if "proxy" in kinds else (None, None)
        asks = {}
        try:
            for kind in kinds:
                url = storage_url(kind, folder, proxy_url)
                for n in counts:
                    pid = proxy.pid if proxy is not None and kind == "proxy" else None
                    r = run_case(kind, url, n, folder, pid, args.trials_per_worker)
                    conns = "-" if r["peak_connections"] is None else str(r["peak_connections"])
                    budget = "exact" if r["exact"] else f"{r['finished']} of {r['target']}"
                    if r["errors"]:
                        budget += f"; {len(r['errors'])} worker(s) failed: {r['errors'][0]}"
                    print(
                        f"{kind:<9} {n:>7} {r['trials_per_s']:>9.1f} {r['p50_ms']:>8.1f} "
                        f"{r['p95_ms']:>8.1f} {conns:>10} {r['worker_mib']:>10.0f}  {budget}",
                        flush=True,
                    )
                if sizes:
                    asks[kind] = ask_times(kind, url, sizes, folder)
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(10)
        if asks:
            print()
            print("sampler ask time (ask + draw of the space, median of 5), ms")
            print(f"{'storage':<9} " + " ".join(f"{f'{n} trials':>13}" for n in sizes))
            for kind, times in asks.items():
                print(f"{kind:<9} " + " ".join(f"{1000 * times[n]:>13.1f}" for n in sizes))


if __name__ == "__main__":
    main()
