"""Datasets by name, likelihoods, training knobs, diagnostics and per-trial pictures."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.trial import TrialState
from PIL import Image

from vae_tune.data import load_splits
from vae_tune.training.config import DatasetSpec, LikelihoodSpec, RunConfig
from vae_tune.training.diagnostics import iw_nll
from vae_tune.training.trainer import eval_targets, evaluate, train
from vae_tune.tuning.artifacts import open_artifact_store
from vae_tune.tuning.storage import open_storage

MNIST_DIR = Path(
    os.environ.get("VAE_TUNE_MNIST_DIR")
    or Path(__file__).resolve().parents[2] / "shared/data/mnist"
)
TINY = DatasetSpec(name="digits", subset=200)


def _config(**kw) -> RunConfig:
    base = dict(
        dataset=TINY,
        model={"architecture": "mlp", "latent_dim": 4, "hidden_dim": 32},
        epochs=1,
        device="cpu",
        threads=1,
    )
    return RunConfig(**{**base, **kw})


def test_iw_nll_bounds_the_elbo_and_tightens_with_k():
    config = _config(epochs=8)
    splits = load_splits(config.dataset, 0)
    result = train(config, splits)
    x = splits.val[:200]
    elbo = evaluate(result.model, result.likelihood, x, 1024, 0).elbo
    nlls = [iw_nll(result.model, result.likelihood, x, k, seed=1) for k in (1, 10, 100, 1000)]
    assert nlls[-1] <= -elbo  # log p(x) >= ELBO
    assert nlls[0] > nlls[1] > nlls[2] >= nlls[3] - 1e-3
    assert nlls[0] - nlls[3] > 0.1
    assert nlls[0] == pytest.approx(-elbo, rel=0.05)  # k = 1 is a one-sample ELBO


@pytest.mark.parametrize("knob", [{"free_bits": 3.0}, {"warmup_epochs": 5}])
def test_free_bits_and_warmup_change_the_training_loss_not_the_reported_elbo(knob):
    """With a vanishing lr the weights stay put: only the training objective differs."""
    base = train(_config(lr=1e-12, beta=20.0)).final
    other = train(_config(lr=1e-12, beta=20.0, **knob)).final
    assert abs(other.train_loss - base.train_loss) > 0.5
    assert other.val.elbo == pytest.approx(base.val.elbo, abs=1e-4)


def test_static_and_dynamic_binarization_score_fixed_binary_validation_images():
    config = _config(likelihood=LikelihoodSpec(binarize="dynamic"))
    x = load_splits(config.dataset, 0).val
    a, b = eval_targets(config, x, 1), eval_targets(config, x, 1)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b)  # one fixed binarization per seed: values compare across trials
    assert not torch.equal(eval_targets(config, x, 1), eval_targets(config, x, 2))
    for binarize in ("static", "dynamic"):
        run = train(_config(likelihood=LikelihoodSpec(binarize=binarize), epochs=2))
        assert np.isfinite(run.final.val.elbo)


@pytest.mark.parametrize(
    "likelihood",
    [
        LikelihoodSpec(name="continuous_bernoulli"),
        LikelihoodSpec(name="gaussian"),
        LikelihoodSpec(name="gaussian", scale=0.1),
    ],
)
def test_every_likelihood_trains(likelihood):
    run = train(_config(likelihood=likelihood, epochs=2))
    assert np.isfinite(run.final.val.elbo)
    if likelihood.name == "gaussian" and likelihood.scale == "learned":
        assert run.likelihood.log_scale.item() != 0.0  # the scale was learned


@pytest.mark.parametrize(
    "knobs",
    [
        {"optimizer": "adamw", "weight_decay": 1e-2},
        {"lr_schedule": "cosine"},
        {"lr_schedule": "step"},
        {"grad_clip": 1.0},
        {
            "model": {
                "architecture": "hybrid",
                "latent_dim": 4,
                "channels": 4,
                "hidden_size": 16,
                "dropout": 0.2,
            }
        },
    ],
)
def test_training_knobs_run(knobs):
    assert np.isfinite(train(_config(epochs=2, **knobs)).final.val.elbo)


def test_completed_trials_store_pictures_and_diagnostics(cli, write_spec, db_url, tmp_path):
    spec = write_spec({"budget": {"n_trials": 1}, "training": {"iw_samples": 20}})
    assert cli("run", spec).exit_code == 0
    trial = optuna.load_study(study_name="tiny", storage=db_url).trials[0]
    assert trial.user_attrs["val_iw_nll"] <= -trial.value + 0.5
    assert len(trial.user_attrs["kl_per_dim"]) == trial.params["latent_dim"]
    assert trial.user_attrs["posterior_collapse"] == (trial.user_attrs["active_units"] == 0)
    metas = get_all_artifact_meta(trial, storage=open_storage(db_url))
    assert sorted(m.filename for m in metas) == ["reconstructions.png", "samples.png"]
    store = open_artifact_store(db_url)
    assert (tmp_path / "study-artifacts").is_dir()
    for meta in metas:
        out = tmp_path / meta.filename
        download_artifact(artifact_store=store, file_path=str(out), artifact_id=meta.artifact_id)
        img = Image.open(io.BytesIO(out.read_bytes()))
        assert img.format == "PNG" and img.width >= 320  # large enough to read
        caption = img.text["caption"]  # labelled: which study and trial, beta, ELBO
        assert "study tiny, trial 0" in caption and f"beta {trial.params['beta']:.3g}" in caption
        assert f"validation ELBO {trial.value:.2f}" in caption
        layout = json.loads(img.text["layout"])[0]
        if meta.filename == "reconstructions.png":
            assert layout["row_labels"] == ["original", "reconstruction"]
            assert layout["image"] == [8, 8] and layout["rows"] == 2
        else:
            assert (layout["rows"], layout["cols"]) == (8, 8)


def test_collapsed_posteriors_are_pruned_when_asked(cli, write_spec, db_url):
    spec = write_spec(
        {
            "budget": {"n_trials": 1},
            "training": {"collapse": "prune", "epochs": 3},
            "search_space": {"beta": 200.0, "latent_dim": 4},
        }
    )
    assert cli("run", spec).exit_code == 0
    trial = optuna.load_study(study_name="tiny", storage=db_url).trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["stop_reason"].startswith("posterior collapse")
    assert trial.user_attrs["posterior_collapse"] is True


def test_user_arrays_are_a_dataset(cli, write_spec, db_url, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(120, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=images)
    spec = write_spec(
        {
            "dataset": {
                "name": "array",
                "path": str(tmp_path / "mine.npz"),
                "key": "images",
                "subset": None,
            }
        }
    )
    result = cli("run", spec, "--n-trials", "1")
    assert result.exit_code == 0, result.output
    assert "6x6" in result.output
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((20, 4, 4), 3.0))
    result = cli("run", write_spec({"dataset": {"name": "array", "path": str(bad)}}))
    assert result.exit_code == 2 and "bad.npy" in result.output


def test_missing_idx_files_are_a_clear_error(cli, write_spec, tmp_path):
    result = cli("run", write_spec(), "--dataset", "fashion-mnist", "--data-dir", tmp_path)
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte" in result.output
    assert not (tmp_path / "study.db").exists()


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"MNIST IDX files not found in {MNIST_DIR} (set VAE_TUNE_MNIST_DIR)",
)
def test_real_mnist_study(cli, write_spec, db_url):
    spec = write_spec(
        {
            "dataset": {
                "name": "mnist",
                "data_dir": str(MNIST_DIR),
                "subset": 500,
                "val_fraction": 0.01,
            },
            "likelihood": {"binarize": "dynamic"},
            "search_space": {"architecture": {"choices": ["conv", "hybrid"]}},
            # the IW-NLL's k=100 decodes would cost 20x the epoch: a small one keeps its path
            "training": {"iw_samples": 4, "iw_examples": 100},
        }
    )
    result = cli("run", spec, "--n-trials", "2", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "500 train / 600 validation images of 28x28" in result.output
    study = optuna.load_study(study_name="tiny", storage=db_url)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_the_digits_are_cached_once_and_then_load_without_scikit_learn(tmp_path, monkeypatch):
    import sys

    from sklearn.datasets import load_digits

    from vae_tune.data.digits import digits_cache_file, load_digits_cached

    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path))
    path = digits_cache_file()
    assert not path.exists()
    first = load_digits_cached()
    assert path.is_file() and path.parent.parent == tmp_path
    truth = load_digits()
    np.testing.assert_array_equal(first.images, truth.images.astype(np.float32) / 16.0)
    np.testing.assert_array_equal(first.labels, truth.target)
    assert first.images.dtype == np.float32 and first.labels.dtype == np.int64
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # importing it now fails
    again = load_digits_cached()
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    path.write_bytes(b"not an npz")  # a damaged cache is loaded afresh and replaced
    monkeypatch.delitem(sys.modules, "sklearn.datasets")
    np.testing.assert_array_equal(load_digits_cached().images, first.images)
    with np.load(path) as arrays:
        assert arrays["labels"].shape == (1797,)


def test_digits_load_where_the_cache_cannot_be_written(tmp_path, monkeypatch):
    from vae_tune.data.digits import load_digits_cached

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VAE_TUNE_CACHE", str(blocker))  # a file, not a folder
    assert load_digits_cached().images.shape == (1797, 8, 8)
