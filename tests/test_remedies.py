"""Mode-collapse remedies: spectral norm, minibatch stddev, PacGAN packing, generator noise,
categorical latent code and InfoGAN's Q head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import tiny_image_config, tiny_ring_config
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import losses, models, optim
from jaxgan import state as state_lib
from jaxgan import step as step_lib


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _init(module, x):
    """Variables for eval mode, initialised in one compiled call (eager init is slow on CPU)."""
    return jax.jit(lambda k, x: module.init(k, x, train=False))(jax.random.PRNGKey(1), x)


def _apply(module):
    return jax.jit(lambda v, x: module.apply(v, x, train=False))


def test_spectral_norm_divides_every_kernel_by_its_largest_singular_value():
    """A DCGAN critic (conv kernels reshaped to matrices; the final conv too), with packing and
    minibatch stddev on as well: the remedies compose."""
    critic = models.DCGANDiscriminator(image_size=8, width=4, norm="layer", spectral_norm=True,
                                       mbstd=2, pack=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    v = _init(critic, x)

    @jax.jit
    def power_iterations(stats):  # 100 training calls: one power-iteration step each
        def body(_, s):
            return critic.apply({"params": v["params"], "batch_stats": s}, x, train=True,
                                mutable=["batch_stats"])[1]["batch_stats"]
        return jax.lax.fori_loop(0, 100, body, stats)

    stats = power_iterations(v["batch_stats"])
    kernels = {k: w for k, w in _flat(v["params"]).items() if k.endswith("['kernel']")}
    sigmas = {k: s for k, s in _flat(stats).items() if k.endswith("/kernel/sigma']")}
    assert len(kernels) == len(sigmas) == 2  # every layer, the final one included
    plain_params = {}
    for k, w in kernels.items():
        layer = k.split("'")[1]  # "['Conv_0']['kernel']" -> Conv_0
        (sigma,) = [s for name, s in sigmas.items() if f"{layer}/kernel" in name]
        w = np.asarray(w).reshape((-1, w.shape[-1]))
        np.testing.assert_allclose(np.linalg.svd(w / float(sigma), compute_uv=False)[0], 1.0,
                                   rtol=1e-3)
        plain_params[layer] = {"kernel": kernels[k] / sigma, "bias": v["params"][layer]["bias"]}
    # the forward pass uses exactly those kernels: a plain critic with W / sigma agrees
    plain = critic.clone(spectral_norm=False)
    params = {**v["params"], **plain_params}
    want = _apply(plain)({"params": params}, x)
    got = _apply(critic)({"params": v["params"], "batch_stats": stats}, x)
    assert got.shape == (2,)  # one logit per pack
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _mbstd_numpy(x, g):
    b = x.shape[0]
    groups = x.reshape((b // g, g, -1)).astype(np.float64)
    s = np.sqrt(groups.var(axis=1) + 1e-8).mean(axis=1)  # [B / g]
    return np.repeat(s, g)


def test_minibatch_stddev_hand_computed_with_group_fallback():
    x = np.array([[0., 1.], [2., 1.], [4., 4.], [1., 1.], [1., 3.], [1., 5.]], np.float32)
    assert models.mbstd_group(6, 4) == 3 and models.mbstd_group(7, 4) == 1
    assert models.mbstd_group(4, 8) == 4 and models.mbstd_group(8, 4) == 4
    out = np.asarray(models.minibatch_stddev(jnp.asarray(x), 4))  # 6 % 4 -> groups of 3
    # group 0 = rows 0-2: stds of (0, 2, 4) and (1, 1, 4) = sqrt(8/3) and sqrt(2); group 1 =
    # rows 3-5: (1, 1, 1) and (1, 3, 5) = 0 and sqrt(8/3)
    g0 = (np.sqrt(8 / 3 + 1e-8) + np.sqrt(2 + 1e-8)) / 2
    g1 = (np.sqrt(1e-8) + np.sqrt(8 / 3 + 1e-8)) / 2
    np.testing.assert_array_equal(out[:, :2], x)
    np.testing.assert_allclose(out[:, 2], [g0] * 3 + [g1] * 3, rtol=1e-6)
    # feature maps: one plane per example, averaged over positions and channels
    maps = np.random.default_rng(0).normal(size=(4, 3, 3, 2)).astype(np.float32)
    out = np.asarray(models.minibatch_stddev(jnp.asarray(maps), 2))
    assert out.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(out[..., :2], maps)
    want = _mbstd_numpy(maps, 2)
    np.testing.assert_allclose(out[..., 2], np.broadcast_to(want[:, None, None], (4, 3, 3)),
                               rtol=1e-5)


def test_packing_concatenates_consecutive_examples():
    x = jnp.arange(4 * 3, dtype=jnp.float32).reshape((4, 3))
    np.testing.assert_array_equal(models.pack_examples(x, 2),
                                  [np.r_[x[0], x[1]], np.r_[x[2], x[3]]])
    maps = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 3))
    packed = models.pack_examples(maps, 2)
    assert packed.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(packed[0, ..., :3], maps[0])
    np.testing.assert_array_equal(packed[0, ..., 3:], maps[1])
    np.testing.assert_array_equal(packed[1, ..., 3:], maps[3])
    with pytest.raises(ValueError, match="multiple of model.pack=2"):
        models.pack_examples(jnp.zeros((3, 2)), 2)


def test_a_packed_critic_is_the_plain_critic_on_concatenated_examples():
    critic, shape = models.MLPDiscriminator(hidden=(8,), norm="none"), (6, 4, 4, 1)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    packed = critic.clone(pack=2)
    v = _init(packed, x)
    out = _apply(packed)(v, x)
    assert out.shape == (3,)  # B / pack logits
    joint = jnp.concatenate([x[0::2].reshape((3, -1)), x[1::2].reshape((3, -1))], axis=1)
    np.testing.assert_allclose(out, _apply(critic)(v, joint), rtol=1e-5, atol=1e-6)


def test_gradient_penalty_per_pack_against_a_linear_critic():
    w = jnp.array([1.0, 2.0, 0.0, 2.0, 0.0, 0.0])  # |w| = 3 over a pack of two 3-vectors
    critic = lambda x: models.pack_examples(x, 2) @ w  # noqa: E731
    xhat = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    gp, norms = losses.gradient_penalty(critic, xhat, pack=2)
    np.testing.assert_allclose(norms, [3.0, 3.0], rtol=1e-6)
    assert float(gp) == pytest.approx((3.0 - 1.0) ** 2, rel=1e-6)


def test_generator_noise_is_a_function_of_z_and_vanishes_at_zero_scale():
    """DCGAN: per-position noise maps (the MLP's per-feature noise trains in the last test)."""
    config = tiny_image_config(**{"data.image_size": 8, "model.g_width": 4})
    plain, _ = models.build(config)
    config.model.g_noise = True
    g, _ = models.build(config)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, int(config.model.z_dim)))
    params, stats = state_lib.split_variables(_init(g, z))
    noise_params = {k: p for k, p in params.items() if k.startswith("noise_")}
    assert noise_params and all(not np.any(p["scale"]) for p in noise_params.values())  # at 0
    clean = {k: p for k, p in params.items() if not k.startswith("noise_")}
    sample, sample_plain = jax.jit(step_lib.make_sampler(g)), jax.jit(step_lib.make_sampler(plain))
    # scale 0: the noise-free generator's output
    np.testing.assert_allclose(sample(params, stats, z), sample_plain(clean, stats, z), atol=1e-6)

    loud = {k: ({"scale": jnp.full_like(p["scale"], 0.5)} if k in noise_params else p)
            for k, p in params.items()}
    a = sample(loud, stats, z)
    np.testing.assert_array_equal(a, sample(loud, stats, z))  # same z: same samples
    np.testing.assert_allclose(a[::-1], sample(loud, stats, z[::-1]), atol=1e-6)  # any batch
    residual = np.asarray(a - sample(params, stats, z))  # the noise's effect, per example
    assert np.abs(residual).max() > 1e-3
    assert np.abs(residual[0] - residual[1]).max() > 1e-3  # different z: different noise
    # training draws fresh noise from the step's key
    train = jax.jit(lambda key: step_lib.apply_fn(g)(loud, stats, z, True, rng=key)[0])
    assert float(jnp.max(jnp.abs(train(jax.random.PRNGKey(2)) - train(jax.random.PRNGKey(3))))) \
        > 1e-3


def test_categorical_code_is_uniform_one_hot_read_off_the_first_coordinate():
    z = jax.random.normal(jax.random.PRNGKey(0), (40_000, 3))
    code = np.asarray(models.categorical_code(z, 5))
    assert code.shape == (40_000, 5 + 2)
    np.testing.assert_array_equal(code[:, 5:], np.asarray(z[:, 1:]))  # the rest passes through
    one_hot = code[:, :5] / np.float32(np.sqrt(5))  # scaled so a category is a unit-size input
    np.testing.assert_allclose(np.unique(one_hot), [0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(one_hot.sum(1), 1.0, rtol=1e-6)
    counts = one_hot.sum(0)
    assert np.all(np.abs(counts / 40_000 - 0.2) < 0.01), counts  # uniform over the categories
    # the category is a monotone function of z_0: quantiles of the normal split it
    k = code[:, :5].argmax(1)
    edges = scipy.stats.norm.ppf([0.2, 0.4, 0.6, 0.8])
    z0 = np.asarray(z[:, 0])
    clear = np.min(np.abs(z0[:, None] - edges[None]), axis=1) > 1e-4  # float32 CDF rounding
    np.testing.assert_array_equal(k[clear], np.searchsorted(edges, z0[clear]))
    np.testing.assert_array_equal(models.categorical_code(z, 0), z)  # off


def test_a_categorical_generator_can_jump_between_categories():
    """The generator sees the one-hot code: z rows that differ only in their category map to
    outputs as far apart as its first layer makes them, and its input width is K + Z - 1."""
    c = tiny_ring_config(**{"model.z_dim": 3, "model.z_categories": 4, "model.hidden": (8,)})
    config_lib.validate(c)
    g, _ = models.build(c)
    variables = _init(g, jnp.zeros((2, 3)))
    assert variables["params"]["Dense_0"]["kernel"].shape[0] == 4 + 2
    z = jnp.array([[-1.0, 0.3, 0.3], [-0.9, 0.3, 0.3], [1.0, 0.3, 0.3]])  # categories 0, 0, 3
    out = np.asarray(_apply(g)(variables, z))
    np.testing.assert_array_equal(out[0], out[1])  # same category, same continuous part
    assert np.abs(out[0] - out[2]).max() > 1e-4


@pytest.mark.parametrize("overrides,match", [
    ({"model.z_categories": 1}, "model.z_categories=1"),
    ({"model.z_categories": 4, "model.z_dim": 1}, "z_dim >= 2"),
    ({"model.pack": 0}, "model.pack=0"),
    ({"model.d_mbstd": -1}, "model.d_mbstd=-1"),
    ({"model.pack": 3}, "not a multiple of model.pack=3"),
    ({"model.pack": 2, "model.num_classes": 3}, "no single label"),
    ({"loss.info_weight": 1.0}, "set model.z_categories"),
    ({"loss.info_weight": -1.0}, "loss.info_weight=-1.0"),
    ({"loss.info_weight": 1.0, "model.z_categories": 4, "model.pack": 2}, "unpacked"),
    ({"loss.info_weight": 1.0, "model.z_categories": 4, "train.replay_size": 64}, "fresh fakes"),
])
def test_bad_remedy_settings_are_rejected(overrides, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(tiny_image_config(**overrides))


def test_good_remedy_settings_validate():
    config_lib.validate(tiny_image_config(**{"model.d_spectral_norm": True, "model.d_norm": "batch",
                                             "model.d_mbstd": 4, "model.pack": 4,
                                             "model.g_noise": True, "loss.r1_weight": 0.0}))
    config_lib.validate(tiny_ring_config(**{"model.pack": 2, "loss.r1_weight": 1.0,
                                            "model.d_mbstd": 4, "loss.name": "wgan-gp"}))


def test_all_four_remedies_train_with_wgan_gp():
    c = tiny_ring_config(**{"loss.name": "wgan-gp", "model.hidden": (8,),
                            "model.d_spectral_norm": True, "model.d_mbstd": 4, "model.pack": 2,
                            "model.g_noise": True})
    config_lib.validate(c)
    ds = data_lib.load(c)
    g, d = models.build(c)
    g_tx, d_tx = optim.make(c)
    st = state_lib.create(int(c.seed), g, d, g_tx, d_tx, c.model.z_dim, models.data_shape(c),
                          ds.num_examples)
    assert any("SpectralNorm" in k for k in st.d_stats)
    sigmas = jax.tree.map(np.asarray, st.d_stats)
    step = jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, c))
    data = data_lib.device_data(ds)
    for _ in range(2):
        st, m = step(st, data)
    assert all(np.isfinite(float(v)) for v in m.values()), m
    assert float(m["d/gp"]) > 0
    # the power iterations ran in the step (their vectors are threaded like batch-norm stats)
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(sigmas),
                                                     jax.tree.leaves(st.d_stats))]
    assert any(changed)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_infogan_critic_has_a_code_head_that_the_logit_does_not_depend_on(arch):
    """With loss.info_weight the critic also returns Q's logits over the z_categories codes; its
    plain output is unchanged by the head, and a critic without a head refuses with_code."""
    c = tiny_image_config(**{"model.arch": arch, "model.hidden": (16,), "model.z_categories": 5,
                             "loss.info_weight": 1.0})
    config_lib.validate(c)
    _, critic = models.build(c)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
    v = _init(critic, x)
    assert {"info_hidden", "info_logits"} <= set(v["params"])
    logits, q = jax.jit(lambda v, x: critic.apply(v, x, train=False, with_code=True))(v, x)
    assert logits.shape == (4,) and q.shape == (4, 5)
    # two programs: equal up to XLA's rounding (1 ulp apart under jax 0.6 and 0.8)
    np.testing.assert_allclose(logits, _apply(critic)(v, x), rtol=1e-6, atol=1e-6)
    plain = critic.clone(info_codes=0)
    with pytest.raises(ValueError, match="info_codes"):
        plain.apply(_init(plain, x), x, train=False, with_code=True)


def test_category_of_matches_the_categorical_code():
    z = jax.random.normal(jax.random.PRNGKey(3), (1000, 4))
    np.testing.assert_array_equal(models.category_of(z, 7),
                                  np.argmax(models.categorical_code(z, 7)[:, :7], axis=1))


@pytest.mark.parametrize("info_weight", [0.0, 1.0])
def test_infogan_gives_each_category_its_own_mode(info_weight):
    """Ring of 8 modes, 8 categories beside 15 Gaussian z coordinates, 1000 GAN steps. Without
    the MI term G ignores the category (its samples land on one or two modes whatever it is);
    with loss.info_weight=1 each category lands on one mode of its own (seeds 0-3 all did)."""
    from jaxgan.data import mixture_centers
    c = tiny_ring_config(**{"model.z_dim": 16, "model.z_categories": 8, "model.hidden": (64, 64),
                            "loss.info_weight": info_weight, "train.batch_size": 64})
    c.optim.g = config_lib.adam(1e-3, 0.5, 0.9)
    c.optim.d = config_lib.adam(1e-3, 0.5, 0.9)
    ds = data_lib.load(c)
    g, d = models.build(c)
    g_tx, d_tx = optim.make(c)
    st = state_lib.create(0, g, d, g_tx, d_tx, 16, (2,), ds.num_examples)
    step = jax.jit(step_lib.repeat_step(step_lib.make_train_step(g, d, g_tx, d_tx, c), 100))
    data = data_lib.device_data(ds)
    for _ in range(10):
        st, metrics = step(st, data)
    if info_weight:
        assert float(metrics["g/info_accuracy"]) == 1.0  # Q reads every fake's code
    centers, _ = mixture_centers("ring")
    z = np.array(jax.random.normal(jax.random.PRNGKey(1), (8 * 200, 16)))
    codes = np.repeat(np.arange(8), 200)
    z[:, 0] = scipy.stats.norm.ppf((codes + np.linspace(0.05, 0.95, 200)[np.arange(1600) % 200]) / 8)
    assert np.array_equal(models.category_of(jnp.asarray(z), 8), codes)
    points = np.asarray(jax.jit(step_lib.make_sampler(g))(st.g_params, st.g_stats, jnp.asarray(z)))
    mode = np.argmin(((points[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    majority = [np.bincount(mode[codes == k], minlength=8).argmax() for k in range(8)]
    purity = min(np.mean(mode[codes == k] == majority[k]) for k in range(8))
    if info_weight:
        assert len(set(majority)) == 8 and purity > 0.95, (majority, purity)
    else:
        assert len(set(majority)) <= 4 and purity < 0.9, (majority, purity)
