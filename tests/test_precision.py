"""`training.precision: auto` takes bf16 only where a measured bf16 step is faster; a CPU that
lists bf16 instructions it cannot run gets fp32 (auto) or a one-line error (bf16), never a
crash in every trial."""

from __future__ import annotations

import pytest
import torch

from vae_tune.data import load_splits
from vae_tune.seeds import derive
from vae_tune.training import hardware
from vae_tune.training.config import DatasetSpec, RunConfig
from vae_tune.training.hardware import PROBE_ENV, resolve_precision
from vae_tune.training.trainer import eval_targets, evaluate, train

CPU = torch.device("cpu")


@pytest.fixture
def reading(monkeypatch):
    """Set the bf16 probe's reading as a parent process would hand it down."""

    def set_reading(value: str) -> None:
        monkeypatch.setenv(PROBE_ENV, value)
        monkeypatch.delenv(hardware.PROBED_ENV, raising=False)  # set by hand: it rules
        hardware.cpu_bf16_reading.cache_clear()

    yield set_reading
    hardware.cpu_bf16_reading.cache_clear()


def test_auto_takes_bf16_only_where_the_probe_measured_a_gain(reading):
    reading("1.40")
    assert resolve_precision("auto", CPU) == "bf16"
    reading("0.58")  # e.g. AVX-512 BF16 without AMX on a CPU whose fp32 is fast
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for, and it runs: kept
    reading("unavailable: the bf16 probe was killed by SIGILL")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.integration
def test_a_reading_that_is_not_the_probes_is_measured_again(reading):
    reading("fast")
    measured = hardware.cpu_bf16_reading()
    assert measured != "fast"
    assert measured.startswith("unavailable") or hardware.parse_reading(measured) is not None


def _tiny(**changes) -> RunConfig:
    """A small MLP on 300 digits, one thread: seconds to train."""
    base = {
        "dataset": DatasetSpec(name="digits", subset=300),
        "model": {"architecture": "mlp", "latent_dim": 4, "hidden_dim": 32},
        "epochs": 1,
        "device": "cpu",
        "threads": 1,
    }
    return RunConfig(**{**base, **changes})


def test_a_trial_trains_and_records_the_precision_auto_chose(reading):
    config = _tiny()
    reading("0.58")
    assert train(config).precision == "fp32"
    reading("1.40")
    run = train(config)
    assert run.precision == "bf16" and torch.isfinite(torch.tensor(run.final.val.elbo))


def test_bf16_the_cpu_cannot_run_is_refused_before_anything_is_written(
    cli, write_spec, tmp_path, reading, monkeypatch
):
    monkeypatch.setattr(hardware, "cpu_lists_bf16", lambda: True)
    reading("unavailable: the bf16 probe was killed by SIGILL")
    result = cli("run", write_spec({"training": {"precision": "bf16"}}))
    assert result.exit_code == 2, result.output
    assert "training.precision" in result.output and "SIGILL" in result.output
    assert "use auto or fp32" in result.output
    assert not (tmp_path / "study.db").exists()


@pytest.mark.integration
def test_the_probe_measures_in_a_child_and_survives_its_crash():
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    assert hardware._probe_in_child(crash) == "unavailable: the bf16 probe was killed by SIGILL"
    failed = hardware._probe_in_child("raise RuntimeError('could not create a primitive')")
    assert (
        failed == "unavailable: the bf16 probe failed (RuntimeError: could not create a primitive)"
    )
    measured = hardware._probe_in_child()  # the real probe, on this machine
    assert measured.startswith("unavailable") or hardware.parse_reading(measured) is not None


def test_a_reading_names_the_faster_bf16_mode(reading):
    assert hardware.parse_reading("1.31") == (1.31, "autocast")  # a bare ratio, as users set it
    assert hardware.parse_reading("unavailable: no") is None
    assert hardware.parse_reading("1.4 fastest") is None  # not a mode: measured again
    if not hardware.bf16_matmul_available():
        pytest.skip("this torch has no oneDNN bf16-product mode (torch < 2.9)")
    assert hardware.parse_reading("1.43 matmul") == (1.43, "matmul")
    reading("1.43 matmul")
    assert resolve_precision("auto", CPU) == "bf16-matmul"
    assert resolve_precision("bf16", CPU) == "bf16-matmul"
    reading("1.02 matmul")
    assert resolve_precision("auto", CPU) == "fp32"
    reading("1.25 autocast")
    assert resolve_precision("auto", CPU) == "bf16"


def test_bf16_products_round_inside_the_context_only():
    if not hardware.bf16_matmul_available():
        pytest.skip("this torch has no oneDNN bf16-product mode (torch < 2.9)")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=gen), torch.randn(256, 32, generator=gen)
    exact = a.double() @ b.double()
    before = torch.backends.mkldnn.matmul.fp32_precision
    products = hardware.Bf16Matmul()
    for _ in range(2):  # reusable, as the trainer enters it once per epoch
        with products:
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
            inside = a @ b
        assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert inside.dtype == torch.float32
    fp32_error = ((a @ b).double() - exact).abs().max()
    if hardware.cpu_bf16_reading().endswith("matmul"):  # oneDNN has bf16 kernels here
        assert ((inside.double() - exact).abs().max()) > 100 * fp32_error


def test_bf16_matmul_trains_and_validates_in_fp32(reading):
    """The trial records bf16-matmul, and the validation ELBO it reports is the fp32 one: the
    same value an fp32 evaluation of the kept model gives after training."""
    if not hardware.bf16_matmul_available():
        pytest.skip("this torch has no oneDNN bf16-product mode (torch < 2.9)")
    config = _tiny(epochs=2, precision="bf16")
    reading("1.43 matmul")
    splits = load_splits(config.dataset, config.data_seed)
    run = train(config, splits)
    assert run.precision == "bf16-matmul"
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # restored
    x_val = eval_targets(config, splits.val, 1)
    noise = derive(config.data_seed, "val-noise")
    again = evaluate(run.model, run.likelihood, x_val, config.eval_batch_size, noise)
    assert again.elbo == pytest.approx(run.final.val.elbo, abs=1e-9)


def test_the_machines_reading_is_probed_once_and_kept_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.PRECISION_CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(PROBE_ENV, raising=False)
    monkeypatch.delenv(hardware.PROBED_ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_lists_bf16", lambda: True)
    answers = ["unavailable: the bf16 probe took over 120 s", "1.30 autocast"]
    probes = []

    def probe():
        probes.append(1)
        return answers[len(probes) - 1]

    monkeypatch.setattr(hardware, "_probe_in_child", probe)

    def fresh_process() -> str:  # what a new `vae-tune` command reads
        monkeypatch.delenv(PROBE_ENV, raising=False)
        hardware.cpu_bf16_reading.cache_clear()
        return hardware.cpu_bf16_reading()

    try:
        assert fresh_process().startswith("unavailable")  # a failed probe is not kept
        assert not hardware.machine_reading_file().exists()
        assert fresh_process() == "1.30 autocast"
        assert hardware.machine_reading_file().read_text() == "1.30 autocast"
        assert fresh_process() == "1.30 autocast" and len(probes) == 2  # from disk
        assert hardware.os.environ[hardware.PROBED_ENV] == "1"  # ours: per-architecture next
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # another oneDNN: another reading
        answers.append("0.80 autocast")
        assert fresh_process() == "0.80 autocast" and len(probes) == 3
    finally:
        hardware.cpu_bf16_reading.cache_clear()
