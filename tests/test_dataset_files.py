"""File-level dataset loaders: IDX parsing, checksummed downloads, MNIST family, user arrays.

Everything runs on tiny files written into tmp_path and a local HTTP server on 127.0.0.1, so
no test touches the network; the real-MNIST test uses a local copy and skips without one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_tune.data import mnist_family
from vae_tune.data.arrays import load_array
from vae_tune.data.download import cache_dir, fetch, file_md5
from vae_tune.data.idx import read_idx
from vae_tune.data.mnist_family import (
    DATASETS,
    MNIST_RAW_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    load_mnist_family,
)
from vae_tune.errors import DataError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise `arr` as IDX: 0x0000, type code, ndim, big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[arr.dtype], arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5),
        np.array([7, 0, 255, 3], dtype=np.uint8),
        np.array([[-5, 70000], [1, 2]], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float32),
    ],
    ids=["u8-3d", "u8-1d", "i32-2d", "f32-1d"],
)
def test_idx_round_trip(tmp_path, arr, compress):
    # The name never says ".gz": compression is detected from the content.
    out = read_idx(write_idx(tmp_path / "data.idx", arr, compress))
    assert out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0] = out[0]  # writable, not a view on the file bytes


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:2], "not an IDX file"),
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "bad magic"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    ],
    ids=["short-data", "extra-data", "short-header", "tiny", "magic", "dtype-code", "ndim-0"],
)
def test_idx_corrupt_rejected(tmp_path, mutate, expect, compress):
    data = mutate(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8)))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match=expect) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_truncated_gzip_rejected(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "images.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- download


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (status, body, declared_length)` and counts hits."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.hits.append(self.path)
        status, body, declared = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # a short body then a hang-up, for the "interrupted" case

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_downloads_then_uses_cache(server, tmp_path):
    body = b"hello dataset" * 1000
    server.routes["/a/file.gz"] = (200, body, None)
    dest = tmp_path / "cache" / "ds"  # created on demand
    path = fetch([server.base + "/a/file.gz"], "file.gz", dest, md5(body))
    assert path == dest / "file.gz" and path.read_bytes() == body
    assert leftovers(dest) == ["file.gz"]
    assert fetch([server.base + "/a/file.gz"], "file.gz", dest, md5(body).upper()) == path
    assert server.hits == ["/a/file.gz"]  # second call served from the cache


def test_fetch_replaces_cached_file_with_wrong_md5(server, tmp_path):
    body = b"good bytes"
    server.routes["/f"] = (200, body, None)
    (tmp_path / "f").write_bytes(b"stale")
    assert fetch([server.base + "/f"], "f", tmp_path, md5(body)).read_bytes() == body
    assert server.hits == ["/f"]


def test_fetch_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.routes["/f.gz"] = (200, b"tampered", None)
    url = server.base + "/f.gz"
    with pytest.raises(DataError, match="md5 mismatch") as err:
        fetch([url], "f.gz", tmp_path, md5(b"expected"))
    assert url in str(err.value)
    assert leftovers(tmp_path) == []


def test_fetch_interrupted_download_leaves_nothing(server, tmp_path):
    body = b"x" * 5000
    server.routes["/f.gz"] = (200, body, len(body) + 10_000)  # promises more than it sends
    with pytest.raises(DataError, match="incomplete") as err:
        fetch([server.base + "/f.gz"], "f.gz", tmp_path, md5(body + b"y" * 10_000))
    assert "/f.gz" in str(err.value)
    assert leftovers(tmp_path) == []


def test_fetch_falls_back_to_second_mirror(server, tmp_path):
    body = b"mirror two"
    server.routes["/two/f.gz"] = (200, body, None)
    urls = [server.base + "/one/f.gz", server.base + "/two/f.gz"]
    assert fetch(urls, "f.gz", tmp_path, md5(body)).read_bytes() == body
    assert server.hits == ["/one/f.gz", "/two/f.gz"]
    assert leftovers(tmp_path) == ["f.gz"]


def test_fetch_all_mirrors_fail_lists_each(server, tmp_path):
    urls = [server.base + "/one/f.gz", server.base + "/two/f.gz"]
    with pytest.raises(DataError) as err:
        fetch(urls, "f.gz", tmp_path, md5(b"whatever"))
    message = str(err.value)
    assert all(url in message for url in urls) and "404" in message
    assert leftovers(tmp_path) == []


def test_fetch_unreachable_host(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    url = f"http://127.0.0.1:{srv.server_address[1]}/f"
    srv.server_close()  # nothing listens on that port any more
    with pytest.raises(DataError, match="127.0.0.1"):
        fetch([url], "f", tmp_path, md5(b""), timeout=5)
    assert leftovers(tmp_path) == []


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VAE_TUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "vae-tune"


# --------------------------------------------------------------------------- MNIST family


def fake_images(n: int, seed: int) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


def write_family(folder: Path, compress: bool, labels: bool = True, n=(12, 5)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for images_name, labels_name, count, seed in [
        (TRAIN_IMAGES, TRAIN_LABELS, n[0], 0),
        (TEST_IMAGES, TEST_LABELS, n[1], 1),
    ]:
        stem = images_name.removesuffix(".gz")
        write_idx(folder / (stem + suffix), fake_images(count, seed), compress)
        if labels:
            stem = labels_name.removesuffix(".gz")
            write_idx(folder / (stem + suffix), np.arange(count, dtype=np.uint8) % 10, compress)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_family_from_data_dir(tmp_path, compress):
    write_family(tmp_path, compress)
    train, test = load_mnist_family("fashion-mnist", tmp_path, download=False)
    assert train.images.shape == (12, 28, 28) and test.images.shape == (5, 28, 28)
    np.testing.assert_array_equal(train.labels, np.arange(12) % 10)
    np.testing.assert_array_equal(test.labels, np.arange(5))
    assert train.labels.dtype == np.int64
    for arr, seed in [(train.images, 0), (test.images, 1)]:
        assert arr.dtype == np.float32 and arr.min() == 0.0 and arr.max() == 1.0
        np.testing.assert_allclose(arr * 255.0, fake_images(len(arr), seed), atol=1e-4)


def test_family_images_only_and_mixed_compression(tmp_path):
    write_family(tmp_path, compress=False, labels=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    write_idx(tmp_path / TEST_IMAGES, fake_images(5, 1), compress=True)
    train, test = load_mnist_family("kmnist", tmp_path)
    assert train.images.shape == (12, 28, 28) and test.images.shape == (5, 28, 28)
    assert train.labels is None and test.labels is None  # no label files: no labels


def test_family_labels_need_both_files(tmp_path):
    write_family(tmp_path, compress=True)
    (tmp_path / TRAIN_LABELS).unlink()
    train, test = load_mnist_family("mnist", tmp_path)
    assert train.labels is None and test.labels is None


def test_family_missing_files_listed(tmp_path):
    write_family(tmp_path, compress=True)
    (tmp_path / TEST_IMAGES).unlink()
    with pytest.raises(DataError) as err:
        load_mnist_family("mnist", tmp_path)
    message = str(err.value)
    assert TEST_IMAGES in message and "t10k-images-idx3-ubyte)" in message
    assert TRAIN_IMAGES not in message  # only what is actually missing
    assert "--data-dir" in message and "dataset.data_dir" in message and str(tmp_path) in message


def test_family_data_dir_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist_family("mnist", tmp_path / "nowhere")


def test_family_wrong_shape_rejected(tmp_path):
    write_family(tmp_path, compress=True, labels=False)
    write_idx(tmp_path / TRAIN_IMAGES, np.zeros((4, 32, 32), dtype=np.uint8), compress=True)
    with pytest.raises(DataError, match="N×28×28 uint8") as err:
        load_mnist_family("mnist", tmp_path)
    assert TRAIN_IMAGES in str(err.value)


def test_family_label_count_mismatch_rejected(tmp_path):
    write_family(tmp_path, compress=True)
    write_idx(tmp_path / TEST_LABELS, np.zeros(7, dtype=np.uint8), compress=True)
    with pytest.raises(DataError, match="do not belong together"):
        load_mnist_family("mnist", tmp_path)


def test_family_unknown_name(tmp_path):
    with pytest.raises(DataError, match="fashion-mnist"):
        load_mnist_family("emnist", tmp_path)


def test_family_no_download_and_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_mnist_family("mnist", None, download=False)
    message = str(err.value)
    assert TRAIN_IMAGES in message and TEST_IMAGES in message and "disabled" in message
    assert "--data-dir" in message and str(tmp_path / "mnist") in message


def test_family_downloads_images_into_cache(server, tmp_path, monkeypatch):
    blobs = {
        TRAIN_IMAGES: gzip.compress(idx_bytes(fake_images(12, 0))),
        TEST_IMAGES: gzip.compress(idx_bytes(fake_images(5, 1))),
        TRAIN_LABELS: gzip.compress(idx_bytes(np.arange(12, dtype=np.uint8) % 10)),
        TEST_LABELS: gzip.compress(idx_bytes(np.full(5, 7, dtype=np.uint8))),
    }
    for name, blob in blobs.items():
        server.routes[f"/m/{name}"] = (200, blob, None)
    family = mnist_family.MnistFamily(
        "mnist",
        (server.base + "/dead/", server.base + "/m/"),
        {n: md5(b) for n, b in blobs.items()},
    )
    monkeypatch.setitem(DATASETS, "mnist", family)
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path))
    train, test = load_mnist_family("mnist", None)
    assert train.images.shape == (12, 28, 28) and test.images.shape == (5, 28, 28)
    assert leftovers(tmp_path / "mnist") == sorted(blobs)  # labels are fetched too
    assert test.labels.tolist() == [7] * 5 and train.labels.tolist()[:3] == [0, 1, 2]
    hits = len(server.hits)
    load_mnist_family("mnist", None)
    load_mnist_family("mnist", None, download=False)
    assert len(server.hits) == hits


def test_family_download_failure_suggests_data_dir(server, tmp_path, monkeypatch):
    family = mnist_family.MnistFamily("mnist", (server.base + "/dead/",), DATASETS["mnist"].md5)
    monkeypatch.setitem(DATASETS, "mnist", family)
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_mnist_family("mnist", None)
    message = str(err.value)
    assert server.base + "/dead/" + TRAIN_IMAGES in message and "--data-dir" in message
    assert leftovers(tmp_path / "mnist") == []


def test_family_tables_complete():
    for spec in DATASETS.values():
        assert set(spec.md5) == {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS}
        assert all(len(h) == 32 and int(h, 16) >= 0 for h in spec.md5.values())
        assert spec.mirrors and all(m.endswith("/") for m in spec.mirrors)


def _real_mnist_dir() -> Path | None:
    env = os.environ.get("VAE_TUNE_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    for folder in candidates:
        if all((folder / n).is_file() for n in (TRAIN_IMAGES, TEST_IMAGES)):
            return folder
    return None


REAL_MNIST = _real_mnist_dir()


@pytest.mark.skipif(
    REAL_MNIST is None,
    reason="real MNIST .gz files not found (set VAE_TUNE_MNIST_DIR or use ../shared/data/mnist)",
)
def test_real_mnist_loads_and_matches_checksums():
    train, test = load_mnist_family("mnist", REAL_MNIST, download=False)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist()[:2] == [980, 1135]  # the known class counts
    for arr in (train.images, test.images):
        assert arr.dtype == np.float32 and arr.min() == 0.0 and arr.max() == 1.0
    # The .gz md5s in the table are torchvision's, of the published archives. A recompressed
    # copy holds the same data under a different .gz md5, so the content is checked against
    # the md5s of the uncompressed files, and the .gz md5 only where it is the original.
    for gz_name, gz_md5 in DATASETS["mnist"].md5.items():
        path = REAL_MNIST / gz_name
        if not path.is_file():
            continue
        assert md5(gzip.decompress(path.read_bytes())) == MNIST_RAW_MD5[gz_name[:-3]], gz_name
        if file_md5(path) == gz_md5:
            assert fetch(["http://127.0.0.1:9/unused"], gz_name, REAL_MNIST, gz_md5) == path


# --------------------------------------------------------------------------- user arrays


def test_npy_uint8(tmp_path):
    raw = np.arange(12 * 5 * 6, dtype=np.int64).reshape(12, 5, 6) % 256
    np.save(tmp_path / "x.npy", raw.astype(np.uint8))
    out = load_array(tmp_path / "x.npy")
    assert out.dtype == np.float32 and out.shape == (12, 5, 6)
    np.testing.assert_allclose(out, raw / 255.0, rtol=1e-6)


def test_npz_with_key_and_single_array(tmp_path):
    imgs = np.random.default_rng(0).random((10, 4, 4))
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(10))
    np.testing.assert_allclose(load_array(tmp_path / "d.npz", key="images"), imgs, rtol=1e-6)
    np.savez_compressed(tmp_path / "one.npz", whatever=imgs.astype(np.float32))
    assert load_array(tmp_path / "one.npz").shape == (10, 4, 4)


@pytest.mark.parametrize(("d", "shape"), [(64, (8, 8)), (10, (1, 10)), (1, (1, 1))])
def test_flat_rows_reshaped(tmp_path, d, shape):
    np.save(tmp_path / "flat.npy", np.full((11, d), 0.5, dtype=np.float32))
    assert load_array(tmp_path / "flat.npy").shape == (11, *shape)


def _save(path: Path, arr) -> Path:
    np.save(path, arr)
    return path


@pytest.mark.parametrize(
    ("arr", "expect"),
    [
        (np.zeros(100, dtype=np.uint8), "N×H×W or N×D"),
        (np.zeros((12, 2, 3, 3), dtype=np.uint8), "N×H×W or N×D"),
        (np.zeros((9, 4, 4), dtype=np.uint8), "only 9 samples"),
        (np.zeros((12, 0), dtype=np.float32), "empty"),
        (np.zeros((12, 4, 4), dtype=bool), "dtype bool"),
        (np.zeros((12, 4, 4), dtype=np.int64), "dtype int64"),
        (np.full((12, 4), "a"), "dtype <U1"),
        (np.zeros((12, 4, 4), dtype=np.complex64), "dtype complex64"),
        (np.full((12, 4, 4), 1.5), r"\[0, 1\]"),
        (np.full((12, 4, 4), -0.1, dtype=np.float32), r"\[0, 1\]"),
        (np.where(np.eye(12)[:, :, None] > 0, np.nan, 0.5), "NaN"),
        (np.full((12, 4, 4), np.inf), "NaN or infinite"),
    ],
    ids=[
        "1d",
        "4d",
        "few-rows",
        "empty",
        "bool",
        "int64",
        "str",
        "complex",
        "above-1",
        "below-0",
        "nan",
        "inf",
    ],
)
def test_array_rejections(tmp_path, arr, expect):
    path = _save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match=expect) as err:
        load_array(path)
    assert str(path) in str(err.value)


def test_array_object_dtype_rejected(tmp_path):
    path = _save(tmp_path / "obj.npy", np.array([{"a": 1}] * 12, dtype=object))
    with pytest.raises(DataError, match="object array"):
        load_array(path)
    np.savez(tmp_path / "obj.npz", x=np.array([None] * 12, dtype=object))
    with pytest.raises(DataError, match="object array"):
        load_array(tmp_path / "obj.npz")


def test_array_npz_key_problems(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.zeros((10, 2, 2)), labels=np.zeros(10))
    with pytest.raises(DataError, match="images, labels"):
        load_array(tmp_path / "two.npz")
    with pytest.raises(DataError, match="no array named 'imgs'; keys: images, labels"):
        load_array(tmp_path / "two.npz", key="imgs")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="0 arrays"):
        load_array(tmp_path / "empty.npz")
    path = _save(tmp_path / "x.npy", np.zeros((10, 2, 2)))
    with pytest.raises(DataError, match="only apply to .npz"):
        load_array(path, key="images")


def test_array_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_array(tmp_path / "nope.npy")
    assert "nope.npy" in str(err.value)
    (tmp_path / "text.npy").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="not a .npy or .npz"):
        load_array(tmp_path / "text.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npy"):
        load_array(tmp_path / "empty.npy")
    blob = (_save(tmp_path / "full.npy", np.zeros((50, 8, 8), np.uint8))).read_bytes()
    (tmp_path / "cut.npy").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cut.npy"):
        load_array(tmp_path / "cut.npy")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(DataError, match="cut.npz"):
        load_array(tmp_path / "cut.npz")


# --------------------------------------------------------------------------- labels in the splits


def test_array_labels_follow_their_images_through_the_split(tmp_path):
    from vae_tune.data import load_splits
    from vae_tune.training.config import DatasetSpec

    n = 40
    images = np.zeros((n, 3, 3), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # each image says which it is
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(n) % 7)
    spec = DatasetSpec(
        name="array", path=str(tmp_path / "d.npz"), key="images", labels_key="labels"
    )
    splits = load_splits(spec, seed=3)
    assert splits.labelled
    for x, y in [
        (splits.train, splits.train_labels),
        (splits.val, splits.val_labels),
        (splits.test, splits.test_labels),
    ]:
        which = (x[:, 0, 0] * 255).round().long()
        assert y.dtype == torch.int64 and torch.equal(y, which % 7)
    unlabelled = load_splits(spec.model_copy(update={"labels_key": None}), seed=3)
    assert not unlabelled.labelled and torch.equal(unlabelled.train, splits.train)


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        (np.arange(39), "one label per image"),
        (np.zeros((40, 2), dtype=np.int64), "one label per image"),
        (np.full(40, 0.5), "non-negative integers"),
        (np.full(40, -1), "non-negative integers"),
    ],
    ids=["short", "2d", "float", "negative"],
)
def test_bad_array_labels_are_refused(tmp_path, labels, expect):
    from vae_tune.data.arrays import load_labels

    np.savez(tmp_path / "d.npz", images=np.zeros((40, 3, 3)), labels=labels)
    with pytest.raises(DataError, match=expect):
        load_labels(tmp_path / "d.npz", "labels", 40)


def test_labels_key_is_for_arrays_only():
    from vae_tune.errors import SpecError
    from vae_tune.training.config import DatasetSpec, validate

    with pytest.raises(SpecError, match="labels_key"):
        validate(DatasetSpec, {"name": "digits", "labels_key": "y"}, "test")


def test_digits_and_idx_files_come_with_labels(tmp_path):
    from vae_tune.data import load_splits
    from vae_tune.training.config import DatasetSpec

    digits = load_splits(DatasetSpec(name="digits", subset=100), seed=0)
    assert len(digits.train_labels) == 100 and len(digits.test_labels) == len(digits.test)
    assert set(digits.test_labels.tolist()) == set(range(10))
    write_family(tmp_path, compress=True, n=(30, 5))
    mnist = load_splits(DatasetSpec(name="mnist", data_dir=str(tmp_path), val_fraction=0.2), 0)
    assert len(mnist.val_labels) == 6 and mnist.test_labels.tolist() == [0, 1, 2, 3, 4]
    pool = fake_images(30, 0).astype(np.float32) / 255.0
    for x, y in [(mnist.train, mnist.train_labels), (mnist.val, mnist.val_labels)]:
        index = [int(np.argmin(np.abs(pool - img.numpy()).sum((1, 2)))) for img in x]
        assert y.tolist() == [i % 10 for i in index]  # each image kept its own label
