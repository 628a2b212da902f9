"""Where a trial is trained: one plain RunConfig in, per-epoch validation ELBO out.

`vae-tune train` and every tuning trial call `train` the same way. The loop is the hot path:
data sits on the training device as one tensor, batches are slices of a per-epoch shuffled
copy, and the host reads a value back once per epoch (loss check, validation), never per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from vae_tune.data import Splits, load_splits
from vae_tune.errors import SpecError
from vae_tune.models import VAE, build_model
from vae_tune.models.bounds import training_bound
from vae_tune.models.likelihoods import Likelihood, build_likelihood
from vae_tune.models.losses import tile
from vae_tune.seeds import derive
from vae_tune.training.config import RunConfig
from vae_tune.training.hardware import Bf16Matmul, available_cores, resolve_precision
from vae_tune.training.kl_schedule import kl_weight
from vae_tune.training.weight_average import WeightAverage

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_j]) > 0.01
# ... and the unit must carry information: the covariance test alone counts units whose KL is
# a few hundredths of a nat (the decoder ignores them: every reconstruction is the same blob)
ACTIVE_UNIT_MIN_KL = 0.1  # nats per example, averaged over the data


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch.optim class a spec names in lower case (`adamw` -> torch.optim.AdamW)."""
    return next(getattr(torch.optim, c) for c in dir(torch.optim) if c.lower() == name)


def make_optimizer(name: str, params: list, **options: Any) -> torch.optim.Optimizer:
    """The optimizer, fused (one kernel for all parameters) where this torch has it: the
    per-parameter step is a large share of a small VAE's training step on a CPU."""
    cls = optimizer_class(name)
    try:
        return cls(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # older torch, or no fused kernel here
        return cls(params, **options)


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf: the run stops at once with this reason."""


class TrainingInterrupted(KeyboardInterrupt):
    """`should_stop` asked the run to stop. Raised between batches (never during a checkpoint
    save), so the checkpoints hold complete epochs only and a retry resumes from the last one.
    A KeyboardInterrupt, so callers that handle Ctrl-C handle this the same way."""


@dataclass(frozen=True)
class Evaluation:
    """ELBO terms at beta = 1, in nats per example, plus posterior diagnostics.

    `kl` is the model's own KL (closed form, or the one-sample Monte-Carlo estimate with a flow
    or two stochastic layers), so elbo = recon - kl always; `kl_per_dim` and the active units are
    those of each stochastic layer's Gaussian before any flow, bottom layer first.
    """

    elbo: float
    recon: float
    kl: float
    active_units: int
    kl_per_dim: tuple[float, ...] = ()
    active_dims: tuple[int, ...] = ()  # which latent dimensions (all layers, in order) are active
    active_units_per_layer: tuple[int, ...] = ()


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    train_loss: float  # minus the bound the optimizer maximized (beta, free bits, k), per image
    val: Evaluation
    train_seconds: float  # cumulative, training steps only
    wall_seconds: float  # cumulative, since the run started (data transfer, validation included)
    examples_per_s: float
    val_seconds: float = 0.0  # cumulative, validation only (0 in checkpoints older than it)


class Checkpoints(Protocol):
    """Somewhere to keep the latest epoch's training state, so a retried run resumes."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    model: VAE
    likelihood: Likelihood
    device: torch.device
    num_parameters: int
    precision: str  # of the training step, as resolved here: fp32, bf16 or bf16-matmul
    history: list[EpochResult] = field(default_factory=list)
    resumed_from_epoch: int = 0  # last epoch restored from a checkpoint (0: fresh start)
    # training stopped at `seconds_limit`: the last epoch may be partial, and no more follow
    capped: bool = False

    @property
    def final(self) -> EpochResult:
        return self.history[-1]


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit CUDA device that is missing is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("CUDA was asked for but is not available", "device")
        if (device.index or 0) >= torch.cuda.device_count():
            raise SpecError(f"no such CUDA device: {name}", "device")
    return device


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads; 0 means one per core this process may run on."""
    torch.set_num_threads(threads or available_cores())


def binarized(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed binarization of grey levels (pixel ~ Bernoulli(grey level)) per seed."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=gen)


def eval_targets(config: RunConfig, x: torch.Tensor, offset: int) -> torch.Tensor:
    """Validation (offset 1) and test (offset 2) images as the likelihood scores them: one
    fixed binarization per split, from the data seed, so values compare across trials."""
    if config.likelihood.binarize == "none":
        return x
    return binarized(x, derive(config.data_seed, "eval-binarization", offset))


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The global RNG states a run draws from (dropout, weight init), as CPU byte tensors."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Restore `_rng_state`; the CUDA state goes to the training device (a retry may run on
    another GPU than the run it resumes)."""
    torch.set_rng_state(state["cpu"].to("cpu", torch.uint8))
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].to("cpu", torch.uint8), device)


def model_labels(
    model: VAE, splits: Splits, split: str, device: torch.device
) -> torch.Tensor | None:
    """The labels of a split on `device` where the model is conditional (None otherwise)."""
    labels = splits.labels(split) if model.conditional else None
    return None if labels is None else labels.to(device)


def compile_networks(model: VAE) -> None:
    """torch.compile the architecture's networks (`encode_images`, `decode_latents`), where a
    training step's arithmetic is; the label offsets, flows, densities and bounds stay eager
    (they draw from the run's generator, which compiled graphs do not take). The module and
    its state dict are unchanged, so checkpoints and model files are the same. The compile
    caches are cleared first: a worker trains trial after trial, each of other shapes, and
    torch.compile stops compiling (runs eager) once a function has been recompiled too often."""
    torch.compiler.reset()
    model.encode_images = torch.compile(model.encode_images)  # type: ignore[method-assign]
    model.decode_latents = torch.compile(model.decode_latents)  # type: ignore[method-assign]


def uncompile_networks(model: VAE) -> None:
    """Back to the eager methods: what uses the model after training (IW-NLL, pictures, other
    batch shapes) would otherwise compile again for every new shape."""
    for name in ("encode_images", "decode_latents"):
        model.__dict__.pop(name, None)


def make_likelihood(
    config: RunConfig,
    shape: tuple[int, ...],
    standardization: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Likelihood:
    """The run's p(x|z) for examples of `shape`, holding a table's standardization (so a
    saved model keeps it, and its log-densities are in the data's units)."""
    lik = config.likelihood
    scale = None if lik.scale == "learned" else lik.scale
    likelihood = build_likelihood(lik.name, scale, shape, config.dataset.vectors)
    if standardization is not None:
        mean, std = standardization
        likelihood.shift.copy_(mean.reshape(likelihood.shift.shape))
        likelihood.spread.copy_(std.reshape(likelihood.spread.shape))
    return likelihood


def build_for(config: RunConfig, splits: Splits) -> VAE:
    """The run's model for these data (a conditional one gets the data's classes); a config
    the data cannot serve is a SpecError naming the field."""
    if config.model.get("conditional") and not splits.labelled:
        raise SpecError(config.dataset.why_no_labels(), "model.conditional")
    try:
        return build_model(config.model, splits.image_shape, splits.classes)
    except (TypeError, ValueError) as err:
        raise SpecError(str(err), "model") from None


@torch.no_grad()
def evaluate(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    batch_size: int,
    seed: int,
    labels: torch.Tensor | None = None,
) -> Evaluation:
    """Single-sample ELBO at beta = 1 with a fixed noise seed, so values compare across trials.
    A conditional model scores log p(x|y) with the images' `labels`."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    recon = torch.zeros((), device=x.device, dtype=torch.float64)
    kl = torch.zeros((), device=x.device, dtype=torch.float64)
    kl_dims: list[torch.Tensor] = []  # per layer: summed over the data
    mus: list[list[torch.Tensor]] = []  # per layer: each batch's means
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if labels is None else labels[start : start + batch_size]
        out = model(xb, gen, y=yb)
        recon += likelihood.log_prob(out.logits, xb).sum(dtype=torch.float64)
        kl += out.posterior.kl.sum(dtype=torch.float64)
        for i, layer in enumerate(out.posterior.layers):
            units = layer.mu.shape[-1]
            dims = layer.kl_per_dim().reshape(-1, units).sum(0, dtype=torch.float64)
            if i == len(kl_dims):
                kl_dims.append(torch.zeros_like(dims))
                mus.append([])
            kl_dims[i] += dims
            mus[i].append(layer.mu.reshape(-1, units))
    masks = []
    for dims, means in zip(kl_dims, mus, strict=True):
        dims /= len(x)
        varies = torch.cat(means).var(0, unbiased=False).double() > ACTIVE_UNIT_THRESHOLD
        masks.append((varies & (dims > ACTIVE_UNIT_MIN_KL)).double())
    n = sum(len(m) for m in masks)
    r, k, *rest = torch.cat(
        [torch.stack([recon / len(x), kl / len(x)]), *kl_dims, *masks]
    ).tolist()  # the one sync
    per_dim, mask = rest[:n], rest[n:]
    active, per_layer, start = tuple(i for i, on in enumerate(mask) if on), [], 0
    for m in masks:
        per_layer.append(int(sum(mask[start : start + len(m)])))
        start += len(m)
    model.train(was_training)
    return Evaluation(r - k, r, k, len(active), tuple(per_dim), active, tuple(per_layer))


def score_test_split(
    config: RunConfig, model: VAE, likelihood: Likelihood, splits: Splits, device: torch.device
) -> Evaluation:
    """The test ELBO as `vae-tune train` reports it (fixed binarization and noise from the data
    seed), so a saved model reloaded anywhere scores the same."""
    x_test = eval_targets(config, splits.test.to(device), 2)
    noise = derive(config.data_seed, "test-noise")
    y_test = model_labels(model, splits, "test", device)
    return evaluate(model, likelihood, x_test, config.eval_batch_size, noise, y_test)


def _scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "step":
        step = max(1, config.epochs // 3)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=0.1)
    if config.lr_schedule == "iwae":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_lr_factor)
    return None


def iwae_lr_factor(epoch: int) -> float:
    """Burda et al. 2016's schedule: 3^i epochs at lr * 10^(-i/7), i = 0..7 (3,280 epochs in
    all; the last stage's rate after that). `epoch` counts from 0."""
    stage = 0
    while stage < 7 and epoch >= (3 ** (stage + 1) - 1) // 2:  # sum_(j<=i) 3^j epochs done
        stage += 1
    return 10 ** (-stage / 7)


def train(
    config: RunConfig,
    splits: Splits | None = None,
    on_epoch: Callable[[TrainResult], None] | None = None,
    checkpoints: Checkpoints | None = None,
    should_stop: Callable[[], bool] | None = None,
    seconds_limit: float | None = None,
) -> TrainResult:
    """Train the configured VAE; `on_epoch` sees the run after each epoch and may raise to stop.

    `seconds_limit` caps the training steps' seconds (cumulative, as `train_seconds`): the
    epoch that reaches it ends at that batch, is validated and is the run's last, with
    `capped` set (on_epoch sees it).

    `should_stop` is called between batches (a plain call: keep it cheap, e.g. read a flag set
    by a signal handler); when it returns True the run raises TrainingInterrupted, leaving the
    unfinished epoch unsaved. Resuming from `checkpoints` is bit-exact: they hold every random
    state the run draws from (the global CPU/CUDA RNGs used by dropout, the run's generator).
    """
    run_started = time.perf_counter()
    device = resolve_device(config.device)
    set_threads(config.threads)
    if splits is None:
        splits = load_splits(config.dataset, config.data_seed)
    # seeds every global RNG torch has (CPU and all CUDA devices): weight init, then dropout
    torch.manual_seed(derive(config.seed, "init-dropout"))
    model = build_for(config, splits).to(device)
    likelihood = make_likelihood(config, splits.image_shape, splits.standardization).to(device)
    # the weights' moving average is what the run evaluates and returns (None: the last ones)
    average = WeightAverage(model, likelihood, config.ema_decay) if config.ema_decay else None
    if config.compile:
        compile_networks(model)
    params = [*model.parameters(), *likelihood.parameters()]
    optimizer = make_optimizer(
        config.optimizer, params, lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = _scheduler(config, optimizer)
    # the run's own stream: shuffling, dynamic binarization, reparameterization noise
    gen = torch.Generator(device=device).manual_seed(derive(config.seed, "training"))
    val_seed = derive(config.data_seed, "val-noise")  # the same for every trial of a study
    x_train = splits.train.to(device)
    if config.likelihood.binarize == "static":
        x_train = binarized(x_train, derive(config.data_seed, "train-binarization"))
    dynamic = config.likelihood.binarize == "dynamic"
    x_val = eval_targets(config, splits.val.to(device), 1)
    # a conditional model's labels, sliced beside their images (None: unconditional)
    y_train = model_labels(model, splits, "train", device)
    y_val = model_labels(model, splits, "val", device)
    precision = resolve_precision(
        config.precision, device, config.model["architecture"], splits.image_shape
    )
    kept = (average.model, average.likelihood) if average is not None else (model, likelihood)
    result = TrainResult(*kept, device, sum(p.numel() for p in params), precision)
    # bf16 for the networks' forward and backward only; the loss terms are computed in fp32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    # ... or (a CPU's faster way) fp32 throughout, bf16 inputs inside the products only
    bf16_products = Bf16Matmul(precision == "bf16-matmul")

    n, bs = len(x_train), config.batch_size
    steps_per_epoch = math.ceil(n / bs)
    free_bits, clip, k = config.free_bits, config.grad_clip, config.objective_k
    step, train_seconds, val_seconds, first_epoch = 0, 0.0, 0.0, 1
    rng = _rng_state(device)  # after weight init: where epoch 1 starts
    state = checkpoints.load() if checkpoints is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        likelihood.load_state_dict(state["likelihood"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if average is not None and state.get("average") is not None:  # older: none kept
            average.load_state_dict(state["average"])
        gen.set_state(state["generator"].to("cpu", torch.uint8))
        if state.get("rng") is not None:  # older checkpoints lack it: resumed, not bit-exact
            rng = state["rng"]
        step, train_seconds = state["step"], state["train_seconds"]
        result.history = [_epoch_from_dict(h) for h in state["history"]]
        val_seconds = result.history[-1].val_seconds
        first_epoch = state["epoch"] + 1
        result.resumed_from_epoch = state["epoch"]
    for epoch in range(first_epoch, config.epochs + 1):
        if seconds_limit is not None and train_seconds >= seconds_limit and result.history:
            result.capped = True  # a resumed run that had already spent its seconds
            break
        # every epoch starts from the RNG state saved with the previous one, resumed or not,
        # so whatever `on_epoch` draws from the global RNG cannot make the two runs differ
        _set_rng_state(rng, device)
        started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        shuffled = x_train[order]
        shuffled_y = None if y_train is None else y_train[order]
        if dynamic:  # fresh binary images every epoch
            shuffled = torch.bernoulli(shuffled, generator=gen)
        loss_sum = torch.zeros((), device=device)
        seen = n
        with bf16_products:
            for start in range(0, n, bs):
                if should_stop is not None and should_stop():
                    raise TrainingInterrupted(f"stopped in epoch {epoch} (not saved)")
                if (
                    seconds_limit is not None
                    and start > 0
                    and train_seconds + time.perf_counter() - started >= seconds_limit
                ):
                    result.capped, seen = True, start
                    break
                xb = shuffled[start : start + bs]
                yb = None if shuffled_y is None else shuffled_y[start : start + bs]
                step += 1
                weight = kl_weight(config, step, steps_per_epoch, config.epochs)
                with autocast:
                    out = model(xb, gen, k, yb)  # k posterior samples per image (IWAE's k)
                log_px = likelihood.log_prob(out.logits.float(), tile(xb, k)).view(k, len(xb))
                loss = -training_bound(log_px, out.posterior, weight, free_bits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                if average is not None:
                    average.step()
                loss_sum += loss.detach() * len(xb)
        if average is not None:
            average.flush()  # the epoch's last steps: the model validated is this epoch's
        rng = _rng_state(device)  # where training left the global RNGs: the next epoch's start
        if scheduler is not None:
            scheduler.step()
        train_loss = loss_sum.item() / seen  # the one sync per epoch
        train_seconds += time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"non-finite training loss ({train_loss}) in epoch {epoch}")
        started = time.perf_counter()
        val = evaluate(*kept, x_val, config.eval_batch_size, val_seed, y_val)
        val_seconds += time.perf_counter() - started
        if not math.isfinite(val.elbo):
            raise NonFiniteLoss(f"non-finite validation ELBO ({val.elbo}) after epoch {epoch}")
        wall = time.perf_counter() - run_started
        rate = (n * (epoch - 1) + seen) / train_seconds
        result.history.append(
            EpochResult(epoch, train_loss, val, train_seconds, wall, rate, val_seconds)
        )
        if checkpoints is not None:
            checkpoints.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "likelihood": likelihood.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "average": average.state_dict() if average is not None else None,
                    "generator": gen.get_state(),
                    "rng": rng,
                    "step": step,
                    "train_seconds": train_seconds,
                    "history": [asdict(h) for h in result.history],
                }
            )
        if on_epoch is not None:
            on_epoch(result)
        if result.capped:
            break
    uncompile_networks(model)
    return result


def _epoch_from_dict(d: dict[str, Any]) -> EpochResult:
    val = d["val"]
    keys = ("kl_per_dim", "active_dims", "active_units_per_layer")
    tuples = {k: tuple(val[k]) for k in keys if k in val}
    return EpochResult(**{**d, "val": Evaluation(**{**val, **tuples})})
