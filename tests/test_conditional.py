"""The conditional VAE (`conditional: true`): every architecture reads the one-hot label in
q(z|x, y) and p(x|z, y); samples drawn for a class look like that class to a classifier that
never saw the model; the trainer, evaluate, sample, the study and export-best -> train carry
the labels; a dataset without labels is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image
from sklearn.linear_model import LogisticRegression
from support import train_run_dir

from vae_tune.data import load_splits
from vae_tune.models import build_model
from vae_tune.reporting.notes import note_markdown
from vae_tune.training.config import DatasetSpec, RunConfig
from vae_tune.training.trainer import train
from vae_tune.tuning.record import read

KNOBS = {
    "mlp": {"hidden_dim": 16},
    "conv": {"channels": 4, "depth": 1},
    "rnn": {"hidden_size": 8},
    "hybrid": {"channels": 4, "depth": 1, "hidden_size": 8},
    "hierarchical": {"hidden_dim": 16, "z2_dim": 2, "z2_hidden_dim": 8, "depth": 1},
}
DIGITS = DatasetSpec(name="digits")
CONDITIONAL_MLP = {"architecture": "mlp", "latent_dim": 4, "hidden_dim": 64, "conditional": True}


@pytest.mark.parametrize("architecture", sorted(KNOBS))
def test_every_architecture_reads_the_label(architecture: str):
    torch.manual_seed(0)
    config = {"architecture": architecture, "latent_dim": 3, **KNOBS[architecture]}
    model = build_model({**config, "conditional": True}, (8, 8), 10).eval()
    x, y = torch.rand(6, 8, 8), torch.arange(6)
    # the label heads start at zero: q(z|x, y) starts as the unconditional encoder's q(z|x)
    assert all(
        torch.equal(a, b) for a, b in zip(model.encode(x, y), model.encode_images(x), strict=True)
    )
    z = torch.randn(6, 3)
    assert not torch.allclose(model.decode(z, y), model.decode(z, (y + 1) % 10))
    out = model(x, torch.Generator().manual_seed(0), 2, y)  # 2 samples: labels tiled
    assert out.logits.shape == (12, 8, 8)
    with pytest.raises(ValueError, match="needs the class labels"):
        model(x)
    with pytest.raises(ValueError, match="class labels"):
        build_model({**config, "conditional": True}, (8, 8), 0)
    plain = build_model(config, (8, 8), 10)
    assert not plain.conditional and not hasattr(plain, "label_heads")


@pytest.fixture(scope="module")
def trained():
    config = RunConfig(
        dataset=DIGITS,
        model=CONDITIONAL_MLP,
        epochs=40,
        batch_size=32,
        lr=3e-3,
        device="cpu",
        threads=1,
    )
    splits = load_splits(config.dataset, config.data_seed)
    return config, splits, train(config, splits)


@pytest.fixture(scope="module")
def classifier(trained):
    """A classifier of the digits that never saw a VAE (98% test accuracy)."""
    _, splits, _ = trained
    fit = LogisticRegression(max_iter=2000)
    return fit.fit(splits.train.flatten(1).numpy(), splits.train_labels.numpy())


@pytest.mark.integration
def test_samples_drawn_for_a_class_are_that_class(trained, classifier):
    _, _, run = trained
    model, gen = run.model.eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for c in range(10):
            images = torch.sigmoid(model.decode(model.sample_prior(50, gen), torch.full((50,), c)))
            said = classifier.predict(images.flatten(1).numpy())
            assert (said == c).mean() >= 0.8, (c, np.bincount(said, minlength=10))


@pytest.mark.integration
def test_the_label_is_information_the_elbo_uses(trained):
    """Given y, the model needs fewer nats for x: its ELBO of log p(x|y) beats an unconditional
    twin's ELBO of log p(x), and the validation labels do matter (shuffled ones score worse)."""
    config, splits, run = trained
    plain = train(config.model_copy(update={"model": {**CONDITIONAL_MLP, "conditional": False}}))
    assert run.final.val.elbo > plain.final.val.elbo + 1.0

    from vae_tune.training.trainer import eval_targets, evaluate

    x_val = eval_targets(config, splits.val, 1)
    right = evaluate(run.model, run.likelihood, x_val, 1024, 0, splits.val_labels)
    wrong = evaluate(run.model, run.likelihood, x_val, 1024, 0, (splits.val_labels + 1) % 10)
    assert right.elbo == pytest.approx(run.final.val.elbo, abs=1.0)
    assert right.elbo > wrong.elbo + 5.0


def _cells(path: Path) -> tuple[list[np.ndarray], dict]:
    """The images of a one-block grid PNG, read back at their own size from its layout."""
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255
    (box,) = json.loads(Image.open(path).text["layout"])
    s, (h, w), (x0, y0) = box["scale"], box["image"], box["box"][:2]
    cells = []
    for r in range(box["rows"]):
        for c in range(box["cols"]):
            top, left = y0 + s + r * (h + 1) * s, x0 + s + c * (w + 1) * s
            cells.append(pixels[top : top + h * s : s, left : left + w * s : s])
    return cells, box


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditional")
    return train_run_dir(folder, model=CONDITIONAL_MLP, epochs=40, batch_size=32)


@pytest.mark.integration
def test_sample_label_draws_that_class(cli, conditional_run, classifier, tmp_path):
    result = cli("sample", conditional_run, "--label", "3", "--n", "30", "--out", tmp_path / "3")
    assert result.exit_code == 0, result.output
    picture = tmp_path / "3" / "samples.png"
    assert "given the label y = 3" in Image.open(picture).text["caption"]
    cells, _ = _cells(picture)
    said = classifier.predict(np.stack(cells[:30]).reshape(30, -1))
    assert (said == 3).mean() >= 0.8, np.bincount(said, minlength=10)

    # without --label: one row per class, labelled
    assert cli("sample", conditional_run, "--n", "50", "--out", tmp_path / "all").exit_code == 0
    cells, box = _cells(tmp_path / "all" / "samples.png")
    assert box["row_labels"] == [f"y = {c}" for c in range(10)] and box["cols"] == 5
    said = classifier.predict(np.stack(cells).reshape(len(cells), -1))
    assert (said == np.repeat(np.arange(10), 5)).mean() >= 0.8


def test_the_other_pictures_of_a_conditional_model(cli, conditional_run, tmp_path):
    flags = ["--reconstruct", "--interpolate", "--traverse", "--out", tmp_path]
    result = cli("sample", conditional_run, *flags)
    assert result.exit_code == 0, result.output
    caption = Image.open(tmp_path / "interpolations.png").text["caption"]
    assert "of one class" in caption and "decoded with their label" in caption
    assert "label y =" in Image.open(tmp_path / "traversals.png").text["caption"]


def test_a_label_the_model_cannot_draw_exits_2(cli, conditional_run, tmp_path):
    result = cli("sample", conditional_run, "--label", "10", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--label: 10 is not a class of this model" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_label_on_an_unconditional_model_exits_2(cli, tmp_path):
    config = {"dataset": {"name": "digits", "subset": 100}, "epochs": 1, "device": "cpu"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert cli("train", tmp_path / "run.yaml", "--output", tmp_path / "run").exit_code == 0
    result = cli("sample", tmp_path / "run", "--label", "3")
    assert result.exit_code == 2 and "--label: 3 asked for, but" in result.output
    assert "not conditional" in result.output


@pytest.mark.integration
def test_evaluate_gives_both_likelihoods_and_the_label_accuracy(cli, conditional_run):
    result = cli("evaluate", conditional_run, "--k", "50", "--gap-examples", "10")
    assert result.exit_code == 0, result.output
    assert "-log p(x|y) (y: each image's label) bound" in result.output
    assert "test IW-NLL of p(x)" in result.output and "label accuracy of samples" in result.output
    block = json.loads((conditional_run / "metrics.json").read_text())["evaluation"]
    given_y, marginal = block["iw_nll"]["nll"], block["conditional"]["iw_nll_marginal"]
    assert block["conditional"]["classes"] == 10 and marginal["k_per_class"] == 5
    # log p(x) >= log p(y) + log p(x|y): -log p(x) is at most log(10)-ish above -log p(x|y)
    # (plus the looser bound of 5 samples per class), and no better than it by much
    assert given_y - 1.0 < marginal["nll"] < given_y + np.log(10) + 2.0
    assert block["frechet_classifier_distance"]["label_accuracy"] >= 0.8


def test_a_dataset_without_labels_is_refused_before_anything_is_written(
    cli, write_spec, db_url, tmp_path
):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 8, 8)).astype(np.float32))
    dataset = {"name": "array", "path": str(tmp_path / "x.npy")}
    spec = write_spec(
        {"dataset": dataset, "search_space": {"conditional": {"choices": [False, True]}}}
    )
    result = cli("run", spec)
    assert result.exit_code == 2
    assert "search_space.conditional: dataset 'array' has no class labels" in result.output
    assert not Path(db_url.removeprefix("sqlite:///")).exists()

    config = {"dataset": dataset, "model": CONDITIONAL_MLP, "device": "cpu"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = cli("train", tmp_path / "run.yaml", "--output", tmp_path / "run")
    assert result.exit_code == 2 and "model.conditional: dataset 'array' has no" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_a_study_searches_conditioning_and_export_best_retrains_it(
    cli, write_spec, db_url, tmp_path
):
    spec = write_spec(
        {
            "sampler": {"name": "random", "baseline": False},  # all four drawn
            "budget": {"n_trials": 4},
            "training": {"iw_samples": 5, "iw_examples": 50},
            "search_space": {"conditional": {"choices": [False, True]}},
        }
    )
    result = cli("run", spec)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=db_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    seen = {t.params["conditional"] for t in done}
    assert seen == {False, True}, seen
    for t in done:
        assert ("conditional_classes" in t.user_attrs) == t.params["conditional"]
        note = note_markdown(t.number, "complete", read(t))
        assert ("the ELBO bounds log p(x\\|y)" in note) == t.params["conditional"]
        assert t.user_attrs["config"]["model"]["conditional"] == t.params["conditional"]
    best = next(t for t in done if t.params["conditional"])
    out = tmp_path / "best.yaml"
    exported = cli(
        "export-best",
        "--study-name",
        "tiny",
        "--storage",
        db_url,
        "--trial",
        best.number,
        "--output",
        out,
    )
    assert exported.exit_code == 0, exported.output
    assert yaml.safe_load(out.read_text())["model"]["conditional"] is True
    retrained = cli("train", out)
    assert retrained.exit_code == 0, retrained.output
    last_epoch = [ln for ln in retrained.output.splitlines() if ln.startswith("epoch")][-1]
    value = float(last_epoch.split("validation ELBO")[1].split()[0])
    assert value == pytest.approx(best.value, abs=0.01)
