"""GAN, WGAN, WGAN-GP and hinge objectives as pure functions of critic outputs.

Critic outputs are raw logits / scores `f32[B]`. The registry `LOSSES` maps `config.loss.name` to
a `Loss`; the step reads nothing else from here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _f32(x: Array) -> Array:
    """Losses, penalties and their reductions in float32 whatever the models compute in
    (train.dtype='bfloat16' is mixed precision, not a bfloat16 loss)."""
    return x.astype(jnp.float32)


def gan_critic_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Binary cross-entropy, real -> 1 and fake -> 0, on logits (Goodfellow et al. 2014).

    -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l): stable for any logit.
    """
    real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def gan_generator_loss(fake_logits: Array, form: str = "non_saturating") -> Array:
    """non_saturating: E[-log D(G(z))]; minimax: E[log(1 - D(G(z)))] (saturates early on)."""
    fake_logits = _f32(fake_logits)
    if form == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    if form == "minimax":
        return -jnp.mean(jax.nn.softplus(fake_logits))
    raise ValueError(f"unknown generator loss form {form!r}")


def wgan_critic_loss(real_scores: Array, fake_scores: Array) -> Array:
    """-E[D(x)] + E[D(G(z))] (Arjovsky et al. 2017): minimising it maximises the W1 estimate."""
    return jnp.mean(_f32(fake_scores)) - jnp.mean(_f32(real_scores))


def wgan_generator_loss(fake_scores: Array, form: str = "") -> Array:
    """-E[D(G(z))]."""
    del form
    return -jnp.mean(_f32(fake_scores))


def hinge_critic_loss(real_scores: Array, fake_scores: Array) -> Array:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (Lim & Ye 2017; SNGAN, BigGAN)."""
    real_scores, fake_scores = _f32(real_scores), _f32(fake_scores)
    return jnp.mean(jax.nn.relu(1.0 - real_scores)) + jnp.mean(jax.nn.relu(1.0 + fake_scores))


def r1_penalty(critic: Callable[[Array], Array], real: Array) -> Array:
    """E[||grad_x D(x)||^2] on real data (Mescheder et al. 2018); the step weighs it by gamma/2.

    Penalising the critic's slope at the data stops it from overshooting around the real
    distribution, which is what makes unregularised GAN training oscillate.
    """
    grads = _f32(jax.grad(lambda x: jnp.sum(_f32(critic(x))))(real))
    return jnp.mean(jnp.sum(jnp.square(grads.reshape((grads.shape[0], -1))), axis=1))


def interpolate(real: Array, fake: Array, eps: Array) -> Array:
    """xhat = eps * x + (1 - eps) * G(z); eps: f32[B] broadcast over the example's dims."""
    eps = eps.reshape((-1,) + (1,) * (real.ndim - 1))
    return eps * real + (1.0 - eps) * fake


def gradient_penalty(critic: Callable[[Array], Array], xhat: Array,
                     pack: int = 1) -> tuple[Array, Array]:
    """(E[(||grad_xhat D(xhat)||_2 - 1)^2], per-pack norms f32[B / pack]) (Gulrajani et al. 2017).

    The gradient of sum_i D(xhat_i) w.r.t. xhat is the per-example gradient only when examples do
    not interact inside D, which is why a batch-norm critic is rejected by config validation.
    pack: a PacGAN critic (Lin et al. 2018) scores packs of `pack` consecutive examples, so the
    norm is taken over each pack's concatenated input (its interpolation uses one eps per pack).
    """
    grads = _f32(jax.grad(lambda x: jnp.sum(_f32(critic(x))))(xhat))
    sq = jnp.sum(jnp.square(grads.reshape((grads.shape[0] // pack, -1))), axis=1)
    norms = jnp.sqrt(sq + 1e-12)  # finite gradient of the penalty where the gradient vanishes
    return jnp.mean(jnp.square(norms - 1.0)), norms


def ssgan_unlabelled_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Salimans et al. 2016's unsupervised critic loss on K-class logits f32[B, K].

    With D(x) = Z / (Z + 1), Z = sum_k exp(l_k), the real/fake logit is logsumexp(l), and
    -1/2 E log D(x) - 1/2 E log(1 - D(G(z))) is half the GAN critic loss on those logits.
    """
    real = jax.nn.logsumexp(_f32(real_logits), axis=-1)
    fake = jax.nn.logsumexp(_f32(fake_logits), axis=-1)
    return 0.5 * gan_critic_loss(real, fake)


def feature_matching_loss(real_features: Array, fake_features: Array) -> Array:
    """||E f(x) - E f(G(z))||^2 / F over a critic layer f (Salimans et al. 2016, sec. 3.1):
    G matches the data's statistics instead of beating the current critic, which keeps the
    semi-supervised critic a good classifier."""
    diff = jnp.mean(_f32(real_features), axis=0) - jnp.mean(_f32(fake_features), axis=0)
    return jnp.mean(jnp.square(diff))


def info_loss(code_logits: Array, codes: Array) -> Array:
    """InfoGAN's mutual-information term for a categorical code (Chen et al. 2016): the
    cross-entropy E[-log Q(c | G(z, c))] of the code c: int[B] behind each fake. Minimising it
    over G and Q maximises a lower bound on I(c; G(z, c)) (up to the constant H(c))."""
    logp = jax.nn.log_softmax(_f32(code_logits), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, codes[:, None], axis=-1))


@dataclasses.dataclass(frozen=True)
class Loss:
    critic: Callable[[Array, Array], Array]
    generator: Callable[..., Array]
    penalty: bool = False   # adds gp_weight * gradient_penalty to the critic loss
    clip: bool = False      # clips critic weights to [-c, c] after every critic update


LOSSES: dict[str, Loss] = {
    "gan": Loss(gan_critic_loss, gan_generator_loss),
    "wgan": Loss(wgan_critic_loss, wgan_generator_loss, clip=True),
    "wgan-gp": Loss(wgan_critic_loss, wgan_generator_loss, penalty=True),
    "hinge": Loss(hinge_critic_loss, wgan_generator_loss),
    # K-class critic outputs; the labelled cross-entropy and the step live in jaxgan.ssgan
    "ssgan": Loss(ssgan_unlabelled_loss, feature_matching_loss),
}
