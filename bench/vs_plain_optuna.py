"""vae-tune against the plain Optuna script a user would write, on the same VAE search space.

The plain side is written as optuna-examples' `pytorch_simple.py` would have it: a DataLoader,
an MLP VAE, TPE and the median pruner, `trial.report` / `trial.should_prune` every epoch,
all cores to one process. The vae-tune side is `vae-tune run studies/vs-plain-optuna.yaml`
with its defaults (workers, precision, sampler settings, the baseline trial, the weights'
moving average, the learning-curve pruner), on the same data split, space and trial budget.
Per side and seed it prints wall time, epochs trained, the best validation ELBO (beta = 1,
nats/example), and vae-tune's *time to target*: when its study first completed a trial at
least as good as the plain script's final best. Then the medians and the ratios.

    python bench/vs_plain_optuna.py --data-dir ../shared/data/mnist              # full MNIST
    python bench/vs_plain_optuna.py --data-dir DIR --subset 20000 --seeds 0,1,2  # quicker

`--pruner median,hyperband` and `--tpe ours,optuna` (vae-tune's TPE settings against
TPESampler's own defaults) run vae-tune once per variant against the same plain run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vae_tune.data import load_splits
from vae_tune.tuning.spec import load_spec
from vae_tune.tuning.study import baseline_trial

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "vae_tune" / "studies" / "vs-plain-optuna.yaml"
CLI = str(Path(sys.executable).with_name("vae-tune"))


# --- the plain script ---------------------------------------------------------------------------


class VAE(nn.Module):
    def __init__(self, hidden: int, depth: int, latent: int):
        super().__init__()
        enc, dec, d = [], [], 784
        for i in range(depth):
            enc += [nn.Linear(d if i == 0 else hidden, hidden), nn.ReLU()]
            dec += [nn.Linear(latent if i == 0 else hidden, hidden), nn.ReLU()]
        self.enc, self.heads = nn.Sequential(*enc), nn.Linear(hidden, 2 * latent)
        self.dec = nn.Sequential(*dec, nn.Linear(hidden, 784))

    def forward(self, x):
        mu, logvar = self.heads(self.enc(x)).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


def terms(model, x):
    logits, mu, logvar = model(x)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return recon, kl


def plain_study(train_x, val_x, seed: int, n_trials: int, epochs: int) -> optuna.Study:
    train_loader_x = torch.from_numpy(train_x.reshape(len(train_x), -1))
    val = torch.from_numpy(val_x.reshape(len(val_x), -1))

    def objective(trial: optuna.Trial) -> float:
        hidden = trial.suggest_int("hidden_dim", 128, 1024, log=True)
        depth = trial.suggest_int("depth", 1, 3)
        latent = trial.suggest_int("latent_dim", 2, 64, log=True)
        beta = trial.suggest_float("beta", 0.1, 4.0, log=True)
        lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
        model = VAE(hidden, depth, latent)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loader = DataLoader(TensorDataset(train_loader_x), batch_size=batch_size, shuffle=True)
        elbo = float("-inf")
        for epoch in range(1, epochs + 1):
            model.train()
            for (xb,) in loader:
                recon, kl = terms(model, xb)
                loss = (recon + beta * kl).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                recon, kl = terms(model, val)
                elbo = -(recon + kl).mean().item()
            trial.report(elbo, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return elbo

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


# --- measuring -----------------------------------------------------------------------------------


def summary(study: optuna.Study, target: float | None) -> dict:
    trials = [t for t in study.trials if t.datetime_start is not None]
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    done = sorted(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.datetime_complete,
    )
    reached = None
    if target is not None:
        hit = next((t for t in done if t.value >= target), None)
        reached = (hit.datetime_complete - start).total_seconds() if hit else None
    base = baseline_trial(study)  # vae-tune's first trial, the knobs' defaults
    return {
        "wall": (end - start).total_seconds(),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": study.best_value,
        "to_target": reached,
        "baseline": None if base is None else (base.value, _seconds(base, start)),
    }


def _seconds(trial: optuna.trial.FrozenTrial, start) -> float:
    return (trial.datetime_complete - start).total_seconds()


# vae-tune's TPE settings (`sampler.options`): its own defaults, or TPESampler's as the plain
# script uses them (independent sampling, no constant liar, 10 start-up trials)
TPE_OPTIONS: dict[str, dict] = {
    "ours": {},
    "optuna": {
        "multivariate": False,
        "group": False,
        "constant_liar": False,
        "n_startup_trials": 10,
    },
}


def label(pruner: str, tpe: str) -> str:
    return f"vae-tune ({pruner or 'spec pruner'}, TPE {tpe})"


def run_vae_tune(
    spec, trials: int, epochs: int, pruner: str | None, target: float, keep: Path | None
) -> dict:
    """`vae-tune run` on the spec in a scratch folder (its defaults, or `--pruner`); with
    `keep`, its database is copied there."""
    with tempfile.TemporaryDirectory() as tmp:
        spec.storage = f"sqlite:///{tmp}/v.db"
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        cmd = [CLI, "run", str(spec_file), "--n-trials", str(trials), "--epochs", str(epochs)]
        if pruner:
            cmd += ["--pruner", pruner]
        env = {k: v for k, v in os.environ.items() if k != "VAE_TUNE_WORKERS"}
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
        ours = summary(study, target)
        if keep:
            shutil.copy(Path(tmp) / "v.db", keep)
    ours["wall"] = wall
    return ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--subset", type=int, default=None, help="training images (default all)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument(
        "--pruner",
        default="",
        help="vae-tune's pruner (default: the spec's); a comma list runs vae-tune once with\n"
        "each against the same plain run, e.g. --pruner median,hyperband",
    )
    ap.add_argument(
        "--tpe",
        default="ours",
        help="vae-tune's TPE settings: ours (its defaults: multivariate, group, constant liar,\n"
        "start-up trials a quarter of the budget) or optuna (TPESampler's own defaults, as\n"
        "the plain script has them); a comma list runs each, e.g. --tpe ours,optuna",
    )
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="folder to keep every study in, as SQLite files (plain-seedN.db,\n"
        "vae-tune-seedN-PRUNER-TPE.db), for optuna-dashboard or vae-tune report",
    )
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(Path(args.data_dir).resolve())  # vae-tune runs in a scratch folder
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    variants = [(p, t) for p in args.pruner.split(",") for t in args.tpe.split(",")]
    for _, tpe in variants:
        if tpe not in TPE_OPTIONS:
            ap.error(f"--tpe: {tpe!r} is not one of {', '.join(TPE_OPTIONS)}")

    plains, ours = [], {v: [] for v in variants}
    for seed in [int(s) for s in args.seeds.split(",")]:
        spec = load_spec(SPEC, {"dataset.data_dir": args.data_dir, "seed": seed})
        if args.subset:
            spec.dataset.subset = args.subset
        splits = load_splits(spec.dataset, spec.seed)  # the same split for both sides
        train_x, val_x = splits.train.numpy(), splits.val.numpy()

        torch.set_num_threads(os.cpu_count() or 1)
        started = time.perf_counter()
        study = plain_study(train_x, val_x, seed, args.trials, args.epochs)
        plain = summary(study, None)
        plain["wall"] = time.perf_counter() - started
        if args.keep:  # after the clock: the plain script itself keeps its study in memory
            url = f"sqlite:///{args.keep.resolve()}/plain-seed{seed}.db"
            optuna.create_study(storage=url, direction="maximize").add_trials(study.trials)
        plains.append(plain)
        print(
            f"seed {seed}: plain script {plain['wall']:7.0f} s {plain['epochs']:4d} epochs, best "
            f"{plain['best']:8.2f}",
            flush=True,
        )
        for pruner, tpe in variants:
            variant = spec.model_copy(deep=True)
            variant.sampler.options = {**spec.sampler.options, **TPE_OPTIONS[tpe]}
            keep = args.keep and args.keep / f"vae-tune-seed{seed}-{pruner or 'spec'}-{tpe}.db"
            mine = run_vae_tune(variant, args.trials, args.epochs, pruner, plain["best"], keep)
            ours[(pruner, tpe)].append(mine)
            to, base = mine["to_target"], mine["baseline"]
            print(
                f"seed {seed}: {label(pruner, tpe)} {mine['wall']:7.0f} s "
                f"{mine['epochs']:4d} epochs, best {mine['best']:8.2f}, reached plain's best "
                "after "
                + (f"{to:.0f} s" if to is not None else "never")
                + (f"; baseline trial {base[0]:.2f} after {base[1]:.0f} s" if base else ""),
                flush=True,
            )

    def med(rows: list[dict], key: str) -> float:
        vals = [r[key] if r[key] is not None else float("inf") for r in rows]
        return statistics.median(vals)

    print(
        f"\nmedians over seeds {args.seeds} ({args.trials} trials x <= {args.epochs} epochs, "
        f"{len(train_x)} training images)"
    )
    print(
        f"{'plain Optuna script':36}: wall {med(plains, 'wall'):7.0f} s, epochs "
        f"{med(plains, 'epochs'):5.0f}, best {med(plains, 'best'):8.2f}"
    )
    for (pruner, tpe), rows in ours.items():
        name = label(pruner, tpe)
        print(
            f"{name:36}: wall {med(rows, 'wall'):7.0f} s, epochs {med(rows, 'epochs'):5.0f}, best "
            f"{med(rows, 'best'):8.2f}, time to target {med(rows, 'to_target'):7.0f} s"
        )
        print(
            f"{'':36}  time to target / plain wall: "
            f"{med(rows, 'to_target') / med(plains, 'wall'):.2f} (goal <= 0.33); best vae-tune "
            f"- plain: {med(rows, 'best') - med(plains, 'best'):+.2f} nats"
        )
    print(f"numpy {np.__version__}, torch {torch.__version__}, optuna {optuna.__version__}")


if __name__ == "__main__":
    main()
