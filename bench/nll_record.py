"""A published MNIST likelihood, reproduced with this project's trainer.

Burda et al. 2016 (Importance Weighted Autoencoders), Table 1, one stochastic layer: an MLP
784-200-200-50 (tanh), dynamically binarized MNIST, Adam at lr 0.001 * 10^(-i/7) for 3^i
epochs, i = 0..7 (3,280 epochs; `lr_schedule: iwae`), batch 20, test NLL estimated with k = 5000
importance samples: VAE 86.76, IWAE (k = 50) 84.78 nats. Here the same model trains through
`vae_tune.training.trainer.train` (one RunConfig) and the test NLL is
`vae_tune.training.diagnostics.iw_nll`, at the
epoch counts of --epochs-list, continuing one run. Differences from the paper: Adam's epsilon
is PyTorch's 1e-8 (theirs 1e-4), weights start from PyTorch's default initialization (theirs:
Glorot & Bengio's heuristic), 1,000 training images are held out for the validation ELBO every
vae-tune run reports, and the test images are binarized once, by the data seed.

    python bench/nll_record.py --data-dir ../shared/data/mnist --epochs-list 1,3,10
    python bench/nll_record.py --data-dir ../shared/data/mnist --objective-k 50 --epochs-list 1,3
    python bench/nll_record.py --data-dir ../shared/data/mnist --config best.yaml  # any run config
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from vae_tune.data import load_splits
from vae_tune.seeds import derive
from vae_tune.training.config import DatasetSpec, LikelihoodSpec, RunConfig, read_yaml, validate
from vae_tune.training.diagnostics import iw_nll
from vae_tune.training.trainer import TrainResult, eval_targets, evaluate, train

PUBLISHED = {1: 86.76, 50: 84.78}  # objective_k -> Burda et al. 2016, Table 1, 3,280 epochs
BURDA_ONE_LAYER = {
    "architecture": "mlp",
    "latent_dim": 50,
    "hidden_dim": 200,
    "depth": 2,
    "activation": "tanh",
}


def burda_config(
    data_dir: str, objective_k: int, epochs: int, device: str, threads: int = 1
) -> RunConfig:
    """Their one-stochastic-layer model and schedule as a vae-tune run config."""
    return RunConfig(
        dataset=DatasetSpec(name="mnist", data_dir=data_dir, val_fraction=1000 / 60000),
        likelihood=LikelihoodSpec(name="bernoulli", binarize="dynamic"),
        model=BURDA_ONE_LAYER,
        lr=1e-3,
        lr_schedule="iwae",
        batch_size=20,
        objective_k=objective_k,
        epochs=epochs,
        device=device,
        precision="fp32",
        threads=threads,
    )


def from_file(path: str, data_dir: str, epochs: int, device: str, threads: int) -> RunConfig:
    """A run config (e.g. from `vae-tune export-best`), trained for `epochs` on `data_dir`."""
    data, _ = read_yaml(path)
    data.pop("source", None)
    data["dataset"] = {**data.get("dataset", {}), "data_dir": data_dir}
    data.update(epochs=epochs, device=device, threads=threads)
    return validate(RunConfig, data, f"run config {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    ap.add_argument("--epochs-list", default="1,3,10", help="epoch counts to evaluate at")
    ap.add_argument("--k", type=int, default=5000, help="importance samples of the test NLL")
    ap.add_argument("--test-examples", type=int, default=10000, help="test images scored")
    ap.add_argument("--objective-k", type=int, default=1, help="training bound: 1 VAE, 50 IWAE")
    ap.add_argument("--config", help="train this run config instead of Burda et al.'s model")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: every core; on a busy CPU 1 is faster)",
    )
    ap.add_argument("--batch-size", type=int, default=100, help="test images per NLL batch")
    args = ap.parse_args()

    points = sorted({int(e) for e in args.epochs_list.split(",")})
    if args.config:
        config = from_file(args.config, args.data_dir, points[-1], args.device, args.threads)
        name = f"{args.config} (objective_k = {config.objective_k})"
    else:
        config = burda_config(
            args.data_dir, args.objective_k, points[-1], args.device, args.threads
        )
        name = f"Burda et al. one-layer {'VAE' if args.objective_k == 1 else 'IWAE'}"
        name += f" (objective_k = {args.objective_k})"
    splits = load_splits(config.dataset, config.data_seed)
    rows: list[dict[str, Any]] = []
    print(f"{name}: {len(splits.train)} training images, k = {args.k}", flush=True)

    def on_epoch(run: TrainResult) -> None:
        r = run.final
        if r.epoch not in points:
            return
        x_test = eval_targets(config, splits.test.to(run.device), 2)[: args.test_examples]
        test = evaluate(
            run.model, run.likelihood, x_test, 1000, derive(config.data_seed, "test-noise")
        )
        started = time.perf_counter()
        nll = iw_nll(
            run.model,
            run.likelihood,
            x_test,
            args.k,
            derive(config.data_seed, "iw-nll"),
            args.batch_size,
        )
        row = {
            "epochs": r.epoch,
            "train_s": r.train_seconds,
            "test_elbo": test.elbo,
            "test_nll": nll,
            "active": test.active_units,
            "nll_s": time.perf_counter() - started,
        }
        rows.append(row)
        print(
            f"epoch {r.epoch}: train {r.train_seconds:.0f}s, test ELBO {test.elbo:.2f}, test NLL "
            f"(k={args.k}, {len(x_test)} images) {nll:.2f}, {test.active_units} active units "
            f"[NLL took {row['nll_s']:.0f}s]",
            flush=True,
        )

    train(config, splits, on_epoch)
    published = PUBLISHED.get(config.objective_k) if not args.config else None
    print(f"\n{name}, test NLL with k = {args.k} importance samples, nats per image")
    print(f"{'epochs':>7}  {'train s':>8}  {'test ELBO':>10}  {'test NLL':>9}  {'active':>6}")
    for row in rows:
        print(
            f"{row['epochs']:>7}  {row['train_s']:>8.0f}  {row['test_elbo']:>10.2f}  "
            f"{row['test_nll']:>9.2f}  {row['active']:>6}"
        )
    if published is not None:
        print(f"{3280:>7}  {'':>8}  {'':>10}  {published:>9.2f}  (Burda et al. 2016, Table 1)")


if __name__ == "__main__":
    main()
