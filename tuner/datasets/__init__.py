"""Datasets by name, split into train/validation/test tensors held in memory.

A loader returns (train_pool, official_test_or_None) as float32 N x H x W arrays in [0, 1].
Validation is always carved from the training pool by the study seed, so every trial of a
study sees the same split; the test split is never used while tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tuner.datasets.arrays import load_array
from tuner.datasets.mnist_family import load_mnist_family
from tuner.seeds import derive


class DatasetChoice(Protocol):
    """Which dataset and how to split it (`tuner.spec.DatasetSpec` is one)."""

    name: str
    data_dir: str | None
    path: str | None
    key: str | None
    val_fraction: float
    test_fraction: float
    subset: int | None
    download: bool


Loader = Callable[[DatasetChoice], tuple[np.ndarray, "np.ndarray | None"]]
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
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def load_splits(spec: DatasetChoice, seed: int) -> Splits:
    """Load a dataset by name and split it deterministically from `seed`."""

    pool, test = _LOADERS[spec.name](spec)
    rng = np.random.default_rng(derive(seed, "split"))  # a stream of its own (tuner.seeds)
    order = rng.permutation(len(pool))
    if test is None:  # no official test split: carve one out first
        n_test = max(1, round(len(pool) * spec.test_fraction))
        test, order = pool[order[:n_test]], order[n_test:]
    n_val = max(1, round(len(order) * spec.val_fraction))
    val, train = pool[order[:n_val]], pool[order[n_val:]]
    if spec.subset is not None:
        train = train[: spec.subset]
    return Splits(
        *(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (train, val, test))
    )


@register("digits")
def _digits(spec: DatasetChoice) -> tuple[np.ndarray, None]:
    """scikit-learn's 1,797 8x8 handwritten digits (ship inside scikit-learn: no download)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images, None


def _local(path: str | None) -> Path | None:
    return Path(path).expanduser() if path else None


def _mnist_loader(name: str) -> Loader:
    def load(spec: DatasetChoice) -> tuple[np.ndarray, np.ndarray]:
        return load_mnist_family(name, _local(spec.data_dir), download=spec.download)

    load.__doc__ = f"{name}: 28x28 IDX files from --data-dir, else downloaded once to the cache."
    return load


for _name in ("mnist", "fashion-mnist", "kmnist"):
    register(_name)(_mnist_loader(_name))


@register("array")
def _array(spec: DatasetChoice) -> tuple[np.ndarray, None]:
    """The user's own images: a .npy/.npz file of N x H x W (or N x D) arrays."""
    return load_array(_local(spec.path), spec.key), None
