"""Training throughput: the project's trainer versus a minimal hand-written PyTorch loop.

Same MLP VAE (784-400-20), same data, batch size, optimizer and device; prints examples/s for
both and their ratio (target >= 0.95). Data are MNIST-shaped random binary images: throughput
does not depend on what the pixels show.

    python bench/throughput.py [--examples 20000] [--epochs 3] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from models import build_model
from models.losses import bernoulli_log_likelihood, gaussian_kl
from tuner.datasets import Splits
from tuner.spec import RunConfig
from tuner.train import resolve_device, set_threads, train

MODEL = {"architecture": "mlp", "latent_dim": 20, "hidden_dim": 400, "depth": 1}


def hand_written(x: torch.Tensor, epochs: int, batch_size: int, device: torch.device) -> float:
    """The loop of pytorch/examples' VAE, with data already on the device. Returns examples/s."""
    torch.manual_seed(0)
    model = build_model(MODEL, tuple(x.shape[1:])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = x.to(device)
    n = len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        shuffled = x[torch.randperm(n, device=device)]
        for i in range(0, n, batch_size):
            xb = shuffled[i : i + batch_size]
            out = model(xb)
            loss = (
                gaussian_kl(out.mu, out.logvar) - bernoulli_log_likelihood(out.logits, xb)
            ).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * epochs / (time.perf_counter() - started)


def project(splits: Splits, epochs: int, batch_size: int, device: str) -> float:
    config = RunConfig(model=MODEL, epochs=epochs, batch_size=batch_size, device=device, lr=1e-3)
    return train(config, splits).final.examples_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    set_threads(0)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.examples, 28, 28, generator=gen) > 0.8).float()
    splits = Splits(train=x, val=x[:1000], test=x[:1000])
    hand, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift affects both alike
        hand.append(hand_written(x, args.epochs, args.batch_size, device))
        ours.append(project(splits, args.epochs, args.batch_size, str(device)))
    h, o = max(hand), max(ours)
    print(
        f"device {device}, {torch.get_num_threads()} threads, {args.examples} examples x "
        f"{args.epochs} epochs, batch {args.batch_size}, best of {args.repeats}"
    )
    print(f"hand-written loop : {h:10,.0f} examples/s")
    print(f"vae-tune trainer  : {o:10,.0f} examples/s")
    print(f"ratio             : {o / h:10.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
