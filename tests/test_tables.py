"""Your own data, not only images: real tables under the Gaussian (standardized on the training
split, in the data's units), counts under the Poisson, negative binomial and ZINB, binary
features under the Bernoulli; every table format; each bad-data case exits 2 naming the file,
the column and the value before anything is written; the image-only architectures refused; and
the vector pictures, seen in a real browser through the report."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from sklearn.datasets import load_digits, load_wine
from support import browse

import vae_tune
from vae_tune.data import load_splits
from vae_tune.training.config import DatasetSpec

CLI = str(Path(sys.executable).with_name("vae-tune"))

SPEC = {
    "study_name": "table",
    "seed": 0,
    "dataset": {"name": "table"},
    "likelihood": {"name": "gaussian"},
    "search_space": {
        "architecture": "mlp",
        "latent_dim": {"low": 2, "high": 6},
        "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "mlp": {"hidden_dim": 32},
    },
    "training": {
        "epochs": 3, "device": "cpu", "threads": 1, "precision": "fp32", "iw_samples": 20,
        "pictures": False,
    },
    "sampler": {"name": "random"},
    "pruner": "none",
    "budget": {"n_trials": 2},
}


def _spec(db: str, dataset: dict, likelihood: str = "gaussian", **changes) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["storage"] = db
    spec["dataset"].update(dataset)
    spec["likelihood"]["name"] = likelihood
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory) -> Path:
    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = frame["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    path = tmp_path_factory.mktemp("data") / "wine.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def counts_npy(tmp_path_factory) -> Path:
    """The 8x8 digits' pixel values: integers 0..16, many zeros (a real count matrix)."""
    path = tmp_path_factory.mktemp("data") / "counts.npy"
    np.save(path, load_digits().data.astype(np.int64))
    return path


@pytest.mark.integration
def test_a_standardized_table_tunes_with_two_workers_and_its_best_retrains_to_its_value(
    tmp_path: Path, wine_csv: Path
):
    db = f"sqlite:///{tmp_path / 't.db'}"
    spec = _spec(db, {"path": str(wine_csv), "labels": "cultivar"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run([CLI, "run", "spec.yaml", "--workers", "2", "--n-trials", "3"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rows of 13 features" in out.stdout and "2 workers" in out.stdout
    study = optuna.load_study(study_name="table", storage=db)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.user_attrs["spec"]["dataset"]["standardize"] is True  # gaussian's default
    best = max(study.trials, key=lambda t: t.value)
    assert best.user_attrs["val_iw_nll"] > 0 or best.user_attrs["val_iw_nll"] < 0
    exported = subprocess.run(
        [CLI, "export-best", "--study-name", "table", "--storage", db, "--output", "best.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    model = vae_tune.train(tmp_path / "best.yaml", output=tmp_path / "run", progress=False)
    assert model.metrics["validation"]["elbo"] == pytest.approx(best.value, abs=1e-3)
    # the standardization is the training split's, kept with the model
    splits = load_splits(DatasetSpec(name="table", path=str(wine_csv), labels="cultivar",
                                     standardize=False), 0)
    raw = splits.train.flatten(1)
    assert torch.allclose(model.likelihood.shift.flatten(), raw.mean(0), rtol=1e-4)
    assert torch.allclose(model.likelihood.spread.flatten(), raw.std(0, unbiased=False),
                          rtol=1e-4)
    # reconstructions come back in the data's own units (proline is in the hundreds)
    rows = pd.read_csv(wine_csv).drop(columns="cultivar").to_numpy(np.float32)[:20]
    recon = model.reconstruct(rows).numpy()
    assert np.corrcoef(rows[:, 12], recon[:, 12])[0, 1] > 0.5
    assert 100 < recon[:, 12].mean() < 2000
    scores = model.evaluate(k=10, gap_examples=0)
    assert scores["frechet_classifier_distance"]["skipped"].startswith("the Fréchet")
    assert np.isfinite(scores["iw_nll"]["nll"])


@pytest.mark.integration
@pytest.mark.parametrize("likelihood", ["poisson", "negative_binomial", "zinb"])
def test_a_count_matrix_tunes_under_each_count_likelihood(
    tmp_path: Path, counts_npy: Path, likelihood: str
):
    result = vae_tune.tune(
        _spec(f"sqlite:///{tmp_path / 'c.db'}", {"path": str(counts_npy)}, likelihood),
        workers=1, progress=False,
    )
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 2
    assert result.spec.dataset.standardize is False
    assert result.best_value < 0 and np.isfinite(result.best_trial.user_attrs["val_iw_nll"])
    model = vae_tune.train(result.best_config, output=tmp_path / "run", progress=False)
    means = model.sample(50)
    assert means.min() >= 0  # count means
    if likelihood != "poisson":  # the learned inverse dispersion, one per feature
        assert model.likelihood.log_theta.shape == (1, 64)


@pytest.mark.integration
def test_a_binary_matrix_tunes_under_the_bernoulli(tmp_path: Path):
    binary = (load_digits().data > 8).astype(np.float32)
    np.savez(tmp_path / "bits.npz", bits=binary, digit=load_digits().target)
    result = vae_tune.tune(
        _spec(f"sqlite:///{tmp_path / 'b.db'}",
              {"path": str(tmp_path / "bits.npz"), "key": "bits", "labels": "digit"},
              "bernoulli"),
        workers=1, progress=False,
    )
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 2


def test_every_table_format_reads_the_same_values(tmp_path: Path, wine_csv: Path):
    import anndata

    frame = pd.read_csv(wine_csv)
    features = [c for c in frame.columns if c != "cultivar"]
    frame.to_parquet(tmp_path / "wine.parquet")
    values = frame[features].to_numpy(np.float32)
    np.save(tmp_path / "wine.npy", values)
    np.savez(tmp_path / "wine.npz", x=values, cultivar=frame["cultivar"].to_numpy(str))
    adata = anndata.AnnData(values, obs=pd.DataFrame({"cultivar": frame["cultivar"].values},
                                                     index=[str(i) for i in range(len(frame))]))
    adata.var_names = features
    adata.write_h5ad(tmp_path / "wine.h5ad")
    loaded = {}
    for name in ("wine.parquet", "wine.npy", "wine.npz", "wine.h5ad"):
        labels = None if name == "wine.npy" else "cultivar"
        spec = DatasetSpec(name="table", path=str(tmp_path / name), labels=labels,
                           standardize=False)
        loaded[name] = load_splits(spec, 0)
    base = load_splits(DatasetSpec(name="table", path=str(wine_csv), labels="cultivar",
                                   standardize=False), 0)
    for name, splits in loaded.items():
        assert torch.equal(splits.train, base.train), name
        if name != "wine.npy":
            assert torch.equal(splits.train_labels, base.train_labels), name
    assert base.features == tuple(features) and base.label_names == (
        "barbera", "barolo", "grignolino")
    picked = load_splits(DatasetSpec(name="table", path=str(wine_csv), columns=["alcohol",
                                     "proline"], standardize=False), 0)
    assert picked.features == ("alcohol", "proline") and picked.image_shape == (1, 2)


BAD_TABLES = [
    ("poisson", "a,b\n1,2\n3,-1\n", {}, "column 'b', data row 2: -1 is not one of the "
     "non-negative integer counts the poisson likelihood models"),
    ("negative_binomial", "a,b\n1,2.5\n", {}, "column 'b', data row 1: 2.5 is not"),
    ("zinb", "a,b\n1,0.5\n", {}, "column 'b', data row 1: 0.5 is not"),
    ("bernoulli", "a,b\n0,1\n1,2\n", {}, "column 'b', data row 2: 2 is not one of the values "
     "in [0, 1]"),
    ("gaussian", "a,b\n0,1\n1,\n", {}, "column 'b', data row 2: nan (NaN or infinite"),
    ("gaussian", "a,b\n0,x\n1,y\n", {}, "column 'b' is not numeric (first value 'x')"),
    ("gaussian", "a,b\n0,1\n", {"columns": ["a", "c"]}, "no column 'c'; columns: a, b"),
    ("gaussian", "a,b\n0,1\n", {"labels": "kind"}, "labels 'kind' is neither a column"),
]


@pytest.mark.parametrize(("likelihood", "text", "extra", "said"), BAD_TABLES)
def test_bad_data_exits_2_naming_the_file_the_column_and_the_value(
    tmp_path: Path, cli, likelihood, text, extra, said
):
    data = tmp_path / "bad.csv"
    data.write_text(text * 1 + "".join(text.splitlines(True)[1:]) * 10)
    db_file = tmp_path / "bad.db"
    spec = _spec(f"sqlite:///{db_file}", {"path": str(data), **extra}, likelihood)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("run", tmp_path / "spec.yaml")
    assert result.exit_code == 2, result.output
    assert str(data) in result.output and said in result.output
    assert not db_file.exists()


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"search_space": {"architecture": {"choices": ["mlp", "conv"]}}},
         "search_space.architecture: conv is an architecture for images"),
        ({"likelihood": {"name": "poisson"}, "dataset": {"standardize": True}},
         "dataset.standardize: standardized features are real-valued"),
        ({"likelihood": {"name": "bernoulli", "binarize": "dynamic"}},
         "likelihood.binarize: binarization is for images"),
        ({"dataset": {"name": "digits", "columns": ["a"]}},
         "dataset.columns: applies to the table dataset only"),
        ({"dataset": {"path": None}}, "dataset.path: the table dataset needs `path`"),
    ],
)
def test_a_spec_that_does_not_fit_a_table_exits_2(tmp_path: Path, cli, counts_npy, changes,
                                                  said):
    spec = _spec(f"sqlite:///{tmp_path / 'x.db'}", {"path": str(counts_npy)})
    for key, value in changes.items():
        spec[key] = {**spec[key], **value}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("run", tmp_path / "spec.yaml")
    assert result.exit_code == 2, result.output
    assert said in result.output
    assert not (tmp_path / "x.db").exists()


@pytest.mark.integration
def test_the_vector_pictures_show_in_the_report_in_a_browser(tmp_path: Path, wine_csv: Path,
                                                             cli):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    spec = _spec(db, {"path": str(wine_csv), "labels": "cultivar"},
                 training={"pictures": True}, budget={"n_trials": 1})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert cli("run", tmp_path / "spec.yaml").exit_code == 0
    report = tmp_path / "report.html"
    assert cli("report", "--study-name", "table", "--storage", db, "--output",
               report).exit_code == 0
    html = report.read_text()
    for name in ("reconstructions.png", "marginals.png", "latent.png"):
        assert f"alt='{name}'" in html
    shot = tmp_path / "report.png"
    browse(report.as_uri(), f"--screenshot={shot}", "--window-size=1300,5200")
    assert shot.stat().st_size > 50_000
    # `vae-tune sample` on a table run draws the same three pictures of its test rows
    best = tmp_path / "best.yaml"
    assert cli("export-best", "--study-name", "table", "--storage", db, "--output",
               best).exit_code == 0
    assert cli("train", best, "--output", tmp_path / "run").exit_code == 0
    drawn = cli("sample", tmp_path / "run", "--out", tmp_path / "pictures")
    assert drawn.exit_code == 0, drawn.output
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "latent.png", "marginals.png", "reconstructions.png"]
    refused = cli("sample", tmp_path / "run", "--traverse")
    assert refused.exit_code == 2 and "for images" in refused.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["image_shape"] == [1, 13]


@pytest.mark.integration
def test_in_memory_rows_tune_as_a_table(tmp_path: Path):
    wine = load_wine()
    result = vae_tune.tune(
        {**{k: v for k, v in SPEC.items() if k != "dataset"}, "study_name": "rows"},
        data=wine.data, labels=wine.target, storage=f"sqlite:///{tmp_path / 'r.db'}",
        n_trials=1, workers=1, progress=False,
    )
    assert result.spec.dataset.name == "table" and result.spec.dataset.standardize is True
    assert result.study.trials[0].state.name == "COMPLETE"
    config = {"model": {"architecture": "mlp", "latent_dim": 3, "hidden_dim": 16}, "epochs": 2,
              "likelihood": {"name": "gaussian"}, "iw_samples": 0}
    model = vae_tune.train(config, data=wine.data[:150], labels=wine.target[:150],
                           output=tmp_path / "run", progress=False)
    assert model.config.dataset.name == "table" and model.metrics["image_shape"] == [1, 13]
    assert model.reconstruct(wine.data[:3]).shape == (3, 13)  # rows of features
