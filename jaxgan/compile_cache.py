"""Persistent XLA compilation cache for the command-line tools.

A restarted or resumed `jaxgan.train`, and `jaxgan.sample` / `jaxgan.evaluate` after it, load
the compiled programs from disk instead of compiling them again: the HW6 gan step's XLA compile
went from 7.3 s to 0.3 s on a 2-core CPU (BUILD_NOTES.md), and up to 40 s on slower ones. The
CLIs call `enable()` once at start-up; the library itself never touches global JAX settings.
"""
from __future__ import annotations

import os

from jaxgan import env


def cache_path() -> str | None:
    """The cache directory, or None when it is switched off.

    JAXGAN_COMPILATION_CACHE=0 keeps jaxgan from turning it on (e.g. for a home directory
    shared by machines with different CPUs; JAX still honours its own $JAX_COMPILATION_CACHE_DIR);
    otherwise $JAX_COMPILATION_CACHE_DIR if set, else `xla/` under jaxgan's cache directory
    ($JAXGAN_CACHE_DIR, else ~/.cache/jaxgan).
    """
    if env.switched_off("JAXGAN_COMPILATION_CACHE"):
        return None
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(env.cache_dir(), "xla")


def enable() -> str | None:
    """Points JAX's persistent compilation cache at `cache_path()`; returns it (None: off).

    Call before the first compilation: JAX reads the setting when it first compiles. JAX's own
    threshold applies (programs compiling in under a second are not written;
    $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS changes it).
    """
    import jax

    path = cache_path()
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", path)
    return path
