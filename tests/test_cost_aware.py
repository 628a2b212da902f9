"""Search that counts seconds: the seconds budget, the per-trial cap, seconds as the pruner's
fidelity, each trial's recorded cost, the cost-aware sampler and per-architecture precision."""

from __future__ import annotations

import copy
import json

import optuna
import pytest
from optuna.trial import TrialState
from support import TINY_SPEC, merge

import vae_tune
from vae_tune.runner.budget import DONE, START, next_step, seconds_left, set_budget
from vae_tune.training import hardware, trainer
from vae_tune.tuning import record
from vae_tune.tuning.curve_pruner import LearningCurvePruner
from vae_tune.tuning.samplers import CostAwareSampler
from vae_tune.tuning.spec import load_spec
from vae_tune.tuning.storage import open_storage


class FakeClock:
    """The trainer's clock: every reading is `tick` seconds after the one before, so the
    seconds a run trains are a fixed function of its epochs and batches."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def tiny(tmp_path, changes: dict) -> dict:
    spec = merge(copy.deepcopy(TINY_SPEC), {"storage": f"sqlite:///{tmp_path}/s.db", **changes})
    spec["training"].update({"iw_samples": 0, "pictures": False})
    return spec


def trials_of(spec: dict) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=spec["study_name"], storage=spec["storage"])
    return study.get_trials(deepcopy=False)


def test_seconds_budget_sets_a_deadline_and_stops_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/b.db"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="b", direction="maximize")
    budget = set_budget(study, storage, None, None, None, seconds=3600)
    assert budget["target"] is None  # no trial count: the seconds are the budget
    assert next_step(study, storage)[0] == START
    assert 3500 < seconds_left(study, storage) <= 3600
    set_budget(study, storage, None, None, None, seconds=0.01)  # spent at once
    assert next_step(study, storage)[0] == DONE


def test_a_run_with_a_seconds_budget_ends_by_itself(tmp_path):
    spec = tiny(tmp_path, {"budget": {"n_trials": None, "seconds": 3}})
    vae_tune.tune(spec, workers=1, progress=False)  # returns: no trial count was needed
    trials = trials_of(spec)
    assert trials and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def test_trial_cap_completes_a_trial_and_records_its_cost(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "time", FakeClock(1.0))
    spec = tiny(
        tmp_path,
        {
            "training": {"epochs": 50},
            "budget": {"n_trials": 3, "trial_seconds": 12},
            "pruner": {"name": "curve"},
        },
    )
    vae_tune.tune(spec, workers=1, progress=False)
    for t in trials_of(spec):
        r = record.read(t)
        assert t.state == TrialState.COMPLETE, r.stop_reason  # never pruned for the cap
        assert r.capped and "12 s cap" in r.stop_reason
        assert r.epochs_run < 50
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
        # the cost: training seconds (>= the cap, reached mid-epoch) and seconds per epoch
        assert 12 <= r.train_seconds < 14
        assert r.seconds_per_epoch > 0


def test_fidelity_seconds_reports_cumulative_training_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "time", FakeClock(2.5))  # every epoch trains 2.5 "s"
    spec = tiny(
        tmp_path,
        {
            "training": {"epochs": 3},
            "budget": {"n_trials": 1},
            "pruner": {"name": "hyperband", "fidelity": "seconds"},
        },
    )
    vae_tune.tune(spec, workers=1, progress=False)
    (t,) = trials_of(spec)
    assert sorted(t.intermediate_values) == [3, 5, 8]  # ceil(2.5), ceil(5.0), ceil(7.5)
    assert record.read(t).train_seconds == pytest.approx(7.5)


def test_curve_pruner_judges_seconds_steps_by_the_interpolated_best_curve():
    study = optuna.create_study(direction="maximize", pruner=LearningCurvePruner(slack=1.0))
    best = study.ask()
    for step, value in ((10, -40.0), (30, -30.0), (60, -28.0)):
        best.report(value, step)
    study.tell(best, -28.0)
    # at 20 s the best had -35 (between -40 at 10 s and -30 at 30 s) and gained 7 more
    behind, close = study.ask(), study.ask()
    behind.report(-36.0, 20)  # -36 + 7 < -28: cannot catch up
    close.report(-34.0, 20)  # -34 + 7 > -28
    assert behind.should_prune()
    assert not close.should_prune()
    early = study.ask()
    early.report(-100.0, 5)  # before the best's first report: no judgement
    assert not early.should_prune()


def test_cost_aware_sampler_prefers_the_cheaper_of_two_equally_good_arms():
    def objective(trial: optuna.Trial) -> float:
        arm = trial.suggest_categorical("architecture", ["cheap", "dear"])
        x = trial.suggest_float("x", -1.0, 1.0)
        # equally good arms; the dear one takes 10x the seconds per epoch
        record.write(trial, seconds_per_epoch=1.0 if arm == "cheap" else 10.0)
        return -(x**2)

    def dear_trials(sampler) -> int:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective, n_trials=40)
        return sum(t.params["architecture"] == "dear" for t in study.trials)

    plain = dear_trials(optuna.samplers.TPESampler(seed=0))
    aware = dear_trials(CostAwareSampler(optuna.samplers.TPESampler(seed=0), epochs=1))
    assert aware >= 1  # the dear arm is still explored
    assert aware * 2 <= plain


def test_cost_aware_is_on_by_default_for_a_searched_architecture():
    mixed = load_spec(merge(copy.deepcopy(TINY_SPEC), {"sampler": "tpe"}))
    assert not mixed.cost_aware  # one architecture: nothing to choose
    mixed.search_space.architecture.choices = ["mlp", "conv"]
    mixed.search_space.architecture.value = None
    assert mixed.cost_aware
    mixed.sampler.cost_aware = False
    assert not mixed.cost_aware


def test_precision_probe_is_cached_on_disk_once_per_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.PRECISION_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(hardware, "cpu_bf16_reading", lambda: "1.30 autocast")
    calls = []

    def probe(architectures, shape):
        calls.append(list(architectures))
        return {a: {"precision": "bf16" if a == "conv" else "fp32"} for a in architectures}

    assert hardware.architecture_precision("conv", (28, 28), probe) == "bf16"
    assert hardware.architecture_precision("conv", (28, 28), probe) == "bf16"  # from disk
    assert hardware.architecture_precision("mlp", (28, 28), probe) == "fp32"
    assert calls == [["conv"], ["mlp"]]
    cached = json.loads(hardware.precision_cache_file("conv", (28, 28)).read_text())
    assert cached["precision"] == "bf16" and cached["key"]["architecture"] == "conv"


def test_the_missing_precision_readings_are_taken_together_and_said(tmp_path, monkeypatch):
    """A study's architectures are probed in one child process (one torch start-up each
    otherwise), only those not on disk, and the run says it is measuring."""
    monkeypatch.setenv(hardware.PRECISION_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(hardware, "cpu_bf16_reading", lambda: "1.30 autocast")
    calls, said = [], []

    def probe(architectures, shape):
        calls.append(list(architectures))
        return {a: {"precision": "bf16"} for a in architectures}

    hardware.architecture_precision("mlp", (8, 8), probe)
    found = hardware.architecture_precisions(
        ["mlp", "conv", "rnn", "conv"], (8, 8), probe, said.append
    )
    assert found == {"mlp": "bf16", "conv": "bf16", "rnn": "bf16"}
    assert calls == [["mlp"], ["conv", "rnn"]]
    assert len(said) == 1 and "conv, rnn on 8x8" in said[0]
    hardware.architecture_precisions(["conv", "rnn"], (8, 8), probe, said.append)
    assert len(calls) == 2 and len(said) == 1  # all on disk: nothing probed, nothing said


def test_a_probe_child_that_dies_keeps_the_readings_it_printed(monkeypatch):
    lines = '{"architecture": "mlp", "precision": "bf16"}\nTraceback ...'
    monkeypatch.setattr(hardware, "_probe_in_child", lambda code, timeout: lines)
    found = hardware._probe_architectures_in_child(["mlp", "conv"], (8, 8))
    assert found["mlp"] == {"precision": "bf16"}
    assert found["conv"]["precision"] == "fp32" and "Traceback" in found["conv"]["unavailable"]


def test_precision_auto_never_probes_where_bf16_does_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.PRECISION_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(
        hardware, "cpu_bf16_reading", lambda: "unavailable: the CPU lists no bf16 instructions"
    )

    def probe(architectures, shape):
        raise AssertionError("probed on a CPU without bf16")

    assert hardware.architecture_precision("conv", (28, 28), probe) == "fp32"
    assert not list(tmp_path.iterdir())


def test_probe_of_an_architecture_reads_speed_and_bound_gap():
    reading = hardware.probe_architecture("mlp", (8, 8), rounds=1, steps=1)
    assert reading["precision"] in ("fp32", "bf16", "bf16-matmul")
    assert set(reading["gap"]) == set(reading["speedup"])
