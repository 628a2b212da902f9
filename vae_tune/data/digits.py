"""scikit-learn's 8x8 digits, kept as one small array file in the dataset cache.

Importing scikit-learn costs a second or two, more than a quickstart trial's training: every
process that loads the digits (each worker, `train`, `sample`) would pay it. scikit-learn
loads them once; the arrays (1,797 x 8 x 8) are then read from the cache, under a name that
carries scikit-learn's version so an upgrade loads them afresh.
"""

from __future__ import annotations

import io
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from vae_tune.data.download import cache_dir
from vae_tune.data.labelled import Labelled
from vae_tune.errors import ServiceError, UserError
from vae_tune.files import write_atomic

log = logging.getLogger(__name__)


def digits_cache_file() -> Path:
    try:
        release = version("scikit-learn")
    except PackageNotFoundError:
        release = "missing"
    return cache_dir() / "digits" / f"digits-sklearn-{release}.npz"


def load_digits_cached() -> Labelled:
    """The digits as float32 images in [0, 1] with their labels: from the cache when there,
    else from scikit-learn (then cached; a cache that cannot be written is only logged)."""
    path = digits_cache_file()
    try:
        with np.load(path) as arrays:
            return Labelled(arrays["images"], arrays["labels"])
    except (OSError, KeyError, ValueError):
        pass  # not cached yet, or a damaged file: load afresh and cache again
    from sklearn.datasets import load_digits  # lazy: heavy, and only for the first load

    digits = load_digits()
    found = Labelled(digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64))
    buffer = io.BytesIO()
    np.savez(buffer, images=found.images, labels=found.labels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue(), field="VAE_TUNE_CACHE")
    except (OSError, ServiceError, UserError) as err:
        log.debug("digits not cached at %s: %s", path, err)
    return found
