"""Remedies that remember: the replay buffer of old fakes and the old-critic snapshot."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_ring_config
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import models, optim
from jaxgan import state as state_lib
from jaxgan import step as step_lib


def test_replay_buffer_fills_in_order_then_mixes_old_fakes_in():
    buffer = jnp.zeros((4, 2))
    key = jax.random.PRNGKey(0)
    fakes = [jnp.full((4, 2), float(u + 1)) for u in range(3)]
    mixed, buffer = step_lib.replay_mix(buffer, fakes[0], key, jnp.int32(0), 2)
    np.testing.assert_array_equal(mixed, fakes[0])          # not filled yet: fresh fakes only
    np.testing.assert_array_equal(buffer[:, 0], [1, 1, 0, 0])
    mixed, buffer = step_lib.replay_mix(buffer, fakes[1], key, jnp.int32(1), 2)
    np.testing.assert_array_equal(mixed, fakes[1])
    np.testing.assert_array_equal(buffer[:, 0], [1, 1, 2, 2])
    mixed, new = step_lib.replay_mix(buffer, fakes[2], key, jnp.int32(2), 2)
    assert set(np.asarray(mixed[:2, 0]).tolist()) <= {1.0, 2.0}  # two old fakes
    np.testing.assert_array_equal(mixed[2:], fakes[2][2:])       # and the rest fresh
    assert int(np.sum(np.asarray(new[:, 0]) == 3.0)) in (1, 2)   # fresh ones replaced entries
    assert new.shape == buffer.shape


def _setup(config):
    ds = data_lib.load(config)
    g, d = models.build(config)
    g_tx, d_tx = optim.make(config)
    st = state_lib.create(int(config.seed), g, d, g_tx, d_tx, config.model.z_dim,
                          models.data_shape(config), ds.num_examples,
                          old_critic=config.train.old_critic_every > 0,
                          replay_size=config.train.replay_size)
    return st, jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, config)), \
        data_lib.device_data(ds)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_every_kth_generator_update_uses_the_snapshot_from_k_steps_before():
    st, step, data = _setup(tiny_ring_config(**{"train.old_critic_every": 2}))
    used, after = [], []
    for _ in range(3):
        st, metrics = step(st, data)
        used.append(float(metrics["g/old_critic"]))
        after.append(jax.tree.map(np.asarray, st.d_params))
    assert used == [0.0, 0.0, 1.0]  # steps 0, 1, 2: only step 2 (and 4, 6, ...) goes back
    # the snapshot is refreshed at steps 0, 2, 4: after step 2 it is the critic of step 2
    for a, b in zip(_leaves(st.history["critic"]["params"]), _leaves(after[2])):
        np.testing.assert_array_equal(a, b)


def test_generator_update_against_the_snapshot_differs_from_one_against_the_live_critic():
    """Same seed, same data: up to step 2 the runs agree; step 2's G update differs."""
    runs = {}
    for every in (2, 1000):  # 1000: a snapshot that is never used within 3 steps
        st, step, data = _setup(tiny_ring_config(**{"train.old_critic_every": every}))
        gs = []
        for _ in range(3):
            st, _ = step(st, data)
            gs.append(_leaves(st.g_params))
        runs[every] = gs
    for a, b in zip(runs[2][1], runs[1000][1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(runs[2][2], runs[1000][2]))


def test_replay_run_trains_and_resumes_with_its_buffer():
    config = tiny_ring_config(**{"train.replay_size": 32, "train.batch_size": 16})
    st, step, data = _setup(config)
    for _ in range(4):  # 32 / 8 = 4 updates fill it
        st, metrics = step(st, data)
    assert np.isfinite(float(metrics["d/loss"]))
    assert np.count_nonzero(np.asarray(st.history["fakes"]).any(axis=1)) == 32


@pytest.mark.parametrize("overrides, message", [
    ({"train.replay_size": 8}, "smaller than one batch"),
    ({"train.replay_size": 64, "train.replay_fraction": 1.0}, "fraction in"),
    ({"train.old_critic_every": -1}, "must be >= 0"),
])
def test_bad_history_settings_are_rejected(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(tiny_ring_config(**overrides))
