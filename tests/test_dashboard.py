"""`vae-tune dashboard` serves optuna-dashboard on the same storage (real HTTP, real process)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_lists_the_study(db_url):
    optuna.create_study(study_name="shown", storage=db_url, direction="maximize")
    port = _free_port()
    cli = Path(sys.executable).with_name("vae-tune")
    proc = subprocess.Popen(
        [str(cli), "dashboard", "--storage", db_url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        assert body is not None, "dashboard did not answer within 60 s"
        assert [s["study_name"] for s in body["study_summaries"]] == ["shown"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
