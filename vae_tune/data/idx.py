"""Reader for the IDX format used by MNIST-style datasets.

The format is tiny (4-byte magic, big-endian uint32 dims, raw data), so we read it ourselves
instead of pulling in torchvision; every structural check raises DataError naming the file,
because a half-downloaded or hand-copied file is the usual way this goes wrong.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from vae_tune.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype (see http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, transparently gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == GZIP_MAGIC:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    return gz.read()
            return f.read()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 or zero2 or type_code not in IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()}; "
            "expected 0x0000 followed by a type code and the number of dimensions)"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: header declares shape {tuple(dims)} "
            f"({expected} data bytes) but {actual} data bytes follow"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)
