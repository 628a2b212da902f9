"""Reference numbers on MNIST through the project's trainer, to sit beside known results.

1. The classic pytorch/examples VAE: 784-400-20 MLP, Adam lr 1e-3, batch 128, 10 epochs,
   grey-level Bernoulli (BCE summed per image). Prints the test negative ELBO per image; the
   known value for this setup is about 105.6 after 10 epochs. (The example trains on all
   60,000 images; here 1,000 are held out for validation, as every vae-tune run does.)
2. The same model on dynamically binarized MNIST, with the importance-weighted NLL (k = 1000)
   on test images, beside Burda et al. 2016's 86.76 nats for a one-layer VAE trained far longer.

    python bench/reference_vae.py --data-dir ../shared/data/mnist [--nll-examples 2000]
"""

from __future__ import annotations

import argparse
import time

from vae_tune.data import load_splits
from vae_tune.training.config import DatasetSpec, LikelihoodSpec, RunConfig
from vae_tune.training.diagnostics import iw_nll
from vae_tune.training.trainer import eval_targets, evaluate, train


def run(data_dir: str, binarize: str, epochs: int, device: str, precision: str = "fp32"):
    dataset = DatasetSpec(name="mnist", data_dir=data_dir, val_fraction=1000 / 60000)
    config = RunConfig(
        dataset=dataset,
        likelihood=LikelihoodSpec(name="bernoulli", binarize=binarize),
        model={"architecture": "mlp", "latent_dim": 20, "hidden_dim": 400, "depth": 1},
        lr=1e-3,
        batch_size=128,
        epochs=epochs,
        device=device,
        precision=precision,
    )
    splits = load_splits(dataset, config.data_seed)
    started = time.perf_counter()
    result = train(config, splits)
    x_test = eval_targets(config, splits.test.to(result.device), 2)
    test = evaluate(result.model, result.likelihood, x_test, 1024, config.data_seed)
    return config, result, x_test, test, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--nll-examples", type=int, default=2000, help="test images for IW-NLL")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--precisions", default="fp32,bf16", help="grey-level runs to compare (fp32, bf16)"
    )
    ap.add_argument("--skip-nll", action="store_true", help="only the grey-level runs")
    args = ap.parse_args()

    for precision in args.precisions.split(","):
        _, result, _, test, secs = run(args.data_dir, "none", args.epochs, args.device, precision)
        print(
            f"[grey-level Bernoulli, {result.precision}] {args.epochs} epochs in {secs:.0f}s on "
            f"{result.device}: validation ELBO {result.final.val.elbo:.2f}, test -ELBO "
            f"{-test.elbo:.2f} nats/image (reference ~105.6)",
            flush=True,
        )
    if args.skip_nll:
        return

    config, result, x_test, test, secs = run(args.data_dir, "dynamic", args.epochs, args.device)
    x = x_test[: args.nll_examples]
    started = time.perf_counter()
    nll = iw_nll(result.model, result.likelihood, x, args.k, config.data_seed)
    print(
        f"[dynamic binarization] {args.epochs} epochs in {secs:.0f}s: test -ELBO "
        f"{-test.elbo:.2f}, IW-NLL (k={args.k}, first {len(x)} test images) {nll:.2f} nats "
        f"({time.perf_counter() - started:.0f}s; Burda et al. 2016: 86.76 after 3,280 epochs)"
    )


if __name__ == "__main__":
    main()
