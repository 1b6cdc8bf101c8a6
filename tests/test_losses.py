"""Loss values against hand-computed cases; the gradient penalty against analytic critics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import losses


def test_gan_critic_loss_hand_computed():
    real, fake = jnp.array([2.0, 0.0]), jnp.array([-1.0, 0.0])
    # BCE(real -> 1) = log(1 + e^-l); BCE(fake -> 0) = log(1 + e^l)
    want = np.mean([math.log1p(math.exp(-2.0)), math.log(2.0)]) + np.mean(
        [math.log1p(math.exp(-1.0)), math.log(2.0)])
    assert float(losses.gan_critic_loss(real, fake)) == pytest.approx(want, rel=1e-6)


def test_gan_losses_are_stable_at_extreme_logits():
    assert float(losses.gan_critic_loss(jnp.array([100.0]), jnp.array([-100.0]))) < 1e-30
    assert float(losses.gan_critic_loss(jnp.array([-100.0]), jnp.array([-100.0]))) == \
        pytest.approx(100.0, rel=1e-6)
    g = jax.grad(lambda l: losses.gan_critic_loss(l, jnp.array([0.0])))(jnp.array([-1e4]))
    assert np.isfinite(g).all() and float(g[0]) == pytest.approx(-1.0)


def test_generator_forms_hand_computed_and_saturation():
    fake = jnp.array([0.0, 1.0])
    ns = np.mean([math.log(2.0), math.log1p(math.exp(-1.0))])
    mm = -np.mean([math.log(2.0), math.log1p(math.exp(1.0))])
    assert float(losses.gan_generator_loss(fake)) == pytest.approx(ns, rel=1e-6)
    assert float(losses.gan_generator_loss(fake, "minimax")) == pytest.approx(mm, rel=1e-6)
    # When D confidently rejects fakes (logit -10), the minimax gradient vanishes and the
    # non-saturating one does not: the reason the latter is the default.
    lo = jnp.array([-10.0])
    g_ns = jax.grad(losses.gan_generator_loss)(lo)
    g_mm = jax.grad(lambda l: losses.gan_generator_loss(l, "minimax"))(lo)
    assert abs(float(g_ns[0])) > 0.99 and abs(float(g_mm[0])) < 1e-4
    with pytest.raises(ValueError):
        losses.gan_generator_loss(fake, "nope")


def test_wgan_losses_hand_computed():
    real, fake = jnp.array([1.0, 3.0]), jnp.array([0.5, -0.5])
    assert float(losses.wgan_critic_loss(real, fake)) == pytest.approx(0.0 - 2.0)
    assert float(losses.wgan_generator_loss(fake)) == pytest.approx(0.0)
    assert float(losses.wgan_generator_loss(jnp.array([2.0, 4.0]))) == pytest.approx(-3.0)


def test_interpolate_per_example():
    real = jnp.ones((3, 2, 2, 1))
    fake = -jnp.ones((3, 2, 2, 1))
    eps = jnp.array([0.0, 0.5, 1.0])
    x = losses.interpolate(real, fake, eps)
    np.testing.assert_allclose(x[:, 0, 0, 0], [-1.0, 0.0, 1.0])


def test_gradient_penalty_linear_critic_has_norm_abs_w():
    w = jnp.array([3.0, 4.0])  # |w| = 5 -> penalty (5 - 1)^2 = 16 whatever the input
    critic = lambda x: x @ w
    xhat = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
    gp, norms = losses.gradient_penalty(critic, xhat)
    np.testing.assert_allclose(norms, 5.0, rtol=1e-6)
    assert float(gp) == pytest.approx(16.0, rel=1e-6)


def test_gradient_penalty_quadratic_critic_on_images():
    # D(x) = 0.5 * |x|^2 per example: gradient x, norm |x_i|.
    critic = lambda x: 0.5 * jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1)
    xhat = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 4, 3))
    gp, norms = losses.gradient_penalty(critic, xhat)
    want_norms = np.linalg.norm(np.asarray(xhat).reshape(5, -1), axis=1)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-5)
    assert float(gp) == pytest.approx(np.mean((want_norms - 1.0) ** 2), rel=1e-5)


def test_gradient_penalty_is_differentiable_w_r_t_critic_params():
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    gp_of_w = lambda w: losses.gradient_penalty(lambda v: v @ w, x)[0]
    w = jnp.array([0.6, 0.8])  # |w| = 1: the penalty is at its minimum
    g = jax.grad(gp_of_w)(w)
    np.testing.assert_allclose(g, 0.0, atol=1e-5)
    g2 = jax.grad(gp_of_w)(2 * w)  # d/dw (|w|-1)^2 = 2(|w|-1) w/|w| = 2 * 1 * w_hat
    np.testing.assert_allclose(g2, 2.0 * w, rtol=1e-5)


def test_registry():
    assert set(losses.LOSSES) == {"gan", "wgan", "wgan-gp", "hinge", "ssgan"}
    assert losses.LOSSES["wgan"].clip and not losses.LOSSES["wgan"].penalty
    assert losses.LOSSES["wgan-gp"].penalty and not losses.LOSSES["wgan-gp"].clip


def test_hinge_losses_hand_computed():
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-3.0, 0.0])
    # critic: mean(max(0, 1 - real)) = (0 + 0.5 + 2) / 3; mean(max(0, 1 + fake)) = (0 + 1) / 2
    assert float(losses.hinge_critic_loss(real, fake)) == pytest.approx(2.5 / 3 + 0.5)
    assert float(losses.LOSSES["hinge"].generator(fake)) == pytest.approx(1.5)


def test_r1_penalty_against_analytic_critics():
    w = jnp.array([3.0, -4.0])
    x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    assert float(losses.r1_penalty(lambda x: x @ w + 7.0, x)) == pytest.approx(25.0)
    # D(x) = sum x^2 per example -> grad 2x -> mean 4 ||x||^2 = 4 * (5 + 1.25) / 2
    quad = lambda x: jnp.sum(jnp.square(x), axis=(1, 2, 3))  # noqa: E731
    img = jnp.reshape(x, (2, 1, 1, 2))
    assert float(losses.r1_penalty(quad, img)) == pytest.approx(12.5)
    # differentiable w.r.t. the critic's parameters (the step takes that gradient)
    g = jax.grad(lambda w: losses.r1_penalty(lambda x: x @ w, x))(w)
    np.testing.assert_allclose(g, 2 * np.asarray(w), rtol=1e-6)


def test_info_loss_hand_computed():
    """InfoGAN's cross-entropy of the code: -mean log softmax(q)[c]."""
    q = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0], [-1e4, 1e4]])
    codes = jnp.array([1, 0, 1])
    want = np.mean([-math.log(3 / 4), math.log(2.0), 0.0])  # the last is certain and right
    assert float(losses.info_loss(q, codes)) == pytest.approx(want, rel=1e-6)
    assert np.isfinite(float(losses.info_loss(q, jnp.array([1, 0, 0]))))  # certain and wrong
