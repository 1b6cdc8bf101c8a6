"""Scores a generator: FID / IS / KID, classifier metrics, mode coverage.

CLI:
  python -m jaxgan.evaluate train-classifier --dataset mnist --data_dir DIR --out PATH [--steps N]
  python -m jaxgan.evaluate --workdir DIR [--metrics fid,is,kid,classifier,modes] [--num 10000]
      [--classifier PATH] [--inception PATH] [--step S] [--seed K]
  python -m jaxgan.evaluate --samples FILE.npz --dataset NAME [--data_dir DIR] [--metrics ...]
  python -m jaxgan.evaluate --dataset mnist --data_dir DIR --real_split test   (real-data baseline)

The workdir form samples from the checkpoint (`jaxgan.sample.generate`), prints one JSON line
and appends it to DIR/eval.jsonl. Metric groups (`--metrics`, default by dataset):
  modes       ring/grid: modes/captured, modes/high_quality, modes/reverse_kl (VEEGAN/PacGAN);
              stacked_mnist: modes/covered of modes/num_modes=1000, modes/kl (needs the MNIST
              classifier)
  classifier  classifier/fd, classifier/score (+_std), classifier/classes_covered,
              classifier/class_kl, classifier/confident (share of samples the classifier reads
              as one class with probability >= 0.9), and on the classifier's features
              classifier/precision, recall, density, coverage (Kynkaenniemi et al. 2019; Naeem
              et al. 2020, `prdc`, k = 5, against 10000 real): precision and density are
              fidelity, recall and coverage diversity, so a generator that is sure to please
              the classifier by repeating a few digits shows up; stacked_mnist: classifier/fd
              on per-channel features
  fid, is, kid  with the FID Inception weights (`--inception FILE.pth|DIR`, or `--download`);
              fid is the default for an image folder (data.name='folder', e.g. HW6's faces),
              which has no classes for the classifier metrics
  accuracy    semi-supervised runs (loss.name='ssgan', the default for them): accuracy/test, the
              critic's classification accuracy on the dataset's test split

Library: `Evaluator(config, metrics, ...)` loads the networks and the real data's reference
statistics once (cached as .npz); `evaluator(samples) -> dict` then only extracts features of the
new samples. `evaluate(config, samples, metrics)` is the one-shot form.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from jaxgan import checkpoint as ckpt_lib
from jaxgan import compile_cache, env, host_memory
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import images as images_lib
from jaxgan import sample as sample_lib
from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import fid as fid_lib

METRIC_GROUPS = ("fid", "is", "kid", "classifier", "modes", "accuracy")
STACKED = "stacked_mnist"
EVAL_FILE = "eval.jsonl"
CHUNK = 5000            # images per feature-extraction chunk: memory bound for any N
KID_REFERENCE = 10000   # real Inception features kept in the cache for KID
PRDC_REFERENCE = 10000  # real classifier features kept for precision/recall/density/coverage
PRDC_NEAREST_K = 5      # Naeem et al. 2020's k for 10000 real and 10000 generated samples

# Which way is better, for keeping the best checkpoint.
LOWER_IS_BETTER = frozenset({"fid", "kid", "classifier/fd", "classifier/class_kl", "modes/kl",
                             "modes/reverse_kl"})
HIGHER_IS_BETTER = frozenset({"is", "classifier/score", "classifier/confident",
                              "classifier/precision", "classifier/recall",
                              "classifier/density", "classifier/coverage",
                              "classifier/classes_covered", "accuracy/test",
                              "modes/covered", "modes/captured", "modes/high_quality"})


class EvaluateError(ValueError):
    """A request that cannot be scored; the message says what to do."""


def is_better(metric: str, new: float, old: float | None) -> bool:
    """True when `new` beats `old` (None: nothing yet) for a metric named in *_IS_BETTER."""
    if metric not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
        raise EvaluateError(f"no direction known for metric {metric!r}; choose one of "
                            f"{', '.join(sorted(LOWER_IS_BETTER | HIGHER_IS_BETTER))}")
    if not np.isfinite(new):
        return False
    if old is None or not np.isfinite(old):
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


def default_metrics(config) -> tuple[str, ...]:
    """ring/grid and stacked_mnist: modes; semi-supervised runs: their critic's test accuracy;
    an image folder (no labels to train a classifier on; HW6's faces): FID; other images:
    classifier (no weights download)."""
    if config.loss.name == "ssgan":
        return ("accuracy",)
    if config_lib.is_mixture(config) or config.data.name == STACKED:
        return ("modes",)
    if config.data.name == "folder":
        return ("fid",)
    return ("classifier",)


def parse_metrics(metrics: str | Sequence[str] | None, config) -> tuple[str, ...]:
    if metrics is None or metrics == "" or metrics == "auto":
        return default_metrics(config)
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    bad = [m for m in names if m not in METRIC_GROUPS]
    if bad:
        raise EvaluateError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRIC_GROUPS)}")
    if "accuracy" in names and config.loss.name != "ssgan":
        raise EvaluateError("'accuracy' scores a semi-supervised critic (loss.name='ssgan'); this "
                            "run has none: use --metrics classifier")
    if config_lib.is_mixture(config):
        other = [m for m in names if m != "modes"]
        if other:
            raise EvaluateError(f"{config.data.name!r} samples are 2D points; {other[0]!r} needs "
                                "images: use --metrics modes")
    elif "modes" in names and config.data.name != STACKED:
        instead = ("fid" if config.data.name == "folder"
                   else "classifier (classes covered)")
        raise EvaluateError(f"'modes' is for ring, grid and stacked_mnist, not "
                            f"{config.data.name!r}; use --metrics {instead}")
    if "classifier" in names and config.data.name == "folder":
        raise EvaluateError("'classifier' needs a labelled dataset; an image folder has no "
                            "classes: use --metrics fid,kid")
    return tuple(dict.fromkeys(names))


def default_classifier_path(dataset: str) -> Path:
    """<cache>/classifiers/<dataset> ($JAXGAN_CACHE_DIR or ~/.cache/jaxgan); stacked -> mnist."""
    return Path(env.cache_dir()) / "classifiers" / ("mnist" if dataset == STACKED else dataset)


def _stats_name(prefix: str, config) -> str:
    d = config.data
    name = f"{prefix}_{d.name}_{d.split}_{int(d.image_size)}x{int(d.channels)}"
    if d.name == "folder":  # the folder and its contents are the data
        name += "_" + data_lib.folder_fingerprint(d.path)
    if d.name == STACKED:  # built from the seed: another seed or size is other data
        name += f"_n{int(d.get('num_examples', 0))}_seed{int(config.seed)}"
    return name + (f"_limit{int(d.limit)}" if int(d.limit) else "") + ".npz"


class _Moments:
    """Streaming mean and unbiased covariance in float64 (Chan et al. pairwise merge)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        n_b = len(x)
        if n_b == 0:
            return
        mean_b = x.mean(0)
        c = x - mean_b
        m2_b = c.T @ c
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise EvaluateError(f"{self.n} sample(s) cannot give a covariance; use --num >= 2")
        return self.mean, self.m2 / (self.n - 1)


def _chunks(samples, size: int = CHUNK) -> Iterator[np.ndarray]:
    """uint8[N, H, W, C] or an iterable of such chunks -> chunks of at most `size` images."""
    if hasattr(samples, "shape"):
        samples = [samples]
    for part in samples:
        part = np.asarray(part)
        yield from clf_lib.chunks(part, size)


def _check_images(x: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise EvaluateError(
            f"images must be uint8[N, H, W, C] with C in (1, 3), got {x.dtype}{list(x.shape)}; "
            "convert [-1, 1] floats with jaxgan.images.to_uint8")


def load_real_images(config, split: str | None = None) -> np.ndarray | None:
    """Every real image the recipe's data group names, or all of `split` (no data.limit) when
    given. Scoring takes no training batches, so a folder smaller than train.batch_size is
    still a reference set."""
    config = config.copy_and_resolve_references()
    config.train.batch_size = 1
    if split is not None:
        config.data.split, config.data.limit = split, 0
    return data_lib.load(config).images


class Evaluator:
    """Everything scoring needs, loaded once; call it on samples for a flat dict of metrics.

    config: the run's recipe (data.name/split/image_size/channels/data_dir/limit name the real
      data the reference statistics come from).
    metrics: groups from METRIC_GROUPS (default: `default_metrics(config)`).
    classifier: a `Classifier`, or a path (.npz or its directory); default
      `default_classifier_path(config.data.name)`. Needed for 'classifier' and stacked 'modes'.
    inception: Inception variables, a weights path (.pth/.npz/dir, see
      `inception.load_inception_params`), or a callable uint8 chunk -> (pool f[n, 2048],
      logits f[n, 1008]) (tests); needed for fid/is/kid.
    stats_dir: where reference statistics are cached (default: `<classifier dir>/stats` for the
      classifier, `<cache>/stats` for Inception).
    kid_subsets: KID's random subsets of min(1000, N) samples (torch-fidelity: 100).
    real_images: uint8[N, H, W, C] of the reference data when already in memory (train.py's
      dataset.images); otherwise `data.load(config)` reads them, only if no cache matches.
    """

    def __init__(self, config, metrics: str | Sequence[str] | None = None, *,
                 classifier: Any = None, inception: Any = None, stats_dir: str | None = None,
                 inception_batch_size: int = 50, classifier_batch_size: int = 500,
                 kid_subsets: int = 100, download: bool = False,
                 real_images: np.ndarray | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config
        self.kid_subsets = int(kid_subsets)
        self.metrics = parse_metrics(metrics, config)
        self.log = log or (lambda msg: None)
        self.mixture = config_lib.is_mixture(config)
        self.stacked = config.data.name == STACKED
        self.classifier_batch_size = int(classifier_batch_size)
        self._real: np.ndarray | None = real_images
        self.classifier = None
        self.inception = None
        if self.mixture:
            self.centers, self.sigma = data_lib.mixture_centers(config.data.name)
            return
        needs_classifier = "classifier" in self.metrics or ("modes" in self.metrics and self.stacked)
        if needs_classifier:
            self._setup_classifier(classifier, stats_dir)
        if {"fid", "is", "kid"} & set(self.metrics):
            self._setup_inception(inception, stats_dir, int(inception_batch_size), download)

    # ------------------------------------------------------------------ loading, once

    def _real_images(self) -> np.ndarray:
        if self._real is None:
            self.log(f"loading real data {self.config.data.name}/{self.config.data.split} for "
                     "reference statistics (cached afterwards)")
            self._real = load_real_images(self.config)
        return self._real

    def _setup_classifier(self, classifier, stats_dir) -> None:
        expected = "mnist" if self.stacked else self.config.data.name  # what it must be trained on
        if classifier is None or isinstance(classifier, (str, os.PathLike)):
            path = default_classifier_path(expected) if classifier is None else classifier
            classifier = clf_lib.load_classifier(path, expected)
            base = clf_lib.classifier_file(path).parent
        else:
            base = None
        self.classifier = classifier
        trained_on = classifier.meta.get("dataset") or ""
        if trained_on and trained_on != expected:
            raise EvaluateError(
                f"the classifier was trained on {trained_on!r} but the samples are "
                f"{self.config.data.name!r}; pass --classifier trained on {expected!r}")
        if self.stacked and (classifier.num_classes != 10 or int(classifier.meta["channels"]) != 1):
            raise EvaluateError("stacked_mnist needs a 10-class grey MNIST classifier; train it "
                                "with `python -m jaxgan.evaluate train-classifier --dataset mnist`")
        self._cls_ref = None
        if "classifier" in self.metrics:
            d = Path(stats_dir) if stats_dir else (base or Path.cwd()) / "stats"
            path = d / _stats_name("classifier", self.config)
            fp = classifier.meta.get("fingerprint", "")
            self._cls_ref = self._cached_stats(path, fp, self._classifier_real_stats,
                                               required=("features",))

    def _classifier_real_stats(self) -> dict:
        feats, _ = self.classifier.features(self._real_images(), self.classifier_batch_size)
        mu, sigma = fid_lib.statistics(feats)
        keep = np.sort(np.random.RandomState(0).permutation(len(feats))[:PRDC_REFERENCE])
        return {"mu": mu, "sigma": sigma, "num": len(feats),
                "features": np.asarray(feats[keep], np.float32)}

    def _setup_inception(self, inception, stats_dir, batch_size: int, download: bool) -> None:
        from jaxgan.metrics import inception as inc
        if callable(inception):
            self.inception, fp = inception, getattr(inception, "fingerprint", "custom")
        else:
            if inception is None or isinstance(inception, (str, os.PathLike)):
                inception = inc.load_inception_params(inception, download=download)
            params = inception
            self.inception = lambda x: inc.extract_features(params, x, batch_size)
            fp = "inception-" + clf_lib.fingerprint(params)  # other weights: other statistics
        d = Path(stats_dir) if stats_dir else Path(env.cache_dir()) / "stats"
        self._inc_ref = self._cached_stats(d / _stats_name("inception", self.config), fp,
                                           self._inception_real_stats)

    def _inception_real_stats(self) -> dict:
        images = self._real_images()
        moments = _Moments()
        keep = np.sort(np.random.RandomState(0).permutation(len(images))[:KID_REFERENCE])
        kept, start = [], 0
        for chunk in _chunks(images):
            pool, _ = self.inception(chunk)
            moments.update(pool)
            sel = keep[(keep >= start) & (keep < start + len(chunk))] - start
            kept.append(np.asarray(pool[sel], np.float32))
            start += len(chunk)
            self.log(f"reference Inception features: {start}/{len(images)}")
        mu, sigma = moments.result()
        return {"mu": mu, "sigma": sigma, "num": len(images), "features": np.concatenate(kept)}

    def _cached_stats(self, path: Path, fp: str, compute, required=()) -> dict:
        """Reference statistics from `path` when made by the same network (and holding the
        `required` keys: caches written before a key was added are recomputed), else computed
        and written there (atomically; a read-only location only costs a recomputation later)."""
        if path.exists():
            try:
                with np.load(path) as f:
                    if str(f["fingerprint"]) == fp and set(required) <= set(f.files):
                        return {k: f[k] for k in f.files}
            except Exception:  # damaged cache: recompute below
                pass
        stats = compute()
        stats["fingerprint"] = np.array(fp)
        try:
            images_lib.save_npz(str(path), **stats)
            self.log(f"cached reference statistics in {path}")
        except OSError as e:
            self.log(f"could not cache reference statistics at {path}: {e}")
        return stats

    # ------------------------------------------------------------------ scoring

    def __call__(self, samples, labels=None) -> dict[str, float]:
        """Scores samples: uint8[N, H, W, C] images (or an iterable of uint8 chunks, streamed),
        or f32[N, 2] points for ring/grid. Returns a flat dict of floats/ints. `labels` (int[N],
        the classes a conditional generator was asked for) adds `classifier/label_accuracy`:
        the share the classifier assigns to the requested class."""
        if self.mixture:
            return self._score_points(samples)
        want_inc = {"fid", "is", "kid"} & set(self.metrics)
        cls_feats, cls_logits = [], []
        moments, inc_logits, inc_pools = _Moments(), [], []
        n = 0
        for chunk in _chunks(samples):
            _check_images(chunk)
            n += len(chunk)
            if self.classifier is not None:
                f, lg = self.classifier.features(chunk, self.classifier_batch_size)
                cls_feats.append(f)
                cls_logits.append(lg)
            if want_inc:
                pool, logits = self.inception(chunk)
                moments.update(pool)
                if "is" in self.metrics:
                    inc_logits.append(np.asarray(logits, np.float32))
                if "kid" in self.metrics:
                    inc_pools.append(np.asarray(pool, np.float32))
        if n == 0:
            raise EvaluateError("no samples to score")
        out: dict[str, float] = {"num_samples": n}
        if self.classifier is not None:
            logits = np.concatenate(cls_logits)
            out.update(self._classifier_metrics(np.concatenate(cls_feats), logits))
            if labels is not None:
                labels = np.asarray(labels)
                if len(labels) != len(logits):
                    raise EvaluateError(f"{len(labels)} labels for {len(logits)} samples")
                out["classifier/label_accuracy"] = float(np.mean(np.argmax(logits, -1) == labels))
        if "fid" in self.metrics:
            mu, sigma = moments.result()
            out["fid"] = fid_lib.frechet_distance(mu, sigma, self._inc_ref["mu"],
                                                  self._inc_ref["sigma"])
        if "is" in self.metrics:
            logits = np.concatenate(inc_logits)
            out["is"], out["is_std"] = fid_lib.inception_score(logits, splits=min(10, n))
        if "kid" in self.metrics:
            pools, ref = np.concatenate(inc_pools), self._inc_ref["features"]
            size = min(1000, len(pools), len(ref))
            out["kid"], out["kid_std"] = fid_lib.kernel_inception_distance(
                pools, ref, subsets=self.kid_subsets, subset_size=size)
        return out

    def _classifier_metrics(self, feats: np.ndarray, logits: np.ndarray) -> dict:
        out = {}
        if "classifier" in self.metrics:
            mu, sigma = fid_lib.statistics(feats)
            out["classifier/fd"] = fid_lib.frechet_distance(mu, sigma, self._cls_ref["mu"],
                                                            self._cls_ref["sigma"])
        classes = np.argmax(logits, axis=-1)
        if self.stacked:
            if "modes" in self.metrics:
                m = clf_lib.stacked_mnist_metrics(classes)
                out.update({f"modes/{k}": v for k, v in m.items()})
            return out
        if "classifier" in self.metrics:
            score, std = fid_lib.inception_score(logits, splits=min(10, len(logits)))
            m = clf_lib.class_metrics(classes, self.classifier.label_hist)
            out.update({"classifier/score": score, "classifier/score_std": std,
                        "classifier/confident": clf_lib.confident_share(logits)})
            out.update(fidelity_diversity(self._cls_ref["features"], feats))
            out.update({f"classifier/{k}": v for k, v in m.items()})
        return out

    def _score_points(self, samples) -> dict:
        from jaxgan.metrics import mixtures
        pts = samples if hasattr(samples, "shape") else np.concatenate(list(samples))
        pts = np.asarray(pts, np.float32)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise EvaluateError(f"{self.config.data.name!r} samples must be points f32[N, 2], got "
                                f"{pts.dtype}{list(pts.shape)}")
        m = mixtures.mode_metrics(pts, self.centers, self.sigma)
        return {"num_samples": len(pts), "modes/captured": m["modes"],
                "modes/num_modes": m["num_modes"], "modes/high_quality": m["high_quality"],
                "modes/reverse_kl": m["reverse_kl"], "modes/spread": m["spread"]}


def fidelity_diversity(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """classifier/{precision, recall, density, coverage} of fake features against real ones
    (`prdc`, k = PRDC_NEAREST_K; at most PRDC_REFERENCE of each). Recall and coverage grow with
    the number of generated samples: compare runs at the same --num."""
    import contextlib
    import io

    from prdc import compute_prdc
    fake = np.asarray(fake[:PRDC_REFERENCE], np.float32)
    k = min(PRDC_NEAREST_K, len(real) - 1, len(fake) - 1)
    if k < 1:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sample counts
        m = compute_prdc(np.asarray(real, np.float32), fake, nearest_k=k)
    return {f"classifier/{name}": float(v) for name, v in m.items()}


def evaluate(config, samples, metrics: str | Sequence[str] | None = None, *,
             evaluator: Evaluator | None = None, **evaluator_kwargs) -> dict[str, float]:
    """One-shot scoring: `Evaluator(config, metrics, **evaluator_kwargs)(samples)`.

    Pass a prepared `evaluator` to score repeatedly (training) without reloading anything.
    """
    if evaluator is None:
        evaluator = Evaluator(config, metrics, **evaluator_kwargs)
    return evaluator(samples)


balanced_labels = sample_lib.balanced_labels  # the classes conditional samples are asked for


def sample_batches(sampler, params, stats, key, num: int, z_dim: int, batch_size: int = 500,
                   mixture: bool = False, num_classes: int = 0) -> Iterator[np.ndarray]:
    """Streams `num` samples from a compiled sampler(params, stats, z[, labels]) in fixed-size
    batches: uint8[b, H, W, C] chunks (f32[b, 2] points for mixtures); noise from fold_in(key, i);
    a conditional generator gets `balanced_labels`."""
    import jax
    for i in range(0, num, batch_size):
        z = jax.random.normal(jax.random.fold_in(key, i // batch_size), (batch_size, z_dim))
        y = balanced_labels(batch_size, num_classes, start=i)
        x = np.asarray(sampler(params, stats, z, y))[: num - i]
        yield x.astype(np.float32) if mixture else images_lib.to_uint8(x)


# ---------------------------------------------------------------------------- file inputs


def _default_num(num: int | None, metrics: str) -> int:
    """The Inception Score is defined on 50k samples; the other metrics default to 10k."""
    if num is not None:
        return num
    return 50000 if "is" in [m.strip() for m in (metrics or "").split(",")] else 10000


def load_samples(path: str) -> np.ndarray:
    """uint8[N, H, W, C] images or f32[N, 2] points from an .npz (keys `images` or `points`,
    as `jaxgan.sample --out x.npz` writes; a file with a single array works too). Float images
    in [-1, 1] are quantized to uint8; grey [N, H, W] gets a channel axis."""
    if not os.path.isfile(path):
        raise EvaluateError(f"--samples={path!r} does not exist; write one with "
                            "`python -m jaxgan.sample --out samples.npz`")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = f.files
            key = next((k for k in ("images", "points") if k in keys), None)
            if key is None and len(keys) == 1:
                key = keys[0]
            if key is None:
                raise EvaluateError(f"{path} has arrays {keys}; name the samples 'images' "
                                    "(uint8[N, H, W, C]) or 'points' (f32[N, 2])")
            x = f[key]
    except EvaluateError:
        raise
    except Exception as e:  # not a zip / truncated / pickled objects
        raise EvaluateError(f"cannot read {path} as .npz ({type(e).__name__}: {e}); write "
                            "samples with numpy.savez(path, images=uint8[N, H, W, C])") from None
    if x.ndim == 2 and x.shape[1] == 2:
        return x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise EvaluateError(f"{path}: samples of shape {list(x.shape)}; expected uint8[N, H, W, "
                            "C] with C in (1, 3) or points f32[N, 2]")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or x.min() < -1.001 or x.max() > 1.001:
            raise EvaluateError(f"{path}: {x.dtype} images outside [-1, 1]; save uint8 pixels "
                                "in [0, 255] or floats in the generator's [-1, 1]")
        x = images_lib.to_uint8(x)
    return x


def load_labels(path: str, num: int) -> np.ndarray | None:
    """The `labels` array beside the samples (`jaxgan.sample` of a conditional run), or None."""
    with np.load(path, allow_pickle=False) as f:
        if "labels" not in f.files:
            return None
        labels = f["labels"]
    if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer):
        raise EvaluateError(f"{path}: 'labels' must be int[{num}] (one per sample), got "
                            f"{labels.dtype}{list(labels.shape)}")
    return labels


def samples_config(dataset: str, samples: np.ndarray, data_dir: str = "", split: str = "train"):
    """The recipe for scoring `samples` against `dataset` (size/channels from the samples)."""
    if not dataset:
        raise EvaluateError("--samples needs --dataset (e.g. mnist, stacked_mnist, ring) and "
                            "--data_dir for the reference statistics of its real data")
    if dataset in config_lib.MIXTURES:
        return clf_lib.dataset_config(dataset, data_dir, split)
    if samples.ndim != 4:
        raise EvaluateError(f"--dataset={dataset} is images but the samples are "
                            f"{list(samples.shape)}; score points with --dataset ring or grid")
    return clf_lib.dataset_config(dataset, data_dir, split, samples.shape[1], samples.shape[-1])


def append_jsonl(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if np.isfinite(v) else str(v)  # JSON has no inf/nan
    return v


def run_evaluation(*, workdir: str = "", samples_path: str = "", real_split: str = "",
                   dataset: str = "", data_dir: str = "", split: str = "",
                   metrics: str = "", num: int = 10000, seed: int = 0, step: int | None = None,
                   classifier: str | None = None, inception: str | None = None,
                   stats_dir: str | None = None, batch_size: int = 50, out: str = "",
                   download: bool = False, log: Callable[[str], None] = print) -> dict:
    """The CLI's work: sample (or read, or take real data), score, print nothing, append JSON.

    Returns the record written (step, source, num, seed, seconds and the metrics).
    """
    start = time.perf_counter()
    record: dict = {}
    evaluator = None
    labels = None

    def make_evaluator(config):
        return Evaluator(config, metrics, classifier=classifier, inception=inception,
                         stats_dir=stats_dir, inception_batch_size=batch_size,
                         download=download, log=log)

    if workdir:
        config, step = ckpt_lib.load_config(workdir, step)
        if data_dir:
            data_lib.set_location(config, data_dir)
        if split:
            config.data.split = split
        record.update(step=step, source=os.path.abspath(workdir))
        names = parse_metrics(metrics, config)
        if "accuracy" in names:  # the critic itself is the product of a semi-supervised run
            from jaxgan import ssgan
            record.update(ssgan.evaluate_checkpoint(workdir, config, step), step=step)
            names = tuple(n for n in names if n != "accuracy")
            if not names:
                out = out or os.path.join(workdir, EVAL_FILE)
                record.update(dataset=config.data.name, metrics="accuracy")
                return _finish(record, start, out)
            metrics = ",".join(names)
        if not real_split:
            evaluator = make_evaluator(config)  # errors (classifier, weights) before sampling
            _, samples, labels = sample_lib.generate_labelled(workdir, num, seed, step)
            record.update(seed=seed)
        out = out or os.path.join(workdir, EVAL_FILE)
    elif samples_path:
        samples = load_samples(samples_path)
        labels = load_labels(samples_path, len(samples))
        config = samples_config(dataset, samples, data_dir, split or "train")
        record.update(source=os.path.abspath(samples_path))
    elif real_split:
        if not dataset:
            raise EvaluateError("--real_split needs --dataset (or --workdir)")
        config = clf_lib.dataset_config(dataset, data_dir, split or "train")
    else:
        raise EvaluateError("give --workdir DIR (a training run), --samples FILE.npz, or "
                            "--dataset NAME --real_split SPLIT")
    if real_split:
        samples = load_real_images(config, split=real_split)
        if samples is None:
            raise EvaluateError(f"{config.data.name!r} has no real images to score; sample "
                                "points from a checkpoint instead")
        samples = samples[:num] if num else samples
        record.update(source=f"real:{config.data.name}/{real_split}")
    evaluator = evaluator or make_evaluator(config)
    results = evaluator(samples, labels=labels)
    record.update(dataset=config.data.name, reference=f"{config.data.name}/{config.data.split}",
                  metrics=",".join(evaluator.metrics))
    if evaluator.classifier is not None:
        record["classifier"] = evaluator.classifier.meta.get("fingerprint", "")
    record.update(results)
    return _finish(record, start, out)


def _finish(record: dict, start: float, out: str) -> dict:
    record["seconds"] = round(time.perf_counter() - start, 2)
    record = {k: _jsonable(v) for k, v in record.items()}
    if out:
        append_jsonl(out, record)
    return record


def run_train_classifier(*, dataset: str, data_dir: str = "", out: str = "", steps: int = 1200,
                         image_size: int = 0, seed: int = 0, test_split: str = "test",
                         log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Trains, saves and returns (path, meta) of a classifier for `dataset`."""
    if not dataset:
        raise EvaluateError("train-classifier needs --dataset (mnist, fashion_mnist, cifar10)")
    if dataset == STACKED:
        raise EvaluateError("stacked_mnist is scored per channel by an MNIST classifier: "
                            "train-classifier --dataset mnist")
    if steps < 1:
        raise EvaluateError(f"--steps={steps}; it must be at least 1")
    start = time.perf_counter()
    clf = clf_lib.train_on_dataset(dataset, data_dir, steps=steps, image_size=image_size,
                                   seed=seed, test_split=test_split, log=log)
    clf.meta["train_seconds"] = round(time.perf_counter() - start, 1)
    path = clf.save(out or default_classifier_path(dataset))
    return path, clf.meta


# ---------------------------------------------------------------------------- CLI


_ERRORS: tuple = (EvaluateError, clf_lib.ClassifierError, ckpt_lib.CheckpointError,
                  config_lib.ConfigError, data_lib.DataError, sample_lib.SampleError,
                  FileNotFoundError)  # FileNotFoundError covers inception.WeightsNotFoundError


def _is_missing_weights(e: Exception) -> bool:
    from jaxgan.metrics import inception as inc
    return isinstance(e, inc.WeightsNotFoundError)


def _define_flags():
    from absl import flags
    flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.")
    flags.DEFINE_string("samples", None, "An .npz of images (uint8[N,H,W,C]) or points to score.")
    flags.DEFINE_string("real_split", None, "Score real images of this split (a baseline).")
    flags.DEFINE_string("dataset", "", "Dataset of --samples/--real_split, or to train on.")
    flags.DEFINE_string("data_dir", "", "Where the real data is: TFDS's data_dir, or with "
                        "--dataset folder (or a folder run) the image folder itself.")
    flags.DEFINE_string("split", "", "Split the reference statistics come from (default: the "
                        "run's data.split, else train).")
    flags.DEFINE_string("metrics", "", f"Comma list of {','.join(METRIC_GROUPS)} (default: "
                        "modes for ring/grid/stacked_mnist, fid for an image folder, classifier "
                        "otherwise).")
    flags.DEFINE_integer("num", None, "Samples to draw (or real images to score); default "
                         "50000 when the metrics include 'is' (Salimans et al. 2016), else 10000.")
    flags.DEFINE_integer("seed", 0, "Noise seed for sampling.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("classifier", None, "Classifier .npz or its directory (default: "
                        "$JAXGAN_CACHE_DIR/classifiers/<dataset>).")
    flags.DEFINE_string("inception", None, "pt_inception-2015-12-05-6726825d.pth, its .npz, or "
                        "a directory holding it (default: $JAXGAN_CACHE_DIR).")
    flags.DEFINE_bool("download", False, "Download the Inception weights when missing.")
    flags.DEFINE_string("stats_dir", None, "Where reference statistics are cached.")
    flags.DEFINE_integer("batch_size", 50, "Inception batch size.")
    flags.DEFINE_string("out", "", "train-classifier: where to save the classifier; evaluate: "
                        "the .jsonl to append to (default: <workdir>/eval.jsonl).")
    flags.DEFINE_integer("steps", 1200, "train-classifier: training steps (batch 64).")
    flags.DEFINE_integer("image_size", 0, "train-classifier: image size (0: native).")


def _dispatch(argv, f, log=print) -> dict:
    """Runs the command named by the positional args with parsed flags `f`."""
    command = argv[1:] if argv else []
    if command and command != ["train-classifier"]:
        raise EvaluateError(f"unknown command {' '.join(command)!r}; use `train-classifier` or "
                            "no command (evaluate)")
    if command:
        path, meta = run_train_classifier(dataset=f.dataset, data_dir=f.data_dir, out=f.out,
                                          steps=f.steps, image_size=f.image_size, seed=f.seed,
                                          log=log)
        acc = meta.get("test_accuracy")
        log(f"saved {path} (trained {meta['train_seconds']} s); test accuracy "
            + ("n/a" if acc is None else f"{acc:.4f}") + f" on {meta['dataset']}/"
            f"{meta.get('test_split', '')}; fingerprint {meta['fingerprint']}")
        return meta
    record = run_evaluation(
        workdir=f.workdir or "", samples_path=f.samples or "", real_split=f.real_split or "",
        dataset=f.dataset, data_dir=f.data_dir, split=f.split, metrics=f.metrics,
        num=_default_num(f.num, f.metrics),
        seed=f.seed, step=f.step, classifier=f.classifier, inception=f.inception,
        stats_dir=f.stats_dir, batch_size=f.batch_size, out=f.out, download=f.download,
        log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(record))
    return record


def main(argv=None) -> int:
    from absl import app, flags, logging

    host_memory.keep_freed_memory()  # before the first computation; XLA:CPU reuses its scratch
    _define_flags()

    def _main(argv):
        logging.set_verbosity(logging.WARNING)
        compile_cache.enable()  # a restart loads the compiled programs from disk
        try:
            _dispatch(argv, flags.FLAGS)
        except _ERRORS as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if _is_missing_weights(e) and not flags.FLAGS.download:
                msg += " (or rerun with --download)"
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    app.run(_main, argv=argv)
    return 0


if __name__ == "__main__":
    main()
