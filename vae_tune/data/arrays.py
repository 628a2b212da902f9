"""User-supplied image arrays in `.npy` / `.npz` files.

Users bring their own data as numpy files; everything that would make training silently wrong
(wrong scale, NaNs, labels passed instead of images, a handful of rows) is rejected here with
a DataError naming the file, rather than surfacing later as a NaN loss.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

from vae_tune.errors import DataError

MIN_ROWS = 10


def read_array(path: Path, key: str | None, others: frozenset[str] = frozenset()) -> np.ndarray:
    """The array stored in `path`; for an npz, the one named `key` or the only one besides
    `others` (arrays that hold something else, such as the labels)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            if key is not None:
                raise DataError(f"{path}: key {key!r} given, but keys only apply to .npz files")
            return loaded
        with loaded:
            keys = list(loaded.files)
            if key is None:
                rest = [k for k in keys if k not in others]
                if len(rest) != 1:
                    raise DataError(
                        f"{path}: holds {len(rest)} arrays ({', '.join(rest) or 'none'}); "
                        "say which one to use with a key"
                    )
                key = rest[0]
            elif key not in keys:
                raise DataError(
                    f"{path}: no array named {key!r}; keys: {', '.join(keys) or '(none)'}"
                )
            return loaded[key]
    except DataError:
        raise
    except ValueError as e:
        if "Object arrays" in str(e):
            raise DataError(
                f"{path}: holds an object array, which is not loaded (it would need pickle); "
                "save a numeric uint8 or float array instead"
            ) from None
        if "pickled" in str(e):
            raise DataError(f"{path}: not a .npy or .npz file") from None
        raise DataError(f"{path}: cannot read as .npy/.npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise DataError(f"{path}: cannot read as .npy/.npz ({e})") from None


def _as_images(path: Path, arr: np.ndarray) -> np.ndarray:
    """N×H×W view of an N×H×W or N×D array (square D becomes √D×√D, else 1×D)."""
    if arr.ndim == 2:
        n, d = arr.shape
        side = math.isqrt(d)
        arr = arr.reshape(n, side, side) if side * side == d else arr.reshape(n, 1, d)
    elif arr.ndim != 3:
        raise DataError(
            f"{path}: expected an N×H×W or N×D array, got {arr.ndim} dimension(s) "
            f"with shape {arr.shape}"
        )
    if arr.shape[0] < MIN_ROWS:
        raise DataError(
            f"{path}: only {arr.shape[0]} samples (shape {arr.shape}); need at least {MIN_ROWS}"
        )
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{path}: empty images (shape {arr.shape})")
    return arr


def _scaled(path: Path, arr: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 is divided by 255, floats must already be in range."""
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32)
        out /= 255.0
        return out
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"{path}: unsupported dtype {arr.dtype}; use uint8 (0-255) or float in [0, 1] "
            "(e.g. arr.astype(np.uint8) for integer pixel values)"
        )
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{path}: float values must lie in [0, 1], found range [{lo:g}, {hi:g}]; "
            "rescale them (or save uint8 0-255)"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_array(path: Path, key: str | None = None) -> np.ndarray:
    """Load user images from .npy/.npz as a float32 N×H×W array in [0, 1]."""
    path = Path(path).expanduser()
    arr = read_array(path, key)
    return _scaled(path, _as_images(path, arr))


def load_labels(path: Path, key: str, n_images: int) -> np.ndarray:
    """The class labels stored under `key` in the same .npz as the images: N non-negative
    integers, one per image (int64)."""
    path = Path(path).expanduser()
    labels = read_array(path, key)
    if labels.ndim != 1 or labels.shape[0] != n_images:
        raise DataError(
            f"{path}: labels {key!r} have shape {labels.shape}, but there are {n_images} "
            "images; expected one label per image"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise DataError(
            f"{path}: labels {key!r} must be non-negative integers (class numbers), got "
            f"dtype {labels.dtype}"
        )
    return labels.astype(np.int64)
