"""Datasets by name, split into train/validation/test tensors held in memory.

A loader returns (train_pool, official_test_or_None) as `Labelled` images: float32 N x H x W
arrays in [0, 1], with int64 class labels where the dataset has them; a table
(`vae_tune.data.tables`) is N x 1 x D features of any range, standardized here when asked,
from the training split alone. Validation is always
carved from the training pool by the study seed, so every trial of a study sees the same
split; the test split is never used while tuning. Labels follow their images through the
same permutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vae_tune.data.arrays import load_array, load_labels
from vae_tune.data.digits import load_digits_cached
from vae_tune.data.labelled import Labelled
from vae_tune.data.mnist_family import load_mnist_family
from vae_tune.data.tables import check_fits, load_table
from vae_tune.seeds import derive


class DatasetChoice(Protocol):
    """Which dataset and how to split it (`vae_tune.tuning.spec.DatasetSpec` is one)."""

    name: str
    data_dir: str | None
    path: str | None
    key: str | None
    labels_key: str | None
    columns: list[str] | None
    labels: str | None
    standardize: bool | None
    val_fraction: float
    test_fraction: float
    subset: int | None
    download: bool


Loader = Callable[[DatasetChoice], tuple[Labelled, "Labelled | None"]]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def add(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return add


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


@dataclass(frozen=True)
class Splits:
    """Images per split; the labels (int64, aligned with the images) where the dataset has
    them for every split, else None."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    features: tuple[str, ...] | None = None  # a table's column names (None: images)
    label_names: tuple[str, ...] | None = None
    source: str = ""  # the file it came from, for messages
    # a standardized table: the training split's (mean, std) per feature, 1 x D each
    standardization: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def vectors(self) -> bool:
        """Whether the examples are a table's rows rather than images."""
        return self.features is not None

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    @property
    def labelled(self) -> bool:
        return self.train_labels is not None

    @property
    def classes(self) -> int:
        """How many classes the labels name (the largest label + 1, over all splits); 0
        without labels. A conditional model's one-hot inputs are this wide."""
        if self.train_labels is None or self.val_labels is None or self.test_labels is None:
            return 0
        labels = (self.train_labels, self.val_labels, self.test_labels)
        return 1 + max(int(t.max()) for t in labels if len(t))

    def labels(self, split: str) -> torch.Tensor | None:
        """The labels of `split` (train, val or test), None without labels."""
        return getattr(self, f"{split}_labels")


def load_splits(spec: DatasetChoice, seed: int, likelihood: str | None = None) -> Splits:
    """Load a dataset by name and split it deterministically from `seed`; with `likelihood`,
    first check that it can model every value (raises DataError naming the first that not)."""

    pool, test = _LOADERS[spec.name](spec)
    if likelihood is not None:
        source = str(spec.path or spec.name)
        for part in (pool, test) if test is not None else (pool,):
            check_fits(likelihood, part.images, part.features or (), source)
    rng = np.random.default_rng(derive(seed, "split"))  # a stream of its own (vae_tune.seeds)
    order = rng.permutation(len(pool.images))
    if test is None:  # no official test split: carve one out first
        n_test = max(1, round(len(order) * spec.test_fraction))
        test, order = pool.take(order[:n_test]), order[n_test:]
    n_val = max(1, round(len(order) * spec.val_fraction))
    val, train = pool.take(order[:n_val]), pool.take(order[n_val:])
    if spec.subset is not None:
        train = train.take(np.arange(min(spec.subset, len(train.images))))
    parts = (train, val, test)
    images = [torch.from_numpy(np.ascontiguousarray(p.images, dtype=np.float32)) for p in parts]
    scale = None
    if spec.standardize and pool.features is not None:
        mean = images[0].mean(0)
        std = images[0].std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature stays as is
        images = [(x - mean) / std for x in images]
        scale = (mean, std)
    about = {
        "features": pool.features,
        "label_names": pool.label_names,
        "source": str(spec.path or spec.name),
        "standardization": scale,
    }
    if any(p.labels is None for p in parts):  # labels for some splits only: none at all
        return Splits(*images, **about)
    labels = [torch.from_numpy(np.ascontiguousarray(p.labels, dtype=np.int64)) for p in parts]
    return Splits(*images, *labels, **about)


@register("digits")
def _digits(spec: DatasetChoice) -> tuple[Labelled, None]:
    """scikit-learn's 1,797 8x8 handwritten digits (ship inside scikit-learn: no download)."""
    return load_digits_cached(), None


def _local(path: str | None) -> Path | None:
    return Path(path).expanduser() if path else None


def _mnist_loader(name: str) -> Loader:
    def load(spec: DatasetChoice) -> tuple[Labelled, Labelled]:
        return load_mnist_family(name, _local(spec.data_dir), download=spec.download)

    load.__doc__ = f"{name}: 28x28 IDX files from --data-dir, else downloaded once to the cache."
    return load


for _name in ("mnist", "fashion-mnist", "kmnist"):
    register(_name)(_mnist_loader(_name))


@register("table")
def _table(spec: DatasetChoice) -> tuple[Labelled, None]:
    """The user's own table: rows of numeric features (.npy, .npz, .csv, .parquet, .h5ad),
    any range, with labels when `labels` names a column, a key or a file."""
    return load_table(_local(spec.path), spec.key, spec.columns, spec.labels), None


@register("array")
def _array(spec: DatasetChoice) -> tuple[Labelled, None]:
    """The user's own images: a .npy/.npz file of N x H x W (or N x D) arrays, and their
    labels when `labels_key` names an array of the same .npz."""
    path = _local(spec.path)
    images = load_array(path, spec.key)
    labels = load_labels(path, spec.labels_key, len(images)) if spec.labels_key else None
    return Labelled(images, labels), None
