"""Model shapes, the exact HW6 architecture and its parameter count."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import config as config_lib
from jaxgan import models


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def hw6_config():
    c = config_lib.base_config()
    c.data.name, c.data.image_size, c.data.channels = "folder", 64, 3
    c.model.g_width = c.model.d_width = 64
    c.model.g_kernel = 5
    return c


def test_hw6_models_match_the_pytorch_parameter_counts():
    g, d = models.build(hw6_config())
    gv = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((2, 100)), train=False))
    dv = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3)),
                                       train=False))
    # PyTorch HW6 Generator(100, 64): Linear 100*8192 (no bias) + BN1d(8192) 2*8192 +
    # ConvT 512*256*25 + BN 2*256 + ConvT 256*128*25 + BN 2*128 + ConvT 128*64*25 + BN 2*64 +
    # ConvT 64*3*25 (all ConvT bias-free).
    g_torch = 819200 + 16384 + 3276800 + 512 + 819200 + 256 + 204800 + 128 + 4800
    # Discriminator(3, 64): Conv 3->64 (4x4, bias) + 64->128 + BN + 128->256 + BN + 256->512 + BN
    # + Conv 512->1 (4x4, bias).
    d_torch = (3072 + 64) + (131072 + 128 + 256) + (524288 + 256 + 512) + \
        (2097152 + 512 + 1024) + (8192 + 1)
    assert _count(gv["params"]) == g_torch == 5_142_080
    assert _count(dv["params"]) == d_torch == 2_766_529
    # layer by layer: 512 -> 256 -> 128 -> 64 -> 3 with 5x5 kernels
    kernels = [gv["params"][f"TorchConvTranspose_{i}"]["kernel"].shape for i in range(4)]
    assert kernels == [(5, 5, 512, 256), (5, 5, 256, 128), (5, 5, 128, 64), (5, 5, 64, 3)]


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (16, 1)])
def test_dcgan_shapes(size, channels):
    c = config_lib.base_config()
    c.data.image_size, c.data.channels = size, channels
    c.model.g_width = c.model.d_width = 8
    g, d = models.build(c)
    z = jnp.zeros((3, 100))
    x, gv = jax.eval_shape(lambda: g.init_with_output(jax.random.PRNGKey(0), z, train=False))
    assert x.shape == (3, size, size, channels)
    y, _ = jax.eval_shape(lambda: d.init_with_output(jax.random.PRNGKey(0),
                                                     jnp.zeros((3, size, size, channels)),
                                                     train=False))
    assert y.shape == (3,)


@pytest.mark.parametrize("norm", ["batch", "instance", "layer", "none"])
def test_norms_run_and_only_batch_norm_keeps_statistics(norm):
    c = config_lib.base_config()
    c.data.image_size = 16
    c.model.g_width = c.model.d_width = 4
    c.model.g_norm = c.model.d_norm = norm
    g, d = models.build(c)
    gv = g.init(jax.random.PRNGKey(0), jnp.ones((4, 100)), train=False)
    assert ("batch_stats" in gv) == (norm == "batch")
    out, _ = g.apply(gv, jax.random.normal(jax.random.PRNGKey(1), (4, 100)), train=True,
                     mutable=["batch_stats"])
    assert out.shape == (4, 16, 16, 1)
    assert float(jnp.max(jnp.abs(out))) <= 1.0  # tanh range


def test_mlp_for_points_is_linear_and_for_images_tanh():
    c = config_lib.base_config()
    c.data.name, c.model.arch, c.model.hidden, c.model.g_norm = "ring", "mlp", (8,), "none"
    g, _ = models.build(c)
    z = 50 * jax.random.normal(jax.random.PRNGKey(1), (16, 100))
    v = g.init(jax.random.PRNGKey(0), z, train=False)
    out = g.apply(v, z, train=False)
    assert out.shape == (16, 2)
    assert float(jnp.max(jnp.abs(out))) > 1.0  # not squashed
    c.data.name, c.data.image_size = "digits", 8
    g, _ = models.build(c)
    out = g.apply(g.init(jax.random.PRNGKey(0), z, train=False), z, train=False)
    assert out.shape == (16, 8, 8, 1) and float(jnp.max(jnp.abs(out))) <= 1.0


def test_mlp_critic_widths_default_to_the_generators_and_can_differ():
    c = config_lib.base_config()
    c.data.name, c.model.arch, c.model.hidden, c.model.g_norm = "ring", "mlp", (8, 8), "none"
    assert models.build(c)[1].hidden == (8, 8)
    c.model.d_hidden = (12, 6, 4)
    config_lib.validate(c)
    g, d = models.build(c)
    assert g.hidden == (8, 8) and d.hidden == (12, 6, 4)
    c.data.name, c.data.image_size, c.model.num_classes, c.loss.name = "mnist", 28, 10, "ssgan"
    assert models.build(c)[1].hidden == (12, 6, 4)  # the semi-supervised critic too
    c.model.d_hidden = (12, 0)
    with pytest.raises(config_lib.ConfigError, match="model.d_hidden"):
        config_lib.validate(c)


def test_image_sizes_the_dcgan_cannot_build_are_rejected():
    with pytest.raises(config_lib.ConfigError, match="image_size=144"):
        config_lib.image_base(48 * 3)  # 144 = 9 * 16: no 4 or 7 base
    assert config_lib.image_base(28) == 7 and config_lib.image_base(64) == 4


def test_dcgan_convs_take_the_backends_gradient_formulation(monkeypatch):
    """On CPU the critic's strided convs and the generator's upsampling go through layers'
    custom VJPs (tests/test_layers.py proves them equal to lax's / flax's, to second order);
    on GPU every conv goes through the VJP table; elsewhere they are plain lax convs. Same
    parameter trees either way."""
    from jaxgan import layers

    c = config_lib.base_config()
    c.data.image_size, c.model.g_width, c.model.d_width, c.model.d_norm = 16, 4, 4, "layer"
    g, d = models.build(c)
    x, z = jnp.zeros((2, 16, 16, 1)), jnp.zeros((2, 100))
    dv = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, train=False))
    gv = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False))

    def custom_vjps():
        jd = str(jax.make_jaxpr(lambda v: d.apply(v, x, train=False))(dv))
        jg = str(jax.make_jaxpr(lambda v: g.apply(v, z, train=False))(gv))
        return jd.count("custom_vjp_call"), jg.count("custom_vjp_call")

    assert layers.default_conv_impl(jax.default_backend()) == "fast"  # tests run on CPU
    assert custom_vjps() == (2, 2)  # D: both 4x4 stride-2 convs; G: both 'phase' upsamplings
    monkeypatch.setattr(layers, "default_conv_impl", lambda backend: "xla")
    assert custom_vjps() == (0, 0)  # 'phase' differentiated by JAX itself
    monkeypatch.setattr(layers, "default_upsample_impl", lambda backend: "subpixel")
    assert custom_vjps() == (0, 0)  # what TPUs run: plain lax convs
    monkeypatch.setattr(layers, "default_conv_impl", lambda backend: "table")
    assert custom_vjps() == (3, 2)  # what GPUs run: every conv through the table (D: 4x4 out)


def _conditional(arch, g_cond, d_cond):
    from conftest import tiny_image_config
    c = tiny_image_config(**{"model.arch": arch, "model.num_classes": 3, "model.g_cond": g_cond,
                             "model.d_cond": d_cond})
    g, d = models.build(c)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, int(c.model.z_dim)))
    y = jnp.arange(3, dtype=jnp.int32)
    gv = g.init(jax.random.PRNGKey(1), z, train=False, labels=y)
    x = g.apply(gv, z, train=False, labels=y)
    dv = d.init(jax.random.PRNGKey(2), x, train=False, labels=y)
    return g, gv, d, dv, z, x


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
def test_conditional_batch_norm_starts_as_plain_batch_norm_then_follows_the_class(arch):
    g, gv, _, _, z, _ = _conditional(arch, "cbn", "projection")
    same_z = jnp.repeat(z[:1], 3, axis=0)
    out = g.apply(gv, same_z, train=False, labels=jnp.arange(3))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # embeddings start at 0
    gv = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.5 * jnp.arange(v.size).reshape(v.shape) / v.size
        if "Embed" in jax.tree_util.keystr(p) else v, gv)
    out = g.apply(gv, same_z, train=False, labels=jnp.arange(3))
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3


@pytest.mark.parametrize("arch,d_cond", [("dcgan", "projection"), ("dcgan", "concat"),
                                         ("mlp", "projection"), ("mlp", "concat")])
def test_conditional_critic_scores_depend_on_the_label(arch, d_cond):
    _, _, d, dv, _, x = _conditional(arch, "embed", d_cond)
    same_x = jnp.repeat(x[:1], 3, axis=0)
    out = d.apply(dv, same_x, train=False, labels=jnp.arange(3))
    assert float(jnp.max(out) - jnp.min(out)) > 1e-6
    if d_cond == "projection":  # logit = unconditional part + <embed(y), phi(x)>
        flat = {jax.tree_util.keystr(p): v for p, v in
                jax.tree_util.tree_flatten_with_path(dv["params"])[0]}
        assert any("label_projection" in k for k in flat)
