"""Training throughput: the project's trainer versus a minimal hand-written PyTorch loop.

Same MLP VAE (784-400-20 by default), same data, batch size, optimizer and device; prints
examples/s for both and their ratio (target >= 0.95; the trainer also keeps the weights' moving
average, whose cost is printed apart), in fp32 and in bf16 (the way `training.precision: bf16`
takes on this machine: autocast, or bf16-matmul where the probe found oneDNN's bf16 products
faster; `--bf16 autocast,matmul` times both), with
the achieved GFLOP/s of the training step beside this machine's measured matmul peak in each
precision, so the distance to the hardware limit is visible. Repeats are interleaved and the
medians are quoted. Data are MNIST-shaped random binary images: throughput does not depend on
what the pixels show.

    python bench/throughput.py [--examples 20000] [--epochs 3] [--batch-size 128] [--repeats 5]
        [--hidden 400] [--depth 1] [--latent 20] [--workers 2] [--threads 0]

--threads 1 times one single-threaded training, as each of `--workers auto`'s workers runs.

With --workers N (default: the cores) it also prints the trials per hour of N concurrent
single-threaded trainings (what `vae-tune run --workers auto` does on a CPU) against one
training that uses all N threads.

With --compile it also trains with `training.compile: true` (torch.compile of the networks)
in each precision and prints its steady examples/s (the last epoch's) beside eager's, and the
seconds compiling cost the run (its first epoch's time less a steady epoch's).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from vae_tune.data import Splits
from vae_tune.errors import SpecError
from vae_tune.models import build_model
from vae_tune.models.losses import bernoulli_log_likelihood, gaussian_kl, reparameterize
from vae_tune.training.config import RunConfig
from vae_tune.training.hardware import (
    BF16_MIN_SPEEDUP,
    PRECISION_OF_MODE,
    PROBE_ENV,
    Bf16Matmul,
    available_cores,
    cpu_bf16_reading,
    cpu_lists_bf16,
    resolve_precision,
)
from vae_tune.training.trainer import resolve_device, set_threads, train

MODEL = {"architecture": "mlp", "latent_dim": 20, "hidden_dim": 400, "depth": 1}


def hand_written(
    x: torch.Tensor, epochs: int, batch_size: int, device: torch.device, precision: str
) -> float:
    """The loop of pytorch/examples' VAE, with data already on the device (bf16: the forward
    pass under autocast, the loss in fp32; bf16-matmul: the whole step in oneDNN's bf16-product
    mode). Returns examples/s."""
    torch.manual_seed(0)
    model = build_model(MODEL, tuple(x.shape[1:])).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    products = Bf16Matmul(precision == "bf16-matmul")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = x.to(device)
    n = len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        shuffled = x[torch.randperm(n, device=device)]
        with products:
            for i in range(0, n, batch_size):
                xb = shuffled[i : i + batch_size]
                with autocast:
                    mu, logvar = model.encode(xb)
                    logits = model.decode(reparameterize(mu, logvar))
                mu, logvar, logits = mu.float(), logvar.float(), logits.float()
                loss = (gaussian_kl(mu, logvar) - bernoulli_log_likelihood(logits, xb)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * epochs / (time.perf_counter() - started)


def project(
    splits: Splits,
    epochs: int,
    batch_size: int,
    device: str,
    precision: str,
    threads: int = 0,
    ema_decay: float = 0.999,
) -> float:
    run = project_run(
        splits, epochs, batch_size, device, precision, threads=threads, ema_decay=ema_decay
    )
    return run.final.examples_per_s


@contextlib.contextmanager
def bf16_way(precision: str):
    """Train `precision` (fp32, bf16 or bf16-matmul) whatever the probe found faster: the
    trainer's bf16 takes the probe's mode, so the reading is pinned, as a user would pin it
    in `VAE_TUNE_BF16_SPEEDUP`, and restored after."""
    modes = {v: k for k, v in PRECISION_OF_MODE.items()}
    before = os.environ.get(PROBE_ENV)
    if precision in modes:
        os.environ[PROBE_ENV] = f"{BF16_MIN_SPEEDUP} {modes[precision]}"
        cpu_bf16_reading.cache_clear()
    try:
        yield precision if precision in ("fp32", "auto") else "bf16"
    finally:
        if before is None:
            os.environ.pop(PROBE_ENV, None)
        else:
            os.environ[PROBE_ENV] = before
        cpu_bf16_reading.cache_clear()


def project_run(
    splits: Splits,
    epochs: int,
    batch_size: int,
    device: str,
    precision: str,
    compile: bool = False,
    threads: int = 0,
    ema_decay: float = 0.999,
):
    """The project's trainer in `precision` (fp32, bf16, bf16-matmul); `threads` as
    `training.threads` (0: one per core). The trainer sets them itself, so a worker's thread
    count must go through the config."""
    with bf16_way(precision) as name:
        config = RunConfig(
            model=MODEL,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            lr=1e-3,
            precision=name,
            iw_samples=0,
            compile=compile,
            threads=threads,
            ema_decay=ema_decay,
        )
        run = train(config, splits)
    assert precision == "auto" or run.precision == precision, (run.precision, precision)
    return run


def steady(run, n: int) -> tuple[float, float]:
    """(examples/s of the last epoch, seconds the first epoch took beyond a steady one)."""
    times = [h.train_seconds for h in run.history]
    last = times[-1] - times[-2]
    return n / last, times[0] - last


def _timed_training(args: tuple) -> tuple[float, float]:
    """One training in a worker process with `threads` torch threads: (start, end) times."""
    x, epochs, batch_size, precision, threads = args
    splits = Splits(train=x, val=x[:1000], test=x[:1000])
    project(splits, 1, batch_size, "cpu", precision, threads)  # warm up (first-call costs)
    started = time.time()
    project(splits, epochs, batch_size, "cpu", precision, threads)
    return started, time.time()


def trials_per_hour(
    x: torch.Tensor, workers: int, threads: int, epochs: int, batch_size: int, precision: str
) -> float:
    """Trainings per hour when `workers` processes of `threads` threads each train at once."""
    ctx = multiprocessing.get_context("spawn")
    job = (x, epochs, batch_size, precision, threads)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        spans = list(pool.map(_timed_training, [job] * workers))
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return workers * 3600 / wall


def train_flops_per_example(image_shape: tuple[int, int]) -> float:
    """Multiply-adds of the MLP's linear layers x 2 (FLOPs), x 3 for forward plus backward."""
    model = build_model(MODEL, image_shape)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return 3 * sum(2 * m.in_features * m.out_features for m in linear)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of a large square matmul: what this hardware does at best in `dtype`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--latent", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=available_cores(), help="0: skip that row")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    ap.add_argument(
        "--bf16",
        default="",
        help="bf16 ways to time on a CPU, e.g. autocast,matmul (default: the one auto takes)",
    )
    args = ap.parse_args()
    MODEL.update(hidden_dim=args.hidden, depth=args.depth, latent_dim=args.latent)

    device = resolve_device(args.device)
    set_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.examples, 28, 28, generator=gen) > 0.8).float()
    splits = Splits(train=x, val=x[:1000], test=x[:1000])
    flops = train_flops_per_example((28, 28))
    measured = cpu_bf16_reading() if device.type == "cpu" else ""
    precisions = ["fp32"]
    try:
        bf16 = resolve_precision("bf16", device)  # the way this machine takes
        if device.type == "cpu" and not cpu_lists_bf16():
            # emulated bf16: its matmul peak alone ran over 5 minutes on a 2-core AVX2 CPU
            print("no bf16 rows: this CPU lists no bf16 instructions (bf16 would be emulated)")
        elif args.bf16 and device.type == "cpu":
            precisions += [PRECISION_OF_MODE[m] for m in args.bf16.split(",")]
        else:
            precisions.append(bf16)
    except SpecError as err:  # e.g. a CPU listing AMX its host does not enable
        print(f"no bf16 rows: {err}")
    runs: dict[tuple[str, str], list[float]] = {}
    threads = args.threads
    for _ in range(args.repeats):  # interleaved, so drift affects every row alike
        for precision in precisions:
            hand = hand_written(x, args.epochs, args.batch_size, device, precision)
            ours = project(splits, args.epochs, args.batch_size, str(device), precision, threads)
            last = project(splits, args.epochs, args.batch_size, str(device), precision, threads, 0)
            runs.setdefault(("hand", precision), []).append(hand)
            runs.setdefault(("ours", precision), []).append(ours)
            runs.setdefault(("last", precision), []).append(last)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"device {device}, {torch.get_num_threads()} threads, MLP 784-{args.hidden}x"
        f"{args.depth}-{args.latent}, {args.examples} examples x {args.epochs} epochs, batch "
        f"{args.batch_size}, median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'':10} {'hand loop ex/s':>15} {'trainer ex/s':>13} {'ratio':>6} "
        f"{'trainer GFLOP/s':>16} {'matmul peak':>12} {'of peak':>8}"
    )
    for precision in precisions:
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        hand, ours = med[("hand", precision)], med[("ours", precision)]
        peak = matmul_peak(dtype, device)
        achieved = ours * flops / 1e9
        print(
            f"{precision:10} {hand:15,.0f} {ours:13,.0f} {ours / hand:6.3f} "
            f"{achieved:16.1f} {peak:12.1f} {achieved / peak:8.1%}"
        )
    for precision in precisions[1:]:
        ratio = med[("ours", precision)] / med[("ours", "fp32")]
        print(f"{precision} / fp32 (trainer): {ratio:.2f}x (target >= 1.5)")
    print("trainer / hand-loop target >= 0.95")
    if device.type == "cpu":
        print(
            f"precision auto picks {resolve_precision('auto', device)} here (the bf16 probe, "
            f"one thread: {measured})"
        )
    print(
        "the weight average's cost (trainer with it / with ema_decay 0): "
        + ", ".join(f"{p} {med[('ours', p)] / med[('last', p)]:.3f}" for p in precisions)
    )
    if args.compile:
        epochs = max(args.epochs, 2)
        timed: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):  # interleaved
            for precision in precisions:
                for compiled in (False, True):
                    run = project_run(
                        splits, epochs, args.batch_size, str(device), precision, compiled, threads
                    )
                    timed.setdefault((precision, compiled), []).append(steady(run, len(x)))
        print(f"torch.compile (training.compile), steady = the last of {epochs} epochs:")
        for precision in precisions:
            eager = statistics.median(r for r, _ in timed[(precision, False)])
            compiled = statistics.median(r for r, _ in timed[(precision, True)])
            cost = statistics.median(c for _, c in timed[(precision, True)])
            print(
                f"{precision:10} eager {eager:10,.0f} ex/s, compiled {compiled:10,.0f} ex/s: "
                f"{compiled / eager:.2f}x steady; compiling cost {cost:.1f} s per run"
            )
    if args.workers > 1 and device.type == "cpu":
        n = args.workers
        rows: dict[str, list[float]] = {"one": [], "many": []}
        for _ in range(args.repeats):  # interleaved
            rows["one"].append(trials_per_hour(x, 1, n, args.epochs, args.batch_size, "auto"))
            rows["many"].append(trials_per_hour(x, n, 1, args.epochs, args.batch_size, "auto"))
        one, many = (statistics.median(rows[k]) for k in ("one", "many"))
        print(
            f"trials/hour, precision auto: 1 worker x {n} threads {one:,.0f}; {n} workers x 1 "
            f"thread {many:,.0f}: {many / one:.2f}x (target >= 1.3)"
        )


if __name__ == "__main__":
    main()
