"""Reliability under crashes: kill -9 workers mid-trial and count what was lost or run twice.

Two studies, each run by a pool of `vae-tune worker` processes (the first creates the study
from its spec). Whenever a worker is running a trial that has saved a checkpoint, one is killed
with SIGKILL and a fresh worker takes its place, as an orchestrator restarting a container
would, until N workers have been killed. Then the pool is left to finish and the study is
audited:

* random search, budget B trials: trials left RUNNING (target 0), killed trials whose retry
  completed, retries that resumed from a checkpoint, finished trials versus B (target exact);
* grid search: every point run exactly once (duplicates and missing points, target 0).

PostgreSQL when one answers (VAE_TUNE_TEST_POSTGRES_URL, default the local `test` database),
else SQLite in a temporary folder; `--backend both` runs both.

    python bench/faults.py [--backend auto|postgres|sqlite|both] [--kills 3] [--workers 3]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from vae_tune.tuning.storage import unreachable

CLI = str(Path(sys.executable).with_name("vae-tune"))
PG_URL = os.environ.get(
    "VAE_TUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HEARTBEAT = ["--heartbeat-interval", "1", "--heartbeat-grace", "3"]


def spec(name: str, url: str, art: Path, grid: bool, n_trials: int) -> dict[str, Any]:
    """Trials of ~2 s (4 epochs of ~0.4 s on one core) so there is time to kill mid-trial."""
    return {
        "study_name": name,
        "storage": url,
        "artifact_dir": str(art),
        "seed": 0,
        "dataset": {"name": "digits", "subset": 600},
        "search_space": {
            "architecture": "mlp",
            "latent_dim": {"low": 2, "high": 8, "log": True, "grid": [2, 4, 8]},
            "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True, "grid": [3.0e-3, 1.0e-2]},
            "beta": {"low": 0.5, "high": 2.0, "log": True, "grid": [0.5, 1.0]},
            "batch_size": 4,
            "mlp": {"hidden_dim": 256, "depth": 3},
        },
        "training": {
            "epochs": 4,
            "device": "cpu",
            "threads": 1,
            "iw_samples": 0,
            "pictures": False,
        },
        "sampler": {"name": "grid" if grid else "random"},
        "pruner": {"name": "none"},
        "budget": {"n_trials": None if grid else n_trials},
    }


class Pool:
    """`size` worker processes on one study; `kill_one` kills a busy one and replaces it."""

    def __init__(self, url: str, name: str, spec_file: Path, size: int, logs: Path):
        self.url, self.name, self.spec_file, self.logs = url, name, spec_file, logs
        self.procs: list[subprocess.Popen] = []
        self.killed = 0
        self.rng = random.Random(0)
        for _ in range(size):
            self.start()

    def start(self) -> None:
        log = (self.logs / f"worker-{len(self.procs)}.txt").open("w")
        self.procs.append(
            subprocess.Popen(
                [CLI, "worker", "--study-name", self.name, "--spec", str(self.spec_file)]
                + HEARTBEAT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "VAE_TUNE_STORAGE": self.url},
            )
        )

    def kill_one(self, timeout: float = 120) -> bool:
        """Kill -9 the worker of a RUNNING trial once it has saved 1-3 of its 4 epochs (drawn
        at random); False if no such trial came."""
        deadline = time.monotonic() + timeout
        at_epoch = self.rng.randint(1, 3)
        by_pid = {p.pid: p for p in self.procs}
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in self.procs):
                return False
            try:
                study = optuna.load_study(study_name=self.name, storage=self.url)
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            except KeyError:
                running = []
            for t in running:
                pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[-1])
                epoch = (t.user_attrs.get("checkpoint") or {}).get("epoch", 0)
                proc = by_pid.get(pid)
                if proc is not None and proc.poll() is None and at_epoch <= epoch < 4:
                    os.kill(pid, signal.SIGKILL)
                    proc.wait()
                    self.killed += 1
                    self.start()
                    return True
            time.sleep(0.05)
        return False

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))


def audit(url: str, name: str) -> dict[str, Any]:
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.trials
    states = Counter(t.state for t in trials)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    retries = [t for t in done if "failed_trial" in t.system_attrs]
    resumed = [t for t in retries if t.user_attrs.get("resumed_from_epoch", 0) > 0]
    originals = {t.number for t in trials if t.state == TrialState.FAIL}
    retried_ok = {n for t in retries for n in t.system_attrs.get("retry_history", ())}
    points = Counter(tuple(sorted(t.params.items())) for t in done)
    return {
        "running": states[TrialState.RUNNING],
        "waiting": states[TrialState.WAITING],
        "failed": len(originals),
        "retried_ok": len(retried_ok & originals),
        "retries": len(retries),
        "resumed": len(resumed),
        "epochs_saved": sum(t.user_attrs["resumed_from_epoch"] for t in resumed),
        "finished": len(done),
        "target": study.user_attrs["budget"]["target"],
        "duplicates": sum(n - 1 for n in points.values()),
        "distinct": len(points),
    }


def scenario(url: str, root: Path, grid: bool, kills: int, workers: int, n_trials: int):
    name = f"faults-{'grid' if grid else 'random'}-{uuid.uuid4().hex[:8]}"
    folder = root / name
    folder.mkdir()
    spec_file = folder / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec(name, url, folder / "artifacts", grid, n_trials)))
    started = time.perf_counter()
    pool = Pool(url, name, spec_file, workers, folder)
    try:
        for _ in range(kills):
            if not pool.kill_one():
                break
        pool.wait()
        result = audit(url, name)
    finally:
        for p in pool.procs:
            if p.poll() is None:
                p.kill()
        try:
            optuna.delete_study(study_name=name, storage=url)
        except KeyError:
            pass
    result.update(killed=pool.killed, seconds=time.perf_counter() - started)
    return result


def table(backend: str, rand: dict[str, Any], grid: dict[str, Any], workers: int) -> str:
    g_points = 12
    rows = [
        ("workers killed (kill -9, mid-trial)", f"{rand['killed']}", ""),
        ("trials left RUNNING", f"{rand['running']}", "0"),
        (
            "killed trials whose retry completed",
            f"{rand['retried_ok']}/{rand['failed']}",
            "all",
        ),
        (
            "retries resumed from a checkpoint",
            f"{rand['resumed']}/{rand['retries']} ({rand['epochs_saved']} epochs kept)",
            "all",
        ),
        ("finished trials vs budget", f"{rand['finished']}/{rand['target']}", "exact"),
        ("grid: workers killed", f"{grid['killed']}", ""),
        ("grid: trials left RUNNING", f"{grid['running']}", "0"),
        (f"grid: duplicate points ({workers} workers)", f"{grid['duplicates']}", "0"),
        ("grid: points missing", f"{g_points - grid['distinct']}", "0"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"backend: {backend}   (random study {rand['seconds']:.0f} s, "
        f"grid study {grid['seconds']:.0f} s)",
        f"{'':<{width}}  {'measured':<22} target",
    ]
    lines += [f"{a:<{width}}  {b:<22} {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", choices=["auto", "postgres", "sqlite", "both"], default="auto")
    ap.add_argument("--kills", type=int, default=3, help="workers to kill per study")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--trials", type=int, default=12, help="budget of the random study")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pg = unreachable(PG_URL) is None
    backends = {"auto": ["postgres" if pg else "sqlite"], "both": ["postgres", "sqlite"]}.get(
        args.backend, [args.backend]
    )
    if "postgres" in backends and not pg:
        sys.exit(f"no PostgreSQL answers at {PG_URL}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            root = Path(tmp) / backend
            root.mkdir()
            url = PG_URL if backend == "postgres" else f"sqlite:///{root / 'faults.db'}"
            rand = scenario(url, root, False, args.kills, args.workers, args.trials)
            grid = scenario(url, root, True, max(1, args.kills // 2), args.workers, 0)
            print(table(backend, rand, grid, args.workers), flush=True)
            print(flush=True)


if __name__ == "__main__":
    main()
