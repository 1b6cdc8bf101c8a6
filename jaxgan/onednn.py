"""oneDNN convolutions inside XLA:CPU programs, through an XLA FFI custom call.

Why: on AVX-512 CPUs PyTorch's oneDNN convolutions beat XLA:CPU's Eigen ones, mostly because
oneDNN skips the padding taps that Eigen multiplies (BUILD_NOTES.md, "Speed and scale").
`jaxgan/native/onednn_conv.cc` wraps oneDNN's forward, backward-data and backward-weights
convolutions as three FFI handlers (and a fourth that reorders a kernel into the layout
oneDNN's kernels read, once per kernel value: `_kernel_for`); this module compiles it once per
jaxlib (g++, into the user cache directory), registers the handlers and calls them. It needs
the `onednn-cpu-gomp` wheel (a dependency on Linux x86_64) and a C++ compiler; without either,
`available()` is False with the reason in `unavailable_reason()`, and jaxgan's layers use
XLA's own convolutions.

The first time a process meets a convolution shape, the handlers time each of oneDNN's
implementations for it and keep the fastest (a few tenths of a second per shape, a few
seconds for a model's first step); the choices go to `tuning_file()`, one file per CPU model
and thread count, so later runs on the machine start at full speed. JAXGAN_ONEDNN_TUNE=0
(or `set_tuning(False)` before the first step is traced) keeps oneDNN's own first choice.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from jaxgan import env

SOURCE = Path(__file__).with_name("native") / "onednn_conv.cc"
DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"
# the handlers' operations, in their Kind order (the index in their call stats)
OPERATIONS = ("forward", "backward_data", "backward_weights")
_reason: str | None = None
_tune = os.environ.get("JAXGAN_ONEDNN_TUNE", "1") != "0"


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


def _build(lib: Path) -> Path:
    """The compiled handlers for this source, jaxlib and libdnnl, compiled on first use."""
    import jax
    import jaxlib

    include = jax.ffi.include_dir()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), jaxlib.__version__.encode(),
                                     str(lib).encode()])).hexdigest()[:16]
    out = Path(env.cache_dir()) / f"onednn_conv-{key}.so"
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


def _threads() -> int:
    """oneDNN's thread count: OpenMP's, every core this process may run on by default."""
    try:
        return int(os.environ["OMP_NUM_THREADS"].split(",")[0])
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0))


def tuning_file() -> Path:
    """Where the fastest implementation per convolution shape is kept: one file per CPU
    (family, model, model name and flags: VMs of Zen 4 and Zen 5 EPYCs both say 'AMD EPYC'),
    thread count and libdnnl, since each of those changes the answer."""
    cpu = "\n".join(env.cpuinfo(field) for field in ("cpu family", "model", "model name", "flags"))
    key = hashlib.sha256(b"\0".join([cpu.encode(), str(_threads()).encode(),
                                     str(library_path()).encode()])).hexdigest()[:16]
    return Path(env.cache_dir()) / f"onednn_tuning-{key}.tsv"


def _configure(handlers) -> None:
    path = tuning_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        name = str(path).encode()
    except OSError:  # an unwritable cache: the choices stay in this process
        name = b""
    handlers.jaxgan_onednn_configure(ctypes.c_char_p(name), ctypes.c_int(int(_tune)))


def set_tuning(enabled: bool) -> None:
    """Whether shapes not measured yet are timed per implementation (the default) or run with
    oneDNN's first choice. Affects the shapes a process has not traced or run yet."""
    global _tune
    _tune = bool(enabled)
    if _load():
        _configure(_handlers())


def tuning_stats() -> tuple[int, float]:
    """(shapes this process timed its implementations for, seconds that took); (0, 0.0)
    without oneDNN."""
    if not _load():
        return 0, 0.0
    tuned, seconds = ctypes.c_int64(), ctypes.c_double()
    _handlers().jaxgan_onednn_tuning_stats(ctypes.byref(tuned), ctypes.byref(seconds))
    return tuned.value, seconds.value


@dataclasses.dataclass(frozen=True)
class CallStats:
    """One convolution shape's calls: `op` (an OPERATIONS name) of the forward conv
    x [n, h, w, cin] -> [n, out_h, out_w, cout] with a kh x kw kernel; `busy_s` is the time
    oneDNN worked on them, `waiting_s` the time they waited for another call to finish (the
    handlers run one call at a time: each uses every core)."""
    op: str
    n: int
    h: int
    w: int
    cin: int
    out_h: int
    out_w: int
    cout: int
    kh: int
    kw: int
    strides: tuple[int, int]
    calls: int
    busy_s: float
    waiting_s: float

    @property
    def label(self) -> str:
        return (f"{self.op} {self.h}x{self.w}x{self.cin}->{self.out_h}x{self.out_w}x{self.cout}"
                f" k{self.kh}x{self.kw} s{self.strides[0]}")


def _parse_call_stats(text: str) -> list[CallStats]:
    """The handlers' "shape<TAB>calls<TAB>busy<TAB>waiting" lines; the shape is their Key:
    kind, n, cin, h, w, cout, kh, kw, out_h, out_w, strides (2), pads low (2), high (2)."""
    stats = []
    for line in text.splitlines():
        shape, calls, busy, waiting = line.split("\t")
        k = [int(v) for v in shape.split(",")]
        stats.append(CallStats(OPERATIONS[k[0]], n=k[1], cin=k[2], h=k[3], w=k[4], cout=k[5],
                               kh=k[6], kw=k[7], out_h=k[8], out_w=k[9], strides=(k[10], k[11]),
                               calls=int(calls), busy_s=float(busy), waiting_s=float(waiting)))
    return stats


def call_stats(reset: bool = False) -> list[CallStats]:
    """The convolutions this process ran through oneDNN since the last reset, one entry per
    shape and operation, busiest first ([] without oneDNN). A profiler's events for these
    custom calls include the waiting; `busy_s` is the work."""
    if not _load():
        return []
    read = _handlers().jaxgan_onednn_call_stats
    read.restype = ctypes.c_int64
    size = 1 << 14
    while True:
        buf = ctypes.create_string_buffer(size)
        needed = read(buf, ctypes.c_int64(size), ctypes.c_int(int(reset)))
        if needed < size:
            break
        size = needed + 1
    return sorted(_parse_call_stats(buf.value.decode()), key=lambda s: -s.busy_s)


@functools.cache
def _handlers():
    return ctypes.cdll.LoadLibrary(str(_build(library_path())))


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
        handlers = _handlers()
    except OSError as e:
        _reason = str(e).splitlines()[0]
        return False
    import jax

    for target in [f"jaxgan_onednn_conv_{name}" for name in OPERATIONS] + [
            "jaxgan_onednn_kernel_blocked"]:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, target)),
                                    platform="cpu")
    _configure(handlers)
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


def _pads_lo_hi(pads):
    return (np.asarray([lo for lo, _ in pads], np.int64),
            np.asarray([hi for _, hi in pads], np.int64))


def _call(name: str, a, b, out_shape, kernel_shape, strides, pads):
    import jax
    import jax.numpy as jnp

    if not _load():  # registers the handlers; `conv` may be the first thing a caller uses
        raise RuntimeError(f"jaxgan's oneDNN convolutions are unavailable: {_reason}")
    pad_lo, pad_hi = _pads_lo_hi(pads)
    return jax.ffi.ffi_call(f"jaxgan_onednn_conv_{name}",
                            jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32))(
        a, b, strides=np.asarray(strides, np.int64), pad_lo=pad_lo, pad_hi=pad_hi,
        kernel=np.asarray(kernel_shape, np.int64))


def blocked_kernel_floats(op: str, x_shape, w_shape, y_shape, strides, pads) -> int:
    """Floats of the kernel in the blocked layout oneDNN's convolution for this shape reads
    (`op`: "forward" or "backward_data"; x, y NHWC, w HWIO), 0 when it reads HWIO as it is.
    Builds the shape's plan now, at trace time: its implementation (measured on first use)
    decides the layout."""
    if not _load():
        raise RuntimeError(f"jaxgan's oneDNN convolutions are unavailable: {_reason}")
    query = _handlers().jaxgan_onednn_blocked_kernel_floats
    query.restype = ctypes.c_int64

    def array(values):
        a = np.ascontiguousarray(values, np.int64)
        return a, a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))

    arrays = [array(v) for v in (x_shape, w_shape, y_shape, strides, *_pads_lo_hi(pads))]
    floats = query(ctypes.c_int(OPERATIONS.index(op)), *(ptr for _, ptr in arrays))
    if floats < 0:
        raise RuntimeError(f"oneDNN has no {op} convolution for x {tuple(x_shape)}, "
                           f"kernel {tuple(w_shape)}, strides {tuple(strides)}, pads {pads}")
    return int(floats)


def _kernel_for(op: str, w, x_shape, y_shape, strides, pads):
    """w as the `op` convolution reads it: reordered by a custom call of its own into
    oneDNN's blocked layout where that is not HWIO. Why a separate call: the same kernel value feeds several
    convolutions of a step (real and fake batches, the gradient penalty's passes), and XLA
    computes identical ops once, where each call reordering it itself repeated the work
    (WGAN-GP: 262 of 5150 ms of oneDNN time per step on a Xeon, BUILD_NOTES.md session 37)."""
    import jax
    import jax.numpy as jnp

    floats = blocked_kernel_floats(op, x_shape, w.shape, y_shape, strides, pads)
    if not floats:
        return w
    pad_lo, pad_hi = _pads_lo_hi(pads)
    return jax.ffi.ffi_call("jaxgan_onednn_kernel_blocked",
                            jax.ShapeDtypeStruct((floats,), jnp.float32))(
        w, kind=np.int64(OPERATIONS.index(op)), x=np.asarray(x_shape, np.int64),
        y=np.asarray(y_shape, np.int64), strides=np.asarray(strides, np.int64),
        pad_lo=pad_lo, pad_hi=pad_hi)


def conv(x, w, strides, pads):
    """y = C(x, w): `lax.conv_general_dilated(x, w, strides, pads)` in NHWC / HWIO."""
    y_shape = (x.shape[0], *output_hw(x.shape, w.shape, strides, pads), w.shape[3])
    kernel = _kernel_for("forward", w, x.shape, y_shape, strides, pads)
    return _call("forward", x, kernel, y_shape, w.shape, strides, pads)


def conv_dx(dy, w, x_shape, strides, pads):
    """dx = DX(dy, w), the input gradient of `conv` at an x of shape x_shape."""
    kernel = _kernel_for("backward_data", w, x_shape, dy.shape, strides, pads)
    return _call("backward_data", dy, kernel, x_shape, w.shape, strides, pads)


def conv_dw(x, dy, w_shape, strides, pads):
    """dw = DW(x, dy), the kernel gradient of `conv`."""
    return _call("backward_weights", x, dy, w_shape, w_shape, strides, pads)
