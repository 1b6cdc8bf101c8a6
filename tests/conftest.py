"""Shared tiny recipes: small models, few steps, so the whole suite stays fast on 2 CPU cores."""
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the session and the CLI subprocesses it starts: many tests compile
# the same tiny step, and each subprocess would otherwise compile from scratch.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxgan-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM -O0 for the tests and their subprocesses: the suite is mostly XLA:CPU compiling tiny
# programs, and LLVM's optimizer is most of that; numerics are checked with tolerances or against
# runs under the same flags. Measured on 2 cores: 773 s -> 562 s (BUILD_NOTES.md, "Test suite
# time"). A user's own XLA_FLAGS wins, except in the subprocesses that set their own.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)

import pytest  # noqa: E402

from jaxgan.config import base_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_env(platform: str | None, env, default_xla_flags: bool) -> dict:
    env = dict(os.environ if env is None else env)
    if platform is not None:
        env["JAX_PLATFORMS"] = platform
    if default_xla_flags:
        env.pop("XLA_FLAGS", None)
    return env


def run_module(*args, platform: str | None = "cpu", env=None, default_xla_flags=False,
               timeout=300) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repo root, output captured, as a user runs the CLIs.

    platform: JAX_PLATFORMS for it (None: this process's); env: its environment (default: this
    process's); default_xla_flags: without the suite's XLA_FLAGS (-O0), compiled as users
    compile it.
    """
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO,
                          env=_module_env(platform, env, default_xla_flags),
                          capture_output=True, text=True, timeout=timeout)


def start_module(*args, platform: str | None = "cpu", env=None, default_xla_flags=False,
                 **popen_kwargs) -> subprocess.Popen:
    """`run_module` without waiting: for runs a test signals, kills or starts side by side.
    popen_kwargs go to `subprocess.Popen` (stdout, stderr, text, ...)."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                            env=_module_env(platform, env, default_xla_flags), **popen_kwargs)


def tiny_image_config(**overrides):
    """DCGAN on scikit-learn digits at 16x16, 8 channels wide: compiles in seconds."""
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.model.arch = "dcgan"
    c.model.z_dim = 8
    c.model.g_width = 8
    c.model.d_width = 8
    c.train.batch_size = 16
    c.train.steps = 6
    c.train.log_every = 2
    c.train.sample_every = 3
    c.train.checkpoint_every = 3
    c.train.num_grid = 4
    return apply_overrides(c, overrides)


def tiny_ring_config(**overrides):
    c = base_config()
    c.data.name = "ring"
    c.model.arch = "mlp"
    c.model.z_dim = 2
    c.model.hidden = (16, 16)
    c.model.g_norm = "none"
    c.model.d_norm = "none"
    c.train.batch_size = 16
    c.train.steps = 4
    c.train.log_every = 2
    c.train.sample_every = 4
    c.train.checkpoint_every = 4
    return apply_overrides(c, overrides)


def apply_overrides(c, overrides):
    """Sets dotted keys ("train.steps") of a ConfigDict in place; returns it."""
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


@pytest.fixture
def image_config():
    return tiny_image_config


@pytest.fixture
def ring_config():
    return tiny_ring_config
