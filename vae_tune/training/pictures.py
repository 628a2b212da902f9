"""Labelled pictures: grids of images with a caption saying what they show, row labels and
titled blocks, so a picture read away from its command still says what, which run, which seed.

The layout of every grid is also stored in the PNG (a `layout` text chunk, JSON: each block's
box in pixels, rows, columns, image size and scale), for tools and tests that read the cells.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from vae_tune.data import Splits
from vae_tune.models import VAE
from vae_tune.models.likelihoods import Likelihood
from vae_tune.training.diagnostics import image_grid
from vae_tune.training.vector_pictures import save_vector_pictures

FONT_SIZE = 12
PAD = 4  # pixels around text
MIN_WIDTH = 320  # pixels: small images are enlarged to about this, and a caption needs room
MAX_CLASS_ROWS = 16  # a conditional model's samples: one row per class, at most this many


@dataclass
class Block:
    """Rows of images (each row the same number of images), with an optional title above and
    an optional label left of each row."""

    rows: list[torch.Tensor]  # each cols x H x W in [0, 1]
    title: str | None = None
    row_labels: list[str] = field(default_factory=list)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _wrap(text: str, width: int, font) -> list[str]:
    """Greedy word wrap to `width` pixels (a word longer than the width gets its own line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and font.getlength(trial) > width - 2 * PAD:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _text_strip(text: str, width: int, font) -> Image.Image:
    lines = _wrap(text, width, font)
    line_h = FONT_SIZE + 3
    strip = Image.new("L", (width, len(lines) * line_h + 2 * PAD), 255)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((PAD, PAD + i * line_h), line, fill=0, font=font)
    return strip


def figure(caption: str, blocks: list[Block]) -> tuple[Image.Image, dict]:
    """One greyscale picture: the caption on top, then each block (title, labelled rows).
    Every block is drawn at one scale, so the cells of all blocks have the same size."""
    font = _font()
    h, w = blocks[0].rows[0].shape[1:]
    widest = max(len(b.rows[0]) * (w + 1) + 1 for b in blocks)
    scale = max(1, MIN_WIDTH // widest)
    labels = [label for b in blocks for label in b.row_labels]
    label_w = int(max((font.getlength(t) for t in labels), default=0)) + 3 * PAD if labels else 0
    width = max(MIN_WIDTH, label_w + widest * scale)
    parts: list[tuple[Image.Image, int, dict | None]] = [
        (_text_strip(caption, width, font), 0, None)
    ]
    for b in blocks:
        if b.title:
            parts.append((_text_strip(b.title, width, font), 0, None))
        grid = image_grid(torch.cat(b.rows).float(), len(b.rows[0]), scale)
        column = Image.new("L", (label_w, grid.height), 255)  # all grids line up
        draw = ImageDraw.Draw(column)
        for r, label in enumerate(b.row_labels):
            y = scale + r * (h + 1) * scale + (h * scale - FONT_SIZE) // 2
            draw.text((PAD, y), label, fill=0, font=font)
        parts.append((_side_by_side(column, grid), label_w, _info(b, h, w, scale)))
    canvas = Image.new("L", (width, sum(p.height for p, _, _ in parts)), 255)
    y, layout = 0, []
    for picture, grid_x, info in parts:
        canvas.paste(picture, (0, y))
        if info is not None:
            box_w = (info["cols"] * (w + 1) + 1) * scale
            box_h = (info["rows"] * (h + 1) + 1) * scale
            layout.append({**info, "box": [grid_x, y, grid_x + box_w, y + box_h]})
        y += picture.height
    return canvas, {"caption": caption, "blocks": layout}


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    both = Image.new("L", (left.width + right.width, max(left.height, right.height)), 255)
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    return both


def _info(b: Block, h: int, w: int, scale: int) -> dict:
    return {
        "title": b.title,
        "rows": len(b.rows),
        "cols": len(b.rows[0]),
        "image": [h, w],
        "scale": scale,
        "row_labels": b.row_labels,
    }


def png_bytes(picture: Image.Image, layout: dict) -> bytes:
    """The PNG file, its caption and layout stored as text chunks (same input, same bytes)."""
    info = PngInfo()
    info.add_text("caption", layout["caption"])
    info.add_text("layout", json.dumps(layout["blocks"]))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, optimize=True)
    return buffer.getvalue()


@torch.no_grad()
def save_pictures(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    folder: Path,
    seed: int,
    caption: str,
    n: int = 8,
    labels: torch.Tensor | None = None,
    splits: Splits | None = None,
    split: str = "val",
) -> list[Path]:
    """Write `reconstructions.png` (rows: originals, reconstructions) and `samples.png` (prior
    samples), each captioned with `caption` (which trial or run, beta, ELBO). A conditional
    model reconstructs with the images' `labels` and draws one row of samples per class.
    A table's rows (`splits` of vectors) get the pictures of `vector_pictures` instead,
    coloured by the labels of `split` where the data has them."""
    if splits is not None and splits.features is not None:
        data_labels = splits.labels(split)
        return save_vector_pictures(
            model, likelihood, x, folder, seed, caption, splits.features,
            None if data_labels is None else data_labels.to(x.device), splits.label_names,
        )
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    originals = x[:n]
    y = None if labels is None else labels[:n]
    recon = likelihood.mean(model.decode(model.code(originals, y), y))
    rows, row_labels = n, []
    y_samples = None
    if model.conditional:  # row c: class c
        rows = min(model.classes, MAX_CLASS_ROWS)
        y_samples = torch.arange(rows, device=x.device).repeat_interleave(n)
        row_labels = [f"y = {c}" for c in range(rows)]
    z = model.sample_prior(rows * n, gen)
    samples = likelihood.mean(model.decode(z, y_samples)).float()
    model.train(was_training)
    pairs = Block([originals.float(), recon.float()], row_labels=["original", "reconstruction"])
    given = ", one row per class y" if model.conditional else ""
    drawn = {
        "reconstructions.png": figure(f"Reconstructions (posterior means): {caption}", [pairs]),
        "samples.png": figure(
            f"Prior samples, z ~ p(z){given}, seed {seed}: {caption}",
            [Block(list(samples.view(rows, n, *samples.shape[1:])), row_labels=row_labels)],
        ),
    }
    paths = []
    for name, (picture, layout) in drawn.items():
        (folder / name).write_bytes(png_bytes(picture, layout))
        paths.append(folder / name)
    return paths
