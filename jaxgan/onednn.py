"""oneDNN convolutions inside XLA:CPU programs, through an XLA FFI custom call.

Why: on AVX-512 CPUs PyTorch's oneDNN convolutions beat XLA:CPU's Eigen ones, mostly because
oneDNN skips the padding taps that Eigen multiplies (BUILD_NOTES.md, "Speed and scale").
`jaxgan/native/onednn_conv.cc` wraps oneDNN's forward, backward-data and backward-weights
convolutions as three FFI handlers; this module compiles it once per jaxlib (g++, into the
user cache directory), registers the handlers and calls them. It needs the `onednn-cpu-gomp`
wheel (a dependency on Linux x86_64) and a C++ compiler; without either,
`available()` is False with the reason in `unavailable_reason()`, and jaxgan's layers use
XLA's own convolutions.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("native") / "onednn_conv.cc"
DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"
_TARGETS = ("forward", "backward_data", "backward_weights")
_reason: str | None = None


def library_path() -> Path | None:
    """libdnnl.so.3 of the installed `onednn-cpu-gomp` wheel (it installs into <prefix>/lib),
    or None."""
    from importlib import metadata

    try:
        files = metadata.distribution(DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == LIBRARY:
            path = Path(f.locate()).resolve()
            return path if path.exists() else None
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxgan"


def _build(lib: Path) -> Path:
    """The compiled handlers for this source, jaxlib and libdnnl, compiled on first use."""
    import jax
    import jaxlib

    include = jax.ffi.include_dir()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), jaxlib.__version__.encode(),
                                     str(lib).encode()])).hexdigest()[:16]
    out = _cache_dir() / f"onednn_conv-{key}.so"
    if out.exists():
        return out
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OSError("no C++ compiler (g++) to build jaxgan's oneDNN handlers")
    out.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: concurrent processes (pytest-xdist) may race
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}", str(SOURCE),
           "-o", tmp, f"-L{lib.parent}", f"-l:{LIBRARY}", f"-Wl,-rpath,{lib.parent}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise OSError(f"building jaxgan's oneDNN handlers failed ({compiler}): {last}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def _load() -> bool:
    global _reason
    if sys.platform != "linux":
        _reason = "only built on Linux"
        return False
    lib = library_path()
    if lib is None:
        _reason = f"{DISTRIBUTION} is not installed (pip install {DISTRIBUTION})"
        return False
    # oneDNN's OpenMP threads would otherwise spin after each call, on the cores XLA's own
    # threads need next; read by libgomp when it loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        handlers = ctypes.cdll.LoadLibrary(str(_build(lib)))
    except OSError as e:
        _reason = str(e).splitlines()[0]
        return False
    import jax

    for name in _TARGETS:
        target = f"jaxgan_onednn_conv_{name}"
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, target)),
                                    platform="cpu")
    return True


def available() -> bool:
    """Whether the oneDNN handlers are built and registered (builds them on first call)."""
    return _load()


def unavailable_reason() -> str | None:
    """Why `available()` is False (one line), None when it is True or was not asked yet."""
    return _reason


def output_hw(x_shape, w_shape, strides, pads) -> list[int]:
    """[OH, OW] of the conv of an NHWC x with an HWIO kernel."""
    return [(x_shape[1 + a] + sum(pads[a]) - w_shape[a]) // strides[a] + 1 for a in (0, 1)]


def supports(x_shape, w_shape, strides, pads, dtype) -> bool:
    """The convolutions the handlers compute: f32 NHWC / HWIO, non-negative padding whose
    window count matches oneDNN's (it derives the output size from the padding)."""
    import jax.numpy as jnp

    if jnp.dtype(dtype) != jnp.float32 or any(p < 0 for lo_hi in pads for p in lo_hi):
        return False
    return all((x_shape[1 + a] + sum(pads[a]) - w_shape[a]) % strides[a] == 0 for a in (0, 1))


def _call(name: str, a, b, out_shape, strides, pads):
    import jax
    import jax.numpy as jnp

    return jax.ffi.ffi_call(f"jaxgan_onednn_conv_{name}",
                            jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32))(
        a, b, strides=np.asarray(strides, np.int64),
        pad_lo=np.asarray([lo for lo, _ in pads], np.int64),
        pad_hi=np.asarray([hi for _, hi in pads], np.int64))


def conv(x, w, strides, pads):
    """y = C(x, w): `lax.conv_general_dilated(x, w, strides, pads)` in NHWC / HWIO."""
    out_hw = output_hw(x.shape, w.shape, strides, pads)
    return _call("forward", x, w, (x.shape[0], *out_hw, w.shape[3]), strides, pads)


def conv_dx(dy, w, x_shape, strides, pads):
    """dx = DX(dy, w), the input gradient of `conv` at an x of shape x_shape."""
    return _call("backward_data", dy, w, x_shape, strides, pads)


def conv_dw(x, dy, w_shape, strides, pads):
    """dw = DW(x, dy), the kernel gradient of `conv`."""
    return _call("backward_weights", x, dy, w_shape, strides, pads)
