"""What this machine offers a worker: cores, and whether bf16 arithmetic is fast on it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the OS has one, e.g. in containers)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


# CPU features that run bf16 matrix products natively (about 2x fp32 per core); without them
# PyTorch emulates bf16 and autocast only costs time
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    flags = set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())
    return any(f in flags for f in _BF16_CPU_FLAGS)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware runs it fast (CUDA with bf16, a CPU with AVX-512 BF16
    or AMX), else fp32; an explicit fp32 or bf16 is kept."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"
