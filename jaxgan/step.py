"""The compiled training step: n_critic critic updates (lax.scan) then one generator update.

Pure: `(state, data) -> (state, metrics)`. Real batches are gathered from the device-resident
dataset inside the step; noise comes from fold_in(key, step), so the step is a function of the
state alone and a resumed run repeats an uninterrupted one bit for bit.

Data parallel: with a `batch_sharding` (NamedSharding over the 'data' mesh axis) the real and
fake batches are split over devices and XLA inserts the gradient all-reduce; batch-norm moments
are computed over the global batch, so N devices compute what one device computes.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxgan import augment as augment_lib
from jaxgan import data as data_lib
from jaxgan import layers
from jaxgan import losses as losses_lib
from jaxgan import models as models_lib
from jaxgan import state as state_lib
from jaxgan.state import GANState


def apply_fn(model) -> Callable:
    """(params, stats, x, train, labels=None, rng=None, **kwargs) -> (out, new_stats); stats
    thread through batch norm; labels int32[B] condition a class-conditional model (None
    otherwise); rng feeds the model's 'noise' stream (noise layers), for models that have one;
    kwargs go to the model (with_code=True: a critic's InfoGAN head too)."""

    def apply(params, stats, x, train: bool, labels=None, rng=None, **kwargs):
        v = state_lib.variables(params, stats)
        rngs = {} if rng is None else {"noise": rng}
        if not train:
            return model.apply(v, x, train=False, labels=labels, rngs=rngs, **kwargs), stats
        out, mutated = model.apply(v, x, train=True, labels=labels, mutable=["batch_stats"],
                                   rngs=rngs, **kwargs)
        return out, mutated.get("batch_stats", stats)

    return apply


def make_train_step(generator, critic, g_tx, d_tx, config,
                    batch_sharding=None) -> Callable[[GANState, dict], tuple[GANState, dict]]:
    """Builds the (uncompiled) step for a recipe; `jax.jit` it once."""
    if config.loss.name == "ssgan":  # three critic batches, feature matching: its own step
        from jaxgan import ssgan
        return ssgan.make_train_step(generator, critic, g_tx, d_tx, config)
    loss = losses_lib.LOSSES[config.loss.name]
    n_critic = int(config.train.n_critic)
    batch = int(config.train.batch_size)
    z_dim = int(config.model.z_dim)
    gp_weight = float(config.loss.gp_weight)
    r1_weight = float(config.loss.r1_weight)
    policy = augment_lib.parse(config.train.augment)

    def augment(key, x):
        """DiffAugment before every critic call (identity without a policy)."""
        return augment_lib.diff_augment(key, x, policy) if policy else x

    def aug_key(step_key, i):  # a stream apart from the noise and data keys: 2**20 is not an i
        return jax.random.fold_in(jax.random.fold_in(step_key, 2**20), i)
    form = config.loss.generator
    ema_decay = float(config.train.ema_decay)
    num_classes = int(config.model.get("num_classes", 0))
    g_apply, d_apply = apply_fn(generator), apply_fn(critic)
    pack = int(getattr(critic, "pack", 1))  # PacGAN: the critic scores batch / pack packs
    old_every = int(config.train.get("old_critic_every", 0))
    replay_size = int(config.train.get("replay_size", 0))
    n_replayed = int(float(config.train.get("replay_fraction", 0.5)) * batch)
    info_weight = float(config.loss.get("info_weight", 0.0))
    info_codes = models_lib.info_codes(config)  # the critic has a Q head iff > 0

    def critic_on_fakes(d_params, d_stats, fake, z, labels):
        """(critic outputs, stats, InfoGAN term and metrics: {} without loss.info_weight)."""
        if not info_codes:
            out, stats = d_apply(d_params, d_stats, fake, True, labels)
            return out, stats, 0.0, {}
        (out, q), stats = d_apply(d_params, d_stats, fake, True, labels, with_code=True)
        codes = models_lib.category_of(z, info_codes)
        info = losses_lib.info_loss(q, codes)
        accuracy = jnp.mean(jnp.argmax(q, axis=-1) == codes)
        return out, stats, info_weight * info, {"info": info, "info_accuracy": accuracy}

    def g_rng(key):
        """The generator's 'noise' stream (model.g_noise); None keeps noise-free recipes as
        they were."""
        return key if getattr(generator, "noise", False) else None

    loop = loop_kind(config.train.critic_loop)
    critic_loop = scan_or_unroll(loop)

    # The new state goes back on every device, as the old one was: left to sharding
    # propagation, some versions of jax (0.6) split small leaves (a bias of zero gradient)
    # over 'data', and the next call then recompiles, or fails if compiled ahead of time.
    replicated = (None if batch_sharding is None else
                  jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec()))

    def laid_out(tree, sharding):
        """tree constrained to `sharding` (as it is without a mesh)."""
        return tree if sharding is None else jax.lax.with_sharding_constraint(tree, sharding)

    def shard(x):
        return laid_out(x, batch_sharding)

    def critic_update(state: GANState, data: dict, step_key, data_key, i):
        k_z, k_eps, k_sample = jax.random.split(jax.random.fold_in(step_key, i), 3)
        real, position, labels = data_lib.next_batch(state.data, data, data_key, k_sample, batch,
                                                     i)
        if num_classes and labels is None:
            raise ValueError("a conditional step needs device-resident labels: "
                             "data.device_data(dataset, labels=True)")
        real = shard(real)
        z = shard(jax.random.normal(k_z, (batch, z_dim)))
        # a conditional G draws fakes of the real batch's classes: the critic compares like with like
        fake, g_stats = g_apply(state.g_params, state.g_stats, z, True, labels,
                                rng=g_rng(jax.random.fold_in(k_z, 1)))
        fake = jax.lax.stop_gradient(fake)
        history = state.history
        if replay_size:
            fake, fakes = replay_mix(history["fakes"], fake, jax.random.fold_in(k_z, 3),
                                     state.step * n_critic + i, n_replayed)
            history = {**history, "fakes": fakes}
        if policy:
            k_real, k_fake = jax.random.split(aug_key(step_key, i))
            real, fake = augment(k_real, real), augment(k_fake, fake)

        def loss_fn(d_params):
            real_out, stats = d_apply(d_params, state.d_stats, real, True, labels)
            fake_out, stats, info, info_metrics = critic_on_fakes(d_params, stats, fake, z,
                                                                  labels)
            value = loss.critic(real_out, fake_out) + info  # Q learns with the critic
            metrics = {"d/real": jnp.mean(real_out), "d/fake": jnp.mean(fake_out),
                       "d/wasserstein": jnp.mean(real_out) - jnp.mean(fake_out),
                       **{f"d/{k}": v for k, v in info_metrics.items()}}
            if loss.penalty:  # one eps per pack: a packed critic's input is the whole pack
                eps = jnp.repeat(jax.random.uniform(k_eps, (batch // pack,)), pack)
                xhat = losses_lib.interpolate(real, fake, eps)
                gp, norms = losses_lib.gradient_penalty(
                    lambda x: d_apply(d_params, stats, x, True, labels)[0], xhat, pack)
                value = value + gp_weight * gp
                metrics.update({"d/gp": gp, "d/gp_grad_norm": jnp.mean(norms)})
            if r1_weight > 0:
                r1 = losses_lib.r1_penalty(
                    lambda x: d_apply(d_params, stats, x, True, labels)[0], real)
                value = value + 0.5 * r1_weight * r1
                metrics["d/r1"] = r1
            metrics["d/loss"] = value
            return value, (stats, metrics)

        (_, (d_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
        updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
        metrics["d/grad_norm"] = optax.tree.norm(grads)
        state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                              d_stats=d_stats, d_opt=d_opt, g_stats=g_stats, data=position,
                              history=history)
        return state, metrics

    def generator_update(state: GANState, step_key):
        k_g = jax.random.fold_in(step_key, n_critic)
        z = shard(jax.random.normal(k_g, (batch, z_dim)))
        labels = (jax.random.randint(jax.random.fold_in(k_g, 1), (batch,), 0, num_classes)
                  if num_classes else None)  # uniform classes for G's own update

        d_params, d_stats, use_old = state.d_params, state.d_stats, False
        if old_every:  # every K-th update against the snapshot taken K steps ago
            use_old = jnp.logical_and(state.step % old_every == 0, state.step > 0)
            old = state.history["critic"]
            d_params = select(use_old, old["params"], d_params)
            d_stats = select(use_old, old["stats"], d_stats)

        def loss_fn(g_params):
            fake, g_stats = g_apply(g_params, state.g_stats, z, True, labels,
                                    rng=g_rng(jax.random.fold_in(k_g, 2)))
            fake = augment(aug_key(step_key, n_critic), fake)
            out, new_d_stats, info, info_metrics = critic_on_fakes(d_params, d_stats, fake, z,
                                                                   labels)
            return loss.generator(out, form) + info, (g_stats, new_d_stats, info_metrics)

        (value, (g_stats, d_stats, info_metrics)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.g_params)
        updates, g_opt = g_tx.update(grads, state.g_opt, state.g_params)
        history = state.history
        if old_every:  # the live critic's statistics stay its own; refresh the snapshot
            d_stats = select(use_old, state.d_stats, d_stats)
            refresh = state.step % old_every == 0
            history = {**history, "critic": select(
                refresh, {"params": state.d_params, "stats": d_stats}, history["critic"])}
        state = state.replace(g_params=optax.apply_updates(state.g_params, updates),
                              g_stats=g_stats, d_stats=d_stats, g_opt=g_opt, history=history)
        metrics = {"g/loss": value, "g/grad_norm": optax.tree.norm(grads),
                   **{f"g/{k}": v for k, v in info_metrics.items()}}
        if old_every:
            metrics["g/old_critic"] = jnp.float32(use_old)
        return state, metrics

    # Unrolled, the n_critic copies of the critic update are one jitted call each: traced and
    # lowered once, then inlined by XLA (same program, half the step's trace + lower time).
    traced_critic_update = jax.jit(critic_update) if loop == "unrolled" else critic_update

    def train_step(state: GANState, data: dict) -> tuple[GANState, dict[str, Any]]:
        step_key = jax.random.fold_in(jax.random.fold_in(state.key, state_lib.STREAM_STEP),
                                      state.step)
        data_key = jax.random.fold_in(state.key, state_lib.STREAM_DATA)

        def body(s, i):
            return traced_critic_update(s, data, step_key, data_key, i)

        state, d_metrics = critic_loop(body, state, n_critic)
        state, g_metrics = generator_update(state, step_key)
        state = state_lib.update_averages(state, ema_decay)
        metrics = {k: jnp.mean(v) for k, v in d_metrics.items()}
        metrics.update(g_metrics)
        return laid_out(state.replace(step=state.step + 1), replicated), metrics

    return train_step


def select(pred, on_true, on_false):
    """`on_true` where the traced bool `pred` holds, else `on_false`, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def replay_mix(buffer, fake, key, update: jax.Array, n_old: int):
    """Experience replay of fakes (Shrivastava et al. 2017): (fakes for the critic, buffer).

    buffer: f32[N, ...] of earlier fakes; `update` counts the critic updates before this one.
    Until the buffer has been filled (n_old new fakes are written per update, in order) the
    critic sees fresh fakes only; then n_old of its fakes are drawn from the buffer and n_old of
    the fresh ones replace random entries, so the buffer keeps fakes of many ages. A critic that
    still remembers the modes G used to cover stops G from cycling back to them.
    """
    n = buffer.shape[0]
    k_read, k_write = jax.random.split(key)
    written = update * n_old
    full = written >= n
    old = jnp.take(buffer, jax.random.randint(k_read, (n_old,), 0, n), axis=0)
    mixed = jnp.where(full, jnp.concatenate([old, fake[n_old:]], axis=0), fake)
    slots = jnp.where(full, jax.random.randint(k_write, (n_old,), 0, n),
                      (written + jnp.arange(n_old)) % n)
    return mixed, buffer.at[slots].set(fake[:n_old])


def loop_kind(kind: str, backend: str | None = None) -> str:
    """'auto' -> 'unrolled' on CPU, 'scan' elsewhere.

    XLA:CPU runs convolutions inside a while loop (what lax.scan lowers to) about 8x slower than
    the same convolutions in straight-line code (BUILD_NOTES.md, scripts/benchmark.py), so on
    CPU the n_critic loop is unrolled at trace time: still one compiled program per step, no
    host round-trip, just n_critic copies of the critic update in it.
    """
    if kind != "auto":
        return kind
    return "unrolled" if (backend or jax.default_backend()) == "cpu" else "scan"


def scan_or_unroll(kind: str) -> Callable:
    """A drop-in for `lax.scan(body, carry, jnp.arange(n))` that can unroll at trace time."""

    def scan(body, carry, n):
        return jax.lax.scan(body, carry, jnp.arange(n))

    def unrolled(body, carry, n):
        outs = []
        for i in range(n):
            carry, out = body(carry, jnp.int32(i))
            outs.append(out)
        return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    if kind not in ("scan", "unrolled"):
        raise ValueError(f"unknown loop kind {kind!r}; use auto, scan or unrolled")
    return scan if kind == "scan" else unrolled


def repeat_step(train_step: Callable, num_steps: int) -> Callable:
    """`num_steps` steps in one compiled call (scan); metrics are those of the last step.

    Small models (2D mixtures, MLPs) are bound by per-call dispatch, not arithmetic.
    """
    if num_steps == 1:
        return train_step

    def multi(state, data):
        state, metrics = jax.lax.scan(lambda s, _: train_step(s, data), state, None,
                                      length=num_steps)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    return multi


def jit_sampler(generator) -> Callable:
    """`make_sampler` compiled as every caller compiles it (training grids and evaluation,
    `jaxgan.sample`), so the same z gives the same samples everywhere."""
    return jax.jit(make_sampler(generator),
                   compiler_options=layers.sampler_compiler_options(jax.default_backend()))


def make_sampler(generator) -> Callable:
    """(g_params, g_stats, z, labels=None) -> samples in eval mode (running batch-norm
    statistics); labels int32[B] pick the classes of a conditional generator."""
    g_apply = apply_fn(generator)
    if not getattr(generator, "noise", False):
        return lambda params, stats, z, labels=None: g_apply(params, stats, z, False, labels)[0]
    # model.g_noise: a fixed stream key; the generator keys each example's noise by a hash of its
    # own z (models.z_seeds), so the same z gives the same image in any batch (grids, sample,
    # evaluate) and different z get independent noise.
    key = jax.random.PRNGKey(SAMPLE_NOISE_SEED)
    return lambda params, stats, z, labels=None: g_apply(params, stats, z, False, labels,
                                                         rng=key)[0]


SAMPLE_NOISE_SEED = 0  # make_sampler's noise stream for generators with model.g_noise
