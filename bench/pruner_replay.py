"""Replay unpruned learning curves through pruners: the epochs each pruner would have
trained, and whether it would have kept the best trial.

Record the curves once, with no pruning (`vae-tune run studies/vs-plain-optuna.yaml --pruner
none` per seed), then replay them through every pruner in seconds, on the same trials: the
sampler's choices are as recorded, so this measures the pruner alone.

    python bench/pruner_replay.py record --data-dir ../shared/data/mnist --subset 20000 \
        --seeds 0,1,2,3 --out curves.json
    python bench/pruner_replay.py replay bench/results/curves_subset20000.json [--workers 2]

Trials run as they did: `--workers` at once, each epoch taking its trial's recorded mean epoch
time, so a pruner sees only what had finished by then.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from vae_tune.tuning.curve_pruner import LearningCurvePruner
from vae_tune.tuning.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "vae_tune" / "studies" / "vs-plain-optuna.yaml"
CLI = str(Path(sys.executable).with_name("vae-tune"))
# one trial: (seconds per epoch, validation ELBO per epoch, final value)
Trial = tuple[float, dict[int, float], float]

P = optuna.pruners
PRUNERS = {
    "median": lambda: P.MedianPruner(),
    "median, 2 start-up trials": lambda: P.MedianPruner(n_startup_trials=2),
    "successive halving (min 1, reduction 3)": lambda: P.SuccessiveHalvingPruner(),
    "hyperband (min 1, reduction 3)": lambda: P.HyperbandPruner(min_resource=1),
    "curve, slack 1.0": lambda: LearningCurvePruner(slack=1.0),
    "curve, slack 1.25": lambda: LearningCurvePruner(slack=1.25),
    "curve, slack 1.5 (vae-tune's default)": lambda: LearningCurvePruner(),
    "curve, slack 2.0": lambda: LearningCurvePruner(slack=2.0),
}


def curves(storage: str) -> list[Trial]:
    """The complete trials of the one study in `storage`, in trial order."""
    study = optuna.load_study(study_name=None, storage=storage)
    rows = []
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append((seconds / len(t.intermediate_values), t.intermediate_values, t.value))
    return rows


def record(data_dir: str, subset: int | None, seeds: list[int], out: Path) -> None:
    """`vae-tune run` on the vs-plain spec with no pruning, per seed; the curves to `out`."""
    studies = {}
    for seed in seeds:
        spec = load_spec(SPEC, {"dataset.data_dir": str(Path(data_dir).resolve()), "seed": seed})
        spec.dataset.subset = subset
        with tempfile.TemporaryDirectory() as tmp:
            spec.storage = f"sqlite:///{tmp}/c.db"
            (Path(tmp) / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
            cmd = [CLI, "run", "spec.yaml", "--pruner", "none"]
            subprocess.run(cmd, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
            studies[f"seed {seed}"] = curves(spec.storage)
        print(f"seed {seed}: {len(studies[f'seed {seed}'])} trials recorded", flush=True)
    out.write_text(json.dumps(studies, indent=1) + "\n")


def load(path: Path) -> dict[str, list[Trial]]:
    studies = json.loads(path.read_text())
    return {
        name: [(s, {int(k): v for k, v in curve.items()}, final) for s, curve, final in trials]
        for name, trials in studies.items()
    }


def replay(trials, pruner: optuna.pruners.BasePruner, workers: int) -> tuple[int, float]:
    """Epochs trained and the best value, replaying `trials` through `pruner`."""
    # a fixed name: Hyperband assigns brackets by a hash of it
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    queue = list(range(len(trials)))
    events: list[tuple[float, int, int, optuna.Trial]] = []  # (time, trial index, step, trial)

    def start(now: float) -> None:
        if queue:
            i = queue.pop(0)
            heapq.heappush(events, (now + trials[i][0], i, 1, study.ask()))

    for _ in range(workers):
        start(0.0)
    epochs = 0
    while events:
        now, i, step, trial = heapq.heappop(events)
        per_epoch, curve, final = trials[i]
        epochs += 1
        trial.report(curve[step], step)
        if step == max(curve):
            study.tell(trial, final)
        elif trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
        else:
            heapq.heappush(events, (now + per_epoch, i, step + 1, trial))
            continue
        start(now)
    return epochs, study.best_value


def report(studies: dict[str, list[Trial]], workers: int) -> None:
    print(f"{', '.join(studies)}; {workers} workers; per study: epochs, best trial kept?")
    for name, make in PRUNERS.items():
        cells, epochs = [], []
        for trials in studies.values():
            n, best = replay(trials, make(), workers)
            kept = best >= max(final for *_, final in trials)
            cells.append(f"{n:4d} {'kept' if kept else 'LOST':4}")
            epochs.append(n)
        total = statistics.median(sum(len(c) for _, c, _ in t) for t in studies.values())
        median = statistics.median(epochs)
        print(f"{name:40} {'  '.join(cells)}   median {median:4.0f} of {total:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record unpruned curves with vae-tune")
    rec.add_argument("--data-dir", required=True)
    rec.add_argument("--subset", type=int, default=None, help="training images (default all)")
    rec.add_argument("--seeds", default="0,1,2,3")
    rec.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("replay", help="replay recorded curves through the pruners")
    rep.add_argument("curves", type=Path)
    rep.add_argument("--workers", type=int, default=2, help="trials at once (vae-tune: cores)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.command == "record":
        record(args.data_dir, args.subset, [int(s) for s in args.seeds.split(",")], args.out)
    else:
        report(load(args.curves), args.workers)


if __name__ == "__main__":
    main()
