"""JAXGAN_* environment switches of the command-line tools (standard library only: the
benchmark's torch workers import `host_memory` without jaxgan's dependencies)."""
from __future__ import annotations

import os


def switched_off(name: str) -> bool:
    """Whether the switch `name` is set to 0 / false / no / off (any case); unset means on."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")
