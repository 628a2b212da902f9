"""Checksummed, atomic downloads into the dataset cache.

Downloads stream to a unique `.part` file next to the target and are renamed into place only
once the md5 matches, so an interrupted or tampered download can never be mistaken for a good
cached file, and two processes filling the same cache cannot clobber each other's half-files.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from vae_tune.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 16
DEFAULT_TIMEOUT_S = 60.0


class _BadDownload(Exception):
    """A response that arrived but is not the file we asked for (short or wrong checksum)."""


def cache_dir() -> Path:
    """Where downloaded datasets live: `$VAE_TUNE_CACHE`, else `~/.cache/vae-tune`."""
    env = os.environ.get("VAE_TUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vae-tune"


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks so large archives do not need to fit in memory."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_to(url: str, tmp: Path, md5: str, timeout: float) -> None:
    """Stream `url` into `tmp`, raising unless the body is complete and its md5 matches."""
    h = hashlib.md5(usedforsecurity=False)
    got = 0
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
        length = resp.headers.get("Content-Length")
        for chunk in iter(lambda: resp.read(CHUNK), b""):
            out.write(chunk)
            h.update(chunk)
            got += len(chunk)
    # http.client returns a short body silently when the server hangs up early.
    if length is not None and length.isdigit() and got != int(length):
        raise _BadDownload(f"incomplete download: got {got} of {length} bytes")
    if h.hexdigest() != md5.lower():
        raise _BadDownload(f"md5 mismatch: expected {md5.lower()}, got {h.hexdigest()}")


def fetch(
    url_candidates: list[str],
    filename: str,
    dest_dir: Path,
    md5: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Return `dest_dir/filename`, downloading it from the first mirror that yields the md5."""
    dest_dir = Path(dest_dir)
    final = dest_dir / filename
    if final.is_file() and file_md5(final) == md5.lower():
        return final
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download directory {dest_dir}: {e}") from None
    failures: list[str] = []
    for url in url_candidates:
        log.info("downloading %s -> %s", url, final)
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{filename}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _download_to(url, tmp, md5, timeout)
            os.replace(tmp, final)
            return final
        except (
            _BadDownload,
            urllib.error.URLError,
            http.client.HTTPException,
            OSError,
            ValueError,
        ) as e:
            failures.append(f"{url}: {e}")
            log.warning("download of %s failed: %s", url, e)
        finally:
            tmp.unlink(missing_ok=True)  # no half-file left behind, whatever interrupted us
    tried = "\n  ".join(failures) if failures else "(no mirror URLs configured)"
    raise DataError(f"could not download {filename} into {dest_dir}; tried:\n  {tried}")
