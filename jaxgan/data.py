"""Datasets: loaded once into memory as uint8, uploaded once, batched inside the compiled step.

Two halves:
  * loading (host side, may touch files): `load(config) -> Dataset`;
  * batching (pure, runs inside the step): `init_position`, `next_batch`, `sample_mixture`.

Epochs are shuffled without replacement from the seed; the permutation and the cursor are part of
the training state, so a resumed run reads the same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgan import config as config_lib
from jaxgan import images as images_lib


class DataError(ValueError):
    """Data that cannot be loaded; the message says what to do."""


@dataclasses.dataclass
class Dataset:
    """Host-side data. images: uint8[N, H, W, C]; labels: int32[N] or None;
    centers: f32[K, 2] and sigma for 2D mixtures (sampled fresh inside the step)."""
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


def load(config) -> Dataset:
    """The dataset a recipe names, in memory. Raises DataError with the fix in the message."""
    d = config.data
    if config_lib.is_mixture(config):
        centers, sigma = mixture_centers(d.name)
        return Dataset(d.name, centers=centers, sigma=sigma)
    if d.name == "digits":
        ds = _load_digits(int(d.image_size), int(d.channels))
    elif d.name == "folder":
        ds = _load_folder(d.path, int(d.image_size), int(d.channels))
    else:
        ds = _load_tfds(d.name, d.split, d.data_dir, int(d.image_size), int(d.channels))
    if int(d.limit) > 0:
        ds.images = ds.images[: int(d.limit)]
        ds.labels = None if ds.labels is None else ds.labels[: int(d.limit)]
    if ds.num_examples < int(config.train.batch_size):
        raise DataError(
            f"{ds.num_examples} examples in {d.name!r} but train.batch_size="
            f"{config.train.batch_size}; lower the batch size or add data")
    return ds


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


def _load_digits(size: int, channels: int) -> Dataset:
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels): ships with the package, so
    the default recipe trains on real images offline."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    imgs = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset("digits", images=_resize_all(imgs, size, channels),
                   labels=bunch.target.astype(np.int32))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _load_folder(path: str, size: int, channels: int) -> Dataset:
    """Every image under `path` (recursive), center-cropped and resized; unreadable files are
    skipped and counted, never fatal."""
    from PIL import Image
    if not os.path.isdir(path):
        raise DataError(f"data.path={path!r} is not a folder; point it at your images")
    files = sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names
        if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under data.path={path!r}")
    out, skipped = [], 0
    for f in files:
        try:
            with Image.open(f) as img:
                out.append(images_lib.resize_square(img, size, channels))
        except Exception:  # a broken file must not kill a run; it is counted and reported
            skipped += 1
    if not out:
        raise DataError(f"all {len(files)} image files under {path!r} are unreadable")
    return Dataset("folder", images=np.stack(out), skipped=skipped)


def _load_tfds(name: str, split: str, data_dir: str, size: int, channels: int) -> Dataset:
    """A prepared TFDS dataset through `tfds.data_source` (array_record; no TensorFlow)."""
    import tensorflow_datasets as tfds
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name: TFDS raises DatasetNotFoundError with a long text
        raise DataError(f"TFDS has no dataset named {name!r} ({type(e).__name__})") from None
    if not builder.is_prepared():
        where = builder.data_dir
        raise DataError(
            f"TFDS dataset {name!r} is not prepared under {where}; prepare it once online with "
            f"`pip install jaxgan[prepare] && tfds build {name} --data_dir "
            f"{data_dir or '~/tensorflow_datasets'}`, or set data.data_dir to where it is")
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    keys = source.dataset_info.features.keys()
    image_key = "image" if "image" in keys else next(
        (k for k in keys if "image" in k), None)
    if image_key is None:
        raise DataError(f"TFDS dataset {name!r} has no image feature (features: {list(keys)})")
    n = len(source)
    first = np.asarray(source[0][image_key])
    imgs = None
    labels = np.zeros((n,), np.int32) if "label" in keys else None
    chunk = 4096
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        records = source.__getitems__(idx)
        batch = np.stack([np.asarray(r[image_key], dtype=np.uint8) for r in records])
        batch = _resize_all(batch, size, channels)
        if imgs is None:
            imgs = np.empty((n,) + batch.shape[1:], np.uint8)
        imgs[start:start + len(idx)] = batch
        if labels is not None:
            labels[start:start + len(idx)] = [int(r["label"]) for r in records]
    del first
    return Dataset(name, images=imgs, labels=labels)


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
               batch: int) -> tuple[jax.Array, DataPosition]:
    """The next real batch in model range: f32[B, H, W, C] in [-1, 1] or f32[B, 2] points.

    `data` holds device arrays: {"images": uint8[N, H, W, C]} or {"centers": f32[K, 2],
    "sigma": f32[]}. `key` orders the epochs; `sample_key` draws mixture points.
    """
    if "centers" in data:
        return sample_mixture(sample_key, data["centers"], data["sigma"], batch), pos
    idx, pos = next_indices(pos, key, batch)
    return images_lib.to_model_range(jnp.take(data["images"], idx, axis=0)), pos


def device_data(dataset: Dataset, sharding=None) -> dict:
    """Uploads the dataset once (uint8 for images)."""
    if dataset.is_mixture:
        host = {"centers": dataset.centers, "sigma": np.float32(dataset.sigma)}
    else:
        host = {"images": dataset.images}
    return jax.device_put(host, sharding) if sharding is not None else jax.device_put(host)
