"""What this machine offers a worker: cores, and whether bf16 arithmetic pays on it (and how).

A CPU runs a bf16 training step one of two ways: `autocast` (the networks' weights and
activations cast to bf16 around each operation, as on CUDA), or `matmul`, where tensors stay
fp32 and oneDNN takes bf16 inputs only inside the matrix products, convolutions and RNN cells
(`torch.backends.mkldnn.*.fp32_precision = "bf16"`, torch 2.9 and newer). The second skips
autocast's per-step casts and keeps every elementwise operation in fp32, but engages only where
oneDNN has a fast bf16 kernel for it (AMX); elsewhere it is plain fp32. The probe times both.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from vae_tune.data.download import cache_dir
from vae_tune.errors import ServiceError, SpecError, UserError
from vae_tune.files import write_atomic
from vae_tune.models.bounds import training_bound
from vae_tune.models.registry import build_model


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
# set beside PROBE_ENV where vae-tune took the reading itself (not a user pinning it): then
# `auto` goes on to each architecture's own reading (`architecture_precision`)
PROBED_ENV = "VAE_TUNE_BF16_PROBED"
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
PROBE_TIMEOUT_S = 120  # a probe (the machine's, or one architecture's) that takes longer failed


def _probe_in_child(code: str = _PROBE, timeout: float = PROBE_TIMEOUT_S) -> str:
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
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        return f"unavailable: the bf16 probe took over {timeout:.0f} s"
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


# a bf16 mode's validation bound may differ from fp32's by at most this (nats per example, the
# tolerance README's precision lever states) after the same training steps, or auto skips it
ELBO_TOLERANCE = 0.5
# where the probe readings (the machine's, each architecture's) are kept (default: the dataset
# cache's `precision/`)
PRECISION_CACHE_ENV = "VAE_TUNE_PRECISION_CACHE"
# the precision of each mode as the per-architecture probe names it
_PROBED = {"fp32": "fp32", "autocast": "bf16", "matmul": "bf16-matmul"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def precision_cache_dir() -> Path:
    if os.environ.get(PRECISION_CACHE_ENV):
        return Path(os.environ[PRECISION_CACHE_ENV])
    return cache_dir() / "precision"


def _write_cached(path: Path, text: str) -> None:
    """Keep a reading (atomic: a concurrent worker reads a whole file or none). A read-only
    cache only means it is measured again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, field=PRECISION_CACHE_ENV)
    except (OSError, ServiceError, UserError):
        pass


def machine_reading_file() -> Path:
    """Where the bf16 probe's reading of this machine is kept: keyed by CPU model, torch
    version and oneDNN's ISA cap (`ONEDNN_MAX_CPU_ISA` changes what bf16 runs on)."""
    key = "|".join([cpu_model(), torch.__version__, os.environ.get("ONEDNN_MAX_CPU_ISA", "")])
    return precision_cache_dir() / f"machine-{hashlib.sha256(key.encode()).hexdigest()[:16]}.txt"


def _probe_once_per_machine() -> str:
    """The probe's reading from disk, else from a probe (kept when it is a reading: a probe
    that crashed or timed out is tried again next time)."""
    path = machine_reading_file()
    try:
        kept = path.read_text().strip()
    except OSError:
        kept = ""
    if parse_reading(kept):
        return kept
    reading = _probe_in_child()
    if parse_reading(reading):
        _write_cached(path, reading)
    return reading


@functools.cache
def cpu_bf16_reading() -> str:
    """This CPU's faster bf16 mode and its training speed over fp32 ("1.43 matmul"), or
    "unavailable: why"; measured once per machine and torch version (`machine_reading_file`)
    and passed to child processes in `PROBE_ENV`."""
    reading = os.environ.get(PROBE_ENV, "")
    if not (reading.startswith("unavailable") or parse_reading(reading)):  # unset, or not ours
        if cpu_lists_bf16():
            reading = _probe_once_per_machine()
        else:
            reading = "unavailable: the CPU lists no bf16 instructions (avx512_bf16 or amx_bf16)"
        os.environ[PROBE_ENV] = reading
        os.environ[PROBED_ENV] = "1"
    return reading


def precision_cache_file(architecture: str, image_shape: tuple[int, ...]) -> Path:
    """The reading of one architecture on this machine: keyed by CPU model, CPU flags that
    matter, torch version, architecture and image shape."""
    key = "|".join(
        [cpu_model(), str(cpu_lists_bf16()), torch.__version__, architecture, str(image_shape)]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", architecture)
    return precision_cache_dir() / f"{safe}-{digest}.json"


def probe_architecture(
    architecture: str, image_shape: tuple[int, ...], rounds: int = 3, steps: int = 10
) -> dict:
    """Time one architecture's training step (its config defaults, batch 128 of binary
    images, one thread) in fp32 and each CPU bf16 mode, medians of interleaved rounds; and
    each mode's validation bound after the same steps from the same start, against fp32's.
    Returns {"speedup": {mode: x}, "gap": {mode: nats}, "precision": the fastest mode at
    least `BF16_MIN_SPEEDUP` faster whose gap is within `ELBO_TOLERANCE`, else fp32}."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 128, *image_shape, generator=gen) > 0.7).float()
    torch.manual_seed(0)
    start = build_model({"architecture": architecture}, tuple(image_shape))
    modes = ["fp32", *(m for m in BF16_MODES if m == "autocast" or bf16_matmul_available())]

    def bound(model: nn.Module, xb: torch.Tensor, mode: str) -> torch.Tensor:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast")
        with autocast:
            out = model(xb, torch.Generator().manual_seed(1), 1, None)
        logits = out.logits.float().reshape(len(xb), -1)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits, xb.reshape(len(xb), -1), reduction="none"
        ).sum(1)
        return training_bound(log_px.view(1, -1), out.posterior, 1.0)

    def run(mode: str) -> tuple[float, float]:
        model = copy.deepcopy(start)
        try:  # the trainer's fused Adam, where torch has it
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        except (RuntimeError, TypeError, ValueError):
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        elapsed = 0.0
        with Bf16Matmul(mode == "matmul"):
            for step in range(steps + 2):  # two warm-up steps, untimed
                began = time.perf_counter()
                loss = -bound(model, x[step % 3], mode)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step >= 2:
                    elapsed += time.perf_counter() - began
        with torch.no_grad():
            held = bound(model, x[3], "fp32").item()
        return elapsed, held

    times: dict[str, list[float]] = {m: [] for m in modes}
    held: dict[str, float] = {}
    for _ in range(rounds):
        for mode in modes:
            t, h = run(mode)
            times[mode].append(t)
            held[mode] = h
    fp32 = statistics.median(times["fp32"])
    speedup = {m: fp32 / statistics.median(times[m]) for m in modes if m != "fp32"}
    gap = {m: abs(held[m] - held["fp32"]) for m in modes if m != "fp32"}
    fit = [m for m in speedup if speedup[m] >= BF16_MIN_SPEEDUP and gap[m] <= ELBO_TOLERANCE]
    best = max(fit, key=speedup.__getitem__) if fit else "fp32"
    return {
        "precision": _PROBED[best],
        "speedup": {m: round(v, 3) for m, v in speedup.items()},
        "gap": {m: round(v, 4) for m, v in gap.items()},
    }


def probe_architectures(architectures: Sequence[str], image_shape: tuple[int, ...]) -> None:
    """`probe_architecture` of each, one JSON line each as it is taken (so a crash on one
    keeps the readings before it)."""
    for architecture in architectures:
        reading = probe_architecture(architecture, image_shape)
        print(json.dumps({"architecture": architecture, **reading}), flush=True)


def _probe_architectures_in_child(
    architectures: Sequence[str], image_shape: tuple[int, ...]
) -> dict[str, dict]:
    """The readings of `architectures`, taken in one child process (one torch start-up)."""
    code = (
        "from vae_tune.training.hardware import probe_architectures; "
        f"probe_architectures({list(architectures)!r}, {tuple(image_shape)!r})"
    )
    out = _probe_in_child(code, timeout=PROBE_TIMEOUT_S * len(architectures))
    readings: dict[str, dict] = {}
    for line in out.splitlines():
        try:
            reading = json.loads(line)
            readings[reading.pop("architecture")] = reading
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return {a: readings.get(a) or {"precision": "fp32", "unavailable": out} for a in architectures}


def architecture_precisions(
    architectures: Sequence[str],
    image_shape: tuple[int, ...],
    probe: Callable[..., dict[str, dict]] = _probe_architectures_in_child,
    echo: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """`precision: auto` of each architecture on this CPU: fp32 where bf16 does not run or
    does not pay (no bf16 instructions: no probe at all), else the reading of a probe of that
    architecture (`probe_architecture`), taken once per machine, torch version, architecture
    and image shape and kept on disk (`precision_cache_file`). The readings not on disk yet
    are taken together, in one child process; `echo` hears that they are."""
    if parse_reading(cpu_bf16_reading()) is None:  # bf16 unsupported or crashing here
        return dict.fromkeys(architectures, "fp32")  # (AVX2-only CPUs land here)
    readings: dict[str, dict] = {}
    for architecture in dict.fromkeys(architectures):
        try:
            kept = precision_cache_file(architecture, image_shape).read_text()
            readings[architecture] = json.loads(kept)
        except (OSError, ValueError):
            pass
    missing = [a for a in dict.fromkeys(architectures) if a not in readings]
    if missing:
        if echo is not None:
            shape = "x".join(map(str, image_shape))
            echo(
                f"  precision auto: timing fp32 against bf16 for {', '.join(missing)} on "
                f"{shape} inputs (once on this machine; kept in {precision_cache_dir()})"
            )
        for architecture, reading in probe(missing, tuple(image_shape)).items():
            reading["key"] = {
                "cpu": cpu_model(), "torch": torch.__version__, "architecture": architecture,
                "image_shape": list(image_shape),
            }  # fmt: skip
            path = precision_cache_file(architecture, image_shape)
            _write_cached(path, json.dumps(reading, indent=1))
            readings[architecture] = reading
    known = set(_PROBED.values()) - ({"bf16-matmul"} if not bf16_matmul_available() else set())
    chosen = {a: r.get("precision", "fp32") for a, r in readings.items()}
    return {a: chosen[a] if chosen[a] in known else "fp32" for a in architectures}


def architecture_precision(
    architecture: str,
    image_shape: tuple[int, ...],
    probe: Callable[..., dict[str, dict]] = _probe_architectures_in_child,
) -> str:
    """`architecture_precisions` of one architecture."""
    return architecture_precisions([architecture], image_shape, probe)[architecture]


def _per_architecture(name: str, device: torch.device) -> bool:
    """Whether `auto` takes each architecture's own reading: on a CPU, unless the user set
    the machine's reading (`PROBE_ENV`) themselves (then that reading is kept for all)."""
    return name == "auto" and device.type != "cuda" and os.environ.get(PROBED_ENV) == "1"


def resolve_precisions(
    name: str,
    device: torch.device,
    architectures: Sequence[str],
    image_shape: tuple[int, ...],
    echo: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """`resolve_precision` of each architecture, the probes `auto` needs taken together."""
    machine = resolve_precision(name, device)  # the machine's reading first: it decides the rest
    if _per_architecture(name, device):
        return architecture_precisions(architectures, image_shape, echo=echo)
    return dict.fromkeys(architectures, machine)


def resolve_precision(
    name: str,
    device: torch.device,
    architecture: str | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> str:
    """The training step's arithmetic: `fp32`, `bf16` (autocast) or `bf16-matmul` (fp32
    tensors, bf16 products; a CPU's faster mode, as the probe measured). `auto` -> bf16 where
    a bf16 training step runs faster (CUDA with bf16; a CPU where the probe measures at least
    `BF16_MIN_SPEEDUP`), else fp32. With `architecture` and `image_shape`, auto on a CPU is
    that architecture's own reading (`architecture_precision`), unless the user set the
    machine's reading (`PROBE_ENV`) themselves: then that reading is kept for every one. An
    explicit bf16 is kept, except on a CPU that lists bf16 instructions the probe could not
    run: refused, naming `training.precision`, instead of failing (or crashing) every trial."""
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp32") if name == "auto" else name
    if name == "fp32":
        return name
    if architecture is not None and image_shape is not None and _per_architecture(name, device):
        return architecture_precision(architecture, image_shape)
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
