"""docker-compose.yml against the code: every command parses with the real CLI, every variable
is one the code (or the postgres image) reads, and no password is baked in anywhere.

No Docker engine is needed; `docker compose config` also validates the files where the compose
plugin is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from vae_tune.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.gpu.yml"]
# what the official postgres image reads (https://hub.docker.com/_/postgres)
POSTGRES_IMAGE_VARS = {
    "POSTGRES_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR",
    "POSTGRES_HOST_AUTH_METHOD",
    "PGDATA",
}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _group() -> Any:
    """The click group typer builds from the app (typer vendors click in recent versions)."""
    return typer.main.get_command(app)


def code_env_vars() -> set[str]:
    """Environment variables vae-tune reads: typer `envvar=` options and os.environ look-ups."""
    found: set[str] = set()
    for command in _group().commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if envvar:
                found.update([envvar] if isinstance(envvar, str) else envvar)
    pattern = re.compile(r"os\.environ(?:\.get\(|\[)\s*['\"]([A-Z0-9_]+)['\"]")
    for path in (ROOT / "vae_tune").rglob("*.py"):
        found.update(pattern.findall(path.read_text()))
    return found


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with no variables set: defaults, placeholders."""

    def sub(m: re.Match) -> str:
        return m.group(3) if m.group(2) in (":-", "-") else "placeholder"

    return VAR.sub(sub, value)


def _services() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (file, name, service)
        for file in COMPOSE_FILES
        for name, service in _load(file)["services"].items()
    ]


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def test_compose_has_the_three_services_wired_together():
    compose = _load("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]  # a named volume, not a bind mount
    for name in ("worker", "dashboard"):
        s = services[name]
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert s["build"] == "." and (ROOT / "Dockerfile").exists()
        assert "artifacts:/artifacts" in s["volumes"] and "artifacts" in compose["volumes"]
        assert s["environment"]["VAE_TUNE_ARTIFACTS"] == "/artifacts"
        assert "@postgres:5432/" in s["environment"]["VAE_TUNE_STORAGE"]
    worker = services["worker"]
    # `--scale worker=4` needs no fixed container name and no fixed host port
    assert "container_name" not in worker and "ports" not in worker
    assert _command(worker)[:2] == ["vae-tune", "worker"]
    dashboard = services["dashboard"]
    assert _command(dashboard)[:2] == ["vae-tune", "dashboard"]
    assert any(str(p).endswith(":8080") for p in dashboard["ports"])
    gpu = _load("docker-compose.gpu.yml")["services"]["worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize(("file", "name", "service"), _services(), ids=lambda v: str(v)[:20])
def test_every_service_command_parses_with_the_real_cli(file, name, service):
    if "command" not in service:
        assert "image" in service and not service["image"].startswith("vae-tune")
        return
    argv = [_interpolate(a) for a in _command(service)]
    assert argv[0] == "vae-tune", f"{file}:{name}"
    command = _group().commands[argv[1]]
    # strict parsing: unknown options, missing values and bad types all raise here
    ctx = command.make_context(f"vae-tune {argv[1]}", argv[2:])
    if argv[1] == "dashboard":
        assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 8080
    if argv[1] == "worker":
        assert ctx.params["study_name"] and ctx.params["spec"]


def test_every_variable_is_read_by_the_code_or_the_postgres_image():
    ours = code_env_vars()
    assert {"VAE_TUNE_STORAGE", "VAE_TUNE_ARTIFACTS", "VAE_TUNE_STUDY_NAME"} <= ours
    for file in COMPOSE_FILES:
        text = (ROOT / file).read_text()
        for var in VAR.findall(text):
            assert var[0] in ours | POSTGRES_IMAGE_VARS, f"{file}: ${{{var[0]}}} is read by nothing"
        for name, service in _load(file)["services"].items():
            env = service.get("environment") or {}
            known = POSTGRES_IMAGE_VARS if name == "postgres" else ours
            for key in env:
                assert key in known, f"{file}: {name} sets {key}, which nothing reads"
    example = (ROOT / ".env.example").read_text()
    for line in example.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split("=")[0] in ours | POSTGRES_IMAGE_VARS, line


def test_no_password_is_baked_in():
    compose = _load("docker-compose.yml")
    pg_env = compose["services"]["postgres"]["environment"]
    # required from .env / the environment: no default to fall back to
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", pg_env["POSTGRES_PASSWORD"])
    url = compose["services"]["worker"]["environment"]["VAE_TUNE_STORAGE"]
    assert ":${POSTGRES_PASSWORD:?" in url
    credentials = re.compile(r"://[^/\s:@]+:[^@\s$]+@")  # user:secret@ with a literal secret
    for path in ("Dockerfile", ".dockerignore", *COMPOSE_FILES, ".env.example"):
        for line in (ROOT / path).read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            assert not credentials.search(line), f"{path}: {line}"
            if path in ("Dockerfile", ".dockerignore"):
                assert "PASSWORD" not in line.upper(), f"{path}: {line}"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert ".[postgres]" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), line


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose plugin here (the checks above do not need it)",
)
def test_docker_compose_config_accepts_the_files():
    env = {"POSTGRES_PASSWORD": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", f)]
        out = subprocess.run(
            ["docker", "compose", *args, "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
