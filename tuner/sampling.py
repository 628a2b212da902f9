"""`vae-tune sample`: pictures of what a trained model does, each captioned with what it shows,
which run and which seed.

Every random draw (prior noise, which test images) comes from a CPU generator seeded by
`tuner.seeds.derive(seed, ...)` and is moved to the model's device, so a seed gives the same
pictures on every run, and the same noise on a CPU and on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tuner.datasets import load_splits
from tuner.files import check_new_dir, write_atomic
from tuner.picture_grids import Block, figure, png_bytes
from tuner.rundir import Run, open_run
from tuner.seeds import derive
from tuner.train import eval_targets, score_test_split

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


def _test_images(run: Run, count: int, seed: int) -> torch.Tensor:
    """`count` test images (as the model is scored on them), chosen by the seed (repeated when
    the test split has fewer)."""
    config, device = run.config, run.saved.device
    test = load_splits(config.dataset, config.data_seed).test
    gen = torch.Generator().manual_seed(derive(seed, "sample-images"))
    pick = torch.randperm(len(test), generator=gen)[torch.arange(count) % len(test)]
    return eval_targets(config, test[pick].to(device), 2)


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

    def show(self, z: torch.Tensor) -> torch.Tensor:
        """Images to show for latent codes: the mean of p(x|z)."""
        return self.likelihood.mean(self.model.decode(z.to(self.device))).float().cpu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The z the decoder reads for an image: its posterior mean (through a flow, if any)."""
        return self.model.code(x)

    def samples(self) -> tuple[str, bytes]:
        r = self.request
        gen = torch.Generator().manual_seed(derive(r.seed, "sample-prior"))
        z = r.temperature * self.model.sample_prior(r.n, gen)  # two layers: z2, then p(z1|z2)
        images = self.show(z)
        cols = math.ceil(math.sqrt(r.n))
        rows = [images[i : i + cols] for i in range(0, r.n, cols)]
        if len(rows[-1]) < cols:  # fill the last row with blank cells
            blank = torch.ones(cols - len(rows[-1]), *images.shape[1:])
            rows[-1] = torch.cat([rows[-1], blank])
        caption = (
            f"{r.n} samples from the prior, z ~ N(0, {r.temperature:g}^2 I), each the mean of "
            f"p(x|z) | {self.tail}"
        )
        return "samples.png", png_bytes(*figure(caption, [Block(rows)]))

    def reconstructions(self) -> tuple[str, bytes]:
        x = _test_images(self.run, RECONSTRUCTED, self.request.seed)
        recon = self.show(self.encode(x))
        pairs = torch.stack([x.float().cpu(), recon], 1).flatten(0, 1)  # x1, r1, x2, r2, ...
        rows = list(pairs.split(8))
        caption = (
            "test images, each followed by its reconstruction (mean of p(x|z) at the "
            f"posterior mean) | {self.tail}"
        )
        return "reconstructions.png", png_bytes(*figure(caption, [Block(rows)]))

    def interpolations(self) -> tuple[str, bytes]:
        x = _test_images(self.run, 2 * PAIRS, self.request.seed)
        z = self.encode(x)
        a, b = z[:PAIRS], z[PAIRS:]
        t = torch.linspace(0, 1, STEPS, device=z.device)
        blocks = []
        for name, path in (("linear", lerp), ("spherical", slerp)):
            decoded = self.show(path(a, b, t).transpose(0, 1).flatten(0, 1))
            decoded = decoded.view(PAIRS, STEPS, *decoded.shape[1:])
            ends = x.float().cpu()
            rows = [
                torch.cat([ends[i : i + 1], decoded[i], ends[PAIRS + i : PAIRS + i + 1]])
                for i in range(PAIRS)
            ]
            blocks.append(Block(rows, title=f"{name} interpolation"))
        caption = (
            f"interpolations between pairs of test images: first and last column the images, "
            f"between them {STEPS} points from one posterior mean to the other, decoded | "
            f"{self.tail}"
        )
        return "interpolations.png", png_bytes(*figure(caption, blocks))

    def traversals(self) -> tuple[str, bytes]:
        r, run = self.request, self.run
        splits = load_splits(run.config.dataset, run.config.data_seed)
        scored = score_test_split(run.config, self.model, self.likelihood, splits, self.device)
        kl = torch.tensor(scored.kl_per_dim)
        order = torch.argsort(kl, descending=True, stable=True).tolist()
        latent = self.model.latent_dim
        if r.traverse_around == "image":
            base = self.encode(_test_images(run, 1, r.seed))[0].cpu()
            where = "the posterior mean of a test image"
        else:
            base = torch.zeros(latent)
            where = "zero"
        offsets = torch.linspace(-SPAN, SPAN, POINTS)
        z = base.repeat(latent, POINTS, 1)  # dim x point x L
        for row, d in enumerate(order):
            z[row, :, d] += offsets
        images = self.show(z.flatten(0, 1)).view(latent, POINTS, *run.saved.image_shape)
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


@torch.no_grad()
def draw_pictures(
    path: Path,
    request: Request,
    out: Path | None = None,
    device: str | None = None,
    data_dir: str | None = None,
) -> list[Path]:
    """Write the requested pictures of the run at `path` into `out` (default RUN/pictures);
    returns their paths. `device` and `data_dir` as for `tuner.rundir.open_run`."""
    run = open_run(path, device, data_dir)
    folder = out if out is not None else run.pictures
    check_new_dir(folder, force=True, field="out")
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
