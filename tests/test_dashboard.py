"""`vae-tune dashboard` serves optuna-dashboard on the same storage (real HTTP, real process)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from support import browse, free_port, get_json, wait_for

pytestmark = pytest.mark.integration  # processes, servers, browsers or whole tutorials


def _serve(db_url: str, *options: str):
    port = free_port()
    cli = Path(sys.executable).with_name("vae-tune")
    proc = subprocess.Popen(
        [str(cli), "dashboard", "--storage", db_url, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def _get_json(proc, url: str):
    body = get_json(url, timeout=60, alive=lambda: proc.poll() is None)
    assert body is not None, f"no answer from {url} within 60 s"
    return body


def test_dashboard_api_lists_each_trials_pictures(cli, write_spec, db_url):
    assert cli("run", write_spec({"budget": {"n_trials": 1}})).exit_code == 0
    study_id = optuna.load_study(study_name="tiny", storage=db_url)._study_id
    proc, base = _serve(db_url)
    try:
        detail = _get_json(proc, f"{base}/api/studies/{study_id}?after=0")
        artifacts = detail["trials"][0]["artifacts"]
        assert sorted(a["filename"] for a in artifacts) == ["reconstructions.png", "samples.png"]
        art = artifacts[0]
        url = f"{base}/artifacts/{study_id}/{detail['trials'][0]['trial_id']}/{art['artifact_id']}"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_lists_the_study(db_url):
    optuna.create_study(study_name="shown", storage=db_url, direction="maximize")
    proc, base = _serve(db_url)
    try:
        body = _get_json(proc, f"{base}/api/studies")
        assert [s["study_name"] for s in body["study_summaries"]] == ["shown"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_shows_each_trials_note_and_the_vae_figures(
    cli, write_spec, db_url, tmp_path: Path
):
    spec = write_spec({"budget": {"n_trials": 3}})
    assert cli("run", spec).exit_code == 0
    study_id = optuna.load_study(study_name="tiny", storage=db_url)._study_id
    proc, base = _serve(db_url)
    try:
        detail = _get_json(proc, f"{base}/api/studies/{study_id}?after=0")
        for trial in detail["trials"]:
            body = trial["note"]["body"]
            assert f"## Trial {trial['number']}: complete" in body
            assert "| active units |" in body and "| rate: KL(q(z\\|x) ‖ p(z)) |" in body
            rows = [line for line in body.splitlines() if line.startswith("| ")]
            assert all(line.replace("\\|", "").count("|") == 3 for line in rows)  # 2 cells
            elbo = float(body.split("| validation ELBO (beta = 1) | ")[1].split()[0])
            assert abs(elbo - trial["values"][0]) < 1e-3  # the note agrees with the value
        figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
        assert set(figures) == {"rate-distortion", "collapse"}
        points = [t for t in figures["rate-distortion"]["data"] if t.get("mode") == "markers"]
        assert sum(len(t["x"]) for t in points) == 3  # every finished trial is on the plane
        shot = tmp_path / "dashboard.png"
        browse(
            f"{base}/dashboard/studies/{study_id}",
            f"--screenshot={shot}",
            "--window-size=1400,2200",
        )
        assert shot.stat().st_size > 30_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_dashboard_notes_and_draws_trials_that_finish_while_it_runs(cli, write_spec, db_url):
    spec = write_spec({"budget": {"n_trials": 1}})
    assert cli("run", spec).exit_code == 0
    study_id = optuna.load_study(study_name="tiny", storage=db_url)._study_id
    proc, base = _serve(db_url, "--refresh", "1")
    url = f"{base}/api/studies/{study_id}?after=0"
    try:
        assert [bool(t["note"]["body"]) for t in _get_json(proc, url)["trials"]] == [True]
        assert cli("run", spec).exit_code == 0  # one more trial, written while it serves

        def drawn():
            detail = _get_json(proc, url)
            notes = [t["note"]["body"] for t in detail["trials"]]
            figures = {
                g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]
            }
            rd = [t for t in figures["rate-distortion"]["data"] if t.get("mode") == "markers"]
            return len(notes) == 2 and all(notes) and sum(len(t["x"]) for t in rd) == 2

        wait_for(drawn, timeout=60, message="the new trial's note and point")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
