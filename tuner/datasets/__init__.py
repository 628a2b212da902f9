"""Datasets by name, split into train/validation/test tensors held in memory.

A loader returns (train_pool, official_test_or_None) as float32 N x H x W arrays in [0, 1].
Validation is always carved from the training pool by the study seed, so every trial of a
study sees the same split; the test split is never used while tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from tuner.spec import DatasetSpec

Loader = Callable[["DatasetSpec"], tuple[np.ndarray, "np.ndarray | None"]]
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


def load_splits(spec: DatasetSpec, seed: int) -> Splits:
    """Load a dataset by name and split it deterministically from `seed`."""
    pool, test = _LOADERS[spec.name](spec)
    rng = np.random.default_rng(seed)
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
def _digits(spec: DatasetSpec) -> tuple[np.ndarray, None]:
    """scikit-learn's 1,797 8x8 handwritten digits (ship inside scikit-learn: no download)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return images, None
