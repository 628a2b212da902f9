"""What vae-tune costs a process before it trains: import time and the heavy packages loaded.

Two measurements per source tree, each a fresh interpreter, repeated and interleaved across
the trees (medians; `-X importtime`, the sum of the top-level imports' cumulative times, and
the process's whole wall time):

* `import vae_tune`: what a notebook or any `vae-tune` command pays first.
* a worker through its first trial: `vae-tune run quickstart --n-trials 1 --epochs 1
  --workers 1`, whose in-process worker runs exactly what `vae-tune worker` runs per trial.
  It also lists which heavy optional packages (plotly, optuna-dashboard, pandas) it loaded.
  Its wall time includes the one-epoch trial and, on a CPU with bf16, reading (or taking)
  the bf16 probe; the dataset cache (`$VAE_TUNE_CACHE`) is the user's, as a second run sees it.

    python bench/import_time.py                          # this checkout
    git worktree add /tmp/before <commit>                # then, before against after:
    python bench/import_time.py --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import os
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("plotly", "optuna_dashboard", "pandas", "matplotlib")


def imports(stderr: str) -> tuple[float, set[str]]:
    """Seconds of top-level imports and the top-level package names, from -X importtime."""
    total, names = 0.0, set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        names.add(name.strip().split(".")[0])
        if not name.startswith("  "):  # top level: its cumulative time includes its children
            total += int(cumulative) / 1e6
    return total, names


# `python -S` (no site: an editable install's import hook would pick the installed tree
# whatever PYTHONPATH says), then the tree and site-packages on sys.path, then the case
BOOT = """
import os, runpy, sys
sys.path[:0] = sys.argv[1].split(os.pathsep)
args = sys.argv[2:]
if args[0] == "-c":
    exec(args[1])
else:
    sys.argv = ["vae-tune", *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
"""


def measure(tree: Path, args: list[str], cwd: Path) -> tuple[float, float, set[str]]:
    """(import seconds, wall seconds, top-level packages) of one fresh interpreter."""
    paths = os.pathsep.join([str(tree.resolve()), *site.getsitepackages()])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_TUNE_BF16")}
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", BOOT, paths, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,  # no bf16 reading handed down: each process finds its own, as a command does
    )
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}:\n{out.stderr[-3000:]}")
    took, names = imports(out.stderr)
    return took, wall, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", help="NAME=PATH of a source tree (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    opts = ap.parse_args()
    trees = [t.split("=", 1) for t in (opts.tree or [f"this={Path(__file__).parents[1]}"])]
    run = "-m vae_tune run quickstart --n-trials 1 --epochs 1 --workers 1".split()
    cases = {"import vae_tune": ["-c", "import vae_tune"], "worker, first trial": run}
    seconds: dict[tuple[str, str], list[float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    loaded: dict[tuple[str, str], set[str]] = {}
    for _ in range(opts.repeats):
        for case, args in cases.items():
            for name, path in trees:
                with tempfile.TemporaryDirectory() as tmp:  # a fresh database each time
                    took, wall, names = measure(Path(path), args, Path(tmp))
                seconds.setdefault((case, name), []).append(took)
                walls.setdefault((case, name), []).append(wall)
                loaded[(case, name)] = names
    print(
        f"# bench/import_time.py, {opts.repeats} interleaved repeats, medians; "
        f"python {sys.version.split()[0]}"
    )
    print(f"{'case':<22}{'tree':<10}{'imports s':>10}{'wall s':>8}  heavy packages loaded")
    for case in cases:
        base = None
        for name, _ in trees:
            median = statistics.median(seconds[(case, name)])
            wall = statistics.median(walls[(case, name)])
            base = wall if base is None else base
            heavy = ", ".join(sorted(set(HEAVY) & loaded[(case, name)])) or "none"
            ratio = f"  (wall {wall / base:.2f}x the first tree)" if len(trees) > 1 else ""
            print(f"{case:<22}{name:<10}{median:>10.2f}{wall:>8.2f}  {heavy}{ratio}")


if __name__ == "__main__":
    main()
