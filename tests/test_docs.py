"""The documentation's examples run as written: each page's code blocks, in order, in a
fresh folder. A block with a title (```python title="myvae.py"```) is written as that file;
an untitled Python block runs as a script; a bash block runs each of its lines; a YAML block
with a title is written as that file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
EXECUTED = ("byo-vae.md", "python-api.md", "own-data.md")  # the pages whose examples CI runs


def blocks(page: Path) -> list[tuple[str, str | None, str]]:
    """(language, title or None, code) of each fenced block of a page, in order."""
    found = []
    for lang, info, code in BLOCK.findall(page.read_text()):
        title = re.search(r'title="([^"]+)"', info)
        found.append((lang, title.group(1) if title else None, code))
    return found


def run_page(page: Path, folder: Path) -> list[str]:
    """Run a page's blocks in `folder`; returns what each run printed."""
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
            commands = [[sys.executable, script.name]]
        elif lang == "bash":
            commands = [["bash", "-c", line] for line in code.splitlines() if line.strip()]
        else:
            continue
        for cmd in commands:
            out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env,
                                 timeout=900)
            assert out.returncode == 0, f"{page.name} block {i}: {cmd}\n{out.stdout}{out.stderr}"
            printed.append(out.stdout)
    return printed


@pytest.mark.parametrize("name", EXECUTED)
def test_the_pages_examples_run_as_written(name: str, tmp_path: Path):
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


def test_the_blocks_are_found():
    langs = [lang for lang, _, _ in blocks(DOCS / "byo-vae.md")]
    assert langs.count("python") == 2 and "bash" in langs and "yaml" in langs
