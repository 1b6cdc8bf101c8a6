"""Generators and critics (flax.linen): the MLP of the original GAN and DCGAN.

Every model takes `train: bool`; batch-norm statistics live in the `batch_stats` collection and are
threaded through the step explicitly. Critics return raw logits / scores `f32[B]` (no sigmoid:
the losses are written on logits for numerical stability).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxgan import config as config_lib
from jaxgan.layers import TorchConvTranspose

DCGAN_INIT = nn.initializers.normal(0.02)  # Radford et al. 2016; HW6 weights_init


def _scale_init(key, shape, dtype=jnp.float32):
    """Batch-norm scale ~ N(1, 0.02), as the DCGAN / HW6 weights_init does."""
    return 1.0 + DCGAN_INIT(key, shape, dtype)


class Norm(nn.Module):
    """batch | instance | layer | none, over NHWC feature maps or [B, F] vectors."""
    kind: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.kind == "batch":
            # momentum 0.9 == PyTorch's momentum 0.1; eps 1e-5 as PyTorch.
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                scale_init=_scale_init, dtype=self.dtype)(x)
        if self.kind == "instance":
            return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "layer":
            axes = tuple(range(1, x.ndim))
            return nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes,
                                dtype=self.dtype)(x)
        if self.kind == "none":
            return x
        raise ValueError(f"unknown norm {self.kind!r}")


class MLPGenerator(nn.Module):
    """z: f32[B, Z] -> images f32[B, H, W, C] in [-1, 1] (tanh), or points f32[B, 2] (linear)."""
    out_shape: Sequence[int]
    hidden: Sequence[int] = (512, 512)
    norm: str = "batch"
    tanh: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = True):
        x = z.astype(self.dtype)
        for width in self.hidden:
            x = nn.Dense(width, dtype=self.dtype)(x)
            x = Norm(self.norm, self.dtype)(x, train)
            x = nn.relu(x)
        x = nn.Dense(math.prod(self.out_shape), dtype=self.dtype)(x)
        x = jnp.tanh(x) if self.tanh else x
        return x.astype(jnp.float32).reshape((z.shape[0], *self.out_shape))


class MLPDiscriminator(nn.Module):
    """x: f32[B, ...] -> logits f32[B]."""
    hidden: Sequence[int] = (512, 512)
    norm: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, dtype=self.dtype)(x)
            if i > 0:
                x = Norm(self.norm, self.dtype)(x, train)
            x = nn.leaky_relu(x, 0.2)
        return nn.Dense(1, dtype=self.dtype)(x).astype(jnp.float32)[:, 0]


class DCGANGenerator(nn.Module):
    """z: f32[B, Z] -> f32[B, S, S, C] in [-1, 1].

    A bias-free linear layer to base x base x (width * 2^(n-1)) with 1-D batch norm, then n stride-2
    transposed convolutions halving the channels (norm + ReLU), the last to C channels + tanh.
    With image_size=64, width=64, kernel=5 this is exactly the NTU ML2022 HW6 generator.
    """
    image_size: int
    channels: int
    width: int = 64
    norm: str = "batch"
    kernel: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = True):
        base = config_lib.image_base(self.image_size)
        n_up = int(round(math.log2(self.image_size // base)))
        ch = self.width * 2 ** (n_up - 1)
        x = nn.Dense(base * base * ch, use_bias=False, dtype=self.dtype)(z.astype(self.dtype))
        x = Norm(self.norm, self.dtype)(x, train)
        x = nn.relu(x).reshape((z.shape[0], base, base, ch))
        for _ in range(n_up - 1):
            ch //= 2
            x = self._upsample(ch)(x)
            x = Norm(self.norm, self.dtype)(x, train)
            x = nn.relu(x)
        x = self._upsample(self.channels)(x)
        return jnp.tanh(x.astype(jnp.float32))

    def _upsample(self, features: int) -> nn.Module:
        """x2 transposed conv, PyTorch padding: k=4 -> (p=1, op=0), k=5 -> (p=2, op=1)."""
        k = self.kernel
        padding = (k - 1) // 2
        return TorchConvTranspose(features, k, stride=2, padding=padding,
                                  output_padding=2 * padding + 2 - k, use_bias=False,
                                  dtype=self.dtype)


class DCGANDiscriminator(nn.Module):
    """x: f32[B, S, S, C] -> logits f32[B].

    4x4 stride-2 convs doubling the channels from `width` (LeakyReLU 0.2; norm from the second on),
    then a base x base valid conv to one logit. With image_size=64, width=64 this is the HW6 critic.
    """
    image_size: int
    width: int = 64
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        base = config_lib.image_base(self.image_size)
        n_down = int(round(math.log2(self.image_size // base)))
        x = x.astype(self.dtype)
        ch = self.width
        for i in range(n_down):
            x = nn.Conv(ch, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                        kernel_init=DCGAN_INIT, dtype=self.dtype)(x)
            if i > 0:
                x = Norm(self.norm, self.dtype)(x, train)
            x = nn.leaky_relu(x, 0.2)
            ch *= 2
        x = nn.Conv(1, (base, base), padding="VALID", kernel_init=DCGAN_INIT, dtype=self.dtype)(x)
        return x.astype(jnp.float32).reshape((x.shape[0],))


def data_shape(config) -> tuple[int, ...]:
    """The shape of one real example: (2,) for mixtures, (S, S, C) for images."""
    if config_lib.is_mixture(config):
        return (2,)
    return (int(config.data.image_size),) * 2 + (int(config.data.channels),)


def build(config, dtype=jnp.float32) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) for a recipe."""
    m = config.model
    shape = data_shape(config)
    if m.arch == "mlp":
        g = MLPGenerator(out_shape=shape, hidden=tuple(m.hidden), norm=m.g_norm,
                         tanh=not config_lib.is_mixture(config), dtype=dtype)
        d = MLPDiscriminator(hidden=tuple(m.hidden), norm=m.d_norm, dtype=dtype)
        return g, d
    g = DCGANGenerator(image_size=shape[0], channels=shape[2], width=m.g_width, norm=m.g_norm,
                       kernel=m.g_kernel, dtype=dtype)
    d = DCGANDiscriminator(image_size=shape[0], width=m.d_width, norm=m.d_norm, dtype=dtype)
    return g, d
