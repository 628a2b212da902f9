"""Writing the user's output files: checked before the work, written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tuner.errors import ServiceError, UserError


def check_writable(path: Path, field: str = "output") -> Path:
    """Fail now (not after an hour of training) if `path` cannot be written: a folder, a
    missing or read-only parent folder."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name", field)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"no such directory: {parent}", field)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to directory {parent} (permission denied)", field)
    return path


def write_atomic(path: Path, data: str | bytes, field: str = "output") -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers
    never see half a file, and a failure leaves nothing behind."""
    check_writable(path, field)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # the usual permissions (umask), unlike mkstemp's 0600
            f.write(raw)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ServiceError(f"cannot write {path}: {err.strerror or err}") from None
