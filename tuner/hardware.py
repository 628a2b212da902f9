"""What this machine offers a worker: cores, and whether bf16 arithmetic pays on it."""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tuner.errors import SpecError


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
# a ratio such as "1.31", or "unavailable: why"
PROBE_ENV = "VAE_TUNE_BF16_SPEEDUP"


@functools.cache
def cpu_lists_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return any(f in flags for f in _BF16_CPU_FLAGS)


def measure_bf16_speedup(rounds: int = 3, steps: int = 8) -> float:
    """bf16-autocast training steps per second over fp32 ones, on one thread: a 784-400-20 MLP
    VAE's layers at batch 128 with Adam (the reference model), medians of interleaved rounds."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(128, 784, generator=gen) > 0.5).float()
    net = nn.Sequential(
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 20),
        nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def seconds(bf16: bool) -> float:
        started = 0.0
        for step in range(steps + 2):  # two warm-up steps
            if step == 2:
                started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    return statistics.median(seconds(False) / seconds(True) for _ in range(rounds))


_PROBE = "from tuner.hardware import measure_bf16_speedup as m; print(f'{m():.3f}')"


def _probe_in_child(code: str = _PROBE) -> str:
    """Run `measure_bf16_speedup` in a child process: a CPU may list bf16 or AMX features whose
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


def _is_ratio(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


@functools.cache
def cpu_bf16_reading() -> str:
    """This CPU's bf16 training speed over fp32 ("1.31"), or "unavailable: why"; measured once
    per process tree (the reading is passed to child processes in `PROBE_ENV`)."""
    reading = os.environ.get(PROBE_ENV, "")
    if not (reading.startswith("unavailable") or _is_ratio(reading)):  # unset, or not ours
        if cpu_lists_bf16():
            reading = _probe_in_child()
        else:
            reading = "unavailable: the CPU lists no bf16 instructions (avx512_bf16 or amx_bf16)"
        os.environ[PROBE_ENV] = reading
    return reading


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 where a bf16 training step runs faster (CUDA with bf16; a CPU where the
    probe measures at least `BF16_MIN_SPEEDUP`), else fp32. An explicit choice is kept, except
    bf16 on a CPU that lists bf16 instructions the probe could not run: refused, naming
    `training.precision`, instead of failing (or crashing) every trial."""
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32") if name == "auto" else name
    if name == "fp32":
        return name
    reading = cpu_bf16_reading()
    if not reading.startswith("unavailable"):
        return "bf16" if name == "bf16" or float(reading) >= BF16_MIN_SPEEDUP else "fp32"
    if name == "bf16" and cpu_lists_bf16():
        raise SpecError(
            f"bf16 does not run on this CPU ({reading.removeprefix('unavailable: ')}); use auto "
            "or fp32 (where the CPU lists AMX that its host does not enable, setting "
            "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 keeps oneDNN to AVX-512 BF16)",
            "training.precision",
        )
    return "fp32" if name == "auto" else name  # bf16 without bf16 instructions: emulated
