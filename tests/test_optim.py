"""Optimizer chains: clipping bounds, PyTorch-style RMSprop, which losses clip."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgan import optim
from jaxgan.config import base_config, rmsprop


def test_clip_weights_keeps_every_weight_in_bounds():
    c = 0.01
    params = {"a": jnp.array([0.5, -0.3, 0.001]), "b": {"k": jnp.full((3, 3), -2.0)}}
    tx = optax.chain(optax.sgd(0.1), optim.clip_weights(c))
    state = tx.init(params)
    grads = jax.tree.map(lambda p: -jnp.sign(p) * 5.0, params)  # push weights outwards
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for leaf in jax.tree.leaves(params):
            assert float(jnp.max(jnp.abs(leaf))) <= c * (1 + 1e-6)
    # weights pushed outwards end at the bound (not merely inside it)
    np.testing.assert_allclose(params["b"]["k"], -c, rtol=1e-6)


def test_clip_weights_leaves_small_weights_alone():
    params = {"w": jnp.array([0.001, -0.002])}
    tx = optax.chain(optax.sgd(1.0), optim.clip_weights(0.01))
    updates, _ = tx.update({"w": jnp.array([0.001, 0.001])}, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [0.0, -0.003], atol=1e-8)


def test_rmsprop_matches_pytorch_formula():
    cfg = rmsprop(5e-5)
    tx = optim.optimizer(cfg)
    p = jnp.array([1.0, -2.0])
    g = jnp.array([0.3, -4.0])
    updates, _ = tx.update(g, tx.init(p), p)
    v = (1 - 0.99) * np.asarray(g) ** 2          # torch: square_avg = alpha*0 + (1-alpha)*g^2
    want = -5e-5 * np.asarray(g) / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(updates, want, rtol=1e-5)


def test_only_wgan_clips():
    c = base_config()
    for name, clips in (("gan", False), ("wgan", True), ("wgan-gp", False)):
        c.loss.name = name
        _, d_tx = optim.make(c)
        params = {"w": jnp.array([5.0])}
        updates, _ = d_tx.update({"w": jnp.array([0.0])}, d_tx.init(params), params)
        out = float(optax.apply_updates(params, updates)["w"][0])
        assert (out <= 0.0101) == clips, name  # 5 + (0.01 - 5) rounds to 0.01 + 2e-7 in f32


def test_linear_schedule_decays_each_optimizer_to_zero_over_its_own_updates():
    """G makes train.steps updates, the critic n_critic times as many: both end at lr 0."""
    c = base_config()
    c.optim.schedule = "linear"
    c.train.steps, c.train.n_critic = 4, 2
    for tx, total in zip(optim.make(c), (4, 8)):
        p = {"w": jnp.array([1.0])}
        s = tx.init(p)
        sizes = []
        for _ in range(total):
            u, s = tx.update({"w": jnp.array([0.5])}, s, p)  # constant gradient: Adam moves ~lr
            sizes.append(-float(u["w"][0]))
        want = [2e-4 * (1 - k / total) for k in range(total)]
        np.testing.assert_allclose(sizes, want, rtol=1e-4, atol=1e-9)


def test_decay_steps_make_a_short_run_follow_the_long_runs_schedule():
    """With optim.decay_steps=4 a 2-step run takes the first two rates of a 4-step decay."""
    c = base_config()
    c.optim.schedule = "linear"
    c.train.steps, c.train.n_critic, c.optim.decay_steps = 2, 1, 4
    g_tx, _ = optim.make(c)
    p = {"w": jnp.array([1.0])}
    s = g_tx.init(p)
    sizes = []
    for _ in range(4):
        u, s = g_tx.update({"w": jnp.array([0.5])}, s, p)
        sizes.append(-float(u["w"][0]))
    np.testing.assert_allclose(sizes, [2e-4 * (1 - k / 4) for k in range(4)], rtol=1e-4, atol=1e-9)
    c.train.steps = 8                   # a longer run stretches the decay over all its steps
    assert optim.decay_steps(c) == 8
