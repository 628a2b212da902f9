"""Tune vae-tune's defaults on two kinds of the user's own data and print what tuning gained:
scikit-learn's wine table (178 x 13 real features, as a CSV, Gaussian likelihood, standardized)
and the 8x8 digits' pixel values as a count matrix (1,797 x 64 integers 0..16, negative binomial
and ZINB). For each: the baseline trial's (the knobs' defaults) and the best trial's
validation ELBO, and the best model's test IW-NLL, in nats per example.

    python bench/own_data.py --trials 20 --epochs 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits, load_wine

import vae_tune
from vae_tune.tuning.study import baseline_trial

SPACE = {
    "architecture": {"choices": ["mlp", "hierarchical"]},
    "latent_dim": {"low": 2, "high": 16, "log": True},
    "beta": {"low": 0.25, "high": 4.0, "log": True},
    "lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128]},
    "mlp": {"hidden_dim": {"low": 32, "high": 256, "log": True}, "depth": {"low": 1, "high": 3}},
}


def run(name: str, dataset: dict, likelihood: str, folder: Path, args) -> list[str]:
    started = time.perf_counter()
    result = vae_tune.tune(
        {
            "study_name": name,
            "seed": args.seed,
            "dataset": dataset,
            "likelihood": {"name": likelihood},
            "search_space": SPACE,
            "training": {"epochs": args.epochs, "pictures": False},
        },
        storage=f"sqlite:///{folder / 'own-data.db'}",
        n_trials=args.trials,
        workers=args.workers,
        progress=False,
    )
    wall = time.perf_counter() - started
    base = baseline_trial(result.study)
    model = vae_tune.train(result.best_config, output=folder / name, progress=False)
    test = model.evaluate(k=1000, gap_examples=0)
    return [
        name,
        likelihood,
        f"{base.value:.3f}" if base is not None else "-",
        f"{result.best_value:.3f}",
        f"{test['iw_nll']['nll']:.3f} ± {test['iw_nll']['se']:.3f}",
        f"{wall:.0f} s",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wine = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
        wine.to_csv(folder / "wine.csv", index=False)
        np.save(folder / "counts.npy", load_digits().data.astype(np.int64))
        rows = [
            run("wine", {"name": "table", "path": str(folder / "wine.csv"), "labels": "cultivar"},
                "gaussian", folder, args),
            run("digit-counts-nb", {"name": "table", "path": str(folder / "counts.npy")},
                "negative_binomial", folder, args),
            run("digit-counts-zinb", {"name": "table", "path": str(folder / "counts.npy")},
                "zinb", folder, args),
        ]
    head = ["study", "likelihood", "baseline val ELBO", "best val ELBO", "best test IW-NLL",
            "wall"]
    print(f"{args.trials} trials x {args.epochs} epochs max, seed {args.seed}, "
          "nats per example (validation ELBO: higher is better; IW-NLL: lower)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
