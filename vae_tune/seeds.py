"""One seed per random stream, derived by hashing instead of by adding offsets.

Seeds made by arithmetic collide: with `study seed + trial number`, trial 1 of the study
seeded 0 and trial 0 of the study seeded 1 train the same run, and one `data_seed` feeding the
split, the binarizations and the evaluation noise makes those streams start from the same
state (a torch.Generator and the global RNG seeded alike draw the very same numbers). Hashing
(seed, purpose, ids) gives every stream its own seed, and the same inputs always give the same
seed, so a run is still reproduced by its config's `seed` and `data_seed` alone.
"""

from __future__ import annotations

import hashlib
import operator


def derive(seed: int, purpose: str, *ids: int) -> int:
    """The seed of the stream `purpose` (and `ids`, e.g. a trial number) under `seed`.

    Deterministic across processes, machines and versions (SHA-256, not Python's `hash`).
    The result is a 32-bit unsigned integer: every consumer accepts it (torch.manual_seed,
    torch.Generator, numpy's default_rng and legacy RandomState, JSON readers with no 64-bit
    integers), and torch's CPU generator (MT19937) keeps only the low 32 bits of a seed anyway.
    """
    if not purpose or "/" in purpose:
        raise ValueError(f"a seed purpose is a non-empty name without '/', got {purpose!r}")
    parts = [str(operator.index(seed)), purpose, *(str(operator.index(i)) for i in ids)]
    digest = hashlib.sha256(("vae-tune/" + "/".join(parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def text_id(text: str) -> int:
    """A stable integer for a name (e.g. a study's), to use as one of `derive`'s ids."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
