"""Is the input pipeline ever what bounds training? Images/second of each part, in one run.

Measured in the same process, on the same device, against the training step of a recipe:
  * step       the compiled training step (jaxgan.step.make_train_step), images = n_critic * B
               real images consumed per generator update;
  * resident   batches gathered inside jit from a device-resident uint8 dataset (the default);
  * streaming  Prefetcher: host gather + background jax.device_put (double buffered), consumed
               by a jitted to_model_range;
  * folder     decoding a folder of 96x96 JPGs (like HW6's faces) to 64x64 with the thread pool,
               with one thread, and reading the decoded .npz cache back;
  * tfds       decoding TFDS MNIST records (when prepared under --tfds_dir).
Each line prints images/s and the ratio to the step (> 1: faster than training needs).

    PYTHONPATH=. python scripts/benchmark_input.py [--config configs/hw6_anime.py] [--steps 3]
        [--jpgs 1000] [--tfds_dir ../shared/tensorflow_datasets] [--tfds_limit 4000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import images as images_lib
from jaxgan import models, optim, state as state_lib, step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of fn() over `repeats` runs (fn must block until its work is done)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_step(config, steps: int, images: np.ndarray) -> float:
    generator, critic = models.build(config)
    g_tx, d_tx = optim.make(config)
    state = state_lib.create(int(config.seed), generator, critic, g_tx, d_tx,
                             int(config.model.z_dim), models.data_shape(config), len(images))
    data = data_lib.device_data(data_lib.Dataset("bench", images=images))
    step = jax.jit(step_lib.make_train_step(generator, critic, g_tx, d_tx, config),
                   donate_argnums=0)
    state, m = step(state, data)           # compile
    jax.block_until_ready(m)

    def run():
        nonlocal state
        for _ in range(steps):
            state, metrics = step(state, data)
        jax.block_until_ready(metrics)

    per_step = int(config.train.n_critic) * int(config.train.batch_size)
    return steps * per_step / timed(run)


def bench_resident(config, images: np.ndarray, steps: int = 200) -> float:
    """`steps` x n_critic gathers of B images inside one jit (as the step does), summed."""
    batch, n_critic = int(config.train.batch_size), int(config.train.n_critic)
    key = jax.random.PRNGKey(0)
    data = data_lib.device_data(data_lib.Dataset("bench", images=images))

    @jax.jit
    def run(pos):
        def body(carry, _):
            pos, acc = carry
            x, pos, _ = data_lib.next_batch(pos, data, key, key, batch)
            return (pos, acc + jnp.sum(x)), None
        (pos, acc), _ = jax.lax.scan(body, (pos, jnp.float32(0)), None,
                                     length=steps * n_critic)
        return pos, acc

    pos = data_lib.init_position(key, len(images))
    jax.block_until_ready(run(pos))
    return steps * n_critic * batch / timed(lambda: jax.block_until_ready(run(pos)), 3)


def bench_streaming(config, images: np.ndarray, steps: int = 100) -> float:
    batch, n_critic = int(config.train.batch_size), int(config.train.n_critic)
    key = jax.random.PRNGKey(0)
    consume = jax.jit(lambda real: jnp.sum(images_lib.to_model_range(real)))
    with data_lib.Prefetcher(images, key, batch, n_critic) as stream:
        jax.block_until_ready(consume(next(stream)))   # compile, fill the buffers
        t = time.perf_counter()
        for _ in range(steps):
            out = consume(next(stream))
        jax.block_until_ready(out)
        return steps * n_critic * batch / (time.perf_counter() - t)


def make_jpgs(folder: str, n: int, size: int = 96) -> None:
    """n face-sized JPGs with smooth content + noise (compress like photos, not like noise)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        sub = os.path.join(folder, f"part{i % 4}")
        os.makedirs(sub, exist_ok=True)
        a, b, c = rng.uniform(0, 6, 3)
        img = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy),
                        np.sin(c * (xx + yy))], -1) * 100 + 128
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(sub, f"{i:06d}.jpg"), quality=90)


def bench_folder(folder: str, n: int, size: int, channels: int) -> dict:
    out = {}
    for threads, name in ((0, "folder decode (threads)"), (1, "folder decode (1 thread)")):
        data_lib.DECODE_THREADS = threads
        t = timed(lambda: data_lib.load_folder(folder, size, channels, use_cache=False))
        out[name] = n / t
    data_lib.DECODE_THREADS = 0
    data_lib.load_folder(folder, size, channels)   # writes the cache
    out["folder cached .npz"] = n / timed(lambda: data_lib.load_folder(folder, size, channels), 3)
    return out


def bench_tfds(tfds_dir: str, limit: int, size: int, channels: int) -> dict:
    import tensorflow_datasets as tfds
    found = data_lib.find_prepared("mnist", data_lib.tfds_data_dirs(tfds_dir))
    if found is None:
        print(f"(no prepared mnist under {tfds_dir}: tfds lines skipped)")
        return {}
    root, version = found
    source = tfds.data_source(f"mnist:{version}", split="train", data_dir=root)
    out = {}
    for threads, name in ((0, "tfds mnist decode (threads)"), (1, "tfds mnist decode (1 thread)")):
        data_lib.DECODE_THREADS = threads
        out[name] = limit / timed(lambda: data_lib.decode_source(source, size, channels,
                                                                 limit=limit))
    data_lib.DECODE_THREADS = 0
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "hw6_anime.py"))
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--examples", type=int, default=4096, help="synthetic in-memory dataset size")
    p.add_argument("--jpgs", type=int, default=1000, help="JPGs in the temporary folder")
    p.add_argument("--tfds_dir", default=os.path.join(REPO, "..", "shared", "tensorflow_datasets"))
    p.add_argument("--tfds_limit", type=int, default=4000, help="MNIST records decoded")
    args = p.parse_args()

    config = config_lib.load_recipe(args.config)
    size, channels = int(config.data.image_size), int(config.data.channels)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPU cores; recipe {os.path.basename(args.config)}: "
          f"{size}x{size}x{channels}, batch {config.train.batch_size}, "
          f"n_critic {config.train.n_critic}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.examples, size, size, channels), dtype=np.uint8)

    step_rate = bench_step(config, args.steps, images)
    rates = {"resident gather (in jit)": bench_resident(config, images),
             "streaming Prefetcher": bench_streaming(config, images)}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JAXGAN_CACHE_DIR"] = os.path.join(tmp, "cache")
        folder = os.path.join(tmp, "jpgs")
        make_jpgs(folder, args.jpgs)
        rates.update(bench_folder(folder, args.jpgs, size, channels))
        rates.update(bench_tfds(args.tfds_dir, args.tfds_limit, 32, 1))

    print(f"{'training step':32s} {step_rate:12.0f} img/s   1.00x (reference)")
    for name, rate in rates.items():
        print(f"{name:32s} {rate:12.0f} img/s {rate / step_rate:7.1f}x the step")
    print("decode rates are one-off (cached afterwards); resident and streaming rates are what "
          "each training step sees.")


if __name__ == "__main__":
    main()
