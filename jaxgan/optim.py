"""Optax chains for the generator and the critic; WGAN weight clipping is a chain link."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxgan.losses import LOSSES


def clip_weights(c: float) -> optax.GradientTransformation:
    """Last link of a chain: turns the update into one that lands every weight in [-c, c].

    Arjovsky et al. 2017 clip after each critic update; as a link, the clipped update is
    clip(p + u) - p, so `optax.apply_updates` yields the clipped weights (to rounding).
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_weights needs params: call tx.update(grads, state, params)")
        updates = jax.tree.map(lambda u, p: jnp.clip(p + u, -c, c) - p, updates, params)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def learning_rate(lr: float, schedule: str, total_updates: int):
    """A constant, or a decay to 0 over the run (Gulrajani et al. 2017 decay WGAN-GP linearly).

    Decaying removes the optimizer's jitter at the end of a run: samples settle onto narrow
    modes instead of dancing around them.
    """
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return optax.linear_schedule(lr, 0.0, max(int(total_updates), 1))
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(int(total_updates), 1))
    raise ValueError(f"unknown schedule {schedule!r}")


def optimizer(cfg, schedule: str = "constant",
              total_updates: int = 1) -> optax.GradientTransformation:
    """Adam or RMSprop (PyTorch's definition: eps added outside the root, alpha=decay)."""
    lr = learning_rate(float(cfg.lr), schedule, total_updates)
    if cfg.name == "adam":
        return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.name == "rmsprop":
        return optax.rmsprop(lr, decay=cfg.decay, eps=cfg.eps, eps_in_sqrt=False)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def decay_steps(config) -> int:
    """Generator updates over which a schedule decays: the run, or optim.decay_steps if longer.

    A recipe can fix the horizon so that a shorter run (a smaller train.steps) stops part way
    down the same schedule, exactly where the full run was at that step, instead of decaying
    twice as fast; resuming it with the full train.steps then finishes the full run. A longer
    run stretches the decay over all its steps.
    """
    return max(int(config.optim.decay_steps), int(config.train.steps))


def make(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(generator_tx, critic_tx) for a recipe; the critic makes n_critic updates per step."""
    steps, schedule = decay_steps(config), config.optim.schedule
    g_tx = optimizer(config.optim.g, schedule, steps)
    d_tx = optimizer(config.optim.d, schedule, steps * int(config.train.n_critic))
    if LOSSES[config.loss.name].clip:
        d_tx = optax.chain(d_tx, clip_weights(float(config.loss.clip)))
    return g_tx, d_tx
