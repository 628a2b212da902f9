"""`vae-tune evaluate`: what a trained model is worth on the test split beyond its ELBO, added
to the run's metrics.json as an `evaluation` block (nats per example throughout):

- test IW-NLL with k importance samples and its standard error over the test images;
- active units, KL per dimension and the mutual information I(x; z), so collapse shows;
- the amortization gap of the encoder;
- sample quality as a Fréchet classifier distance, beside its real-data floor.

Every random stream is derived from the request's seed (`vae_tune.seeds.derive`), so the same
run, seed and device give the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vae_tune.data import load_splits
from vae_tune.models import VAE
from vae_tune.models.likelihoods import Likelihood
from vae_tune.runs.frechet import sample_quality
from vae_tune.runs.rundir import Run, add_metrics, open_run
from vae_tune.seeds import derive
from vae_tune.training.diagnostics import iw_log_px
from vae_tune.training.posterior import amortization_gap, mutual_information
from vae_tune.training.trainer import eval_targets, evaluate, model_labels

MAX_K = 5000
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Request:
    k: int = 1000  # importance samples of the IW-NLL (Burda et al. 2016 use 5000)
    examples: int | None = None  # test images scored (None: all)
    gap_examples: int = 100  # test images the amortization gap optimizes q for (0: skip)
    gap_steps: int = 300
    seed: int = 0


def _sampler(run: Run, seed: int, labels: torch.Tensor | None) -> Callable[[int], torch.Tensor]:
    """n prior samples as images (the mean of p(x|z)), drawn in batches from the seed; a
    conditional model's for the first n of `labels` (the test images' classes, so the samples
    have the class mix of the images they are compared with)."""
    model, likelihood, device = run.saved.model, run.saved.likelihood, run.saved.device

    @torch.no_grad()
    def sample(n: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive(seed, "frechet-samples"))
        z = model.sample_prior(n, gen)
        parts = []
        for i in range(0, n, 1024):
            y = None if labels is None else labels[i : min(i + 1024, n)]
            parts.append(likelihood.mean(model.decode(z[i : i + 1024].to(device), y)).float())
        return torch.cat(parts)

    return sample


def marginal_iw_log_px(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int,
    seed: int,
    prior: torch.Tensor,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """A conditional model's log p(x) = log sum_c p(c) p(x|c), each p(x|c) estimated with
    max(1, k // classes) importance samples (about k decodes per image in all), p(c) = `prior`.
    A stochastic lower bound on log p(x), like the IW-NLL, so it compares with an unconditional
    model's."""
    per_class = max(1, k // model.classes)
    terms = []
    for c in range(model.classes):
        y = torch.full((len(x),), c, dtype=torch.long, device=x.device)
        log_px_c = iw_log_px(model, likelihood, x, per_class, derive(seed, "class", c), labels=y)
        terms.append(log_px_c + math.log(prior[c]))
        if progress is not None:
            progress(round(len(x) * (c + 1) / model.classes))
    return torch.logsumexp(torch.stack(terms), 0)


def evaluate_run(
    path: Path,
    request: Request,
    progress: Progress | None = None,
    device: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate the model of the run at `path`, write the block into its metrics.json, and
    return it. `device` and `data_dir` as for `vae_tune.runs.rundir.open_run`."""
    started = time.perf_counter()
    run = open_run(path, device, data_dir)
    config, saved = run.config, run.saved
    model, likelihood, device = saved.model, saved.likelihood, saved.device
    report = progress or (lambda stage, done, total: None)
    splits = load_splits(config.dataset, config.data_seed)
    x = eval_targets(config, splits.test.to(device), 2)  # as `train` scores the test split
    x = x[: request.examples] if request.examples is not None else x
    n = len(x)
    y = model_labels(model, splits, "test", device)  # a conditional model's: p(x|y) is scored
    y = None if y is None else y[:n]

    report("test ELBO", 0, 1)
    elbo = evaluate(
        model, likelihood, x, config.eval_batch_size, derive(config.data_seed, "test-noise"), y
    )
    report("test ELBO", 1, 1)

    stage = f"IW-NLL, k = {request.k}"
    report(stage, 0, n)
    log_px = iw_log_px(
        model,
        likelihood,
        x,
        request.k,
        derive(request.seed, "evaluate-iw"),
        progress=lambda done: report(stage, done, n),
        labels=y,
    )
    iw = {"k": request.k, **_mean_se(-log_px)}
    conditional: dict[str, Any] | None = None
    if model.conditional:
        stage = f"IW-NLL of p(x), y summed out, k = {request.k}"
        report(stage, 0, n)
        counts = torch.bincount(splits.train_labels, minlength=model.classes).double()
        marginal = marginal_iw_log_px(
            model,
            likelihood,
            x,
            request.k,
            derive(request.seed, "evaluate-iw-marginal"),
            counts / counts.sum(),  # p(y): the training split's class frequencies
            progress=lambda done: report(stage, done, n),
        )
        conditional = {
            "classes": model.classes,
            "note": "test_elbo and iw_nll are of p(x|y), given each image's label; "
            "iw_nll_marginal is of p(x) = sum_y p(y) p(x|y), comparable with an "
            "unconditional model's iw_nll",
            "iw_nll_marginal": {
                "k_per_class": max(1, request.k // model.classes),
                **_mean_se(-marginal),
            },
        }

    report("mutual information", 0, 1)
    mi = mutual_information(model, x, derive(request.seed, "evaluate-mi"), labels=y)
    report("mutual information", 1, 1)

    gap: dict[str, Any] = {"skipped": "--gap-examples 0"}
    if request.gap_examples:
        stage = f"amortization gap, {request.gap_steps} steps"
        report(stage, 0, 1)
        found = amortization_gap(
            model,
            likelihood,
            x[: request.gap_examples],
            derive(request.seed, "evaluate-gap"),
            steps=request.gap_steps,
            labels=None if y is None else y[: request.gap_examples],
        )
        gap = asdict(found)
        report(stage, 1, 1)

    quality: dict[str, Any]
    if splits.vectors:
        quality = {"skipped": "the Fréchet classifier distance is for images, not table rows"}
    elif splits.labelled:
        report("Fréchet classifier distance", 0, 1)
        found_q = sample_quality(
            config.dataset.name,
            splits,
            _sampler(run, request.seed, y),
            n,
            derive(request.seed, "evaluate-frechet"),
            device,
            labels=y,
        )
        quality = {**asdict(found_q), "classifier": str(found_q.classifier)}
        if found_q.label_accuracy is None:
            del quality["label_accuracy"]
        report("Fréchet classifier distance", 1, 1)
    else:
        quality = {
            "skipped": f"dataset {config.dataset.name!r} has no labels to train a feature "
            "classifier on (for an array dataset give dataset.labels_key)"
        }

    block = {
        "seed": request.seed,
        "device": str(device),
        "examples": n,
        "test_elbo": {"elbo": elbo.elbo, "recon": elbo.recon, "kl": elbo.kl},
        "iw_nll": iw,
        **({"conditional": conditional} if conditional else {}),
        "active_units": elbo.active_units,
        "active_dims": list(elbo.active_dims),
        "latent_dim": model.latent_dim,
        "kl_per_dim": list(elbo.kl_per_dim),
        "mutual_information": asdict(mi),
        "amortization_gap": gap,
        "frechet_classifier_distance": quality,
        "seconds": round(time.perf_counter() - started, 1),
    }
    add_metrics(run, "evaluation", block)
    return block


def _mean_se(nll: torch.Tensor) -> dict[str, Any]:
    """Mean NLL over the examples, its standard error and how many."""
    n = len(nll)
    se = nll.std().item() / math.sqrt(n) if n > 1 else math.nan
    return {"nll": nll.mean().item(), "se": se, "examples": n}
