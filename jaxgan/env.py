"""What jaxgan reads from its environment in more than one place: JAXGAN_* switches, the cache
directory, /proc/cpuinfo (standard library only: the benchmark's torch workers import
`host_memory` without jaxgan's dependencies)."""
from __future__ import annotations

import os


def switched_off(name: str) -> bool:
    """Whether the switch `name` is set to 0 / false / no / off (any case); unset means on."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def cpuinfo(field: str) -> str:
    """The value of the first /proc/cpuinfo line whose key is exactly `field` ('vendor_id',
    'model', 'model name', 'flags'); '' where none (or no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cache_dir() -> str:
    """jaxgan's cache directory (decoded datasets, XLA programs, Inception weights, reference
    statistics, classifiers, the oneDNN handlers and their tuning): $JAXGAN_CACHE_DIR if set
    and not empty, else $XDG_CACHE_HOME/jaxgan (the XDG base-directory rule), else
    ~/.cache/jaxgan."""
    if os.environ.get("JAXGAN_CACHE_DIR"):
        return os.path.expanduser(os.environ["JAXGAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return os.path.join(os.path.expanduser(base), "jaxgan")
