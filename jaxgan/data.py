"""Datasets: loaded once into host memory as uint8, then either uploaded once (device-resident,
batches gathered inside the compiled step) or streamed by a prefetching host iterator.

Three parts:
  * loading (host side, may touch files): `load(config) -> Dataset` for TFDS datasets by name,
    image folders, stacked MNIST and the 2D mixtures; decoded arrays are cached as .npz;
  * batching (pure, runs inside the step): `init_position`, `next_indices`, `next_batch`,
    `sample_mixture`;
  * streaming (host side, for datasets over `data.device_budget_mb`): `Prefetcher`, which yields
    exactly the batches `next_indices` would gather, already on the device.

Epochs are shuffled without replacement from the seed; the permutation and the cursor are part of
the training state, so a resumed run reads the same batches as an uninterrupted one, whether the
data is device-resident or streamed.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import importlib.util
import os
import queue
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgan import config as config_lib
from jaxgan import distributed
from jaxgan import env
from jaxgan import images as images_lib


class DataError(ValueError):
    """Data that cannot be loaded; the message says what to do."""


@dataclasses.dataclass
class Dataset:
    """Host-side data. images: uint8[N, H, W, C]; labels: int32[N] or None;
    centers: f32[K, 2] and sigma for 2D mixtures (sampled fresh inside the step);
    skipped: image files that could not be read (folders only)."""
    name: str
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    centers: np.ndarray | None = None
    sigma: float = 0.0
    skipped: int = 0

    @property
    def is_mixture(self) -> bool:
        return self.centers is not None

    @property
    def num_examples(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        return 0 if self.images is None else int(self.images.nbytes)


# ----------------------------------------------------------------------------- 2D mixtures


def mixture_centers(name: str) -> tuple[np.ndarray, float]:
    """PacGAN geometry: ring = 8 modes on the unit circle, sigma 0.01; grid = {-4..4 step 2}^2,
    sigma 0.05 (Lin et al. 2018, following VEEGAN)."""
    if name == "ring":
        angles = 2 * np.pi * np.arange(8) / 8
        return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32), 0.01
    if name == "grid":
        xs = np.arange(-4, 5, 2, dtype=np.float32)
        return np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2), 0.05
    raise DataError(f"unknown mixture {name!r}; use 'ring' or 'grid'")


def sample_mixture(key: jax.Array, centers: jax.Array, sigma: float, n: int) -> jax.Array:
    """n points f32[n, 2]: a uniformly chosen mode plus isotropic Gaussian noise."""
    k_mode, k_noise = jax.random.split(key)
    modes = jax.random.randint(k_mode, (n,), 0, centers.shape[0])
    return centers[modes] + sigma * jax.random.normal(k_noise, (n, 2), dtype=centers.dtype)


# ----------------------------------------------------------------------------- loading

DEFAULT_DEVICE_BUDGET_MB = 4096


def load(config) -> Dataset:
    """The dataset a recipe names, in host memory. Raises DataError with the fix in the message.

    Nothing is compiled here, so a wrong path or a missing dataset costs seconds, not a run.
    """
    d = config.data
    if config_lib.is_mixture(config):
        centers, sigma = mixture_centers(d.name)
        return Dataset(d.name, centers=centers, sigma=sigma)
    size, channels = int(d.image_size), int(d.channels)
    if d.name == "digits":
        ds = _load_digits(size, channels)
    elif d.name == "folder":
        ds = load_folder(d.path, size, channels)
    elif d.name == "stacked_mnist":
        if channels != 3:
            raise DataError(f"stacked_mnist has 3 channels (one digit in each); set "
                            f"data.channels=3 (it is {channels})")
        ds = load_stacked_mnist(int(d.get("num_examples", STACKED_MNIST_EXAMPLES)),
                                int(config.seed), size, d.split, d.data_dir,
                                download=bool(d.get("download", False)))
    else:
        ds = load_tfds(d.name, d.split, d.data_dir, size, channels,
                       download=bool(d.get("download", False)))
    if int(d.limit) > 0:
        ds.images = ds.images[: int(d.limit)]
        ds.labels = None if ds.labels is None else ds.labels[: int(d.limit)]
    if ds.num_examples < int(config.train.batch_size):
        raise DataError(
            f"{ds.num_examples} examples in {d.name!r} but train.batch_size="
            f"{config.train.batch_size}; lower the batch size or add data")
    return ds


def fits_device(dataset: Dataset, config) -> bool:
    """True when the uint8 images fit `data.device_budget_mb` (per device: each device holds a
    full copy when replicated): upload once and gather in the step. Otherwise stream them with
    `Prefetcher`. Mixtures always fit (they are sampled in the step)."""
    if dataset.is_mixture:
        return True
    budget = float(config.data.get("device_budget_mb", DEFAULT_DEVICE_BUDGET_MB))
    return dataset.nbytes <= budget * 2**20


# ----------------------------------------------------------------------------- cache


def _cache_path(kind: str, *key) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(k) for k in key))[:100]
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    return os.path.join(env.cache_dir(), kind, f"{readable}-{digest}.npz")


def _cache_read(path: str) -> dict | None:
    """The cached arrays, or None when absent or unreadable (then they are rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # missing, truncated or from another numpy: rebuild, never fail
        return None


def _cache_write(path: str, **arrays) -> None:
    """Uncompressed .npz (loads at disk speed), written atomically; a cache directory that is
    not writable only costs the decode next time."""
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except Exception:
        try:
            os.remove(tmp)
        except OSError:
            pass


DECODE_THREADS = 0  # 0: one per core (at most 32); 1: decode serially (benchmarks compare)


def _parallel_chunks(fn, n: int, chunk: int) -> list:
    """[fn(start, stop) for each chunk of range(n)] on a thread pool, in order. Pillow releases
    the GIL while it decodes and resizes, so JPEG-sized images decode on all cores."""
    starts = list(range(0, n, chunk))
    workers = DECODE_THREADS or min(32, os.cpu_count() or 1)
    if workers <= 1 or len(starts) <= 1:
        return [fn(s, min(n, s + chunk)) for s in starts]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: fn(s, min(n, s + chunk)), starts))


def _resize_all(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8[N, h, w, c] -> uint8[N, size, size, channels] (no-op when already right)."""
    if images.shape[1:] == (size, size, channels):
        return images
    from PIL import Image
    out = np.empty((images.shape[0], size, size, channels), dtype=np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        out[i] = images_lib.resize_square(pil, size, channels)
    return out


# ----------------------------------------------------------------------------- digits


def _load_digits(size: int, channels: int) -> Dataset:
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels): ships with the package, so
    the default recipe trains on real images offline."""
    images, labels = digits_arrays()
    imgs = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset("digits", images=_resize_all(imgs, size, channels), labels=labels)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """`sklearn.datasets.load_digits()`'s images (float64 [1797, 8, 8], 0..16) and targets.

    Read from the CSV that load_digits itself reads, found without importing scikit-learn:
    its import (scipy.stats and friends) took ~2 s of every CLI start on a 2-core box, 10x
    the rest of this function. Falls back to load_digits where the file is not there."""
    spec = importlib.util.find_spec("sklearn")
    roots = (spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
    from sklearn.datasets import load_digits
    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int32)


# ----------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def set_location(config, where: str) -> None:
    """Points the recipe's data group at `where` (a CLI's --data_dir): TFDS's data_dir, or for
    an image folder the folder itself (data.path)."""
    if config.data.name == "folder":
        config.data.path = where
    else:
        config.data.data_dir = where


def list_images(path: str) -> list[str]:
    """Image files under `path`, recursive, sorted (the order of the examples)."""
    return sorted(
        os.path.join(root, f) for root, _, names in os.walk(path, followlinks=True)
        for f in names if f.lower().endswith(IMAGE_SUFFIXES))


def _decode_file(path: str, size: int, channels: int) -> np.ndarray | None:
    """uint8[size, size, channels], or None when the file cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode at a reduced scale when the file is much larger
                img.draft("L" if channels == 1 else "RGB", (size, size))
            return images_lib.resize_square(img, size, channels)
    except Exception:  # truncated, corrupt or not an image: counted by the caller, never fatal
        return None


def _folder_images(path: str) -> tuple[str, list[str]]:
    """(absolute path, its image files); a one-line DataError when there are none."""
    if not path or not os.path.isdir(os.path.expanduser(path)):
        raise DataError(f"data.path={path!r} is not a folder; point it at a folder of images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    path = os.path.abspath(os.path.expanduser(path))
    files = list_images(path)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under data.path={path!r}")
    return path, files


def _all_unreadable(path: str, files: list[str]) -> DataError:
    return DataError(f"all {len(files)} image files under {path!r} are unreadable")


def _folder_files(path: str) -> tuple[str, list[str], str]:
    """(absolute path, its image files, a digest of their names, sizes and modification
    times): the folder's identity for caches."""
    path, files = _folder_images(path)
    stamp = hashlib.sha1()
    for f in files:
        try:
            st = os.stat(f)
            stamp.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            stamp.update(f"{f}\0missing\n".encode())
    return path, files, stamp.hexdigest()


def folder_fingerprint(path: str) -> str:
    """'<folder name>-<digest>': changes when a file under `path` is added, removed or edited,
    so statistics cached for one folder are never reused for another."""
    path, _, digest = _folder_files(path)
    return f"{os.path.basename(path)}-{digest[:12]}"


def folder_image_shape(path: str) -> tuple[int, int]:
    """A folder's native (size, channels): its first readable image's shorter side (load_folder
    crops to a square), grey or RGB."""
    from PIL import Image
    path, files = _folder_images(path)  # no digest: one image is read, no file stat'd
    for f in files:
        try:
            with Image.open(f) as img:
                return min(img.size), (1 if img.mode in ("L", "I", "F", "1") else 3)
        except Exception:  # unreadable, as in _decode_file: the next one
            continue
    raise _all_unreadable(path, files)


def load_folder(path: str, size: int, channels: int, use_cache: bool = True) -> Dataset:
    """Every image under `path` (recursive; jpg, jpeg, png, webp, bmp), center-cropped to a
    square and resized to size x size, grey or RGB. Unreadable files are skipped and counted in
    `Dataset.skipped`. Decoded in parallel threads and cached, keyed by the file list, sizes and
    modification times (adding, removing or editing a file rebuilds the cache)."""
    path, files, digest = _folder_files(path)
    cpath = _cache_path("folder", os.path.basename(path), size, channels, digest)
    cached = _cache_read(cpath) if use_cache else None
    if cached is not None and cached["images"].shape[1:] == (size, size, channels):
        return Dataset("folder", images=cached["images"], skipped=int(cached["skipped"]))

    out = np.empty((len(files), size, size, channels), np.uint8)
    ok = np.zeros((len(files),), bool)

    def decode(start, stop):
        for i in range(start, stop):
            arr = _decode_file(files[i], size, channels)
            if arr is not None:
                out[i], ok[i] = arr, True

    _parallel_chunks(decode, len(files), 256)
    skipped = int(len(files) - ok.sum())
    if skipped == len(files):
        raise _all_unreadable(path, files)
    images = out if skipped == 0 else out[ok]
    if use_cache:
        _cache_write(cpath, images=images, skipped=np.int64(skipped))
    return Dataset("folder", images=images, skipped=skipped)


# ----------------------------------------------------------------------------- TFDS


def tfds_data_dirs(data_dir: str) -> list[str]:
    """Where to look for prepared TFDS data: data.data_dir (several joined with os.pathsep are
    searched in order), else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    raw = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return [os.path.abspath(os.path.expanduser(p)) for p in raw.split(os.pathsep) if p]


def find_prepared(name: str, data_dirs: list[str]) -> tuple[str, str] | None:
    """(data_dir, version) of the newest prepared copy of `name` ('mnist', 'celeb_a',
    'name/config' or 'name:1.2.3'), from the files on disk alone: no builder, no network."""
    base, _, version = name.partition(":")
    for root in data_dirs:
        infos = glob.glob(os.path.join(root, base, version or "*", "dataset_info.json"))
        versions = [os.path.basename(os.path.dirname(p)) for p in infos]
        versions = [v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v)]
        if versions:
            newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
            return root, newest
    return None


def _not_prepared(name: str, dirs: list[str], why: str = "") -> DataError:
    where = os.pathsep.join(dirs)
    return DataError(
        f"TFDS dataset {name!r} is not prepared under {where}{why}; prepare it once online with "
        f"`pip install \"jaxgan[prepare]\" && tfds build {name.partition(':')[0]} --data_dir "
        f"{dirs[0]}` (or set --config.data.download=True), or set data.data_dir to where it is")


def _check_known(name: str) -> None:
    """DataError naming the nearest TFDS names when `name` is not a TFDS dataset (local
    registry only: tfds.list_builders() would query the community index online)."""
    import tensorflow_datasets as tfds
    try:
        tfds.builder_cls(name.partition(":")[0].partition("/")[0])
    except Exception:
        import difflib
        names = list(tfds.core.registered.list_imported_builders())
        near = difflib.get_close_matches(name, names + ["folder", "stacked_mnist", "digits"], n=3)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise DataError(f"data.name={name!r} is not a TFDS dataset, 'folder', 'stacked_mnist', "
                        f"'digits', 'ring' or 'grid'{hint}") from None


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    import socket
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _prepare(name: str, dirs: list[str]) -> None:
    """Downloads and prepares `name` into dirs[0] (needs TensorFlow and the network)."""
    if importlib.util.find_spec("tensorflow") is None:
        raise _not_prepared(name, dirs, " and data.download=True needs TensorFlow, which is not "
                            "installed")
    if not _online():
        raise _not_prepared(name, dirs, " and this machine is offline")
    import tensorflow_datasets as tfds
    try:
        tfds.builder(name, data_dir=dirs[0]).download_and_prepare()
    except Exception as e:
        raise _not_prepared(name, dirs, f" and preparing it failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_tfds(name: str, split: str, data_dir: str, size: int, channels: int,
              download: bool = False, use_cache: bool = True) -> Dataset:
    """A prepared TFDS dataset through `tfds.data_source` (array_record; no TensorFlow), center
    cropped and resized to size x size with `channels`; labels when the dataset has a 'label'.

    A dataset that is not on disk fails at once (no network: the data_dir is searched for
    NAME/VERSION/dataset_info.json before TFDS is asked anything), unless `download` is set and
    TensorFlow and the network are there. Decoded arrays are cached under `env.cache_dir()`.
    """
    dirs = tfds_data_dirs(data_dir)
    found = find_prepared(name, dirs)
    if found is None:
        _check_known(name)
        if not download:
            raise _not_prepared(name, dirs)
        _prepare(name, dirs)
        found = find_prepared(name, dirs)
        if found is None:
            raise _not_prepared(name, dirs, " even after preparing it")
    root, version = found
    base = name.partition(":")[0]
    cpath = _cache_path("tfds", base, split, f"{size}px", f"{channels}c", version, root)
    cached = _cache_read(cpath) if use_cache else None
    if cached is not None and cached["images"].shape[1:] == (size, size, channels):
        return Dataset(base, images=cached["images"], labels=cached.get("labels"))

    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(f"{base}:{version}", split=split, data_dir=root)
    except Exception as e:  # unknown split, unsupported file format, ...
        raise DataError(f"cannot read TFDS {name!r} split {split!r} from {root} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
    images, labels = decode_source(source, size, channels, name=name)
    if use_cache:
        arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
        _cache_write(cpath, **arrays)
    return Dataset(base, images=images, labels=labels)


def decode_source(source, size: int, channels: int, name: str = "",
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """All records of a TFDS data source -> (uint8[N, size, size, channels], int32[N] or None),
    decoded in parallel chunks."""
    keys = list(source.dataset_info.features.keys())
    image_key = "image" if "image" in keys else next((k for k in keys if "image" in k), None)
    if image_key is None:
        raise DataError(f"TFDS dataset {name!r} has no image feature (features: {keys})")
    has_label = "label" in keys
    n = len(source) if limit is None else min(limit, len(source))
    images = np.empty((n, size, size, channels), np.uint8)
    labels = np.zeros((n,), np.int32) if has_label else None

    def read(start, stop):
        try:  # batched read: array_record fetches the records in parallel
            return source.__getitems__(list(range(start, stop)))
        except TypeError:  # tfds.testing.mock_data (4.9.x) binds __getitems__ without self
            return [source[i] for i in range(start, stop)]

    def decode(start, stop):
        records = read(start, stop)
        batch = np.stack([np.asarray(r[image_key], dtype=np.uint8) for r in records])
        if batch.ndim == 3:
            batch = batch[..., None]
        images[start:stop] = _resize_all(batch, size, channels)
        if has_label:
            labels[start:stop] = [int(r["label"]) for r in records]

    _parallel_chunks(decode, n, 1024)
    return images, labels


# ----------------------------------------------------------------------------- stacked MNIST

STACKED_MNIST_EXAMPLES = 128_000  # PacGAN (Lin et al. 2018) / VEEGAN training-set size


def load_stacked_mnist(num_examples: int, seed: int, size: int, split: str = "train",
                       data_dir: str = "", download: bool = False) -> Dataset:
    """Stacked MNIST (Metz et al. 2017; VEEGAN; PacGAN): three MNIST digits drawn uniformly at
    random put in the R, G and B channels, 1000 modes; label = 100 * r + 10 * g + b.
    uint8[num_examples, size, size, 3], the same for the same seed."""
    mnist = load_tfds("mnist", split, data_dir, size, 1, download=download)
    return stack_digits(mnist.images, mnist.labels, num_examples, seed)


def stack_digits(images: np.ndarray, labels: np.ndarray, num_examples: int,
                 seed: int) -> Dataset:
    """uint8[M, H, W, 1] digits with int[M] labels -> stacked MNIST Dataset of num_examples."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    idx = rng.integers(0, images.shape[0], size=(num_examples, 3))
    stacked = np.concatenate([images[idx[:, c]] for c in range(3)], axis=-1)
    lab = labels.astype(np.int32)
    modes = 100 * lab[idx[:, 0]] + 10 * lab[idx[:, 1]] + lab[idx[:, 2]]
    return Dataset("stacked_mnist", images=stacked, labels=modes.astype(np.int32))


# ----------------------------------------------------------------------------- in-step batching


@struct.dataclass
class DataPosition:
    """Where the next batch starts: the epoch's permutation i32[N], cursor and epoch number."""
    perm: jax.Array
    cursor: jax.Array
    epoch: jax.Array


def _epoch_perm(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def init_position(key: jax.Array, n: int) -> DataPosition:
    """Epoch 0 starts at its first index. For mixtures (n=0) the position is unused; its perm
    has one element because Orbax refuses to save zero-size arrays."""
    if n == 0:
        return DataPosition(jnp.zeros((1,), jnp.int32), jnp.int32(0), jnp.int32(0))
    return DataPosition(_epoch_perm(key, jnp.int32(0), n), jnp.int32(0), jnp.int32(0))


def next_indices(pos: DataPosition, key: jax.Array, batch: int) -> tuple[jax.Array, DataPosition]:
    """The next `batch` indices without replacement; a new permutation once an epoch runs out
    (the incomplete tail of an epoch is dropped, as drop_last=True does)."""
    n = pos.perm.shape[0]

    def new_epoch(p):
        e = p.epoch + 1
        return DataPosition(_epoch_perm(key, e, n), jnp.int32(0), e)

    pos = jax.lax.cond(pos.cursor + batch > n, new_epoch, lambda p: p, pos)
    idx = jax.lax.dynamic_slice(pos.perm, (pos.cursor,), (batch,))
    return idx, pos.replace(cursor=pos.cursor + batch)


def next_batch(pos: DataPosition, data: dict, key: jax.Array, sample_key: jax.Array,
               batch: int, i=0):
    """The next real batch in model range: f32[B, H, W, C] in [-1, 1] or f32[B, 2] points.

    `data` holds device arrays, one of
      {"images": uint8[N, H, W, C]}            device-resident: gathered here;
      {"real": uint8[n_critic, B, H, W, C]}    streamed by `Prefetcher`: `i` picks the critic
                                               update's batch, the position advances as if
                                               gathered (so checkpoints resume either way);
      {"centers": f32[K, 2], "sigma": f32[]}   2D mixtures: sampled with `sample_key`.
    `key` orders the epochs. Returns (batch, position, labels): labels int32[B] when `data`
    holds the resident `labels` of a conditional recipe, else None.
    """
    if "centers" in data:
        return sample_mixture(sample_key, data["centers"], data["sigma"], batch), pos, None
    idx, pos = next_indices(pos, key, batch)
    if "real" in data:
        real = images_lib.to_model_range(data["real"][i])
    else:
        real = images_lib.to_model_range(jnp.take(data["images"], idx, axis=0))
    labels = jnp.take(data["labels"], idx, axis=0) if "labels" in data else None
    return real, pos, labels


def device_data(dataset: Dataset, sharding=None, labels: bool = False) -> dict:
    """Uploads the dataset once (uint8 for images). With a sharding that spans several processes
    (multi-host), each process copies only the rows its own devices hold."""
    if dataset.is_mixture:
        host = {"centers": dataset.centers, "sigma": np.float32(dataset.sigma)}
    else:
        host = {"images": dataset.images}
        if labels:
            host["labels"] = np.asarray(dataset.labels, np.int32)
    return {k: distributed.put(v, sharding) for k, v in host.items()}


# ----------------------------------------------------------------------------- streaming


class Prefetcher:
    """Host-side batches for datasets over the device budget, put on the device ahead of use.

    Yields `uint8[steps, n_critic, batch, H, W, C]` device arrays (the leading `steps` axis only
    when steps > 1): exactly the examples that `next_indices` would pick from the same key and
    position, so streamed and device-resident training read the same data in the same order.
    A background thread gathers and `jax.device_put`s up to `depth` chunks ahead (double
    buffering with depth=2), so host gathering and the copy overlap the step. With a `sharding`
    each process gathers and copies only the part of the batch its own devices hold
    (`make_array_from_callback`): a multi-host `device_put` from this thread would be a
    cross-process transfer racing the step's collectives.

    Resume: build it with the restored state's `epoch` and `cursor`
    (`Prefetcher(images, key, B, n_critic, epoch=int(state.data.epoch),
    cursor=int(state.data.cursor))`); the permutation is recomputed from (key, epoch).
    `key` is the data key of the step: `fold_in(state.key, STREAM_DATA)`.
    """

    def __init__(self, images: np.ndarray, key: jax.Array, batch: int, n_critic: int = 1,
                 steps: int = 1, epoch: int = 0, cursor: int = 0, sharding=None,
                 depth: int = 2):
        n = int(images.shape[0])
        if n < batch:
            raise DataError(f"{n} examples but a batch of {batch}")
        self.images, self.batch, self.n_critic, self.steps = images, batch, n_critic, steps
        self.sharding, self._n = sharding, n
        # On the host: the thread's permutations then run on a local device only (the key
        # may be a global array of a multi-host run)
        self._key = np.asarray(jax.device_get(key))
        self._perm_fn = jax.jit(_epoch_perm, static_argnums=2)
        self.epoch, self.cursor = int(epoch), int(cursor)  # of the next chunk to be produced
        self._perm = self._host_perm(self.epoch)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jaxgan-prefetch", daemon=True)
        self._thread.start()

    def _host_perm(self, epoch: int) -> np.ndarray:
        return np.asarray(jax.device_get(self._perm_fn(self._key, jnp.int32(epoch), self._n)))

    def host_indices(self) -> np.ndarray:
        """The next chunk's indices int32[steps * n_critic * batch]; advances the position with
        the rule of `next_indices` (drop the epoch's tail, reshuffle)."""
        out = []
        for _ in range(self.steps * self.n_critic):
            if self.cursor + self.batch > self._n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._host_perm(self.epoch)
            out.append(self._perm[self.cursor:self.cursor + self.batch])
            self.cursor += self.batch
        return np.concatenate(out)

    def _chunk(self) -> jax.Array:
        idx = self.host_indices()
        shape = ((self.steps,) if self.steps > 1 else ()) + (self.n_critic, self.batch)
        if self.sharding is None:
            return jax.device_put(self.images[idx].reshape(shape + self.images.shape[1:]))
        idx = idx.reshape(shape)
        k = idx.ndim

        def rows(index):  # index: slices of the chunk; gather only those rows
            return self.images[idx[index[:k]]][(slice(None),) * k + tuple(index[k:])]

        return jax.make_array_from_callback(shape + self.images.shape[1:], self.sharding, rows)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._put(self._chunk())
        except BaseException as e:  # surfaced to the consumer by __next__
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> jax.Array:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
