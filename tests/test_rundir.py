"""`vae-tune train --output`: a run directory that reloads to the same model, written whole or
not at all, and a model file that is read without unpickling anything."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vae_tune.data import load_splits
from vae_tune.errors import UserError
from vae_tune.files import write_dir_atomic
from vae_tune.runs.rundir import open_run
from vae_tune.runs.saved_model import load_model
from vae_tune.training.trainer import score_test_split

RUN_CONFIG = {
    "dataset": {"name": "digits", "subset": 300},
    "model": {"architecture": "mlp", "latent_dim": 4, "hidden_dim": 32},
    "likelihood": {"name": "gaussian", "scale": "learned"},
    "epochs": 2,
    "lr": 3.0e-3,
    "device": "cpu",
    "threads": 1,
}


def write_config(folder: Path, **changes) -> Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN_CONFIG, **changes}))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from vae_tune.cli import app

    folder = tmp_path_factory.mktemp("run")
    out = folder / "runs" / "best"  # the parent is made
    result = CliRunner().invoke(app, ["train", str(write_config(folder)), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}/" in result.output
    return out


def test_the_run_directory_holds_config_model_metrics_and_pictures(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [
        "config.yaml",
        "metrics.json",
        "model.pt",
        "reconstructions.png",
        "samples.png",
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["test"]["elbo"] == pytest.approx(
        metrics["test"]["recon"] - metrics["test"]["kl"]
    )
    assert metrics["validation"]["elbo"] == metrics["epochs"][-1]["val_elbo"]
    assert len(metrics["test"]["kl_per_dim"]) == 4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["latent_dim"] == 4
    assert all((run_dir / n).read_bytes()[:4] == b"\x89PNG" for n in names if n.endswith("png"))


def test_the_saved_model_reloads_to_the_same_test_elbo(run_dir):
    run = open_run(run_dir, device="cpu")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = load_splits(run.config.dataset, run.config.data_seed)
    again = score_test_split(
        run.config, run.saved.model, run.saved.likelihood, splits, run.saved.device
    )
    assert again.elbo == pytest.approx(metrics["test"]["elbo"], abs=1e-9)
    # the learned Gaussian scale is part of the likelihood's state, and it was learned
    assert run.saved.likelihood.log_scale.item() != 0.0
    assert run.saved.versions["torch"] == torch.__version__


def test_an_output_that_is_not_empty_is_refused_before_training(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("train", write_config(tmp_path), "--output", out)
    assert result.exit_code == 2, result.output
    assert "output" in result.output and "--force" in result.output
    assert "epoch" not in result.output and (out / "keep.txt").read_text() == "mine"
    result = cli("train", write_config(tmp_path, epochs=1), "--output", out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "model.pt").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("where", ["afile/run", "afile", "readonly/run"])
def test_an_output_that_cannot_be_written_is_refused_before_training(cli, tmp_path, where):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "readonly").mkdir(mode=0o500)
    if os.geteuid() == 0 and where.startswith("readonly"):
        pytest.skip("root writes to read-only folders")
    result = cli("train", write_config(tmp_path), "--output", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert "output" in result.output and "epoch" not in result.output


def test_a_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), write_dir_atomic(out) as tmp:
        (tmp / "model.pt").write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from vae_tune.files import write_dir_atomic
with write_dir_atomic(Path(sys.argv[1])) as tmp:
    (tmp / "model.pt").write_bytes(b"half a model")
    print("writing", flush=True)
    time.sleep(60)
    (tmp / "metrics.json").write_text("{}")
"""


def test_a_writer_killed_mid_write_leaves_no_run_directory(tmp_path):
    out = tmp_path / "runs" / "best"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()  # nothing that looks like a run at the destination
    hidden = list(out.parent.iterdir())
    assert len(hidden) == 1 and hidden[0].name.startswith(".best.tmp-")
    with pytest.raises(UserError, match="not a run directory"):
        open_run(out)
    with write_dir_atomic(out) as tmp:  # the next write cleans the dead writer's folder up
        (tmp / "model.pt").write_bytes(b"whole")
    assert [p.name for p in out.parent.iterdir()] == ["best"]


class Payload:
    """A pickled object whose unpickling would run code (it must never be unpickled)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tampered(kind: str, path: Path, marker: Path, run_dir: Path) -> None:
    good = torch.load(run_dir / "model.pt", weights_only=True)
    if kind == "pickled-object":
        torch.save({"format": "vae-tune model", "payload": Payload(marker)}, path)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(2048))
    elif kind == "missing-keys":
        torch.save({k: v for k, v in good.items() if k != "likelihood"}, path)
    elif kind == "wrong-weights":
        good["model"] = {k: v[..., :1] for k, v in good["model"].items()}
        torch.save(good, path)
    elif kind == "bad-config":
        good["config"]["model"]["latent_dim"] = -1
        torch.save(good, path)


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("pickled-object", "refused"),
        ("plain-pickle", "refused"),
        ("random-bytes", "refused"),
        ("missing-keys", "missing likelihood"),
        ("wrong-weights", "do not fit"),
        ("bad-config", "model.latent_dim"),
    ],
)
def test_a_tampered_model_file_is_refused(run_dir, tmp_path, kind, expect):
    path, marker = tmp_path / "model.pt", tmp_path / "pwned"
    _tampered(kind, path, marker, run_dir)
    with pytest.raises(UserError, match=expect):
        load_model(path, "cpu")
    assert not marker.exists()  # nothing in the file ran


def test_save_writes_the_same_model_file(cli, tmp_path):
    out = tmp_path / "w.pt"
    result = cli("train", write_config(tmp_path, epochs=1), "--save", out)
    assert result.exit_code == 0, result.output
    saved = load_model(out, "cpu")
    assert saved.image_shape == (8, 8) and saved.config.model["hidden_dim"] == 32
