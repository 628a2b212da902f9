"""The documentation's examples run as written: each page's code blocks, in order, in a
fresh folder. A block with a title (```python title="myvae.py"```) is written as that file;
an untitled Python block runs as a script; a bash block runs each of its lines; a YAML block
with a title is written as that file. Other blocks (```text, ```py) are shown, not run.

A `vae-tune` line without shell syntax runs its arguments through the CLI in this process
(what the console script calls), in the page's folder and environment: the same command
without the start-up of a Python process with torch (1-2 s a line). Its workers are real
processes, and the console script itself is what the worker tests start. Other lines run in
bash.

The tutorials run here too, as their readers run them; the MNIST tutorial gets a small
stand-in of the MNIST files (same IDX format, random images) in `mnist-data/`, so its commands
are checked without the download."""

from __future__ import annotations

import gzip
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from traceback import format_exception

import pytest
from typer.testing import CliRunner

from vae_tune.cli import app

pytestmark = pytest.mark.integration  # processes, servers, browsers or whole tutorials

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
TUTORIALS = (
    "tutorials/quickstart.md",
    "tutorials/mnist.md",
    "tutorials/many-workers.md",
    "tutorials/cluster.md",
)
# the pages whose examples CI runs
EXECUTED = (*TUTORIALS, "byo-vae.md", "python-api.md", "own-data.md")


def write_mnist_stand_in(folder: Path, train: int = 300, test: int = 60) -> None:
    """The four MNIST files (gzipped IDX) with random 28x28 images and labels 0-9."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
            header += struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(header + arr.tobytes()))


STAND_INS = {"tutorials/mnist.md": lambda folder: write_mnist_stand_in(folder / "mnist-data")}


def blocks(page: Path) -> list[tuple[str, str | None, str]]:
    """(language, title or None, code) of each fenced block of a page, in order."""
    found = []
    for lang, info, code in BLOCK.findall(page.read_text()):
        title = re.search(r'title="([^"]+)"', info)
        found.append((lang, title.group(1) if title else None, code))
    return found


SHELL = re.compile(r"[|&;<>$`*?~(){}\\]|^\w+=")  # pipes, redirects, globs, variables...


def run_cli_line(line: str, env: dict[str, str]) -> str:
    """A plain `vae-tune ...` line through the CLI in this process, with `env` (the working
    folder is the page's: the test changed to it)."""
    changes: dict[str, str | None] = {k: v for k, v in env.items() if os.environ.get(k) != v}
    changes.update({k: None for k in os.environ if k not in env})
    result = CliRunner().invoke(app, shlex.split(line)[1:], env=changes)
    error = result.exception
    detail = "" if error is None or isinstance(error, SystemExit) else "".join(
        format_exception(*result.exc_info)
    )
    assert result.exit_code == 0, f"{line}\n{result.output}{detail}"
    return result.output


def run_page(page: Path, folder: Path) -> list[str]:
    """Run a page's blocks in `folder` (the working folder); returns what each run printed."""
    env = {k: v for k, v in os.environ.items() if k != "VAE_TUNE_WORKERS"}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    printed = []
    for i, (lang, title, code) in enumerate(blocks(page)):
        if title is not None:
            (folder / title).write_text(code)
            continue
        if lang == "python":
            script = folder / f"block_{i}.py"
            script.write_text(code)
            commands: list[list[str] | str] = [[sys.executable, script.name]]
        elif lang == "bash":
            commands = [line for line in code.splitlines() if line.strip()]
        else:
            continue
        for cmd in commands:
            if isinstance(cmd, str) and cmd.startswith("vae-tune ") and not SHELL.search(cmd):
                printed.append(run_cli_line(cmd, env))
                continue
            if isinstance(cmd, str):
                cmd = ["bash", "-c", cmd]
            out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env,
                                 timeout=900)
            assert out.returncode == 0, f"{page.name} block {i}: {cmd}\n{out.stdout}{out.stderr}"
            printed.append(out.stdout)
    return printed


@pytest.mark.parametrize("name", EXECUTED)
def test_the_pages_examples_run_as_written(name: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a reader's shell: the page's commands run in its folder
    if name in STAND_INS:
        STAND_INS[name](tmp_path)
    printed = run_page(DOCS / name, tmp_path)
    assert printed, f"{name} has no example to run"
    if name == "byo-vae.md":
        assert (tmp_path / "my-vae.html").is_file() and (tmp_path / "my-vae-cli.html").is_file()
    if name == "python-api.md":
        assert (tmp_path / "api-demo-run" / "model.pt").is_file()
        assert "test IW-NLL" in printed[0]
    if name == "own-data.md":
        assert (tmp_path / "wine.html").is_file() and (tmp_path / "wine-run" / "model.pt").is_file()
        assert "zinb test IW-NLL" in printed[-1]
    if name == "tutorials/quickstart.md":
        assert (tmp_path / "quickstart.html").is_file() and (tmp_path / "best.yaml").is_file()
        assert (tmp_path / "runs" / "best" / "model.pt").is_file()
    if name == "tutorials/mnist.md":
        assert (tmp_path / "runs" / "mnist" / "model.pt").is_file()
    if name == "tutorials/many-workers.md":
        assert (tmp_path / "many.db").is_file()
    if name == "tutorials/cluster.md":
        assert "quickstart" in printed[-1]


def test_the_blocks_are_found():
    langs = [lang for lang, _, _ in blocks(DOCS / "byo-vae.md")]
    assert langs.count("python") == 2 and "bash" in langs and "yaml" in langs
