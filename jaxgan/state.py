"""GANState: everything a run needs to continue exactly, as one pytree Orbax saves whole."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxgan import data as data_lib

# Fixed stream ids under the run's seed key (DESIGN.md habit 11: randomness = f(seed, step)).
STREAM_INIT, STREAM_STEP, STREAM_DATA, STREAM_GRID, STREAM_EVAL = 0, 1, 2, 3, 4


@struct.dataclass
class GANState:
    step: jax.Array          # i32[]: generator updates done
    g_params: Any
    g_stats: Any             # generator batch-norm statistics ({} without batch norm)
    d_params: Any
    d_stats: Any
    g_opt: Any
    d_opt: Any
    key: jax.Array           # u32[2] root key; per-step keys are fold_in(key, step)
    data: data_lib.DataPosition
    ema: Any = struct.field(default_factory=dict)  # {"params", "stats"} averaged over steps, or
                                                   # {} without train.ema_decay
    d_ema: Any = struct.field(default_factory=dict)  # the critic's, with train.d_ema_decay
                                                     # (ssgan: the classifier that is evaluated)
    history: Any = struct.field(default_factory=dict)  # remedies that remember: {"critic":
                                                       # {"params", "stats"}} a snapshot
                                                       # (train.old_critic_every), {"fakes":
                                                       # f32[N, ...]} (train.replay_size)


def sampling_generator(state: GANState) -> tuple[Any, Any]:
    """(params, stats) that samples, grids, evaluation and the saved generator use: the
    exponential moving average when the recipe keeps one, else the live generator."""
    if state.ema:
        return state.ema["params"], state.ema["stats"]
    return state.g_params, state.g_stats


def ema_update(ema: dict, params, stats, decay: float, step: jax.Array) -> dict:
    """One EMA step of the generator's weights and batch-norm statistics.

    The decay ramps up as min(decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage
    with num_updates) so a short run is not dominated by the random initial weights.
    """
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    mix = lambda e, x: d * e + (1.0 - d) * x  # noqa: E731
    return {"params": jax.tree.map(mix, ema["params"], params),
            "stats": jax.tree.map(mix, ema["stats"], stats)}


def update_averages(state: GANState, ema_decay: float, d_ema_decay: float = 0.0) -> GANState:
    """The step's last act: the generator's EMA (train.ema_decay) and the critic's
    (train.d_ema_decay), each only when the recipe keeps it."""
    if ema_decay > 0:
        state = state.replace(ema=ema_update(state.ema, state.g_params, state.g_stats,
                                             ema_decay, state.step))
    if d_ema_decay > 0:
        state = state.replace(d_ema=ema_update(state.d_ema, state.d_params, state.d_stats,
                                               d_ema_decay, state.step))
    return state


def split_variables(variables) -> tuple[Any, Any]:
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables.get("batch_stats", {})


def variables(params, stats) -> dict:
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


def create(seed: int, generator, critic, g_tx, d_tx, z_dim: int, example_shape,
           num_examples: int, ema: bool = False, d_ema: bool = False, old_critic: bool = False,
           replay_size: int = 0) -> GANState:
    """Initial state from the seed alone (same seed -> same parameters, same data order).

    Built inside one jit: run eagerly, initialization dispatches ~130 tiny XLA compiles (about
    30 s of a cold start on 2 CPU cores).
    """

    def init() -> GANState:
        key = jax.random.PRNGKey(seed)  # raw uint32[2]: Orbax saves it like any array
        k_g, k_d = jax.random.split(jax.random.fold_in(key, STREAM_INIT))
        z = jnp.zeros((2, z_dim), jnp.float32)
        x = jnp.zeros((max(2, getattr(critic, "pack", 1)), *example_shape), jnp.float32)  # 1+ pack
        y = jnp.zeros((2,), jnp.int32) if getattr(generator, "num_classes", 0) else None
        g_params, g_stats = split_variables(generator.init(k_g, z, train=False, labels=y))
        d_params, d_stats = split_variables(critic.init(k_d, x, train=False, labels=y))
        return GANState(
            step=jnp.int32(0), g_params=g_params, g_stats=g_stats, d_params=d_params,
            d_stats=d_stats, g_opt=g_tx.init(g_params), d_opt=d_tx.init(d_params), key=key,
            data=data_lib.init_position(jax.random.fold_in(key, STREAM_DATA), num_examples),
            ema={"params": g_params, "stats": g_stats} if ema else {},
            d_ema={"params": d_params, "stats": d_stats} if d_ema else {},
            history=initial_history(d_params, d_stats, old_critic, replay_size, example_shape))

    return jax.jit(init)()


def initial_history(d_params, d_stats, old_critic: bool, replay_size: int,
                    example_shape) -> dict:
    history = {}
    if old_critic:
        history["critic"] = {"params": jax.tree.map(jnp.copy, d_params),
                             "stats": jax.tree.map(jnp.copy, d_stats)}
    if replay_size:  # filled with the first fakes before it is read (step.replay_mix)
        history["fakes"] = jnp.zeros((replay_size, *example_shape), jnp.float32)
    return history


def grid_noise(key: jax.Array, n: int, z_dim: int) -> jax.Array:
    """The fixed noise of the progress grids: the same z at every step of a run."""
    return jax.random.normal(jax.random.fold_in(key, STREAM_GRID), (n, z_dim))
