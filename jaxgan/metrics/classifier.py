"""A small CNN classifier for offline domain metrics, when Inception weights are not at hand.

Trained once on a labelled dataset (MNIST, Fashion-MNIST, CIFAR-10, ...) and saved as one `.npz`
(flattened params plus a JSON `meta` record: image size, channels, classes, dataset, label
histogram, test accuracy). With it, on generated images:
  * Frechet distance on its penultimate features (`fid.frechet_distance` on `fid.statistics`);
  * its Inception-style score (`fid.inception_score` on its logits);
  * classes covered and KL(generated class histogram || data label histogram);
  * stacked MNIST (3 digits in the R, G, B channels): each channel classified separately by an
    MNIST classifier, mode id 100*r + 10*g + b, modes covered of 1000 and KL to uniform
    (PacGAN, Lin et al. 2018, following VEEGAN).

Numbers from this network are comparable only between runs scored with the same classifier file:
report its `fingerprint` (meta) alongside them.

Everything here is pure library code (no flags, no printing); `jaxgan.evaluate` is the CLI.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from scipy.special import softmax

CLASSIFIER_FILENAME = "classifier.npz"
FORMAT_VERSION = 1


class ClassifierError(ValueError):
    """A classifier file that cannot be used; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class ClassifierNet(nn.Module):
    """conv3x3(w0)-relu-maxpool2 -> conv3x3(w1)-relu-maxpool2 -> dense(F)-relu -> dense(K).

    x: f32[B, S, S, C] in [-1, 1] -> (features f32[B, F] (post-ReLU penultimate layer),
    logits f32[B, K]).
    """

    num_classes: int
    widths: tuple[int, ...] = (16, 32)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Conv(w, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim)(x))
        return features, nn.Dense(self.num_classes)(features)


def _prepare(images: jax.Array, size: int, channels: int) -> jax.Array:
    """uint8[B, H, W, C] -> f32[B, size, size, channels] in [-1, 1] (the generator's range).

    Other sizes are resized bilinearly (antialiased); grey images are repeated to RGB for an RGB
    classifier. Per-channel classification of RGB by a grey classifier happens before this.
    """
    x = images.astype(jnp.float32) / 127.5 - 1.0
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "linear", antialias=True)
    if x.shape[-1] == 1 and channels == 3:
        x = jnp.repeat(x, 3, axis=-1)
    return x


@functools.partial(jax.jit, static_argnames=("net", "size", "channels", "per_channel"))
def _forward(params, images, net: ClassifierNet, size: int, channels: int, per_channel: bool):
    """uint8[B, H, W, C] -> (features f32[B, F'], logits f32[B, K'])."""
    if per_channel:  # RGB of stacked grey images: classify each channel, [B, 3, ...]
        b, h, w, c = images.shape
        flat = jnp.moveaxis(images, -1, 1).reshape(b * c, h, w, 1)
        f, logits = net.apply({"params": params}, _prepare(flat, size, channels))
        return f.reshape(b, c * f.shape[-1]), logits.reshape(b, c, logits.shape[-1])
    return net.apply({"params": params}, _prepare(images, size, channels))


# --------------------------------------------------------------------------------------------
# The trained classifier: features, predictions, save/load
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Classifier:
    """Trained parameters plus what using them needs.

    meta keys: dataset, split, image_size, channels, num_classes, widths, feature_dim,
    label_hist (f[K], the training labels' histogram), test_accuracy, fingerprint.
    """

    params: Any
    meta: dict

    @property
    def net(self) -> ClassifierNet:
        return ClassifierNet(int(self.meta["num_classes"]), tuple(self.meta["widths"]),
                             int(self.meta["feature_dim"]))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def label_hist(self) -> np.ndarray:
        return np.asarray(self.meta["label_hist"], np.float64)

    def per_channel(self, channels: int) -> bool:
        """True when RGB images are scored channel by channel (stacked MNIST)."""
        mine = int(self.meta["channels"])
        if channels not in (1, 3):
            raise ClassifierError(f"images have {channels} channels; use 1 (grey) or 3 (RGB)")
        if mine == 3 and channels == 1:
            return False  # grey images are repeated to RGB
        return mine == 1 and channels == 3

    def features(self, images: np.ndarray | Iterable[np.ndarray], batch_size: int = 500,
                 ) -> tuple[np.ndarray, np.ndarray]:
        """uint8[N, H, W, C] (or an iterable of such chunks) -> (f32[N, F], logits).

        logits are f32[N, K], or f32[N, 3, K] when a grey classifier scores RGB images one
        channel at a time (features are then the 3 channels' features concatenated, f32[N, 3F]).
        Runs jit-compiled in fixed-size batches (the last one zero-padded): one compilation per
        image shape; only features and logits stay in memory.
        """
        from jaxgan.metrics.inception import run_batched  # uint8 checks, padding

        return run_batched(
            lambda batch: _forward(self.params, batch, net=self.net,
                                   size=int(self.meta["image_size"]),
                                   channels=int(self.meta["channels"]),
                                   per_channel=self.per_channel(batch.shape[-1])),
            images, batch_size)

    def predict(self, images, batch_size: int = 500) -> np.ndarray:
        """int32[N] classes (int32[N, 3] per channel for RGB images and a grey classifier)."""
        return np.argmax(self.features(images, batch_size)[1], axis=-1).astype(np.int32)

    def accuracy(self, images, labels, batch_size: int = 500) -> float:
        return float(np.mean(self.predict(images, batch_size) == np.asarray(labels)))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the `.npz` (atomically); a directory path gets `classifier.npz` inside."""
        path = classifier_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.device_get(self.params), sep="/")
        arrays = {f"params/{k}": np.asarray(v) for k, v in flat.items()}
        meta = dict(self.meta, format=FORMAT_VERSION)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
        os.close(fd)
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
        return path


def classifier_file(path: str | os.PathLike) -> Path:
    """A `.npz` path as given, else `<dir>/classifier.npz`."""
    p = Path(path).expanduser()
    return p if p.suffix == ".npz" else p / CLASSIFIER_FILENAME


def load_classifier(path: str | os.PathLike, dataset: str = "mnist") -> Classifier:
    """Reads a classifier written by `Classifier.save` (a `.npz` file or its directory).

    `dataset` only shapes the hint when there is none: the command that trains one for it
    (scikit-learn's digits ship offline, TFDS datasets need their data_dir).
    """
    p = classifier_file(path)
    if not p.exists():
        data_dir = "" if dataset == "digits" else " --data_dir DIR"
        raise ClassifierError(
            f"no classifier at {p}; train one with `python -m jaxgan.evaluate train-classifier "
            f"--dataset {dataset}{data_dir} --out {Path(path).expanduser()}`")
    try:
        with np.load(p, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            flat = {tuple(k.split("/")[1:]): data[k] for k in data.files
                    if k.startswith("params/")}
    except Exception as e:  # zip/npz/json errors of a damaged or foreign file
        raise ClassifierError(f"{p} is not a readable classifier file ({type(e).__name__}: "
                              f"{e}); retrain it with `python -m jaxgan.evaluate "
                              "train-classifier`") from None
    missing = {"num_classes", "image_size", "channels", "widths", "feature_dim",
               "label_hist"} - set(meta)
    if missing or not flat:
        raise ClassifierError(f"{p} lacks {sorted(missing) or 'parameters'}; retrain it with "
                              "`python -m jaxgan.evaluate train-classifier`")
    return Classifier(jax.device_put(traverse_util.unflatten_dict(flat)), meta)


def fingerprint(params) -> str:
    """sha256 prefix of the parameters: names the exact network behind a set of numbers."""
    h = hashlib.sha256()
    for k, v in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def init_params(net: ClassifierNet, image_shape: tuple[int, int, int], seed: int = 0):
    """LeCun-normal kernels and zero biases, drawn in numpy from the seed.

    Same distribution as Flax's defaults (untruncated), but without compiling `net.init`, which
    takes ~20 s on a busy 2-core CPU for this small network.
    """
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, *image_shape))))["params"]
    rng = np.random.default_rng(seed)
    flat = {}
    for k, s in sorted(traverse_util.flatten_dict(shapes).items()):
        if k[-1] == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            flat[k] = (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
        else:
            flat[k] = np.zeros(s.shape, np.float32)
    return jax.device_put(traverse_util.unflatten_dict(flat))


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    steps: int = 1200,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    widths: tuple[int, ...] = (16, 32),
    feature_dim: int = 128,
    meta: dict | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 500,
) -> Classifier:
    """Trains ClassifierNet on uint8[N, S, S, C] images and int[N] labels in [0, num_classes).

    Adam with a cosine-decayed learning rate, softmax cross-entropy, batches drawn without
    replacement per epoch (seeded). The data is uploaded once; each step gathers its batch on
    device. `meta` (dataset, split, ...) is stored with the result.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8[N, S, S, C], got {images.dtype}{list(images.shape)}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be int[{len(images)}], got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, "
                         f"{labels.max()}]")
    n, size, _, channels = images.shape
    batch_size = min(batch_size, n)
    net = ClassifierNet(num_classes, tuple(widths), feature_dim)
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.02))
    params = init_params(net, (size, size, channels), seed)
    opt_state = tx.init(params)
    data_x, data_y = jax.device_put(images), jax.device_put(labels)

    @jax.jit
    def step(params, opt_state, idx):
        x = _prepare(jnp.take(data_x, idx, axis=0), size, channels)
        y = jnp.take(data_y, idx, axis=0)

        def loss_fn(p):
            logits = net.apply({"params": p}, x)[1]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == y)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    perm, start = rng.permutation(n), time.perf_counter()
    for i in range(steps):
        j = i % per_epoch
        if i and j == 0:
            perm = rng.permutation(n)
        idx = perm[j * batch_size:(j + 1) * batch_size]
        params, opt_state, loss, acc = step(params, opt_state, idx)
        if log is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
            log(f"step {i + 1}/{steps}: loss {float(loss):.4f}, batch accuracy "
                f"{float(acc):.3f} ({time.perf_counter() - start:.0f} s)")
    hist = np.bincount(labels, minlength=num_classes).astype(np.float64) / n
    full_meta = {"dataset": "", "split": "", "test_accuracy": None, **(meta or {})}
    full_meta.update(image_size=int(size), channels=int(channels), num_classes=int(num_classes),
                     widths=list(widths), feature_dim=int(feature_dim),
                     label_hist=hist.tolist(), train_steps=int(steps),
                     fingerprint=fingerprint(params))
    return Classifier(params, full_meta)


def native_image_shape(name: str, data_dir: str | None = None) -> tuple[int, int]:
    """(size, channels) of a dataset's square images (TFDS metadata; digits: 8x8 grey)."""
    if name == "digits":
        return 8, 1
    if name == "folder":
        from jaxgan import data as data_lib
        return data_lib.folder_image_shape(data_dir or "")
    if name == "stacked_mnist":  # one MNIST digit per RGB channel
        return native_image_shape("mnist", data_dir)[0], 3
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir or None)
    shape = builder.info.features["image"].shape
    if len(shape) != 3 or shape[0] is None or shape[0] != shape[1]:
        raise ClassifierError(f"{name!r} has images of shape {shape}; pass --image_size N")
    return int(shape[0]), int(shape[2])


def dataset_config(name: str, data_dir: str = "", split: str = "train", image_size: int = 0,
                   channels: int = 0, limit: int = 0):
    """A base recipe whose data group reads `name` (native size/channels when 0)."""
    from jaxgan import config as config_lib
    from jaxgan import data as data_lib
    if name == "folder" and not data_dir:
        raise ClassifierError("--dataset folder needs --data_dir FOLDER (the real images)")
    c = config_lib.base_config()
    c.data.name, c.data.split, c.data.limit = name, split, int(limit)
    data_lib.set_location(c, data_dir)
    if (not image_size or not channels) and name not in config_lib.MIXTURES:
        size, ch = native_image_shape(name, data_dir)
        image_size, channels = image_size or size, channels or ch
    c.data.image_size, c.data.channels = int(image_size or 32), int(channels or 1)
    c.train.batch_size = 1
    return c


def train_on_dataset(name: str, data_dir: str = "", *, steps: int = 1200,
                     train_split: str = "train", test_split: str = "test",
                     image_size: int = 0, limit: int = 0, seed: int = 0,
                     log: Callable[[str], None] | None = None, **kwargs) -> Classifier:
    """Trains on a labelled dataset read by `jaxgan.data.load`; measures test accuracy.

    image_size 0 keeps the dataset's native size. Returns the classifier with meta
    `test_accuracy` (None when `test_split` is empty).
    """
    from jaxgan import data as data_lib
    config = dataset_config(name, data_dir, train_split, image_size, limit=limit)
    train = data_lib.load(config)
    if train.labels is None:
        raise ClassifierError(f"{name!r} has no 'label' feature; train the classifier on a "
                              "labelled dataset (mnist, fashion_mnist, cifar10)")
    num_classes = _num_classes(name, data_dir, train.labels)
    images, labels = train.images, train.labels
    test_images = test_labels = None
    if name == "digits":  # one split only: hold out a seeded fifth for the test accuracy
        perm = np.random.default_rng(seed).permutation(len(images))
        cut = len(images) * 4 // 5
        test_images, test_labels = images[perm[cut:]], labels[perm[cut:]]
        images, labels = images[perm[:cut]], labels[perm[:cut]]
        test_split = "holdout" if test_split else ""
    clf = train_classifier(
        images, labels, num_classes, steps=steps, seed=seed, log=log,
        meta=dict(dataset=name, split=train_split), **kwargs)
    if test_split:
        if test_images is None:
            config.data.split, config.data.limit = test_split, 0
            test = data_lib.load(config)
            test_images, test_labels = test.images, test.labels
        clf.meta["test_accuracy"] = clf.accuracy(test_images, test_labels)
        clf.meta["test_split"] = test_split
    return clf


def _num_classes(name: str, data_dir: str, labels: np.ndarray) -> int:
    try:
        import tensorflow_datasets as tfds
        return int(tfds.builder(name, data_dir=data_dir or None).info.features["label"].num_classes)
    except Exception:  # not a TFDS dataset (digits): count the labels
        return int(labels.max()) + 1


# --------------------------------------------------------------------------------------------
# Metrics on predictions (pure numpy)
# --------------------------------------------------------------------------------------------


def histogram(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """int[N] -> f64[K], the share of samples in each class."""
    classes = np.asarray(classes).reshape(-1)
    if len(classes) == 0:
        raise ValueError("no predictions to histogram")
    return np.bincount(classes, minlength=num_classes).astype(np.float64) / len(classes)


def kl_divergence(q: np.ndarray, p: np.ndarray) -> float:
    """KL(q || p) = sum q log(q / p) in nats, 0 log 0 = 0; inf where q > 0 but p = 0."""
    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    nz = q > 0
    if np.any(p[nz] <= 0):
        return float("inf")
    return float(np.sum(q[nz] * np.log(q[nz] / p[nz])))


def class_metrics(classes: np.ndarray, data_hist: np.ndarray, min_share: float = 0.25,
                  ) -> dict[str, float]:
    """Coverage and KL of predicted classes int[N] against the data's label histogram f[K].

    A class is *covered* when its share of the samples is at least `min_share` times its share
    of the data (0.25: a quarter of what a perfect generator gives it; with N samples and K
    balanced classes that is N / 4K samples, 2.5% on MNIST), so the classifier's stray
    misclassifications of a collapsed generator's samples do not count as coverage.
    class_kl = KL(sample histogram || data histogram) in nats: 0 for a perfect match, log K
    when everything falls into one of K balanced classes.
    """
    data_hist = np.asarray(data_hist, np.float64)
    data_hist = data_hist / data_hist.sum()
    q = histogram(classes, len(data_hist))
    present = data_hist > 0
    covered = present & (q >= min_share * data_hist)
    return {"classes_covered": int(covered.sum()), "num_classes": int(present.sum()),
            "class_kl": kl_divergence(q, data_hist)}


def confident_share(logits: np.ndarray, threshold: float = 0.9) -> float:
    """Share of samples whose top class probability is >= threshold: the classifier reads them
    as one class without doubt. A per-sample "recognizable" rate (real MNIST test digits: 0.966
    at 0.9, BUILD_NOTES.md); the score (an IS) mixes this with class balance, FD with the
    feature distribution.
    """
    x = np.asarray(logits, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"logits must be [N, K] with N > 0, got shape {x.shape}")
    return float(np.mean(softmax(x, axis=1).max(axis=1) >= threshold))


def stacked_mode_ids(channel_classes: np.ndarray) -> np.ndarray:
    """int[N, 3] per-channel digits (R, G, B) -> int[N] mode ids 100*r + 10*g + b."""
    c = np.asarray(channel_classes)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"channel classes must be int[N, 3], got shape {c.shape}")
    return (100 * c[:, 0] + 10 * c[:, 1] + c[:, 2]).astype(np.int32)


def stacked_mnist_metrics(channel_classes: np.ndarray, min_count: int = 1) -> dict[str, float]:
    """PacGAN stacked-MNIST metrics from per-channel digits int[N, 3].

    A mode is covered when at least `min_count` samples fall into it (PacGAN/VEEGAN: 1, over
    26000 samples); kl = KL(mode histogram || uniform over 1000) in nats (log 1000 = 6.91 when a
    single mode is produced).
    """
    ids = stacked_mode_ids(channel_classes)
    counts = np.bincount(ids, minlength=1000)
    q = counts.astype(np.float64) / len(ids)
    return {"covered": int(np.sum(counts >= min_count)), "num_modes": 1000,
            "kl": kl_divergence(q, np.full(1000, 1e-3))}


def chunks(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Slices of at most `size` rows (views, no copies)."""
    for i in range(0, len(images), size):
        yield images[i:i + size]
