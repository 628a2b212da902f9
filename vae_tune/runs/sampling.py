"""`vae-tune sample`: pictures of what a trained model does, each captioned with what it shows,
which run and which seed.

Every random draw (prior noise, which test images) comes from a CPU generator seeded by
`vae_tune.seeds.derive(seed, ...)` and is moved to the model's device, so a seed gives the same
pictures on every run, and the same noise on a CPU and on a GPU.

A conditional model draws its samples for `--label C`, or one row per class; it reconstructs
test images with their own labels and interpolates between two test images of one class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_tune.data import Splits, load_splits
from vae_tune.errors import UserError
from vae_tune.files import check_new_dir, write_atomic
from vae_tune.runs.rundir import Run, open_run
from vae_tune.seeds import derive
from vae_tune.training.pictures import Block, figure, png_bytes, save_pictures
from vae_tune.training.trainer import eval_targets, score_test_split

RECONSTRUCTED = 16  # test images, shown as 4 rows of 4 (image, reconstruction) pairs
PAIRS = 5  # interpolated pairs of test images
STEPS = 8  # decoded points on each path, both ends included
SPAN = 3.0  # traversals: -SPAN .. +SPAN prior standard deviations
POINTS = 11  # traversal columns
TRAVERSE_AROUND = ("image", "zero")


@dataclass(frozen=True)
class Request:
    """Which pictures to draw; prior samples are always drawn."""

    n: int = 64
    temperature: float = 1.0
    reconstruct: bool = False
    interpolate: bool = False
    traverse: bool = False
    traverse_around: str = "image"
    seed: int = 0
    label: int | None = None  # a conditional model's class to draw (None: every class)


Labelled = tuple[torch.Tensor, torch.Tensor | None]  # images, and a conditional model's labels


def _test_images(run: Run, splits: Splits, count: int, seed: int, pairs: bool = False) -> Labelled:
    """`count` test images (as the model is scored on them), chosen by the seed (repeated when
    the test split has fewer), with their labels where the model is conditional. `pairs`: the
    second half has the classes of the first (interpolation end points of one class)."""
    config, device, model = run.config, run.saved.device, run.saved.model
    gen = torch.Generator().manual_seed(derive(seed, "sample-images"))
    order = torch.randperm(len(splits.test), generator=gen)
    pick = order[torch.arange(count) % len(order)]
    labels = splits.test_labels if model.conditional else None
    if labels is not None and pairs:
        half, names = count // 2, labels.tolist()
        firsts = pick[:half]
        seconds = [
            next((j for j in order.tolist() if names[j] == names[i] and j != i), i)
            for i in firsts.tolist()
        ]
        pick = torch.cat([firsts, torch.tensor(seconds, dtype=torch.long)])
    x = eval_targets(config, splits.test[pick].to(device), 2)
    return x, None if labels is None else labels[pick].to(device)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of `a` and `b` at each t (len(t) x B x L); where
    the two are (anti)parallel it falls back to the straight line."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
    omega = torch.arccos(cos)[None, :, None]
    t = t[:, None, None]
    sin = torch.sin(omega)
    safe = sin.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / sin.where(safe, 1), 1 - t)
    wb = torch.where(safe, torch.sin(t * omega) / sin.where(safe, 1), t)
    return wa * a + wb * b


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t[:, None, None]
    return (1 - t) * a + t * b


class _Drawer:
    """The model of a run and the caption's common tail."""

    def __init__(self, run: Run, request: Request):
        self.run, self.request = run, request
        self.model, self.likelihood = run.saved.model, run.saved.likelihood
        self.device = run.saved.device
        self.tail = f"run {run.path} | seed {request.seed}"
        self.splits = load_splits(run.config.dataset, run.config.data_seed)  # once per command

    def show(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images to show for latent codes (and a conditional model's labels, one per code, or
        one for all): the mean of p(x|z)."""
        z = z.to(self.device)
        if y is not None:
            y = y.to(self.device).expand(len(z))
        return self.likelihood.mean(self.model.decode(z, y)).float().cpu()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The z the decoder reads for an image: its posterior mean (through a flow, if any)."""
        return self.model.code(x, y)

    def label(self) -> torch.Tensor | None:
        """The --label as a one-element tensor (None: not asked for)."""
        label = self.request.label
        return None if label is None else torch.tensor([label])

    def samples(self) -> tuple[str, bytes]:
        r = self.request
        gen = torch.Generator().manual_seed(derive(r.seed, "sample-prior"))
        classes = self.model.classes if self.model.conditional and r.label is None else 0
        cols = math.ceil(r.n / classes) if classes else math.ceil(math.sqrt(r.n))
        count = cols * classes if classes else r.n
        z = r.temperature * self.model.sample_prior(count, gen)  # two layers: z2, p(z1|z2)
        labels: list[str] = []
        if classes:  # row c: class c
            images = self.show(z, torch.arange(classes).repeat_interleave(cols))
            labels = [f"y = {c}" for c in range(classes)]
            given = f", {cols} for each class y (one row each)"
        else:
            images = self.show(z, self.label())
            given = "" if r.label is None else f", all given the label y = {r.label}"
        rows = [images[i : i + cols] for i in range(0, count, cols)]
        if len(rows[-1]) < cols:  # fill the last row with blank cells
            blank = torch.ones(cols - len(rows[-1]), *images.shape[1:])
            rows[-1] = torch.cat([rows[-1], blank])
        caption = (
            f"{count} samples from the prior, z ~ N(0, {r.temperature:g}^2 I){given}, each the "
            f"mean of p(x|z) | {self.tail}"
        )
        return "samples.png", png_bytes(*figure(caption, [Block(rows, row_labels=labels)]))

    def reconstructions(self) -> tuple[str, bytes]:
        x, y = _test_images(self.run, self.splits, RECONSTRUCTED, self.request.seed)
        recon = self.show(self.encode(x, y), y)
        pairs = torch.stack([x.float().cpu(), recon], 1).flatten(0, 1)  # x1, r1, x2, r2, ...
        rows = list(pairs.split(8))
        caption = (
            "test images, each followed by its reconstruction (mean of p(x|z) at the "
            f"posterior mean) | {self.tail}"
        )
        return "reconstructions.png", png_bytes(*figure(caption, [Block(rows)]))

    def interpolations(self) -> tuple[str, bytes]:
        x, y = _test_images(self.run, self.splits, 2 * PAIRS, self.request.seed, pairs=True)
        z = self.encode(x, y)
        a, b = z[:PAIRS], z[PAIRS:]
        t = torch.linspace(0, 1, STEPS, device=z.device)
        path_labels = None if y is None else y[:PAIRS].repeat_interleave(STEPS)  # pair-major
        blocks = []
        for name, path in (("linear", lerp), ("spherical", slerp)):
            decoded = self.show(path(a, b, t).transpose(0, 1).flatten(0, 1), path_labels)
            decoded = decoded.view(PAIRS, STEPS, *decoded.shape[1:])
            ends = x.float().cpu()
            rows = [
                torch.cat([ends[i : i + 1], decoded[i], ends[PAIRS + i : PAIRS + i + 1]])
                for i in range(PAIRS)
            ]
            blocks.append(Block(rows, title=f"{name} interpolation"))
        caption = (
            f"interpolations between pairs of test images{' of one class' if y is not None else ''}"
            f": first and last column the images, between them {STEPS} points from one "
            f"posterior mean to the other, decoded{' with their label' if y is not None else ''}"
            f" | {self.tail}"
        )
        return "interpolations.png", png_bytes(*figure(caption, blocks))

    def traversals(self) -> tuple[str, bytes]:
        r, run = self.request, self.run
        scored = score_test_split(run.config, self.model, self.likelihood, self.splits, self.device)
        kl = torch.tensor(scored.kl_per_dim)
        order = torch.argsort(kl, descending=True, stable=True).tolist()
        latent = self.model.latent_dim
        y = self.label() if self.model.conditional else None
        if r.traverse_around == "image":
            x, y_image = _test_images(run, self.splits, 1, r.seed)
            y = y_image if y is None else y
            base = self.encode(x, y_image)[0].cpu()
            where = "the posterior mean of a test image"
        else:
            y = torch.zeros(1, dtype=torch.long) if self.model.conditional and y is None else y
            base = torch.zeros(latent)
            where = "zero"
        if y is not None:
            where += f", decoded with the label y = {int(y[0])}"
        offsets = torch.linspace(-SPAN, SPAN, POINTS)
        z = base.repeat(latent, POINTS, 1)  # dim x point x L
        for row, d in enumerate(order):
            z[row, :, d] += offsets
        images = self.show(z.flatten(0, 1), y).view(latent, POINTS, *run.saved.image_shape)
        labels = [
            f"z{d} KL {kl[d]:.2f}" + ("" if d in scored.active_dims else " inactive") for d in order
        ]
        caption = (
            f"latent traversals: one row per dimension, highest KL (nats, test set) first; "
            f"{POINTS} steps from -{SPAN:g} to +{SPAN:g} prior standard deviations around "
            f"{where}; inactive = collapsed unit | {self.tail}"
        )
        return "traversals.png", png_bytes(
            *figure(caption, [Block(list(images), row_labels=labels)])
        )


def _vector_pictures(run: Run, request: Request, folder: Path) -> list[Path]:
    """A table model's pictures (reconstruction against truth, marginals against prior
    samples, the latent means) on its test rows; interpolations and traversals are for
    images."""
    if request.interpolate or request.traverse:
        raise UserError(
            "interpolations and traversals are drawn for images; a table model draws its "
            "reconstructions, marginals and latent means",
            "--interpolate" if request.interpolate else "--traverse",
        )
    splits = load_splits(run.config.dataset, run.config.data_seed)
    device = run.saved.device
    x = splits.test.to(device)
    caption = f"run {run.path.name}, test rows, seed {request.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    return save_pictures(run.saved.model, run.saved.likelihood, x, folder, request.seed,
                         caption, splits=splits, split="test")


@torch.no_grad()
def draw_pictures(
    path: Path,
    request: Request,
    out: Path | None = None,
    device: str | None = None,
    data_dir: str | None = None,
) -> list[Path]:
    """Write the requested pictures of the run at `path` into `out` (default RUN/pictures);
    returns their paths. `device` and `data_dir` as for `vae_tune.runs.rundir.open_run`."""
    run = open_run(path, device, data_dir)
    model = run.saved.model
    if request.label is not None and not model.conditional:
        raise UserError(
            f"{request.label} asked for, but the model of {path} is not conditional (train "
            "one with `conditional: true` in its model config)",
            "--label",
        )
    if request.label is not None and not 0 <= request.label < model.classes:
        raise UserError(
            f"{request.label} is not a class of this model (0 to {model.classes - 1})",
            "--label",
        )
    folder = out if out is not None else run.pictures
    check_new_dir(folder, force=True, field="out")
    if run.config.dataset.vectors:
        return _vector_pictures(run, request, folder)
    drawer = _Drawer(run, request)
    wanted = [drawer.samples]
    wanted += [drawer.reconstructions] if request.reconstruct else []
    wanted += [drawer.interpolations] if request.interpolate else []
    wanted += [drawer.traversals] if request.traverse else []
    pictures = [make() for make in wanted]  # all drawn before any is written
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in pictures:
        write_atomic(folder / name, data, "out")
        paths.append(folder / name)
    return paths
