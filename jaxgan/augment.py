"""DiffAugment (Zhao et al. 2020): differentiable augmentations of what the critic sees.

With few training images (the 1,797 digits, a folder of anime faces) the critic memorises them
and its gradients stop helping the generator. Augmenting both real and generated images before
every critic call, with operations the generator's gradient flows through, removes that shortcut
without leaking the augmentations into the samples. Images are NHWC in [-1, 1]; every example
draws its own parameters.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def color(key: Array, x: Array) -> Array:
    """Brightness +U[-0.5, 0.5], saturation x U[0, 2], contrast x U[0.5, 1.5] (the paper's ranges)."""
    b = x.shape[0]
    kb, ks, kc = jax.random.split(key, 3)
    x = x + (jax.random.uniform(kb, (b, 1, 1, 1)) - 0.5)
    mean = jnp.mean(x, axis=3, keepdims=True)
    x = (x - mean) * (jax.random.uniform(ks, (b, 1, 1, 1)) * 2.0) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(kc, (b, 1, 1, 1)) + 0.5) + mean


def translation(key: Array, x: Array, ratio: float = 0.125) -> Array:
    """Shifts each image by up to ratio * size pixels in each direction, filling with zeros."""
    b, h, w, _ = x.shape
    ph, pw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    dy = jax.random.randint(ky, (b,), -ph, ph + 1)
    dx = jax.random.randint(kx, (b,), -pw, pw + 1)
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

    def shift(img, oy, ox):
        return jax.lax.dynamic_slice(img, (ph - oy, pw - ox, 0), (h, w, img.shape[-1]))

    return jax.vmap(shift)(padded, dy, dx)


def cutout(key: Array, x: Array, ratio: float = 0.5) -> Array:
    """Zeroes one (ratio * size)^2 square per image, centred anywhere (it may be clipped)."""
    b, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (b, 1, 1), 0, h + (1 - ch % 2))
    cx = jax.random.randint(kx, (b, 1, 1), 0, w + (1 - cw % 2))
    yy = jnp.arange(h)[None, :, None]
    xx = jnp.arange(w)[None, None, :]
    inside = ((yy >= cy - ch // 2) & (yy < cy - ch // 2 + ch)
              & (xx >= cx - cw // 2) & (xx < cx - cw // 2 + cw))
    return jnp.where(inside[..., None], 0.0, x)


OPS: dict[str, Callable[[Array, Array], Array]] = {
    "color": color, "translation": translation, "cutout": cutout}


def parse(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> () (no augmentation)."""
    return tuple(p.strip() for p in policy.split(",") if p.strip())


def diff_augment(key: Array, x: Array, policy: tuple[str, ...]) -> Array:
    """Applies the policy's operations in order, each with its own key."""
    for i, name in enumerate(policy):
        x = OPS[name](jax.random.fold_in(key, i), x)
    return x
