"""The Python API as a notebook uses it: tune a spec (a dict, a shipped name, a file), get the
best trial and its config, retrain it, and use the trained model."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_digits
from support import TINY_SPEC

import vae_tune
from vae_tune.errors import SpecError, UserError


def _spec(**changes) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(changes)
    return spec


@pytest.mark.integration
def test_tune_a_dict_then_train_and_use_the_best_model(tmp_path: Path):
    lines: list[str] = []
    result = vae_tune.tune(
        _spec(),
        storage=f"sqlite:///{tmp_path / 'api.db'}",
        n_trials=3,
        workers=1,
        echo=lambda line="", err=False: lines.append(line),
    )
    assert isinstance(result, vae_tune.Result)
    assert len(result.study.trials) == 3 and result.finished == 3
    assert result.best_value == pytest.approx(result.best_trial.value)
    assert result.best_params == result.best_trial.params
    assert sum(line.startswith("trial ") for line in lines) == 3  # one line per trial
    assert any(line.startswith("Best: trial") for line in lines)
    assert "Best: trial" in result.summary()
    config = result.best_config
    assert isinstance(config, vae_tune.RunConfig)
    assert config.source["trial"] == result.best_trial.number
    exported = result.export(tmp_path / "best.yaml")
    assert yaml.safe_load(exported.read_text())["model"] == config.model

    model = vae_tune.train(config, output=tmp_path / "run", progress=False)
    assert model.metrics["validation"]["elbo"] == pytest.approx(result.best_value, abs=1e-3)
    x = torch.rand(5, 8, 8)
    mu, logvar = model.encode(x)
    latent = config.model["latent_dim"]
    assert mu.shape == logvar.shape == (5, latent)
    assert model.reconstruct(x.numpy()).shape == (5, 8, 8)
    samples = model.sample(6, seed=1)
    assert samples.shape == (6, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    assert torch.equal(samples, model.sample(6, seed=1))  # seeded
    assert model.interpolate(x[0], x[1], steps=4).shape == (4, 8, 8)
    block = model.evaluate(k=5, examples=20, gap_examples=0)
    assert block["iw_nll"]["k"] == 5 and block["iw_nll"]["nll"] > 0
    again = vae_tune.load(tmp_path / "run")
    assert "evaluation" in again.metrics
    assert torch.equal(again.sample(3, seed=2), model.sample(3, seed=2))


@pytest.mark.integration
def test_tune_takes_in_memory_data_and_resumes_on_the_same_file(tmp_path: Path):
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:300]
    labels = digits.target[:300]
    db = f"sqlite:///{tmp_path / 'mem.db'}"
    spec = _spec(search_space={**TINY_SPEC["search_space"], "conditional": True})
    first = vae_tune.tune(spec, data=torch.from_numpy(images), labels=labels, storage=db,
                          n_trials=1, workers=1, progress=False)
    assert first.spec.dataset.name == "array" and first.spec.dataset.labels_key == "y"
    staged = Path(first.spec.dataset.path)
    assert staged.is_file() and staged.suffix == ".npz"
    again = vae_tune.tune(spec, data=images, labels=labels, storage=db, n_trials=1, workers=1,
                          progress=False)
    assert again.spec.dataset.path == str(staged)  # same content, same file
    pairs = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    third = vae_tune.tune(spec, data=pairs, storage=db, n_trials=1, workers=1, progress=False)
    assert third.spec.dataset.path == str(staged)  # a Dataset of (x, y): the same examples
    assert [t.state.name for t in third.study.trials] == ["COMPLETE"] * 3


def test_tune_refuses_bad_specs_with_the_field_named(tmp_path: Path):
    with pytest.raises(SpecError, match="search_space.beta.low"):
        vae_tune.tune(_spec(search_space={"beta": {"low": 2.0, "high": 1.0}}),
                      storage=f"sqlite:///{tmp_path / 'x.db'}", progress=False)
    with pytest.raises(SpecError, match="shipped specs"):
        vae_tune.tune("no-such-spec", progress=False)
    with pytest.raises(SpecError, match="a spec is a file"):
        vae_tune.tune(42, progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()


def test_tune_in_a_worker_that_imports_the_users_module_is_refused(monkeypatch):
    """A script that calls tune() unguarded would start workers from its workers."""
    monkeypatch.setenv("VAE_TUNE_WORKER_PROCESS", "1")
    with pytest.raises(UserError, match='if __name__ == "__main__"'):
        vae_tune.tune(_spec(), progress=False)


def test_importing_vae_tune_loads_nothing_heavy():
    code = (
        "import sys, vae_tune; print(vae_tune.__version__); "
        "print(sorted(m for m in ('torch', 'optuna', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == "[]"
