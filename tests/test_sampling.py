"""`vae-tune sample`: labelled grids of the right size for every architecture, likelihood and
image shape, the same bytes for the same seed, and a refused model file exits 2."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

TRAVERSAL_POINTS, INTERPOLATION_COLS = 11, 10  # -3..+3 in 11 steps; image, 8 points, image


def train_run(cli, folder: Path, architecture: str, likelihood: dict, dataset: dict) -> Path:
    knobs = {
        "mlp": {"hidden_dim": 32},
        "conv": {"channels": 4, "depth": 2},
        "rnn": {"hidden_size": 16},
        "hybrid": {"channels": 4, "depth": 1, "hidden_size": 16},
    }[architecture]
    config = {
        "dataset": dataset,
        "model": {"architecture": architecture, "latent_dim": 3, **knobs},
        "likelihood": likelihood,
        "epochs": 1,
        "batch_size": 32,
        "device": "cpu",
        "threads": 1,
        "precision": "fp32",  # pictures, not arithmetic: no per-architecture bf16 probe
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    out = folder / "run"
    result = cli("train", folder / "run.yaml", "--output", out)
    assert result.exit_code == 0, result.output
    return out


def mnist_shaped(folder: Path) -> dict:
    """60 random 28x28 images with labels: MNIST's shape without MNIST's size."""
    rng = np.random.default_rng(0)
    images = (rng.random((60, 28, 28)) < 0.2).astype(np.uint8) * 255
    np.savez(folder / "x.npz", images=images, labels=rng.integers(0, 10, 60))
    return {"name": "array", "path": str(folder / "x.npz"), "key": "images", "labels_key": "labels"}


def layout(path: Path) -> list[dict]:
    return json.loads(Image.open(path).text["layout"])


def assert_grids(path: Path, image: tuple[int, int]) -> list[dict]:
    """Every grid the PNG says it holds is there: its box has the size of rows x cols cells of
    `image` size, white gap lines fall exactly between the cells, the cells are not blank."""
    pixels = np.asarray(Image.open(path))
    blocks = layout(path)
    for b in blocks:
        h, w = image
        assert b["image"] == [h, w]
        s, rows, cols = b["scale"], b["rows"], b["cols"]
        x0, y0, x1, y1 = b["box"]
        assert (x1 - x0, y1 - y0) == ((cols * (w + 1) + 1) * s, (rows * (h + 1) + 1) * s)
        grid = pixels[y0:y1, x0:x1]
        assert grid.shape == (y1 - y0, x1 - x0)  # inside the picture
        for r in range(rows + 1):
            assert (grid[r * (h + 1) * s : r * (h + 1) * s + s] == 255).all()
        for c in range(cols + 1):
            assert (grid[:, c * (w + 1) * s : c * (w + 1) * s + s] == 255).all()
        cells = grid[s : s + h * s, s : s + w * s]
        assert (cells < 255).any()
    return blocks


CASES = [
    ("mlp", {"name": "bernoulli"}),
    ("conv", {"name": "gaussian", "scale": "learned"}),
    ("rnn", {"name": "continuous_bernoulli"}),
    ("hybrid", {"name": "bernoulli", "binarize": "dynamic"}),
]


@pytest.mark.integration
@pytest.mark.parametrize("shape", ["digits-8x8", "mnist-28x28"])
@pytest.mark.parametrize(("architecture", "likelihood"), CASES, ids=[c[0] for c in CASES])
def test_every_picture_has_the_right_grid(cli, tmp_path, architecture, likelihood, shape):
    if shape == "digits-8x8":
        dataset, image = {"name": "digits", "subset": 120}, (8, 8)
    else:
        dataset, image = mnist_shaped(tmp_path), (28, 28)
    run = train_run(cli, tmp_path, architecture, likelihood, dataset)
    result = cli("sample", run, "--n", "10", "--reconstruct", "--interpolate", "--traverse")
    assert result.exit_code == 0, result.output
    pictures = run / "pictures"
    names = ["samples", "reconstructions", "interpolations", "traversals"]
    assert result.output.split() == [str(pictures / f"{n}.png") for n in names]
    samples = assert_grids(pictures / "samples.png", image)
    assert [(b["rows"], b["cols"]) for b in samples] == [(3, 4)]  # 10 samples, 4 a row
    recon = assert_grids(pictures / "reconstructions.png", image)
    assert [(b["rows"], b["cols"]) for b in recon] == [(4, 8)]  # 16 pairs
    paths = assert_grids(pictures / "interpolations.png", image)
    assert [(b["title"], b["rows"], b["cols"]) for b in paths] == [
        ("linear interpolation", 5, INTERPOLATION_COLS),
        ("spherical interpolation", 5, INTERPOLATION_COLS),
    ]
    (walk,) = assert_grids(pictures / "traversals.png", image)
    assert (walk["rows"], walk["cols"]) == (3, TRAVERSAL_POINTS)  # one row per latent dim
    kls = [float(label.split()[2]) for label in walk["row_labels"]]
    assert kls == sorted(kls, reverse=True)
    caption = Image.open(pictures / "traversals.png").text["caption"]
    assert f"run {run}" in caption and "seed 0" in caption


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from typer.testing import CliRunner

    from vae_tune.cli import app

    runner = CliRunner()
    folder = tmp_path_factory.mktemp("digits")
    return train_run(
        lambda *a: runner.invoke(app, [str(x) for x in a]),
        folder,
        "mlp",
        {"name": "bernoulli"},
        {"name": "digits", "subset": 200},
    )


def test_the_same_seed_gives_the_same_files(cli, digits_run, tmp_path):
    flags = ["--reconstruct", "--interpolate", "--traverse"]
    for out, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        result = cli("sample", digits_run, *flags, "--seed", seed, "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
    for name in ("samples", "reconstructions", "interpolations", "traversals"):
        a, b, c = ((tmp_path / d / f"{name}.png").read_bytes() for d in "abc")
        assert a == b and a != c, name
    caption = Image.open(tmp_path / "c" / "samples.png").text["caption"]
    assert "seed 4" in caption and "64 samples" in caption


def test_temperature_scales_the_prior_noise(cli, digits_run, tmp_path):
    for out, t in [("cold", "0"), ("warm", "1")]:
        assert cli("sample", digits_run, "--temperature", t, "--out", tmp_path / out).exit_code == 0
    cold = np.asarray(Image.open(tmp_path / "cold" / "samples.png"))
    warm = np.asarray(Image.open(tmp_path / "warm" / "samples.png"))
    (box,) = layout(tmp_path / "cold" / "samples.png")
    s, (h, w) = box["scale"], box["image"]
    x0, y0 = box["box"][:2]

    def cells(pixels):
        return [
            pixels[y0 + s + r * (h + 1) * s, x0 + s : x0 + s + w * s].tobytes()
            for r in range(box["rows"])
        ]

    assert len(set(cells(cold))) == 1 and len(set(cells(warm))) > 1  # T = 0: all decode z = 0


def test_a_tampered_model_is_refused_with_exit_2(cli, digits_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    torch.save({"format": "vae-tune model", "x": Path("evil")}, run / "model.pt")
    plain = tmp_path / "plain"
    shutil.copytree(digits_run, plain)
    (plain / "model.pt").write_bytes(pickle.dumps(Path("evil"), protocol=4))
    for command, where in [("sample", run), ("evaluate", run), ("sample", plain)]:
        result = cli(command, where)
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert "model.pt" in line and "refused" in line
        assert not (where / "pictures").exists()


def test_a_missing_run_is_one_line(cli, tmp_path):
    result = cli("sample", tmp_path / "nowhere")
    assert result.exit_code == 2 and "not a run directory" in result.output


@pytest.mark.integration
def test_a_run_whose_data_moved_is_pointed_at_it_with_data_dir(cli, tmp_path):
    from test_dataset_files import write_family

    write_family(tmp_path / "here", compress=True, n=(40, 12))
    dataset = {"name": "mnist", "data_dir": str(tmp_path / "here"), "val_fraction": 0.2}
    run = train_run(cli, tmp_path, "mlp", {"name": "bernoulli"}, dataset)
    (tmp_path / "here").rename(tmp_path / "there")
    lost = cli("sample", run, "--reconstruct")
    assert lost.exit_code == 2 and str(tmp_path / "here") in lost.output
    found = cli("sample", run, "--reconstruct", "--data-dir", tmp_path / "there")
    assert found.exit_code == 0, found.output
    assert (run / "pictures" / "reconstructions.png").is_file()
    again = cli(
        "evaluate", run, "--k", "3", "--gap-examples", "0", "--data-dir", tmp_path / "there"
    )
    assert again.exit_code == 0, again.output


def test_traversals_around_zero_say_so(cli, digits_run, tmp_path):
    result = cli("sample", digits_run, "--traverse", "--traverse-around", "zero", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "around zero" in Image.open(tmp_path / "traversals.png").text["caption"]
    default = cli("sample", digits_run, "--traverse", "--out", tmp_path / "image")
    assert default.exit_code == 0
    caption = Image.open(tmp_path / "image" / "traversals.png").text["caption"]
    assert "around the posterior mean of a test image" in caption
