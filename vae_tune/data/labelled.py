"""Images with their class labels, as every loader returns them.

A VAE needs only the images, but evaluation (a classifier's features for sample quality) and
conditional models need the labels too: one type carries both, so each loader says once
whether its dataset has labels and every split keeps them aligned with their images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Labelled:
    """float32 N×H×W images in [0, 1] (a table: N×1×D features of any range) and, where the
    dataset has them, N int64 labels; a table also names its features and its classes."""

    images: np.ndarray
    labels: np.ndarray | None = None
    features: tuple[str, ...] | None = None  # a table's column names (None: images)
    label_names: tuple[str, ...] | None = None  # what each class index stands for

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def take(self, index: np.ndarray) -> Labelled:
        """The examples at `index`, labels and images alike."""
        labels = None if self.labels is None else self.labels[index]
        return Labelled(self.images[index], labels, self.features, self.label_names)
