"""`python -m jaxgan.sample --workdir DIR [--step S] [--num N] [--seed K] --out FILE.{png,npz}`

Restores only the generator (parameters and batch-norm statistics) and the recipe from the
checkpoint. For a class-conditional run `--labels 0,1,...,9` writes one grid row per class; for
a run with a categorical code (`model.z_categories`, InfoGAN) one row per category. `.png`
writes a grid; `.npz` writes `images` uint8[N, H, W, C] (or `points` f32[N, 2] for 2D
mixtures).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from jaxgan import checkpoint as ckpt_lib
from jaxgan import compile_cache, host_memory
from jaxgan import config as config_lib
from jaxgan import images as images_lib
from jaxgan import models
from jaxgan import state as state_lib
from jaxgan import step as step_lib


class SampleError(ValueError):
    """Bad sampling request; the message says what to do."""


def load_generator(workdir: str, step: int | None = None):
    """(config, generator module, {"params", "stats"}, step) from a workdir's checkpoint."""
    config, step = ckpt_lib.load_config(workdir, step)
    generator, _ = models.build(config)
    z = np.zeros((2, int(config.model.z_dim)), np.float32)
    y = np.zeros((2,), np.int32) if models.num_classes(config) else None
    params, stats = state_lib.split_variables(
        jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), z, train=False, labels=y)))
    abstract = {"params": params, "stats": stats}
    return config, generator, ckpt_lib.restore_generator(workdir, abstract, step), step


def generate(workdir: str, num: int, seed: int = 0, step: int | None = None,
             batch_size: int = 500):
    """(config, samples) with samples uint8[N, H, W, C] for images or f32[N, 2] for points.

    Noise is drawn in fixed-size batches from fold_in(seed, batch index), so the first k samples
    do not depend on `num`.
    """
    config, samples, _ = generate_labelled(workdir, num, seed, step, batch_size=batch_size)
    return config, samples


def balanced_labels(num: int, num_classes: int, start: int = 0) -> np.ndarray | None:
    """Sample n asks for class n % K: equal classes, known to the scorer (None if unconditional)."""
    if not num_classes:
        return None
    return ((start + np.arange(num)) % num_classes).astype(np.int32)


def request_labels(num: int, labels, num_classes: int, categories: int = 0) -> np.ndarray | None:
    """The class of each requested sample: `labels` repeated num // len(labels) times each (one
    grid row per class), or classes in turn (n % K) without `labels`; None if unconditional.
    An unconditional run with a categorical code (model.z_categories) takes `labels` as
    categories."""
    kind = "classes"
    if not num_classes:
        if not labels:
            return None
        if not categories:
            raise SampleError("--labels needs a class-conditional run (model.num_classes > 0) "
                              "or one with a categorical code (model.z_categories > 0)")
        num_classes, kind = categories, "categories"
    elif not labels:
        return balanced_labels(num, num_classes)
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise SampleError(f"--labels has {bad[0]}; this run has {kind} 0..{num_classes - 1}")
    per = max(1, num // len(labels))
    return np.repeat(np.asarray(labels, np.int32), per)


def with_category(z: np.ndarray, categories: np.ndarray, k: int) -> np.ndarray:
    """z with its first coordinate moved into category `categories[i]` of `k` (the inverse of
    models.category_of): Phi(z_0) is mapped from [0, 1] into [c / k, (c + 1) / k], so the sample
    stays a function of its z and its category."""
    from scipy.special import ndtr, ndtri
    z = np.array(z, np.float64)
    u = (np.asarray(categories) + np.clip(ndtr(z[:, 0]), 1e-3, 1 - 1e-3)) / k
    z[:, 0] = ndtri(u)
    return z.astype(np.float32)


def generate_labelled(workdir: str, num: int, seed: int = 0, step: int | None = None,
                      labels=None, batch_size: int = 500):
    """(config, samples, labels): `generate` for conditional runs too (labels None otherwise;
    `labels` of a categorical-code run pick categories and are not returned).

    With `labels` (class ids) the result has num // len(labels) samples of each, in order.
    """
    if num < 1:
        raise SampleError(f"--num={num}; ask for at least one sample")
    config, generator, g, _ = load_generator(workdir, step)
    k = models.num_classes(config)
    categories = 0 if k else int(config.model.get("z_categories", 0))
    ys = request_labels(num, labels, k, categories)
    num = num if ys is None else len(ys)
    sampler = step_lib.jit_sampler(generator)
    z_dim = int(config.model.z_dim)
    key = jax.random.PRNGKey(seed)
    out = []
    for i in range(0, num, batch_size):
        z = jax.random.normal(jax.random.fold_in(key, i // batch_size), (batch_size, z_dim))
        y = None
        if ys is not None:  # pad the last batch so every call has the compiled shape
            y = np.resize(ys[i:i + batch_size], batch_size).astype(np.int32)
        if categories and y is not None:  # unconditional G: the category is part of z
            z, y = with_category(np.asarray(z), y, categories), None
        x = np.asarray(sampler(g["params"], g["stats"], z, y))[: num - i]
        out.append(x if config_lib.is_mixture(config) else images_lib.to_uint8(x))
    # categories are not classes: no labels for .npz (evaluate would score them as classes)
    return config, np.concatenate(out), None if categories else ys


def write(path: str, config, samples: np.ndarray, labels=None, per_row: int | None = None) -> None:
    """.npz: `images` (or `points`) and, for a conditional run, `labels`; .png: a grid (one row
    per requested class when `per_row` is given) or a scatter over the modes."""
    ext = os.path.splitext(path)[1].lower()
    extra = {} if labels is None else {"labels": np.asarray(labels, np.int32)}
    if ext == ".npz":
        if config_lib.is_mixture(config):
            images_lib.save_npz(path, points=samples.astype(np.float32))
        else:
            images_lib.save_npz(path, images=samples, **extra)
    elif ext == ".png":
        if config_lib.is_mixture(config):
            from jaxgan import data as data_lib
            images_lib.scatter_png(path, samples, data_lib.mixture_centers(config.data.name)[0])
        else:
            images_lib.save_png(path, images_lib.make_grid(samples, nrow=per_row))
    else:
        raise SampleError(f"--out={path!r}: use a .png (grid) or .npz (arrays) file name")


def main(argv=None) -> int:
    from absl import app, flags, logging

    host_memory.keep_freed_memory()  # before the first computation; XLA:CPU reuses its scratch
    flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("num", 64, "Number of samples.")
    flags.DEFINE_integer("seed", 0, "Noise seed.")
    flags.DEFINE_string("out", "samples.png", "Output file: .png grid or .npz arrays.")
    flags.DEFINE_string("labels", "", "Conditional runs: comma-separated classes (or categories "
                        "of model.z_categories), one grid row each with --num / (number of "
                        "classes) samples (e.g. 0,1,2,3,4,5,6,7,8,9).")

    def _main(argv):
        logging.set_verbosity(logging.WARNING)
        compile_cache.enable()  # a restart loads the compiled programs from disk
        f = flags.FLAGS
        try:
            ext = os.path.splitext(f.out)[1].lower()
            if ext not in (".png", ".npz"):
                raise SampleError(f"--out={f.out!r}: use a .png (grid) or .npz (arrays) file name")
            try:
                wanted = [int(v) for v in f.labels.split(",") if v.strip()]
            except ValueError:
                raise SampleError(f"--labels={f.labels!r}: use comma-separated class numbers "
                                  "such as 0,1,2") from None
            config, samples, labels = generate_labelled(f.workdir, f.num, f.seed, f.step,
                                                        labels=wanted)
            write(f.out, config, samples, labels,
                  per_row=max(1, f.num // len(wanted)) if wanted else None)
        except (SampleError, ckpt_lib.CheckpointError, config_lib.ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"wrote {len(samples)} samples to {f.out}")

    app.run(_main, argv=argv)
    return 0


if __name__ == "__main__":
    main()
