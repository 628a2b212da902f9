"""Each shipped spec's README command, timed: wall seconds, the best trial against the baseline
it starts from, and how many trials were pruned at their last epoch (never, by design).

Each spec runs in a fresh folder (its own `vae-tune.db`), with no other flag than the README's
`--data-dir`, so the numbers are what a user's first run costs on this machine.

    python bench/shipped_specs.py --data-dir ../shared/data/mnist                  # all MNIST specs
    python bench/shipped_specs.py --data-dir DIR --spec mnist-grid --spec quickstart
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from vae_tune.training.hardware import available_cores, cpu_model
from vae_tune.tuning.record import read
from vae_tune.tuning.spec import load_spec
from vae_tune.tuning.study import BASELINE

CLI = str(Path(sys.executable).with_name("vae-tune"))
SPECS = ["quickstart", "mnist", "mnist-grid", "mnist-remedies", "vs-plain-optuna"]


def measure(name: str, data_dir: str) -> str:
    spec = load_spec(name)
    args = [CLI, "run", name] + (["--data-dir", data_dir] if name != "quickstart" else [])
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run(args, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            return f"{name:<16} exit {done.returncode}: {done.stderr.strip()[-300:]}"
        storage = f"sqlite:///{Path(folder) / 'vae-tune.db'}"
        trials = optuna.load_study(study_name=spec.study_name, storage=storage).trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    at_last = [t for t in pruned if (read(t).epochs_run or 0) >= spec.training.epochs]
    best = max(finished, key=lambda t: t.value) if finished else None
    baseline = next((t for t in trials if read(t).queued == BASELINE), None)
    base = f"{baseline.value:.2f}" if baseline and baseline.value is not None else "none"
    return (
        f"{name:<16}{wall:>8.0f} s  {len(finished):>3} complete {len(pruned):>3} pruned "
        f"({len(at_last)} at their last epoch)  best {best.value if best else float('nan'):.2f}"
        f" (trial {best.number if best else '-'})  baseline {base}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    ap.add_argument("--spec", action="append", help="a shipped spec (default: the MNIST ones)")
    opts = ap.parse_args()
    names = opts.spec or [s for s in SPECS if s != "quickstart"]
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"# bench/shipped_specs.py {now}; {cpu_model()}, {available_cores()} cores; "
        f"python {platform.python_version()}; `vae-tune run NAME --data-dir DIR`"
    )
    for name in names:
        print(measure(name, opts.data_dir), flush=True)


if __name__ == "__main__":
    main()
