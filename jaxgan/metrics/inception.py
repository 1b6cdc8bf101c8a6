"""Inception-v3 as used by FID / IS / KID, in Flax (NHWC), with torch-free weight loading.

The network is the TF `inception-2015-12-05` graph as ported by pytorch-fid and torch-fidelity,
which differs from torchvision's Inception-v3 (so FIDs stay comparable across libraries):
  * the pool branch of Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1) is a 3x3 average pool
    that ignores the zero padding (TF's `avg_pool`, torch `count_include_pad=False`);
  * the pool branch of Mixed_7c (E_2) is a 3x3 *max* pool;
  * BatchNorm eps is 1e-3 and the classifier is 1008-way.

Preprocessing follows the TF graph (and torch-fidelity, which reproduces it bit-exactly):
uint8 pixels -> float32 -> TF1 `resize_bilinear` to 299x299 (align_corners=False,
half_pixel_centers=False: source = dst * in/out) -> (x - 128) / 128. pytorch-fid differs: it
uses `F.interpolate(mode="bilinear", align_corners=False)` (half-pixel centres) on x / 255 and
then 2x - 1; `resize="pytorch_fid"` reproduces that for parity checks. The two give slightly
different features whenever the input is not already 299x299.

Inception Score uses logits *without* the fc bias, as the original TF code (improved-gan) and
torch-fidelity's `logits_unbiased` do; hence `fc_bias=False` is the default.

Weights: `pt_inception-2015-12-05-6726825d.pth` from the pytorch-fid release, read here without
torch (a restricted unpickler that rebuilds numpy arrays) and cached once as a `.npz` next to it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import os
import pickle
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgan import env

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the name carries the sha256 prefix
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_DIM = 2048
RESIZE_MODES = ("tf1", "pytorch_fid")

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...}


class WeightsNotFoundError(FileNotFoundError):
    """The Inception weights file is missing and could not be downloaded."""


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _resize_taps(in_size: int, out_size: int, mode: str):
    """Static gather indices and weights of 1-D bilinear resampling.

    Returns (lo int32[out], hi int32[out], frac f32[out]): out = x[lo] + (x[hi] - x[lo]) * frac.
    Computed in float32 like TF1 and torch-fidelity, so the taps match them exactly.
    """
    dst = np.arange(out_size, dtype=np.float32)
    scale = np.float32(in_size / out_size)
    if mode == "tf1":
        src = dst * scale  # TF1 resize_bilinear, half_pixel_centers=False
    elif mode == "pytorch_fid":
        src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    else:
        raise ValueError(f"resize={mode!r} is unknown; use one of {RESIZE_MODES}")
    lo = np.floor(src).astype(np.int32)
    lo = np.minimum(lo, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def resize_bilinear(x: jax.Array, size: tuple[int, int], mode: str = "tf1") -> jax.Array:
    """Bilinear resize of f32[B, H, W, C] to f32[B, size[0], size[1], C].

    mode="tf1": TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False), the
    resize inside the reference FID graph. mode="pytorch_fid": torch `F.interpolate(bilinear,
    align_corners=False)` (half-pixel centres, no antialias), what pytorch-fid uses.
    """
    _, h, w, _ = x.shape
    y0, y1, fy = _resize_taps(h, size[0], mode)
    x0, x1, fx = _resize_taps(w, size[1], mode)
    if (h, w) == tuple(size):
        return x  # identity taps: skip the gathers
    rows0 = jnp.take(x, y0, axis=1)
    rows1 = jnp.take(x, y1, axis=1)
    fx = jnp.asarray(fx)[None, None, :, None]
    fy = jnp.asarray(fy)[None, :, None, None]
    if mode == "tf1":
        # Same operation order as TF1's kernel (and torch-fidelity's port).
        top_l, top_r = jnp.take(rows0, x0, axis=2), jnp.take(rows0, x1, axis=2)
        bot_l, bot_r = jnp.take(rows1, x0, axis=2), jnp.take(rows1, x1, axis=2)
        top = top_l + (top_r - top_l) * fx
        bot = bot_l + (bot_r - bot_l) * fx
        return top + (bot - top) * fy
    # torch's CPU kernel: h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11).
    top = (1.0 - fx) * jnp.take(rows0, x0, axis=2) + fx * jnp.take(rows0, x1, axis=2)
    bot = (1.0 - fx) * jnp.take(rows1, x0, axis=2) + fx * jnp.take(rows1, x1, axis=2)
    return (1.0 - fy) * top + fy * bot


def preprocess(images: jax.Array, resize: str = "tf1", size: int = INPUT_SIZE) -> jax.Array:
    """uint8[B, H, W, C in {1, 3}] -> f32[B, size, size, 3] in [-1, 1), as the reference does.

    Grey images are repeated to RGB. resize="tf1" (default, the TF graph / torch-fidelity):
    resize the raw 0..255 values, then (x - 128) / 128. resize="pytorch_fid": x / 255, torch
    bilinear resize, then 2x - 1.
    """
    if images.dtype != jnp.uint8:
        raise TypeError(
            f"images must be uint8[B, H, W, C] in [0, 255], got {images.dtype}; convert [-1, 1] "
            "floats with np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be uint8[B, H, W, C] with C in (1, 3) (NHWC), got shape {images.shape}"
        )
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if resize == "tf1":
        x = resize_bilinear(x, (size, size), "tf1")
        return (x - 128.0) / 128.0
    if resize == "pytorch_fid":
        x = resize_bilinear(x / 255.0, (size, size), "pytorch_fid")
        return 2.0 * x - 1.0
    raise ValueError(f"resize={resize!r} is unknown; use one of {RESIZE_MODES}")


# --------------------------------------------------------------------------------------------
# Network. Module names mirror the torch state_dict keys so the conversion is mechanical.
# --------------------------------------------------------------------------------------------

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU/TPU: metrics stay comparable


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features, self.kernel, self.strides, padding=((ph, ph), (pw, pw)),
            use_bias=False, precision=_HIGHEST, name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    """3x3/1 average pool that ignores the zero padding, like TF's avg_pool."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), (2, 2), name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
        bp = nn.max_pool(x, (3, 3), (2, 2))
        return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
        bp = nn.max_pool(x, (3, 3), (2, 2))
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (pool="avg", FIDInceptionE_1) and Mixed_7c (pool="max", FIDInceptionE_2)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.pool == "avg":
            bp = _avg_pool_same(x)
        else:  # the TF graph's (probably accidental) max pool; pytorch-fid keeps it
            bp = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(bp)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: f32[B, H, W, 3] in [-1, 1] -> (pool f32[B, 2048], logits f32[B, 1008]).

    H, W >= 75 (299 for the reference). fc_bias=False returns pool @ W (the Inception Score
    input of the reference); True adds the fc bias (the network's actual classifier output).
    """

    fc_bias: bool = False

    @nn.compact
    def __call__(self, x):
        if x.shape[1] < 75 or x.shape[2] < 75:
            raise ValueError(f"Inception-v3 needs inputs of at least 75x75, got {x.shape[1:3]}")
        x = BasicConv2d(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = nn.max_pool(x, (3, 3), (2, 2))
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = nn.max_pool(x, (3, 3), (2, 2))
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = _Classifier(NUM_CLASSES, self.fc_bias, name="fc")(pool)
        return pool, logits


class _Classifier(nn.Module):
    """Dense layer whose bias can be left out of the output (the IS reference drops it)."""

    features: int
    add_bias: bool

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.dot(x, kernel, precision=_HIGHEST)
        return y + bias if self.add_bias else y


def init_inception_params(seed: int = 0) -> Variables:
    """Random variables {"params", "batch_stats"} for tests and parity checks, drawn in numpy.

    Much faster than compiling `InceptionV3().init` (~50 s on CPU). Kernels are scaled by
    1/sqrt(fan_in) and BN statistics are non-trivial, so activations neither vanish nor blow up.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in sorted(_expected_shapes().items()):
        if key[-1] == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif key[-1] == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif key[-1] == "var":
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.1, shape)
        flat[key] = value.astype(np.float32)
    return jax.device_put(traverse_util.unflatten_dict(flat))


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("resize", "fc_bias", "size"))
def _forward(variables, images, resize, fc_bias, size):
    x = preprocess(images, resize=resize, size=size)
    return InceptionV3(fc_bias=fc_bias).apply(variables, x)


def _fixed_batches(images, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Re-chunk an array or an iterable of uint8 batches into (uint8[batch_size, ...], n_valid).

    The last batch is zero-padded so every call has the same shape (one compilation).
    """
    chunks = [images] if hasattr(images, "shape") else images
    buffer: list[np.ndarray] = []
    buffered = 0
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:  # a single image
            chunk = chunk[None]
        if chunk.dtype != np.uint8 or chunk.ndim != 4:
            raise TypeError(
                f"images must be uint8[N, H, W, C] (NHWC), got {chunk.dtype}{list(chunk.shape)}; "
                "convert [-1, 1] floats with np.clip(np.round((x + 1) * 127.5), 0, 255)"
                ".astype(np.uint8)"
            )
        start = 0
        while start < len(chunk):
            take = min(batch_size - buffered, len(chunk) - start)
            buffer.append(chunk[start:start + take])
            buffered += take
            start += take
            if buffered == batch_size:
                yield _concat(buffer), batch_size
                buffer, buffered = [], 0
    if buffered:
        batch = _concat(buffer)
        pad = np.zeros((batch_size - buffered,) + batch.shape[1:], np.uint8)
        yield np.concatenate([batch, pad]), buffered


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"all images must share one [H, W, C] shape, got {sorted(shapes)}")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def extract_features(
    params: Variables,
    images: np.ndarray | jax.Array | Iterable[np.ndarray],
    batch_size: int = 50,
    *,
    resize: str = "tf1",
    fc_bias: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Inception features of uint8 images -> (pool f32[N, 2048], logits f32[N, 1008]) on host.

    images: uint8[N, H, W, C] (C in {1, 3}) or an iterable of such chunks (e.g. a generator of
    sampled batches), so N need not fit in memory. Batches are re-chunked to `batch_size` and the
    last one is padded, so the jit compiles once per image shape; only the features are kept.
    logits leave out the fc bias unless fc_bias=True (see the module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return run_batched(
        lambda batch: _forward(params, batch, resize=resize, fc_bias=fc_bias, size=INPUT_SIZE),
        images, batch_size)


def run_batched(forward, images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of `forward(batch) -> (f, l)` over fixed-size padded batches of uint8
    images (an array or an iterable of chunks); the previous batch is fetched while the next one
    runs, and only the unpadded rows are kept."""
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    pending = None
    for batch, n_valid in _fixed_batches(images, batch_size):
        out = forward(batch)
        if pending is not None:  # fetch the previous batch while this one runs
            _collect(pending, feats, logits)
        pending = (out, n_valid)
    if pending is None:
        raise ValueError("no images given; pass uint8[N, H, W, C] with N >= 1")
    _collect(pending, feats, logits)
    return np.concatenate(feats), np.concatenate(logits)


def _collect(pending, pools, logits):
    (pool, logit), n = pending
    pools.append(np.asarray(pool[:n], np.float32))
    logits.append(np.asarray(logit[:n], np.float32))


# --------------------------------------------------------------------------------------------
# Reading PyTorch .pth files without torch
# --------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        if name == "BFloat16Storage":
            import ml_dtypes  # ships with jax

            self.dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def materialize(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise pickle.UnpicklingError("tensor storage missing from the .pth file")
        if not self.size:
            return flat[self.offset].copy()
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.array(view)  # contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Only rebuilds tensor state_dicts: no arbitrary callables are ever resolved."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a .pth file: only tensor state_dicts are "
            "supported; re-save the weights with torch.save(model.state_dict(), path)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in .pth file")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise pickle.UnpicklingError("storage views in legacy .pth files are not supported")
        key = str(key)
        if key not in self._storages:
            storage = _Storage(storage_type.dtype, int(numel))
            self._storages[key] = storage
            self._load_storage(key, storage)
        return self._storages[key]


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torch.save'd state_dict into numpy arrays, without importing torch.

    Handles the zip format (torch >= 1.6) and the legacy pickle-stream format. Tensors are
    rebuilt from their storage, offset and strides; anything but tensors is refused.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_pth_zip(path)
    with open(path, "rb") as f:
        return _read_pth_legacy(f)


def _read_pth_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ValueError(f"{path} is a zip file without data.pkl; is it a torch .pth file?")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).decode().strip() != "little":
            raise ValueError(f"{path} was saved big-endian; re-save it on a little-endian machine")

        def load_storage(key, storage):
            raw = zf.read(f"{prefix}data/{key}")
            storage.array = np.frombuffer(raw, storage.dtype, count=storage.numel).copy()

        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
    return _materialize(obj)


def _read_pth_legacy(f) -> dict[str, np.ndarray]:
    safe = _RestrictedUnpickler(f, lambda key, storage: None)
    try:
        magic = pickle.Unpickler(f).load()
    except Exception as e:  # noqa: BLE001 - anything unreadable means "not a .pth"
        raise ValueError(f"{getattr(f, 'name', f)} is not a torch .pth file ({e})") from e
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{getattr(f, 'name', f)} is not a torch .pth file (bad magic number)")
    pickle.Unpickler(f).load()  # protocol version
    pickle.Unpickler(f).load()  # sys_info
    obj = safe.load()
    keys = pickle.Unpickler(f).load()
    for key in keys:
        storage = safe._storages[str(key)]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        raw = f.read(numel * storage.dtype.itemsize)
        storage.array = np.frombuffer(raw, storage.dtype, count=numel).copy()
    return _materialize(obj)


# --------------------------------------------------------------------------------------------
# State dict <-> Flax variables, cache and download
# --------------------------------------------------------------------------------------------


def state_dict_to_variables(state_dict: dict[str, np.ndarray]) -> Variables:
    """Maps pytorch-fid / torch-fidelity keys (`Mixed_5b.branch1x1.conv.weight`) to Flax variables.

    Conv OIHW -> HWIO, fc (out, in) -> (in, out); BN weight/bias -> params scale/bias, running
    mean/var -> batch_stats. Checks the result against the network's expected shapes.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        *mod, leaf = parts
        value = np.asarray(value, np.float32)
        if mod[-1] == "conv" and leaf == "weight":
            flat[("params", *mod, "kernel")] = value.transpose(2, 3, 1, 0)
        elif mod[-1] == "bn":
            collection, name = {
                "weight": ("params", "scale"), "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
            }[leaf]
            flat[(collection, *mod, name)] = value
        elif mod == ["fc"]:
            flat[("params", "fc", "kernel" if leaf == "weight" else "bias")] = (
                value.T if leaf == "weight" else value
            )
        else:
            raise ValueError(f"unexpected key {key!r}: not an FID Inception-v3 state_dict")
    _check_structure(flat)
    return traverse_util.unflatten_dict(flat)


def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    abstract = jax.eval_shape(
        InceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    )
    return {k: v.shape for k, v in traverse_util.flatten_dict(abstract).items()}


def _check_structure(flat: dict[tuple[str, ...], np.ndarray]) -> None:
    expected = _expected_shapes()
    missing = sorted("/".join(k) for k in expected.keys() - flat.keys())
    extra = sorted("/".join(k) for k in flat.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(k)}: {flat[k].shape} != {s}"
        for k, s in expected.items() if k in flat and flat[k].shape != s
    )
    if missing or extra or wrong:
        raise ValueError(
            "weights do not match the FID Inception-v3: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}"
            f" (use {WEIGHTS_FILENAME} from {WEIGHTS_URL})"
        )


def _save_npz(variables: Variables, path: Path) -> None:
    flat = traverse_util.flatten_dict(variables, sep="/")
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
    os.replace(tmp, path)


def _load_npz(path: Path) -> Variables:
    with np.load(path) as data:
        flat = {tuple(k.split("/")): data[k] for k in data.files}
    _check_structure(flat)
    return traverse_util.unflatten_dict(flat)


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if not digest.startswith(WEIGHTS_SHA256_PREFIX):
            raise OSError(f"downloaded file has sha256 {digest[:8]}, expected {WEIGHTS_SHA256_PREFIX}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_inception_params(
    path_or_cache_dir: str | os.PathLike | None = None, download: bool = True
) -> Variables:
    """Loads the FID Inception weights as device-resident Flax variables.

    path_or_cache_dir: a `.pth` or `.npz` file, or a directory holding (or to hold)
    `pt_inception-2015-12-05-6726825d.pth`; default jaxgan's cache directory (`env.cache_dir()`:
    $JAXGAN_CACHE_DIR, else ~/.cache/jaxgan). The `.pth` is converted
    once to a `.npz` beside it. Without the file, downloads it if `download`, else (or offline)
    raises WeightsNotFoundError naming where to put it.
    """
    p = Path(path_or_cache_dir if path_or_cache_dir is not None else env.cache_dir())
    p = p.expanduser()
    if p.suffix == ".npz":
        if not p.exists():
            raise WeightsNotFoundError(f"Inception weights cache {p} not found; pass the .pth file "
                                       f"or a directory to convert {WEIGHTS_FILENAME} from")
        return jax.device_put(_load_npz(p))
    pth = p if p.suffix == ".pth" else p / WEIGHTS_FILENAME
    cache = pth.with_suffix(".npz")
    if cache.exists():
        return jax.device_put(_load_npz(cache))
    if not pth.exists():
        hint = f"download {WEIGHTS_URL} and save it as {pth}"
        if not download:
            raise WeightsNotFoundError(f"Inception weights not found at {pth}; {hint}")
        try:
            _download(WEIGHTS_URL, pth)
        except OSError as e:
            raise WeightsNotFoundError(
                f"Inception weights not found at {pth} and the download failed ({e}); {hint}"
            ) from e
    variables = state_dict_to_variables(read_pth(pth))
    try:
        _save_npz(variables, cache)
    except OSError as e:  # read-only location: still usable, just not cached
        warnings.warn(f"could not cache Inception weights at {cache}: {e}", stacklevel=2)
    return jax.device_put(variables)
