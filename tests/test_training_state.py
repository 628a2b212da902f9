"""Training state: bit-exact resume (dropout included), the stop flag, independent seeds."""

from __future__ import annotations

import io
from typing import Any

import optuna
import pytest
import torch

import vae_tune.data as datasets
import vae_tune.seeds
import vae_tune.training.trainer
import vae_tune.tuning.objective
import vae_tune.tuning.search_space
from vae_tune.data import load_splits
from vae_tune.seeds import derive
from vae_tune.training.config import DatasetSpec, LikelihoodSpec, RunConfig
from vae_tune.training.trainer import TrainingInterrupted, TrainResult, train
from vae_tune.tuning.objective import Objective
from vae_tune.tuning.search_space import TOP_LEVEL, run_config
from vae_tune.tuning.spec import StudySpec

TINY = DatasetSpec(name="digits", subset=200)  # 200 images, batch 64: 4 batches an epoch
MODELS = {
    "mlp": {"architecture": "mlp", "latent_dim": 4, "hidden_dim": 16, "depth": 1},
    "rnn": {"architecture": "rnn", "latent_dim": 4, "hidden_size": 16},
    "hybrid": {
        "architecture": "hybrid",
        "latent_dim": 4,
        "channels": 4,
        "depth": 1,
        "hidden_size": 16,
    },
    "hierarchical": {
        "architecture": "hierarchical",
        "latent_dim": 4,
        "hidden_dim": 16,
        "z2_dim": 2,
        "z2_hidden_dim": 8,
        "depth": 1,
        "flow": "iaf",
    },
    "conv": {"architecture": "conv", "latent_dim": 4, "channels": 4, "depth": 1},
}
# the remedies of issue 12 resume too: the bound, the schedule (from the step counter), the flow
REMEDIES = {"objective_k": 3, "kl_schedule": "cyclical", "kl_cycles": 2}


def _config(architecture: str = "mlp", dropout: float = 0.3, **kw: Any) -> RunConfig:
    base = dict(
        dataset=TINY,
        model={**MODELS[architecture], "dropout": dropout},
        likelihood=LikelihoodSpec(binarize="dynamic"),  # the run's generator is used as well
        lr_schedule="cosine",
        batch_size=64,
        epochs=3,
        seed=5,
        data_seed=3,
        device="cpu",
        threads=1,
    )
    return RunConfig(**{**base, **kw})


class MemoryCheckpoints:
    """`vae_tune.training.trainer.Checkpoints` in memory, serialized the way TrialCheckpoints
    stores them (torch.save, read back with weights_only=True)."""

    def __init__(self) -> None:
        self.blob: bytes | None = None
        self.epochs: list[int] = []

    def load(self) -> dict[str, Any] | None:
        if self.blob is None:
            return None
        return torch.load(io.BytesIO(self.blob), map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.blob = buffer.getvalue()
        self.epochs.append(int(state["epoch"]))


class Crash(Exception):
    pass


def _crash_after(epoch: int):
    def on_epoch(run: TrainResult) -> None:
        torch.rand(1000)  # whatever the caller draws from the global RNG must not matter
        if run.final.epoch == epoch:
            raise Crash

    return on_epoch


def _assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert [h.val for h in a.history] == [h.val for h in b.history]
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize(
    ("architecture", "knobs"),
    [
        ("mlp", {}),
        ("rnn", {}),
        ("hybrid", {}),
        ("hierarchical", REMEDIES),
        ("conv", {"model": {**MODELS["conv"], "dropout": 0.3, "conditional": True}}),
    ],
    ids=["mlp", "rnn", "hybrid", "hierarchical-iaf-iwae-cyclical", "conv-conditional"],
)
@pytest.mark.integration
def test_resume_after_a_crash_is_bit_exact_with_dropout(architecture: str, knobs: dict):
    config = _config(architecture, **knobs)
    splits = load_splits(config.dataset, config.data_seed)
    straight = train(config, splits, on_epoch=lambda run: torch.rand(1000))

    checkpoints = MemoryCheckpoints()
    with pytest.raises(Crash):
        train(config, splits, _crash_after(1), checkpoints)
    assert checkpoints.epochs == [1]
    torch.manual_seed(12345)  # another run in the same process meanwhile
    torch.rand(777)
    resumed = train(config, splits, checkpoints=checkpoints)

    assert resumed.resumed_from_epoch == 1
    assert resumed.final.val.elbo == straight.final.val.elbo
    _assert_same_run(straight, resumed)
    state = checkpoints.load()
    assert state["epoch"] == 3 and state["rng"]["cpu"].dtype == torch.uint8


def test_same_config_trains_to_identical_numbers_whatever_ran_before():
    config = _config("mlp", epochs=2, likelihood=LikelihoodSpec(binarize="static"))
    first = train(config)
    torch.manual_seed(99)
    torch.rand(1234)
    second = train(config)
    _assert_same_run(first, second)


@pytest.mark.parametrize("stop_at_call, saved", [(3, []), (6, [1])])
def test_should_stop_interrupts_between_batches_and_saves_complete_epochs_only(
    stop_at_call: int, saved: list[int]
):
    config = _config("mlp")
    splits = load_splits(config.dataset, config.data_seed)
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= stop_at_call

    checkpoints, epochs_seen = MemoryCheckpoints(), []
    with pytest.raises(TrainingInterrupted) as stopped:
        train(
            config,
            splits,
            lambda run: epochs_seen.append(run.final.epoch),
            checkpoints,
            should_stop=should_stop,
        )
    assert isinstance(stopped.value, KeyboardInterrupt)  # old Ctrl-C handlers still apply
    assert calls == stop_at_call  # checked once per batch (4 an epoch), stopped at once
    assert checkpoints.epochs == saved == epochs_seen
    if saved:  # the saved epoch is complete: resuming it is the uninterrupted run
        resumed = train(config, splits, checkpoints=checkpoints)
        _assert_same_run(train(config, splits), resumed)


def _spec(seed: int, **training: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "study_name": "seeds",
            "seed": seed,
            "dataset": {"name": "digits", "subset": 200},
            "likelihood": {"binarize": "static"},
            "search_space": {
                "architecture": "mlp",
                "latent_dim": 4,
                "batch_size": 64,
                "dropout": 0.2,
                "mlp": {"hidden_dim": 16, "depth": 1},
            },
            "training": {
                "epochs": 1, "device": "cpu", "threads": 1, "precision": "fp32",
                "pictures": False,
            } | training,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
        }
    )


def _values(spec: StudySpec) -> dict[str, Any]:
    defaults = {name: getattr(spec.search_space, name).value for name in TOP_LEVEL}
    return {**defaults, "mlp_hidden_dim": 16, "mlp_depth": 1}


def test_neighbouring_studies_share_no_trial_seed():
    seeds = {}
    for study_seed in (0, 1):
        spec = _spec(study_seed)
        seeds[study_seed] = {run_config(spec, _values(spec), n).seed for n in range(50)}
        assert len(seeds[study_seed]) == 50
    assert not seeds[0] & seeds[1]
    spec = _spec(0)
    assert run_config(spec, _values(spec), 7).seed == run_config(spec, _values(spec), 7).seed


def test_derive_is_a_stable_32_bit_hash():
    assert derive(0, "trial", 1) == derive(0, "trial", 1)
    values = {derive(s, p, *i) for s in (0, 1) for p in ("a", "b") for i in ((), (0,), (1,))}
    assert len(values) == 12 and all(0 <= v < 2**32 for v in values)
    torch.Generator().manual_seed(max(values))
    with pytest.raises(TypeError):
        derive(0, "trial", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        derive(0, "a/b")


def test_each_random_stream_has_its_own_seed(monkeypatch):
    calls: dict[tuple[Any, ...], int] = {}

    def spy(seed: int, purpose: str, *ids: int) -> int:
        calls[(seed, purpose, *ids)] = value = derive(seed, purpose, *ids)
        return value

    for module in (
        vae_tune.seeds,
        vae_tune.training.trainer,
        vae_tune.tuning.objective,
        vae_tune.tuning.search_space,
        datasets,
    ):
        monkeypatch.setattr(module, "derive", spy)
    spec = _spec(4, iw_samples=5, iw_examples=20)
    splits = load_splits(spec.dataset, spec.seed)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(spec, splits), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE

    trial_seed = study.trials[0].user_attrs["seed"]
    assert calls[(4, "trial", 0)] == trial_seed
    purposes = {key[1:] for key in calls}
    assert purposes == {
        ("trial", 0),
        ("split",),
        ("init-dropout",),
        ("training",),
        ("train-binarization",),
        ("eval-binarization", 1),
        ("val-noise",),
        ("iw-nll",),
    }
    assert all(key[0] == trial_seed for key in calls if key[1] in ("init-dropout", "training"))
    assert all(key[0] == 4 for key in calls if key[1] not in ("init-dropout", "training"))
    assert len(set(calls.values())) == len(calls)  # no two streams share a seed
    streams = {v for key, v in calls.items() if key[1] != "trial"}
    assert not {4, trial_seed} & streams  # and none is a seed it derives from


def test_objective_passes_should_stop_to_training():
    spec = _spec(0)
    splits = load_splits(spec.dataset, spec.seed)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(TrainingInterrupted):
        study.optimize(Objective(spec, splits, should_stop=lambda: True), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert "epochs_run" not in study.trials[0].user_attrs


@pytest.mark.integration
def test_compile_trains_the_same_model_and_hands_back_an_eager_one():
    """`compile: true` changes the speed, not the maths: the same run to float rounding; the
    model handed back runs eager (pictures and the IW-NLL do not compile per batch shape)."""
    config = _config("mlp", dropout=0.0, precision="fp32", epochs=2)
    eager = train(config)
    compiled = train(config.model_copy(update={"compile": True}))
    assert compiled.final.val.elbo == pytest.approx(eager.final.val.elbo, abs=1e-3)
    assert "encode_images" not in compiled.model.__dict__
    assert "decode_latents" not in compiled.model.__dict__
