"""Generators and critics (flax.linen): the MLP of the original GAN and DCGAN.

Every model takes `train: bool`; batch-norm statistics live in the `batch_stats` collection and are
threaded through the step explicitly. Critics return raw logits / scores `f32[B]` (no sigmoid:
the losses are written on logits for numerical stability).

Mode-collapse remedies, each off by default (one config switch each, read only by `build`):
spectral normalization of the critic (`spectral_norm`), minibatch standard deviation (`mbstd`),
PacGAN packing (`pack`), noise injection in the generator (`noise`) and a categorical latent
code (`categories`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import config as config_lib
from jaxgan import layers
from jaxgan.layers import TorchConvTranspose

DCGAN_INIT = nn.initializers.normal(0.02)  # Radford et al. 2016; HW6 weights_init


def _scale_init(key, shape, dtype=jnp.float32):
    """Batch-norm scale ~ N(1, 0.02), as the DCGAN / HW6 weights_init does."""
    return 1.0 + DCGAN_INIT(key, shape, dtype)


class Norm(nn.Module):
    """batch | instance | layer | none, over NHWC feature maps or [B, F] vectors.

    With `num_classes` and labels, batch norm is class-conditional (de Vries et al. 2017;
    Miyato & Koyama 2018): normalised without its own affine, then scaled by 1 + gamma[y] and
    shifted by beta[y], both embeddings initialised at 0 (so it starts as plain batch norm).
    """
    kind: str
    dtype: Any = jnp.float32
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, train: bool, labels=None):
        if self.kind == "batch" and self.num_classes and labels is not None:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             use_scale=False, use_bias=False, dtype=self.dtype)(x)
            f = x.shape[-1]
            gamma = nn.Embed(self.num_classes, f, embedding_init=nn.initializers.zeros)(labels)
            beta = nn.Embed(self.num_classes, f, embedding_init=nn.initializers.zeros)(labels)
            shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (f,)
            return x * (1.0 + gamma.reshape(shape)) + beta.reshape(shape)
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


def embed_labels(z, labels, num_classes: int, dtype):
    """Generator input: the noise with a learned label embedding appended (Mirza & Osindero)."""
    if not num_classes or labels is None:
        return z.astype(dtype)
    e = nn.Embed(num_classes, min(50, 5 * num_classes), name="label_embed")(labels)
    return jnp.concatenate([z, e], axis=-1).astype(dtype)


def projection(features, labels, num_classes: int):
    """Miyato & Koyama 2018: <embed(y), phi(x)>, added to the unconditional logit."""
    if not num_classes or labels is None:
        return 0.0
    flat = features.reshape((features.shape[0], -1)).astype(jnp.float32)
    e = nn.Embed(num_classes, flat.shape[-1], embedding_init=nn.initializers.normal(0.02),
                 name="label_projection")(labels)
    return jnp.sum(flat * e, axis=-1)


def concat_label_maps(x, labels, num_classes: int):
    """Concatenation conditioning: one-hot label planes appended to the critic's input."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)
    onehot = onehot.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (num_classes,))
    return jnp.concatenate([x, jnp.broadcast_to(onehot, x.shape[:-1] + (num_classes,))], -1)


def critic_layer(layer: nn.Module, x, train: bool, spectral_norm: bool):
    """`layer(x)`, or with its kernel divided by its largest singular value (Miyato et al. 2018).

    The power-iteration vector u and the estimate sigma live in `batch_stats`: one power step per
    training call (update_stats=train); eval calls read them without updating. Conv kernels are
    reshaped to (kh * kw * in, out), as SNGAN does.
    """
    if not spectral_norm:
        return layer(x)
    return nn.SpectralNorm(layer)(x, update_stats=train)


def pack_examples(x, pack: int):
    """PacGAN (Lin et al. 2018): f32[B, ..., C] -> f32[B / pack, ..., pack * C].

    Consecutive examples form a pack (examples 0..m-1 are pack 0), concatenated along the last
    axis: features for [B, F] vectors, channels for NHWC maps. A critic that judges m samples
    at once sees their joint diversity, which penalises a generator that collapses to few modes.
    """
    if pack == 1:
        return x
    b = x.shape[0]
    if b % pack:
        raise ValueError(f"the critic's batch of {b} is not a multiple of model.pack={pack}")
    x = x.reshape((b // pack, pack) + x.shape[1:])
    x = jnp.moveaxis(x, 1, -2)  # [B/m, ..., m, C]
    return x.reshape(x.shape[:-2] + (pack * x.shape[-1],))


def mbstd_group(batch: int, group: int) -> int:
    """The largest divisor of `batch` not above `group` (ProGAN needs equal groups)."""
    return max(d for d in range(1, min(group, batch) + 1) if batch % d == 0)


def minibatch_stddev(x, group: int):
    """Minibatch standard deviation (Karras et al. 2018): f32[B, ..., C] -> f32[B, ..., C + 1].

    Consecutive groups of g = mbstd_group(B, group) examples; for each group, the standard
    deviation over its examples of every feature (sqrt(var + 1e-8)), averaged over features and
    positions, is appended as one constant channel to each of its examples. A collapsed
    generator's batches have low spread, which the critic can then see. It couples the examples
    of a group, so the gradient penalty / R1 gradients are no longer strictly per example (ProGAN
    used it with WGAN-GP all the same).
    """
    b = x.shape[0]
    g = mbstd_group(b, group)
    y = x.astype(jnp.float32).reshape((b // g, g) + x.shape[1:])
    std = jnp.sqrt(jnp.var(y, axis=1) + 1e-8)               # [B/g, ..., C]
    s = jnp.mean(std, axis=tuple(range(1, std.ndim)))        # [B/g]
    s = jnp.repeat(s, g).reshape((b,) + (1,) * (x.ndim - 1))
    s = jnp.broadcast_to(s, x.shape[:-1] + (1,)).astype(x.dtype)
    return jnp.concatenate([x, s], axis=-1)


_SEED_MIX = 0x9E3779B1  # 2^32 / golden ratio: odd, so (2j + 1) * _SEED_MIX are distinct odd words


def z_seeds(z):
    """uint32[B]: a hash of each row of z's float32 bits (a weighted sum mod 2^32 with distinct
    odd weights). Keying each example's noise by its own z makes a noisy generator's sample a
    function of (z, stream key) alone, whatever batch the z sits in."""
    bits = jax.lax.bitcast_convert_type(z.astype(jnp.float32), jnp.uint32)
    weights = (((2 * np.arange(z.shape[-1], dtype=np.uint64) + 1) * _SEED_MIX)
               % 2**32).astype(np.uint32)
    return jnp.sum(bits * jnp.asarray(weights), axis=-1, dtype=jnp.uint32)


class NoiseInjection(nn.Module):
    """x + scale[c] * N(0, 1) (StyleGAN, Karras et al. 2019): more randomness for G than z.

    One noise value per example and position, shared by the channels of a feature map (as
    StyleGAN); one per example and feature for vectors. `scale` starts at 0, so a fresh
    generator computes what it would without noise. keys: one PRNG key per example.
    """

    @nn.compact
    def __call__(self, x, keys):
        scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
        shape = x.shape[1:-1] + (1,) if x.ndim > 2 else x.shape[1:]
        noise = jax.vmap(lambda k: jax.random.normal(k, shape))(keys)
        return x + (scale * noise).astype(x.dtype)


def categorical_code(z, categories: int):
    """z: f32[B, Z] -> f32[B, K + Z - 1]: [sqrt(K) one_hot(k, K), z_1, ..., z_{Z-1}],
    k = floor(K Phi(z_0)).

    Phi(z_0) is uniform on [0, 1], so k is uniform over the K categories and a sample stays a
    function of z alone (grids, `jaxgan.sample` and evaluation draw plain Gaussian z). A continuous
    map of a Gaussian must leave a trail of samples between disjoint modes; with a discrete input
    G can put each category on its own mode (InfoGAN's categorical code without its mutual
    information term; DeLiGAN and GM-GAN use a mixture latent for the same reason).
    """
    if not categories:
        return z
    k = category_of(z, categories)
    # sqrt(K): after G's first (LeCun-initialised) layer a category moves the features as much as
    # a unit Gaussian input would, so categories start as separate clusters (DeLiGAN's means)
    # rather than as small offsets the continuous part drowns.
    code = jax.nn.one_hot(k, categories, dtype=z.dtype) * math.sqrt(categories)
    return jnp.concatenate([code, z[:, 1:]], axis=-1)


def category_of(z, categories: int):
    """int32[B]: the category k = floor(K Phi(z_0)) that `categorical_code` gives each row of z."""
    u = jax.scipy.stats.norm.cdf(z[:, 0].astype(jnp.float32))
    return jnp.clip(jnp.floor(u * categories).astype(jnp.int32), 0, categories - 1)


def info_head(features, codes: int, dtype):
    """InfoGAN's Q (Chen et al. 2016): logits f32[B, codes] of the categorical code behind a
    sample, read off the critic's last features (FC 128 - LeakyReLU - FC, the paper's MNIST
    head; the convolutions are shared with the critic)."""
    h = features.reshape((features.shape[0], -1)).astype(dtype)
    h = nn.leaky_relu(nn.Dense(128, dtype=dtype, name="info_hidden")(h), 0.2)
    return nn.Dense(codes, dtype=dtype, name="info_logits")(h).astype(jnp.float32)


def noise_keys(module: nn.Module, z, on: bool):
    """Per-example keys from the 'noise' rng stream and each row of z (None when off)."""
    if not on:
        return None
    return jax.vmap(jax.random.fold_in, (None, 0))(module.make_rng("noise"), z_seeds(z))


def add_noise(x, keys, layer: int):
    """Noise injection after hidden layer `layer` (identity without keys)."""
    if keys is None:
        return x
    layer_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, layer)
    return NoiseInjection(name=f"noise_{layer}")(x, layer_keys)


class MLPGenerator(nn.Module):
    """z: f32[B, Z] -> images f32[B, H, W, C] in [-1, 1] (tanh), or points f32[B, 2] (linear)."""
    out_shape: Sequence[int]
    hidden: Sequence[int] = (512, 512)
    norm: str = "batch"
    tanh: bool = True
    dtype: Any = jnp.float32
    num_classes: int = 0        # > 0: class-conditional (labels int32[B])
    cond: str = "embed"         # embed | cbn (conditional batch norm)
    noise: bool = False         # noise injection after each hidden norm (needs the 'noise' rng)
    categories: int = 0         # > 0: categorical latent code from z's first coordinate

    @nn.compact
    def __call__(self, z, train: bool = True, labels=None):
        keys = noise_keys(self, z, self.noise)
        x = embed_labels(categorical_code(z, self.categories), labels,
                         self.num_classes if self.cond == "embed" else 0, self.dtype)
        cbn = self.num_classes if self.cond == "cbn" else 0
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, dtype=self.dtype)(x)
            x = Norm(self.norm, self.dtype, cbn)(x, train, labels)
            x = nn.relu(add_noise(x, keys, i))
        x = nn.Dense(math.prod(self.out_shape), dtype=self.dtype)(x)
        x = jnp.tanh(x) if self.tanh else x
        return x.astype(jnp.float32).reshape((z.shape[0], *self.out_shape))


class MLPDiscriminator(nn.Module):
    """x: f32[B, ...] -> logits f32[B / pack] (class-conditional with labels: projection or
    concat)."""
    hidden: Sequence[int] = (512, 512)
    norm: str = "none"
    dtype: Any = jnp.float32
    num_classes: int = 0
    cond: str = "projection"    # projection | concat
    spectral_norm: bool = False  # every Dense spectrally normalised (critic_layer)
    mbstd: int = 0              # minibatch-stddev group size before the last layer (0: off)
    pack: int = 1               # PacGAN: one logit per pack of consecutive examples
    info_codes: int = 0         # > 0: InfoGAN's Q head over that many categories (info_head)

    @nn.compact
    def __call__(self, x, train: bool = True, labels=None, with_code: bool = False):
        """logits f32[B / pack]; with_code: (logits, Q's code logits f32[B, info_codes])."""
        _check_pack(self, labels)
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        x = pack_examples(x, self.pack)
        if self.num_classes and labels is not None and self.cond == "concat":
            x = concat_label_maps(x, labels, self.num_classes)
        for i, width in enumerate(self.hidden):
            x = critic_layer(nn.Dense(width, dtype=self.dtype), x, train, self.spectral_norm)
            if i > 0:
                x = Norm(self.norm, self.dtype)(x, train)
            x = nn.leaky_relu(x, 0.2)
        features = x
        if self.mbstd:
            x = minibatch_stddev(x, self.mbstd)
        out = critic_layer(nn.Dense(1, dtype=self.dtype), x, train, self.spectral_norm)
        out = out.astype(jnp.float32)[:, 0]
        out = out + projection(features, labels,
                               self.num_classes if self.cond == "projection" else 0)
        return with_info(out, features, self.info_codes, with_code, self.dtype)


def with_info(out, features, codes: int, with_code: bool, dtype):
    """A critic's return value: out, or (out, Q's logits) when asked. The head is built whenever
    the critic has one (so `init` creates its parameters), asked for or not."""
    q = info_head(features, codes, dtype) if codes else None
    if not with_code:
        return out
    if q is None:
        raise ValueError("with_code=True needs a critic with an InfoGAN head (info_codes > 0)")
    return out, q


def _check_pack(critic, labels) -> None:
    if critic.pack > 1 and critic.num_classes and labels is not None:
        raise ValueError("a packed critic has no single label per pack: use model.pack=1 with "
                         "model.num_classes")


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
    num_classes: int = 0        # > 0: class-conditional (labels int32[B])
    cond: str = "embed"         # embed | cbn (conditional batch norm)
    noise: bool = False         # noise injection after each hidden norm (needs the 'noise' rng)
    categories: int = 0         # > 0: categorical latent code from z's first coordinate

    @nn.compact
    def __call__(self, z, train: bool = True, labels=None):
        base = config_lib.image_base(self.image_size)
        n_up = int(round(math.log2(self.image_size // base)))
        ch = self.width * 2 ** (n_up - 1)
        keys = noise_keys(self, z, self.noise)
        h = embed_labels(categorical_code(z, self.categories), labels,
                         self.num_classes if self.cond == "embed" else 0, self.dtype)
        cbn = self.num_classes if self.cond == "cbn" else 0
        x = nn.Dense(base * base * ch, use_bias=False, dtype=self.dtype)(h)
        x = Norm(self.norm, self.dtype, cbn)(x, train, labels)
        x = nn.relu(add_noise(x.reshape((z.shape[0], base, base, ch)), keys, 0))
        for i in range(n_up - 1):
            ch //= 2
            x = self._upsample(ch)(x)
            x = Norm(self.norm, self.dtype, cbn)(x, train, labels)
            x = nn.relu(add_noise(x, keys, i + 1))
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
    """x: f32[B, S, S, C] -> logits f32[B / pack].

    4x4 stride-2 convs doubling the channels from `width` (LeakyReLU 0.2; norm from the second on),
    then a base x base valid conv to one logit. With image_size=64, width=64 this is the HW6 critic.
    """
    image_size: int
    width: int = 64
    norm: str = "batch"
    dtype: Any = jnp.float32
    num_classes: int = 0
    cond: str = "projection"    # projection (on the last feature map) | concat (label planes)
    spectral_norm: bool = False  # every conv spectrally normalised (critic_layer)
    mbstd: int = 0              # minibatch-stddev group size before the last conv (0: off)
    pack: int = 1               # PacGAN: one logit per pack of consecutive examples
    info_codes: int = 0         # > 0: InfoGAN's Q head over that many categories (info_head)

    @nn.compact
    def __call__(self, x, train: bool = True, labels=None, with_code: bool = False):
        """logits f32[B / pack]; with_code: (logits, Q's code logits f32[B, info_codes])."""
        _check_pack(self, labels)
        base = config_lib.image_base(self.image_size)
        n_down = int(round(math.log2(self.image_size // base)))
        x = pack_examples(x.astype(self.dtype), self.pack)
        if self.num_classes and labels is not None and self.cond == "concat":
            x = concat_label_maps(x, labels, self.num_classes)
        ch = self.width
        for i in range(n_down):
            # nn.Conv's params and values; gradients in the form the backend runs fastest
            # (layers.conv_general_dilated; the WGAN-GP penalty's second order on CPU).
            conv = nn.Conv(ch, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                           kernel_init=DCGAN_INIT, dtype=self.dtype,
                           conv_general_dilated=layers.conv_general_dilated)
            x = critic_layer(conv, x, train, self.spectral_norm)
            if i > 0:
                x = Norm(self.norm, self.dtype)(x, train)
            x = nn.leaky_relu(x, 0.2)
            ch *= 2
        features = x
        if self.mbstd:
            x = minibatch_stddev(x, self.mbstd)
        conv = nn.Conv(1, (base, base), padding="VALID", kernel_init=DCGAN_INIT, dtype=self.dtype,
                       conv_general_dilated=layers.conv_general_dilated)
        x = critic_layer(conv, x, train, self.spectral_norm)
        out = x.astype(jnp.float32).reshape((x.shape[0],))
        out = out + projection(features, labels,
                               self.num_classes if self.cond == "projection" else 0)
        return with_info(out, features, self.info_codes, with_code, self.dtype)


def data_shape(config) -> tuple[int, ...]:
    """The shape of one real example: (2,) for mixtures, (S, S, C) for images."""
    if config_lib.is_mixture(config):
        return (2,)
    return (int(config.data.image_size),) * 2 + (int(config.data.channels),)


def num_classes(config) -> int:
    """Classes a conditional recipe generates (0: unconditional; recipes saved before the key).
    A semi-supervised recipe's classes are the critic's; its generator is unconditional."""
    if config.loss.name == "ssgan":
        return 0
    return int(config.model.get("num_classes", 0))


def info_codes(config) -> int:
    """Categories InfoGAN's Q head reads back (0: no head; recipes saved before the key)."""
    if float(config.loss.get("info_weight", 0.0)) > 0:
        return int(config.model.z_categories)
    return 0


def compute_dtype(config):
    """The recipe's activation dtype (`train.dtype`); float32 for recipes saved before the key."""
    name = config.train.get("dtype", "float32") if "train" in config else "float32"
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def build(config, dtype=None) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) for a recipe.

    dtype: activation (compute) dtype; None takes the recipe's `train.dtype`. Parameters are
    float32 whatever it is, and the models take and return float32 (images, logits), so
    optimizers, losses and the gradient penalty's norm stay float32: mixed precision. Training,
    grids and `jaxgan.sample` / `jaxgan.evaluate` all run the networks in the recipe's dtype.
    """
    dtype = compute_dtype(config) if dtype is None else dtype
    m = config.model
    shape = data_shape(config)
    k = num_classes(config)
    # .get: recipes saved before a key build the model they were trained with
    g_kw = {"num_classes": k, "cond": m.get("g_cond", "embed"),
            "noise": bool(m.get("g_noise", False)),
            "categories": int(m.get("z_categories", 0))}
    d_kw = {"num_classes": k, "cond": m.get("d_cond", "projection"),
            "spectral_norm": bool(m.get("d_spectral_norm", False)),
            "mbstd": int(m.get("d_mbstd", 0)), "pack": int(m.get("pack", 1)),
            "info_codes": info_codes(config)}
    if m.arch == "mlp":
        g = MLPGenerator(out_shape=shape, hidden=tuple(m.hidden), norm=m.g_norm,
                         tanh=not config_lib.is_mixture(config), dtype=dtype, **g_kw)
        if config.loss.name == "ssgan":
            from jaxgan import ssgan  # the K-class critic of the semi-supervised GAN
            return g, ssgan.build_critic(config)
        d = MLPDiscriminator(hidden=config_lib.critic_hidden(config), norm=m.d_norm, dtype=dtype,
                             **d_kw)
        return g, d
    g = DCGANGenerator(image_size=shape[0], channels=shape[2], width=m.g_width, norm=m.g_norm,
                       kernel=m.g_kernel, dtype=dtype, **g_kw)
    d = DCGANDiscriminator(image_size=shape[0], width=m.d_width, norm=m.d_norm, dtype=dtype,
                           **d_kw)
    return g, d
