"""vae-tune's side of bench/vs_plain_optuna.py on two checkouts of this repository, seed by
seed in turn: what a change of defaults does to the study, without rerunning the plain script.

Each arm runs `python -m vae_tune run` on `studies/vs-plain-optuna.yaml` with PYTHONPATH at
its checkout (its worker processes too), so both use this environment's packages. Per seed and
arm it prints the best validation ELBO, the wall time, the epochs trained, when the study first
completed a trial at `--target` or better, and how many trials drew a latent size of 4 or less
(a sampler led astray by a poor trial draws there); then the medians.

    git worktree add /tmp/before HEAD~1
    python bench/checkout_ab.py --a . --b /tmp/before --data-dir ../shared/data/mnist \\
        --subset 20000 --seeds 0,1,2,3
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
import yaml
from vs_plain_optuna import SPEC, summary

from vae_tune.tuning.spec import load_spec


def run_arm(root: Path, data_dir: str, subset: int | None, seed: int, target: float) -> dict:
    spec = load_spec(SPEC, {"dataset.data_dir": data_dir, "seed": seed})
    if subset:
        spec.dataset.subset = subset
    with tempfile.TemporaryDirectory() as tmp:
        spec.storage = f"sqlite:///{tmp}/v.db"
        (Path(tmp) / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        env = {k: v for k, v in os.environ.items() if k != "VAE_TUNE_WORKERS"}
        env["PYTHONPATH"] = str(root)
        cmd = [sys.executable, "-m", "vae_tune", "run", "spec.yaml"]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
        row = summary(study, target)
        row["small"] = sum(1 for t in study.trials if t.params.get("latent_dim", 99) <= 4)
    row["wall"] = wall
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="a checkout of this repository")
    ap.add_argument("--b", type=Path, required=True, help="another checkout")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--subset", type=int, default=None, help="training images (default all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--target", type=float, default=-110.0, help="validation ELBO to reach")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_dir = str(Path(args.data_dir).resolve())
    arms = {"a": args.a.resolve(), "b": args.b.resolve()}
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm, root in arms.items():  # in turn, so drift affects both alike
            row = run_arm(root, data_dir, args.subset, seed, args.target)
            rows[arm].append(row)
            to = row["to_target"]
            print(
                f"seed {seed} {arm} ({root}): best {row['best']:8.2f}, wall {row['wall']:4.0f} "
                f"s, {row['epochs']:3d} epochs, reached {args.target} after "
                + (f"{to:.0f} s" if to is not None else "never")
                + f", {row['small']} trials with latent <= 4",
                flush=True,
            )
    for arm, got in rows.items():
        best, wall, epochs = (
            statistics.median(r[k] for r in got) for k in ("best", "wall", "epochs")
        )
        reached = sum(r["to_target"] is not None for r in got)
        print(
            f"{arm}: median best {best:.2f}, wall {wall:.0f} s, {epochs:.0f} epochs; reached "
            f"{args.target} on {reached} of {len(got)} seeds"
        )


if __name__ == "__main__":
    main()
