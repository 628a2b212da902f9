"""What this machine offers a worker: cores, and whether bf16 arithmetic pays on it (and how).

A CPU runs a bf16 training step one of two ways: `autocast` (the networks' weights and
activations cast to bf16 around each operation, as on CUDA), or `matmul`, where tensors stay
fp32 and oneDNN takes bf16 inputs only inside the matrix products, convolutions and RNN cells
(`torch.backends.mkldnn.*.fp32_precision = "bf16"`, torch 2.9 and newer). The second skips
autocast's per-step casts and keeps every elementwise operation in fp32, but engages only where
oneDNN has a fast bf16 kernel for it (AMX); elsewhere it is plain fp32. The probe times both.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from vae_tune.errors import SpecError


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the OS has one, e.g. in containers)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


# CPU features that run bf16 matrix products natively; without them PyTorch emulates bf16 and
# autocast only costs time, so the probe below is not even run
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# `auto` takes bf16 where a bf16 training step is at least this much faster than fp32
BF16_MIN_SPEEDUP = 1.1
# the probe's reading, handed down to worker processes so each machine is probed once per run:
# a speed-up and the faster mode, such as "1.39 matmul" (a bare ratio means autocast), or
# "unavailable: why"
PROBE_ENV = "VAE_TUNE_BF16_SPEEDUP"
# how a CPU trains in bf16 (module docstring)
BF16_MODES = ("autocast", "matmul")
# what each mode's resolved precision is called (recorded on every trial)
PRECISION_OF_MODE = {"autocast": "bf16", "matmul": "bf16-matmul"}
_MKLDNN_OPS = ("matmul", "conv", "rnn")


def bf16_matmul_available() -> bool:
    """Whether this torch lets oneDNN compute fp32 products with bf16 inputs (torch >= 2.9)."""
    return all(
        hasattr(getattr(torch.backends.mkldnn, op, None), "fp32_precision") for op in _MKLDNN_OPS
    )


class Bf16Matmul:
    """A reusable context in which oneDNN computes fp32 matrix products, convolutions and RNN
    cells from bf16-rounded inputs (fp32 accumulation and outputs); everything else, and all
    code outside it (validation, IW-NLL, exports), stays fp32. Disabled, it does nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and bf16_matmul_available()
        self._before: list[str] = []

    def __enter__(self) -> Bf16Matmul:
        if self.enabled:
            backends = [getattr(torch.backends.mkldnn, op) for op in _MKLDNN_OPS]
            self._before = [b.fp32_precision for b in backends]
            for backend in backends:
                backend.fp32_precision = "bf16"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            for op, before in zip(_MKLDNN_OPS, self._before, strict=True):
                getattr(torch.backends.mkldnn, op).fp32_precision = before


@functools.cache
def cpu_lists_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return any(f in flags for f in _BF16_CPU_FLAGS)


def measure_bf16_speedups(rounds: int = 3, steps: int = 8) -> dict[str, float]:
    """Each bf16 mode's training steps per second over fp32's, on one thread (what a default
    worker has): a 784-400-20 MLP VAE's layers at batch 128 with fused Adam (the reference
    model as the trainer runs it), medians of interleaved rounds."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(128, 784, generator=gen) > 0.5).float()
    net = nn.Sequential(
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 20),
        nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784),
    )  # fmt: skip
    try:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused kernel on the CPU
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    modes = [m for m in BF16_MODES if m == "autocast" or bf16_matmul_available()]

    def seconds(mode: str) -> float:
        started = 0.0
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast")
        with Bf16Matmul(mode == "matmul"):
            for step in range(steps + 2):  # two warm-up steps
                if step == 2:
                    started = time.perf_counter()
                with autocast:
                    logits = net(x)
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return time.perf_counter() - started

    ratios: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            ratios[mode].append(seconds("fp32") / seconds(mode))
    return {mode: statistics.median(r) for mode, r in ratios.items()}


def best_bf16_mode() -> str:
    """The probe's output: the faster bf16 mode's speed-up over fp32 and its name."""
    speedups = measure_bf16_speedups()
    mode = max(speedups, key=speedups.__getitem__)
    return f"{speedups[mode]:.3f} {mode}"


_PROBE = "from vae_tune.training.hardware import best_bf16_mode; print(best_bf16_mode())"


def _probe_in_child(code: str = _PROBE) -> str:
    """Run `best_bf16_mode` in a child process: a CPU may list bf16 or AMX features whose
    instructions do not run (seen in a VM that lists amx_bf16: oneDNN's first bf16 product
    raised "could not create a primitive" or killed the process with SIGILL), and the child
    takes that crash instead of this process."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        return "unavailable: the bf16 probe took over 120 s"
    if done.returncode < 0:
        return f"unavailable: the bf16 probe was killed by {signal.Signals(-done.returncode).name}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"unavailable: the bf16 probe failed ({last})"
    return done.stdout.strip()


_READING = re.compile(r"(?P<ratio>\d+(\.\d*)?|\.\d+)( (?P<mode>[a-z]+))?")


def parse_reading(text: str) -> tuple[float, str] | None:
    """(speed-up, mode) of a probe reading such as "1.43 matmul"; a bare ratio ("1.31", as
    a user may set it to skip the probe) means autocast. None: unavailable, or not a reading."""
    match = _READING.fullmatch(text.strip())
    if match is None or float(match["ratio"]) <= 0:
        return None
    mode = match["mode"] or "autocast"
    if mode not in BF16_MODES or (mode == "matmul" and not bf16_matmul_available()):
        return None
    return float(match["ratio"]), mode


@functools.cache
def cpu_bf16_reading() -> str:
    """This CPU's faster bf16 mode and its training speed over fp32 ("1.43 matmul"), or
    "unavailable: why"; measured once per process tree (the reading is passed to child
    processes in `PROBE_ENV`)."""
    reading = os.environ.get(PROBE_ENV, "")
    if not (reading.startswith("unavailable") or parse_reading(reading)):  # unset, or not ours
        if cpu_lists_bf16():
            reading = _probe_in_child()
        else:
            reading = "unavailable: the CPU lists no bf16 instructions (avx512_bf16 or amx_bf16)"
        os.environ[PROBE_ENV] = reading
    return reading


def resolve_precision(name: str, device: torch.device) -> str:
    """The training step's arithmetic: `fp32`, `bf16` (autocast) or `bf16-matmul` (fp32
    tensors, bf16 products; a CPU's faster mode, as the probe measured). `auto` -> bf16 where
    a bf16 training step runs faster (CUDA with bf16; a CPU where the probe measures at least
    `BF16_MIN_SPEEDUP`), else fp32. An explicit bf16 is kept, except on a CPU that lists bf16
    instructions the probe could not run: refused, naming `training.precision`, instead of
    failing (or crashing) every trial."""
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32") if name == "auto" else name
    if name == "fp32":
        return name
    reading = cpu_bf16_reading()
    parsed = parse_reading(reading)
    if parsed is not None:
        speedup, mode = parsed
        return PRECISION_OF_MODE[mode] if name == "bf16" or speedup >= BF16_MIN_SPEEDUP else "fp32"
    if name == "bf16" and cpu_lists_bf16():
        raise SpecError(
            f"bf16 does not run on this CPU ({reading.removeprefix('unavailable: ')}); use auto "
            "or fp32 (where the CPU lists AMX that its host does not enable, setting "
            "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 keeps oneDNN to AVX-512 BF16)",
            "training.precision",
        )
    return "fp32" if name == "auto" else name  # bf16 without bf16 instructions: emulated
