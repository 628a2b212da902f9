"""The user's own VAE: a class in a file of theirs, named in a spec or registered with the
decorator, or an installed plugin; tuned by real worker processes from a folder whose own
`models.py`, `tuner/`, `studies/` and `vae_tune.py` must not shadow the package; and each way a
reference can be wrong exits 2 naming it, before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from support import free_port, get_json

pytestmark = pytest.mark.integration  # processes, servers, browsers or whole tutorials

CLI = str(Path(sys.executable).with_name("vae-tune"))

USER_VAE = '''
import torch
from pydantic import Field
from torch import nn

import vae_tune


class TinyUserConfig(vae_tune.ModelConfig):
    hidden: int = Field(32, ge=4, description="units of the one hidden layer")


class TinyUserVAE(nn.Module):
    """An ordinary PyTorch VAE: encode to (mu, logvar), decode to Bernoulli logits."""

    config_class = TinyUserConfig

    def __init__(self, config: TinyUserConfig, input_shape):
        super().__init__()
        d = input_shape[0] * input_shape[1]
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(d, config.hidden), nn.ReLU(),
                                 nn.Linear(config.hidden, 2 * config.latent_dim))
        self.dec = nn.Sequential(nn.Linear(config.latent_dim, config.hidden), nn.ReLU(),
                                 nn.Linear(config.hidden, d))

    def encode(self, x):
        return self.enc(x).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z)


class NotAModule:
    pass


class NoDecode(nn.Module):
    config_class = TinyUserConfig

    def __init__(self, config, input_shape):
        super().__init__()

    def encode(self, x):
        return x, x


class BadShape(TinyUserVAE):
    def decode(self, z):
        return self.dec(z)[:, :5]
'''

SHADOWS = {
    "models.py": "raise ImportError('the folder models.py shadowed vae-tune')\n",
    "tuner/__init__.py": "raise ImportError('the folder tuner/ shadowed vae-tune')\n",
    "studies/__init__.py": "raise ImportError('the folder studies/ shadowed vae-tune')\n",
    "vae_tune.py": "raise ImportError('the folder vae_tune.py shadowed vae-tune')\n",
}


def _spec(db: str, architecture: str, block: dict | None = None, **extra) -> dict:
    space: dict = {"architecture": architecture, "latent_dim": {"low": 2, "high": 6}}
    if block is not None:
        space[architecture] = block
    return {
        "study_name": "own",
        "storage": db,
        "dataset": {"name": "digits", "subset": 200},
        "search_space": space,
        "training": {"epochs": 1, "iw_samples": 0, "device": "cpu", "precision": "fp32"},
        "sampler": {"name": "random"},
        "pruner": "none",
        "budget": {"n_trials": 4},
        **extra,
    }


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VAE_TUNE_WORKERS"}
    return {**env, **extra}


def test_the_cli_tunes_a_user_vae_named_in_the_spec_with_two_workers_in_a_shadowing_folder(
    tmp_path: Path,
):
    for name, text in SHADOWS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "myvae.py").write_text(USER_VAE)
    db = f"sqlite:///{tmp_path / 'own.db'}"
    spec = _spec(db, "myvae.py:TinyUserVAE", {"hidden": {"low": 8, "high": 32, "log": True}})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [CLI, "run", "spec.yaml", "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 workers" in out.stdout
    assert "shadowed" not in out.stdout + out.stderr
    trials = optuna.load_study(study_name="own", storage=db).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(8 <= t.params["myvae.py:TinyUserVAE_hidden"] <= 32 for t in trials)
    assert {t.user_attrs["worker"] for t in trials} != {None}
    stored = optuna.load_study(study_name="own", storage=db).user_attrs["spec"]
    assert stored["architectures"] == {
        "myvae.py:TinyUserVAE": f"{tmp_path / 'myvae.py'}:TinyUserVAE"
    }
    report = subprocess.run(
        [CLI, "report", "--study-name", "own", "--storage", db, "--output", "r.html"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert report.returncode == 0, report.stderr
    assert "myvae.py:TinyUserVAE" in (tmp_path / "r.html").read_text()


SCRIPT = '''
import sys

import vae_tune
from myvae import TinyUserConfig, TinyUserVAE

# the decorator, on a class defined in this very script (run as __main__)
@vae_tune.architecture("tiny_user_vae", config=TinyUserConfig)
class Mine(TinyUserVAE):
    pass


if __name__ == "__main__":
    result = vae_tune.tune(
        {
            "study_name": "api",
            "dataset": {"name": "digits", "subset": 200},
            "search_space": {
                "architecture": "tiny_user_vae",
                "latent_dim": {"low": 2, "high": 6},
                "tiny_user_vae": {"hidden": {"low": 8, "high": 32}},
            },
            "training": {"epochs": 1, "iw_samples": 0, "precision": "fp32"},
            "pruner": "none",
        },
        storage=sys.argv[1],
        n_trials=4,
        workers=2,
    )
    print("RESULT", result.best_value, result.best_config.model["architecture"])
    print("REFERENCE", result.spec.architectures["tiny_user_vae"])
'''


def test_a_script_tunes_its_decorated_vae_with_two_workers_and_the_dashboard_shows_it(
    tmp_path: Path,
):
    (tmp_path / "myvae.py").write_text(USER_VAE)
    (tmp_path / "tune_mine.py").write_text(SCRIPT)
    db = f"sqlite:///{tmp_path / 'api.db'}"
    out = subprocess.run(
        [sys.executable, "tune_mine.py", db],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(
        line.split(" ", 1)
        for line in out.stdout.splitlines()
        if line.startswith(("RESULT ", "REFERENCE "))
    )
    value, arch = lines["RESULT"].split()
    assert float(value) < 0 and arch == "tiny_user_vae"
    assert lines["REFERENCE"] == f"{tmp_path / 'tune_mine.py'}:Mine"
    study = optuna.load_study(study_name="api", storage=db)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    port = free_port()
    proc = subprocess.Popen([CLI, "dashboard", "--storage", db, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = get_json(f"http://127.0.0.1:{port}/api/studies/{study._study_id}?after=0",
                        timeout=60, alive=lambda: proc.poll() is None)
        assert body is not None
        assert len(body["trials"]) == 4
        params = {p["name"] for t in body["trials"] for p in t["params"]}
        assert "tiny_user_vae_hidden" in params
        for trial in body["trials"]:  # each trial's VAE note, as for a shipped architecture
            assert f"## Trial {trial['number']}: complete" in trial["note"]["body"]
            assert "| active units |" in trial["note"]["body"]
        figures = {g["id"] for g in body["plotly_graph_objects"]}
        assert figures == {"rate-distortion", "collapse"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


PLUGIN = '''
from myvae import TinyUserVAE as PluggedVAE  # noqa: F401 - what the entry point names
'''


def test_an_installed_plugin_is_searchable_by_name(tmp_path: Path):
    """A package that declares an entry point in the group `vae_tune.architectures` (here
    installed as pip lays one out: the module and its .dist-info on the import path)."""
    site = tmp_path / "site"
    (site / "vae_plugin_demo").mkdir(parents=True)
    (site / "myvae.py").write_text(USER_VAE)
    (site / "vae_plugin_demo" / "__init__.py").write_text(PLUGIN)
    info = site / "vae_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vae-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[vae_tune.architectures]\nplugged = vae_plugin_demo:PluggedVAE\n"
    )
    env = _env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    listed = subprocess.run(
        [sys.executable, "-c", "import vae_tune; print(vae_tune.architectures())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    assert "'plugged'" in listed.stdout, listed.stderr
    db = f"sqlite:///{tmp_path / 'p.db'}"
    spec = _spec(db, "plugged", {"hidden": {"low": 8, "high": 16}}, budget={"n_trials": 2})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run([CLI, "run", "spec.yaml", "--workers", "2"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = optuna.load_study(study_name="own", storage=db).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert all("plugged_hidden" in t.params for t in trials)
    stored = optuna.load_study(study_name="own", storage=db).user_attrs["spec"]
    assert stored["architectures"] == {}  # found by name wherever the plugin is installed


@pytest.mark.parametrize(
    ("architecture", "block", "said"),
    [
        ("no_such_module_xyz:Foo", None, "no module named 'no_such_module_xyz'"),
        ("missing.py:Foo", None, "no such file: missing.py"),
        ("myvae.py:Nope", None, "myvae.py has no class 'Nope'"),
        ("myvae.py:NotAModule", None, "is not a torch.nn.Module subclass"),
        ("myvae.py:NoDecode", None, "has no decode() method"),
        ("myvae.py:TinyUserVAE", {"widht": 8}, "unknown myvae.py:TinyUserVAE knob"),
        ("myvae.py:TinyUserVAE", {"hidden": 2}, "greater than or equal to 4"),
        ("myvae.py:BadShape", None, "decode(z) returned (2, 5) for 2 latent codes"),
        ("unknown_arch", None, "unknown architecture 'unknown_arch'"),
        ("broken_mod:Thing", None, "module 'broken_mod' fails to import: NameError"),
    ],
)
def test_a_bad_reference_exits_2_naming_it_before_anything_is_written(
    tmp_path: Path, monkeypatch, cli, architecture, block, said
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myvae.py").write_text(USER_VAE)
    (tmp_path / "broken_mod.py").write_text("Thing = undefined_name\n")
    db_file = tmp_path / "bad.db"
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump(_spec(f"sqlite:///{db_file}", architecture, block))
    )
    result = cli("run", "spec.yaml")
    assert result.exit_code == 2, result.output
    assert said in result.output
    assert "search_space" in result.output or "architecture" in result.output
    assert not db_file.exists()


def test_the_contract_is_checked_when_the_decorator_runs():
    from torch import nn

    import vae_tune
    from vae_tune.errors import SpecError

    with pytest.raises(SpecError, match="must subclass vae_tune.ModelConfig"):

        @vae_tune.architecture("broken", config=dict)  # type: ignore[arg-type]
        class Broken(nn.Module):
            def encode(self, x): ...
            def decode(self, z): ...

    with pytest.raises(SpecError, match="is a shipped architecture"):
        vae_tune.architecture("mlp", config=vae_tune.ModelConfig)(nn.Module)


def test_a_user_vae_trains_exports_and_loads_in_a_fresh_process(tmp_path: Path):
    """The run config names the reference, so `load` in another process finds the class."""
    (tmp_path / "myvae.py").write_text(USER_VAE)
    code = textwrap.dedent(f"""
        import vae_tune
        cfg = {{"model": {{"architecture": "myvae.py:TinyUserVAE", "latent_dim": 3,
                "hidden": 16}}, "dataset": {{"name": "digits", "subset": 200}}, "epochs": 1,
                "iw_samples": 0}}
        m = vae_tune.train(cfg, output={str(tmp_path / 'run')!r}, progress=False)
        print(m.config.architectures)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load = subprocess.run(
        [sys.executable, "-c", "import vae_tune, sys; m = vae_tune.load(sys.argv[1]); "
         "print(tuple(m.sample(4).shape), type(m.model.net).__name__)", str(tmp_path / "run")],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["(4,", "8,", "8)", "TinyUserVAE"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved  # the run directory is whole
