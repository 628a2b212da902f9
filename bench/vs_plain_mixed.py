"""vae-tune against a plain Optuna script on a mixed-architecture space (MLP, conv, hybrid).

The space: architecture {mlp, conv, hybrid} (each architecture's own knobs at their
defaults), latent_dim 2..64 (log), beta 0.25..4 (log), lr 1e-4..3e-3 (log), batch size
{64, 128, 256}; grey-level MNIST-family images (Bernoulli, no binarization), a 20,000-image
training subset by default and 10,000 validation images.

The plain side is the script a user writes with Optuna: `TPESampler(seed)` and
`MedianPruner()` over epochs, `trial.report` / `trial.should_prune` after every epoch, a fixed
number of trials, one process on every core, fp32. To compare the *search* and not two
training loops, it trains each trial with vae-tune's own trainer (`vae_tune.training.train`:
the same networks) and no weight average. The vae-tune side is `vae-tune run` on the same
space, split and epochs with its defaults (workers, precision: auto, the baseline trial, TPE
with the cost-aware choice of architecture, the curve pruner), given the plain script's wall
time of that seed as its `budget.seconds`.

Per seed it prints each side's wall time, best validation ELBO (beta = 1, nats/example) and
the CPU-seconds its pruned trials took (each pruned trial's duration times the threads it
ran on: the plain script's every core, a vae-tune worker's one), and vae-tune's *time to
target*: seconds from starting `vae-tune run` (data loading and the bf16 probe included) to
its first completed trial at least as good as the plain script's best. Then medians over the
seeds and time to target / plain wall (goal <= 0.33).

    python bench/vs_plain_mixed.py --data-dir ../shared/data/mnist        # 3 seeds, 20k images
    python bench/vs_plain_mixed.py --data-dir DIR --dataset fashion-mnist # any IDX dataset
    python bench/vs_plain_mixed.py --data-dir DIR --cost-aware off        # A/B of the sampler

Affordable on 2 cores: with the defaults (10 plain trials x <= 3 epochs on 20,000 images)
a seed's plain run takes about 4-6 minutes and vae-tune as long again at most, so 3 seeds
take about 30-40 minutes. A mixed space is dominated by the conv and hybrid epochs
(10-20x an MLP epoch), so the number of epochs and trials is kept small.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from vae_tune.data import load_splits
from vae_tune.training.config import RunConfig
from vae_tune.training.hardware import available_cores
from vae_tune.training.trainer import train
from vae_tune.tuning.spec import load_spec

CLI = str(Path(sys.executable).with_name("vae-tune"))
ARCHITECTURES = ["mlp", "conv", "hybrid"]


def spec_dict(data_dir: str, dataset: str, seed: int, subset: int, epochs: int) -> dict:
    """The study spec of the vae-tune side: the space, data and epochs; defaults otherwise."""
    return {
        "study_name": "vs-plain-mixed",
        "seed": seed,
        "dataset": {
            "name": dataset,
            "data_dir": data_dir,
            "val_fraction": 10000 / 60000,
            "subset": subset,
        },
        "likelihood": {"name": "bernoulli", "binarize": "none"},
        "search_space": {
            "architecture": {"choices": ARCHITECTURES},
            "latent_dim": {"low": 2, "high": 64, "log": True},
            "beta": {"low": 0.25, "high": 4.0, "log": True},
            "lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
            "batch_size": {"choices": [64, 128, 256]},
        },
        "training": {"epochs": epochs, "iw_samples": 0, "pictures": False},
    }


# --- the plain script ---------------------------------------------------------------------------


def plain_study(spec, splits, seed: int, n_trials: int, epochs: int) -> optuna.Study:
    def objective(trial: optuna.Trial) -> float:
        architecture = trial.suggest_categorical("architecture", ARCHITECTURES)
        latent = trial.suggest_int("latent_dim", 2, 64, log=True)
        beta = trial.suggest_float("beta", 0.25, 4.0, log=True)
        lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
        config = RunConfig(
            model={"architecture": architecture, "latent_dim": latent},
            beta=beta,
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            precision="fp32",
            ema_decay=0.0,
            iw_samples=0,
            threads=0,
            seed=seed * 1000 + trial.number,
            dataset=spec.dataset,
            likelihood=spec.likelihood,
        )

        def on_epoch(run) -> None:
            r = run.final
            trial.report(r.val.elbo, r.epoch)
            if r.epoch < epochs and trial.should_prune():
                raise optuna.TrialPruned()

        return train(config, splits, on_epoch).final.val.elbo

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


# --- measuring -----------------------------------------------------------------------------------


def pruned_cpu_seconds(study: optuna.Study, threads: int) -> float:
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    return sum((t.datetime_complete - t.datetime_start).total_seconds() * threads for t in pruned)


def arch_counts(study: optuna.Study) -> str:
    trials = [t for t in study.trials if "architecture" in t.params]
    return " ".join(
        f"{a} {sum(t.params['architecture'] == a for t in trials)}" for a in ARCHITECTURES
    )


def run_vae_tune(data: dict, seconds: float, target: float, cost_aware: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/v.db"
        data = {**data, "storage": storage, "budget": {"seconds": round(seconds, 1)}}
        if cost_aware != "auto":  # an A/B of the cost-aware choice; the default is auto (on)
            data["sampler"] = {"name": "tpe", "cost_aware": cost_aware == "on"}
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(data))
        env = {k: v for k, v in os.environ.items() if k != "VAE_TUNE_WORKERS"}
        started = time.time()
        subprocess.run(
            [CLI, "run", str(spec_file)], check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL
        )
        wall = time.time() - started
        study = optuna.load_study(study_name=data["study_name"], storage=storage)
        done = sorted(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
            key=lambda t: t.datetime_complete,
        )
        hit = next((t for t in done if t.value >= target), None)
        workers = {t.user_attrs.get("worker") for t in study.trials}
        return {
            "wall": wall,
            "best": study.best_value,
            "to_target": None if hit is None else hit.datetime_complete.timestamp() - started,
            # every default CPU worker trains on one thread
            "pruned_cpu_s": pruned_cpu_seconds(study, 1),
            "trials": len(study.trials),
            "workers": len(workers - {None}),
            "arch": arch_counts(study),
            "baseline": done[0].value if done else None,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or kmnist (IDX)")
    ap.add_argument("--subset", type=int, default=20000, help="training images")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=10, help="the plain script's trials")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--cost-aware", default="auto", choices=["auto", "on", "off"], help="vae-tune's choice"
    )
    args = ap.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cores = available_cores()
    print(
        f"{args.dataset}, {args.subset} training images, plain: {args.trials} trials x <= "
        f"{args.epochs} epochs; vae-tune cost_aware {args.cost_aware}; {cores} cores; "
        f"torch {torch.__version__}, optuna {optuna.__version__}",
        flush=True,
    )
    plains, ours = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = spec_dict(data_dir, args.dataset, seed, args.subset, args.epochs)
        spec = load_spec(data)
        splits = load_splits(spec.dataset, spec.seed, spec.likelihood.name)

        started = time.time()
        study = plain_study(spec, splits, seed, args.trials, args.epochs)
        plain = {
            "wall": time.time() - started,
            "best": study.best_value,
            "pruned_cpu_s": pruned_cpu_seconds(study, cores),
            "arch": arch_counts(study),
        }
        plains.append(plain)
        print(
            f"seed {seed}: plain Optuna  wall {plain['wall']:6.0f} s, best {plain['best']:8.2f}, "
            f"pruned trials {plain['pruned_cpu_s']:6.0f} CPU-s; trials: {plain['arch']}",
            flush=True,
        )
        mine = run_vae_tune(data, plain["wall"], plain["best"], args.cost_aware)
        ours.append(mine)
        to = mine["to_target"]
        print(
            f"seed {seed}: vae-tune      wall {mine['wall']:6.0f} s, best {mine['best']:8.2f}, "
            f"pruned trials {mine['pruned_cpu_s']:6.0f} CPU-s; trials: {mine['arch']} "
            f"({mine['workers']} workers); baseline {mine['baseline']:.2f}; reached plain's best "
            + (f"after {to:.0f} s ({to / plain['wall']:.2f}x plain wall)" if to else "never"),
            flush=True,
        )

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] if r[key] is not None else float("inf") for r in rows)

    print(f"\nmedians over seeds {args.seeds}")
    print(
        f"plain Optuna (TPE + median pruner, epochs): wall {med(plains, 'wall'):6.0f} s, best "
        f"{med(plains, 'best'):8.2f}, pruned trials {med(plains, 'pruned_cpu_s'):6.0f} CPU-s"
    )
    print(
        f"vae-tune (defaults, budget.seconds = plain wall): best {med(ours, 'best'):8.2f}, "
        f"pruned trials {med(ours, 'pruned_cpu_s'):6.0f} CPU-s, time to plain's best "
        f"{med(ours, 'to_target'):6.0f} s"
    )
    ratios = [
        (m["to_target"] if m["to_target"] is not None else float("inf")) / p["wall"]
        for m, p in zip(ours, plains, strict=True)
    ]
    print(
        f"time to plain's best / plain wall, median over seeds: {statistics.median(ratios):.2f} "
        f"(goal <= 0.33; per seed {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
