"""Keep freed host memory in the process, so XLA:CPU reuses its scratch instead of faulting it in.

Why: XLA:CPU allocates a compiled program's temporary buffer on every execution (244 MB for
the HW6 gan step) and frees it afterwards. glibc serves blocks above its mmap threshold (at
most 32 MB) with fresh mappings and unmaps them when freed, so every step first-touches its
whole scratch again: about 60k page faults and 0.16-0.20 s of kernel time per HW6 gan step on
a 2-core CPU (BUILD_NOTES.md, session 19). `keep_freed_memory()` asks glibc to serve large
blocks from its heap and never to hand the heap back (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD
= max), and runs CPU programs on the calling thread (`jax_cpu_enable_async_dispatch` off):
that thread allocates from the main heap, while glibc's per-thread arenas map blocks over 64 MB
afresh whatever the settings. Measured (BUILD_NOTES.md): HW6 gan step 1.60 -> 1.42 s,
WGAN-GP 6.73 -> 6.56 s; the default recipe, whose small steps could miss asynchronous dispatch,
took the same time. The CLIs call it at start-up; the library itself never does.
"""
from __future__ import annotations

import ctypes
import sys

from jaxgan import env

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_NEVER = 2**31 - 1


def wanted() -> bool:
    """JAXGAN_KEEP_FREED_MEMORY=0 leaves the allocator and JAX's dispatch as they are."""
    return not env.switched_off("JAXGAN_KEEP_FREED_MEMORY")


def keep_freed_heap() -> bool:
    """The glibc half: large blocks from the heap, never trimmed. Returns whether it applied
    (Linux with glibc; JAXGAN_KEEP_FREED_MEMORY not 0). No JAX involved."""
    if not wanted() or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        return False
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, _NEVER))


def keep_freed_memory() -> bool:
    """`keep_freed_heap()`, and CPU programs run on the calling thread. Call before JAX
    creates its CPU client (its first computation), which reads the dispatch setting."""
    if not keep_freed_heap():
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
