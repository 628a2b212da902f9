"""Sample quality as a Fréchet classifier distance: the Fréchet distance between Gaussians fitted
to the features of model samples and of real test images, in the feature space of a small
classifier trained on the dataset's own labels (not an Inception network: not an FID, and its
numbers do not compare with published FIDs).

The classifier is trained once per dataset, image shape and training data (a content hash) and
cached under the dataset cache (`$VAE_TUNE_CACHE/classifiers`); its test accuracy is reported
beside the distance, and so is the distance between as many real training and test images,
the floor a perfect model would reach at that sample size.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vae_tune.data import Splits
from vae_tune.data.download import cache_dir
from vae_tune.files import write_atomic
from vae_tune.seeds import derive

FEATURES = 64
HIDDEN = 256
EPOCHS = 5  # at least; small datasets get more, so every classifier sees MIN_STEPS batches
MIN_STEPS = 3000
BATCH = 128
VERSION = 1  # bump when the classifier or its training changes: old cache files are not used


class Classifier(nn.Module):
    """Images -> class logits, through a FEATURES-wide layer whose activations are compared."""

    def __init__(self, image_shape: tuple[int, int], classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(image_shape[0] * image_shape[1], HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Trained:
    classifier: Classifier
    accuracy: float  # on the test split
    path: Path  # its cache file
    cached: bool  # read from the cache rather than trained now


def _fingerprint(name: str, splits: Splits) -> str:
    h = hashlib.sha256(f"{VERSION}/{name}/{splits.image_shape}".encode())
    for t in (splits.train, splits.train_labels, splits.test, splits.test_labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _accuracy(classifier: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        right = sum(
            (classifier(x[i : i + 1024]).argmax(1) == y[i : i + 1024]).sum().item()
            for i in range(0, len(x), 1024)
        )
    return right / len(x)


def _train(splits: Splits, classes: int, seed: int, device: torch.device) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "classifier-init"))
        classifier = Classifier(splits.image_shape, classes)
    classifier.to(device)
    x, y = splits.train.to(device), splits.train_labels.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(derive(seed, "classifier-batches"))
    epochs = max(EPOCHS, math.ceil(MIN_STEPS / math.ceil(len(x) / BATCH)))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), BATCH):
            batch = order[start : start + BATCH]
            loss = nn.functional.cross_entropy(classifier(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return classifier.eval()


def _load(path: Path, splits: Splits, classes: int) -> tuple[Classifier, float] | None:
    """The cached classifier, or None when the file is missing or not one (it is retrained)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        classifier = Classifier(splits.image_shape, classes)
        classifier.load_state_dict(state["weights"])
        return classifier.eval(), float(state["accuracy"])
    except Exception:  # missing, damaged or foreign: train a fresh one over it
        return None


def classifier_for(name: str, splits: Splits, seed: int, device: torch.device) -> Trained:
    """The feature classifier of this dataset: from the cache, else trained and cached."""
    classes = splits.classes
    h, w = splits.image_shape
    path = cache_dir() / "classifiers" / f"{name}-{h}x{w}-{_fingerprint(name, splits)}.pt"
    loaded = _load(path, splits, classes)
    if loaded is not None:
        classifier, accuracy = loaded
        return Trained(classifier.to(device), accuracy, path, True)
    classifier = _train(splits, classes, seed, device)
    accuracy = _accuracy(classifier, splits.test.to(device), splits.test_labels.to(device))
    buffer = io.BytesIO()
    weights = {k: v.cpu() for k, v in classifier.state_dict().items()}
    torch.save({"weights": weights, "accuracy": accuracy}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue(), "classifier cache")
    return Trained(classifier, accuracy, path, False)


def features(classifier: Classifier, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        parts = [classifier.features(images[i : i + 1024]) for i in range(0, len(images), 1024)]
    return torch.cat(parts).double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
    rows of `a` and `b`; tr (S_a S_b)^(1/2) from the symmetric S_a^(1/2) S_b S_a^(1/2), whose
    eigenvalues are real and non-negative (no complex square roots)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    vals, vecs = np.linalg.eigh(s_a)
    root_a = (vecs * np.sqrt(vals.clip(min=0))) @ vecs.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


@dataclass(frozen=True)
class SampleQuality:
    distance: float  # model samples vs test images
    floor: float  # as many real training images vs the same test images
    examples: int
    accuracy: float  # the classifier's, on the test split
    classifier: Path
    cached: bool
    # a conditional model's: the share of samples drawn for class c the classifier calls c
    label_accuracy: float | None = None


def sample_quality(
    name: str,
    splits: Splits,
    sample: Callable[[int], torch.Tensor],
    n: int,
    seed: int,
    device: torch.device,
    labels: torch.Tensor | None = None,
) -> SampleQuality:
    """Fréchet classifier distance of `n` model samples (`sample(n)`: images in [0, 1]) to the
    first `n` test images, and of `n` training images to the same test images (the floor).
    `labels`: the classes a conditional model's samples were drawn for (their label accuracy
    is reported)."""
    trained = classifier_for(name, splits, seed, device)
    n = min(n, len(splits.test), len(splits.train))
    real = features(trained.classifier, splits.test[:n].to(device))
    gen = torch.Generator().manual_seed(derive(seed, "frechet-floor"))
    pick = torch.randperm(len(splits.train), generator=gen)[:n]
    floor = frechet_distance(features(trained.classifier, splits.train[pick].to(device)), real)
    drawn = sample(n).to(device)
    fake = features(trained.classifier, drawn)
    label_accuracy = None
    if labels is not None:
        with torch.no_grad():
            said = torch.cat([trained.classifier(b).argmax(1) for b in drawn.split(1024)])
        label_accuracy = (said == labels[:n].to(device)).double().mean().item()
    return SampleQuality(
        frechet_distance(fake, real),
        floor,
        n,
        trained.accuracy,
        trained.path,
        trained.cached,
        label_accuracy,
    )
