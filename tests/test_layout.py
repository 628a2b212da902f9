"""The layout holds: no import cycles among the project's modules, and no function-local
imports of project modules outside the CLI (which defers heavy start-up on purpose)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vae_tune",)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            for target in _imports(node, package):
                r = resolve(target)
                parent_init = m.startswith(f"{r}.") and mods[r].name == "__init__.py"
                if r and r != m and not parent_init:
                    edges[m].add(r)
    return edges


def test_no_import_cycles():
    edges = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


# the layers, lowest first: a module imports from its own layer or those below it only
LAYERS = (
    ("version", "errors", "defaults", "seeds", "files", "studies"),
    ("models",),
    ("data",),
    ("training",),
    ("runs",),
    ("tuning",),
    ("runner",),
    ("reporting",),
    ("api",),
    ("cli", "__main__"),
)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself: its names load lazily
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def test_layers_import_downward_only():
    """models -> data -> training -> runs -> tuning -> runner -> reporting -> api -> cli; the
    folders of vae_tune are the layers."""
    upward = []
    for m, targets in _graph().items():
        if m == "vae_tune":
            continue  # the package: its public names load lazily from their layers
        here = _layer(m)
        assert here is not None, f"{m} is in no layer: add its folder to LAYERS"
        for target in targets:
            there = _layer(target)
            if there is not None and there > here and target != "vae_tune":
                upward.append(f"{m} -> {target}")
    assert not upward, upward


LAZY = "# lazy:"  # an import deferred to keep a heavy package out of start-up, and why


def test_project_modules_are_imported_at_the_top_outside_the_cli():
    local = []
    for m, f in _modules().items():
        if m == "vae_tune.cli":
            continue
        source = f.read_text()
        lines = source.splitlines()
        for fn in ast.walk(ast.parse(source)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    names = _imports(node, m)
                    if any(n.split(".")[0] in PACKAGES for n in names):
                        if LAZY not in lines[node.end_lineno - 1]:
                            local.append(f"{m}:{node.lineno}")
    assert not local, local


NEW_MODEL = r"""
import sys
from pydantic import Field
from vae_tune.models.config import ModelConfig
from vae_tune.models.mlp import MLPConfig, MLPVAE
from vae_tune.models import registry


class TinyConfig(ModelConfig):
    hidden_dim: int = Field(8, ge=1)
    n_layers: int = Field(1, ge=1)  # a knob with "_" in its name


class TinyVAE(MLPVAE):
    def __init__(self, config, image_shape, classes=0):
        super().__init__(MLPConfig(latent_dim=config.latent_dim, hidden_dim=config.hidden_dim,
                                   depth=config.n_layers), image_shape, classes)


registry.register("tiny_mlp", TinyVAE, TinyConfig)  # an architecture with "_" in its name

from vae_tune.runner.launcher import run_study  # noqa: E402
from vae_tune.training.config import validate
from vae_tune.tuning.spec import StudySpec  # noqa: E402

spec = validate(StudySpec, {
    "study_name": "new-model", "storage": sys.argv[1],
    "dataset": {"name": "digits", "subset": 100},
    "search_space": {"architecture": {"choices": ["tiny_mlp", "mlp"]},
                     "tiny_mlp": {"n_layers": {"low": 1, "high": 2}, "hidden_dim": 8},
                     "mlp": {"hidden_dim": 8}},
    "training": {
        "epochs": 1, "device": "cpu", "threads": 1, "precision": "fp32", "iw_samples": 0,
        "pictures": False,
    },
    "sampler": {"name": "grid"}, "pruner": "none",
}, "test spec")
outcome = run_study(spec, workers=1, echo=lambda *a, **k: None)  # this process: the patch
for t in outcome.study.trials:
    print(t.state.name, t.params, t.user_attrs["config"]["model"])
"""


@pytest.mark.integration
def test_a_model_added_to_the_registry_is_searchable_without_editing_the_spec(tmp_path):
    """The search space is derived from the registry and the typed configs: a new
    architecture (and knobs with "_" in their names) needs no edit elsewhere."""
    import subprocess
    import sys

    (tmp_path / "grid.py").write_text(
        NEW_MODEL.replace('"low": 1, "high": 2}', '"low": 1, "high": 2, "grid": [1, 2]}')
    )
    out = subprocess.run(
        [sys.executable, str(tmp_path / "grid.py"), f"sqlite:///{tmp_path / 's.db'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert len(rows) == 3 and all(r.startswith("COMPLETE") for r in rows), out.stdout
    tiny = [r for r in rows if "'architecture': 'tiny_mlp'" in r]
    assert len(tiny) == 2
    assert any("'n_layers': 2" in r for r in tiny) and any("'n_layers': 1" in r for r in tiny)
