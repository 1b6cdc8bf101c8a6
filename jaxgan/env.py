"""JAXGAN_* environment settings read in more than one place (standard library only: the
benchmark's torch workers import `host_memory` without jaxgan's dependencies)."""
from __future__ import annotations

import os


def switched_off(name: str) -> bool:
    """Whether the switch `name` is set to 0 / false / no / off (any case); unset means on."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def cache_dir() -> str:
    """jaxgan's cache directory (decoded datasets, XLA programs, Inception weights, reference
    statistics, classifiers): $JAXGAN_CACHE_DIR if set and not empty, else ~/.cache/jaxgan."""
    return os.path.expanduser(os.environ.get("JAXGAN_CACHE_DIR") or "~/.cache/jaxgan")
