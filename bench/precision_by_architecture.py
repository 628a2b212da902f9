"""Training speed of each architecture in fp32 and both CPU bf16 modes, one thread.

`precision: auto` takes the bf16 mode the probe measured faster on the reference MLP, for
every architecture; this prints what each mode does to a convolutional and a recurrent VAE, so
a user of those can see whether to pin the other mode (`VAE_TUNE_BF16_SPEEDUP="2.0 autocast"`
or `"2.0 matmul"`). The trainer's steady examples/s (the last of 2 epochs) on MNIST-shaped
random binary images, medians of interleaved repeats.

    python bench/precision_by_architecture.py [--examples 6000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from throughput import bf16_way

from vae_tune.data import Splits
from vae_tune.training.config import RunConfig
from vae_tune.training.trainer import train

MODELS = {
    "mlp 784-400-20": {"architecture": "mlp", "latent_dim": 20, "hidden_dim": 400},
    "conv 32 channels x 2": {"architecture": "conv", "latent_dim": 20, "channels": 32, "depth": 2},
    "gru 128": {"architecture": "rnn", "latent_dim": 20, "hidden_size": 128, "cell": "gru"},
}
PRECISIONS = ("fp32", "bf16", "bf16-matmul")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.examples, 28, 28, generator=gen) > 0.8).float()
    splits = Splits(train=x, val=x[:500], test=x[:500])
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so drift affects every row alike
        for name, model in MODELS.items():
            for precision in PRECISIONS:
                with bf16_way(precision) as asked:
                    config = RunConfig(
                        model=model,
                        epochs=2,
                        batch_size=128,
                        device="cpu",
                        lr=1e-3,
                        precision=asked,
                        iw_samples=0,
                        threads=1,
                    )
                    run = train(config, splits)
                assert run.precision == precision, (run.precision, precision)
                steady = run.history[-1].train_seconds - run.history[-2].train_seconds
                rates.setdefault((name, precision), []).append(len(x) / steady)
    print(f"trainer examples/s, batch 128, one thread, median of {args.repeats} repeats")
    for name in MODELS:
        fp32 = statistics.median(rates[(name, "fp32")])
        cells = []
        for precision in PRECISIONS:
            rate = statistics.median(rates[(name, precision)])
            cells.append(f"{precision} {rate:8,.0f} ({rate / fp32:.2f}x)")
        print(f"{name:22} " + "   ".join(cells))


if __name__ == "__main__":
    main()
