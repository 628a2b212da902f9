"""MNIST, Fashion-MNIST and KMNIST: file names, mirrors, checksums and a loader.

All three ship as the same four IDX files, so one table and one loader cover them. A VAE only
needs the images, so only the two image files are required; the two label files are downloaded
with them (evaluation and conditional models use the labels) and read from a data dir or the
cache when they are there, checked against their images. Without both label files the data
has no labels.

Mirrors and md5s are those of torchvision (pytorch/vision, torchvision/datasets/mnist.py); the
md5s are of the published `.gz` files and are only checked on download. Files a user supplies
with a data dir are not md5-checked (they may be recompressed or uncompressed copies) but are
validated by shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_tune.data.download import cache_dir, fetch
from vae_tune.data.idx import read_idx
from vae_tune.data.labelled import Labelled
from vae_tune.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IMAGE_FILES = (TRAIN_IMAGES, TEST_IMAGES)
LABELS_FOR = {TRAIN_IMAGES: TRAIN_LABELS, TEST_IMAGES: TEST_LABELS}
DOWNLOADED = (*IMAGE_FILES, TRAIN_LABELS, TEST_LABELS)
IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class MnistFamily:
    """One dataset of the family: where to download it and the md5 of each `.gz` file."""

    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]

    def urls(self, filename: str) -> list[str]:
        return [mirror + filename for mirror in self.mirrors]


DATASETS: dict[str, MnistFamily] = {
    "mnist": MnistFamily(
        "mnist",
        # torchvision lists both; the S3 copy comes first because yann.lecun.com often
        # refuses scripted downloads nowadays.
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
            TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
            TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": MnistFamily(
        "fashion-mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
            TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
            TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "kmnist": MnistFamily(
        "kmnist",
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        {
            TRAIN_IMAGES: "bdb82020997e1d708af4cf47b453dcf7",
            TRAIN_LABELS: "e144d726b3acfaa3e44228e80efcd344",
            TEST_IMAGES: "5c965bf0a639b31b8f53240b1b52f4d7",
            TEST_LABELS: "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
}

# md5 of the *uncompressed* MNIST files: unlike the .gz md5s these survive recompression, so
# they identify the data itself (used by the tests on local copies).
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _find(folder: Path, filename: str) -> Path | None:
    """The file under its `.gz` name or its uncompressed name, whichever exists."""
    for candidate in (filename, filename.removesuffix(".gz")):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _missing_error(name: str, folder: Path, missing: list[str], why: str) -> DataError:
    """Say which files are missing where, and the ways to supply them."""
    listed = ", ".join(f"{f} (or {f.removesuffix('.gz')})" for f in missing)
    return DataError(
        f"{name}: {why}: missing {listed} in {folder}. Put these files (gzip-compressed or not) "
        "in a folder and point --data-dir DIR or dataset.data_dir at it, or leave the data "
        f"dir unset with downloads enabled to fetch them into {cache_dir() / name}."
    )


def _load_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(
            f"{path}: expected N×28×28 uint8 images, got shape {images.shape} dtype {images.dtype}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return images


def _load_labels(images_path: Path, n_images: int, labels_path: Path) -> np.ndarray:
    """The labels of the images in `images_path`, checked to belong to them."""
    labels = read_idx(labels_path)
    if labels.ndim != 1 or labels.shape[0] != n_images:
        raise DataError(
            f"{labels_path}: has shape {labels.shape} but {images_path} holds {n_images} "
            "images; the two files do not belong together"
        )
    if labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: expected uint8 class labels, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _to_float(images: np.ndarray) -> np.ndarray:
    out = images.astype(np.float32)
    out /= 255.0
    return out


def load_mnist_family(
    name: str, data_dir: Path | None, download: bool = True
) -> tuple[Labelled, Labelled]:
    """Return (train, test): float32 N×28×28 images scaled to [0, 1], with their labels when
    both label files are there."""
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")

    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"{name}: data dir {folder} does not exist or is not a directory; point "
                "--data-dir DIR or dataset.data_dir at a folder holding "
                f"{', '.join(IMAGE_FILES)}"
            )
        found = {f: _find(folder, f) for f in IMAGE_FILES}
        missing = [f for f, p in found.items() if p is None]
        if missing:
            raise _missing_error(name, folder, missing, "data dir is incomplete")
    else:
        folder = cache_dir() / name
        if download:
            found = {}
            for f in DOWNLOADED:
                try:
                    found[f] = fetch(spec.urls(f), f, folder, spec.md5[f])
                except DataError as e:
                    raise DataError(
                        f"{name}: {e}\nAlternatively put {', '.join(IMAGE_FILES)} in a folder "
                        "and point --data-dir DIR or dataset.data_dir at it."
                    ) from None
        else:
            found = {f: _find(folder, f) for f in IMAGE_FILES}
            missing = [f for f, p in found.items() if p is None]
            if missing:
                raise _missing_error(
                    name, folder, missing, "downloads are disabled and the cache is incomplete"
                )

    images = {f: _load_images(found[f]) for f in IMAGE_FILES}
    label_files = {f: _find(folder, LABELS_FOR[f]) for f in IMAGE_FILES}
    labels = {
        f: _load_labels(found[f], len(images[f]), p)
        for f, p in label_files.items()
        if p is not None
    }
    train, test = (
        Labelled(_to_float(images[f]), labels.get(f) if len(labels) == 2 else None)
        for f in IMAGE_FILES
    )
    return train, test
