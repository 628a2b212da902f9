"""What this machine offers a worker: how many cores this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the OS has one, e.g. in containers)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
