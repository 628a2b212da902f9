"""Warm starts: known configs run first and once, also with several workers; a config outside
the spec's space is skipped with the parameter and the reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml


def _params(db_url: str, name: str) -> list[dict]:
    study = optuna.load_study(study_name=name, storage=db_url)
    return [t.params for t in sorted(study.trials, key=lambda t: t.number)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        abs(a[k] - b[k]) < 1e-12 if isinstance(a[k], float) else a[k] == b[k] for k in a
    )


@pytest.mark.integration
def test_known_configs_run_first_and_once(cli, write_spec, db_url, tmp_path: Path):
    assert cli("run", write_spec({"budget": {"n_trials": 3}})).exit_code == 0
    best = tmp_path / "best.yaml"
    assert cli("export-best", "--study-name", "tiny", "--storage", db_url, "--output", best)
    outside = yaml.safe_load(best.read_text())
    outside["beta"] = 8.0  # this spec searches beta in [0.5, 2.0]
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(outside))
    source = _params(db_url, "tiny")
    ranked = optuna.load_study(study_name="tiny", storage=db_url).trials
    top2 = sorted(ranked, key=lambda t: t.value, reverse=True)[:2]

    # no baseline here: its point (the defaults) is the source study's first trial too
    warm_spec = {"study_name": "warm", "budget": {"n_trials": 4}, "sampler": {"baseline": False}}
    second = write_spec(warm_spec, "warm.yaml")
    args = ["run", second, "--warm-start", "tiny:2", "--enqueue", tmp_path / "outside.yaml"]
    result = cli(*args, "--enqueue", best)
    assert result.exit_code == 0, result.output
    assert "skipped outside.yaml" not in result.output  # the line names the file by its path
    assert f"skipped {tmp_path / 'outside.yaml'}: beta = 8.0 is outside [0.5, 2.0]" in (
        result.output
    )
    assert "is already in the study; not queued again" in result.output  # best = top 1
    warm = _params(db_url, "warm")
    assert len(warm) == 4
    assert _same(warm[0], top2[0].params) and _same(warm[1], top2[1].params)
    # sampled, and seeded by study name too: the source study's points are not redrawn
    assert not any(_same(p, s) for p in warm[2:] for s in source)
    assert all(any(_same(p, s) for s in source) for p in warm[:2])

    # again, with two worker processes: the known points are in the study, so none reruns
    result = cli(*args, "--enqueue", best, "--workers", "2", "--n-trials", "2")
    assert result.exit_code == 0, result.output
    warm = _params(db_url, "warm")
    assert len(warm) == 6
    # the sampler's draws are seeded by study name too: they do not redraw the source's points
    assert len({tuple(sorted(p.items())) for p in warm}) == 6
    for known in top2:
        assert sum(_same(p, known.params) for p in warm) == 1


def test_bad_warm_start_inputs_exit_2_and_write_nothing(cli, write_spec, db_url, tmp_path):
    spec = write_spec()
    missing = cli("run", spec, "--enqueue", tmp_path / "nope.yaml")
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: -1\nmodel: {architecture: mlp}\n")
    result = cli("run", spec, "--enqueue", bad)
    assert result.exit_code == 2 and "bad.yaml" in result.output and "beta" in result.output
    other = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="nosuck", storage=other)
    result = cli("run", spec, "--warm-start", "nosuch:3", "--warm-start-storage", other)
    assert result.exit_code == 2 and "no study named 'nosuch'" in result.output
    assert "did you mean 'nosuck'" in result.output
    assert not (tmp_path / "study.db").exists()
