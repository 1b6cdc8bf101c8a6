"""TorchConvTranspose equals torch's ConvTranspose2d math, through either implementation.

Reference 1: flax.linen.ConvTranspose with the same params and explicit padding.
Reference 2: a direct numpy scatter loop written from torch's definition, with torch-layout
weights, so we do not only check flax against itself (and the torch mapping is checked too).
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.layers import (
    TorchConvTranspose,
    default_upsample_impl,
    kernel_from_torch,
    kernel_to_torch,
    torch_to_flax_padding,
)

IMPLS = ("subpixel", "transpose")
# (k, s, p, op): HW6 generator, classic DCGAN, odd kernel with output_padding; then stride 3.
CONFIGS = [(5, 2, 2, 1), (4, 2, 1, 0), (3, 2, 1, 1)]
SIZES = [((4, 4), 3, 5), ((7, 7), 5, 3), ((7, 5), 1, 4)]  # ((H, W), C_in, C_out)


def _ref_flax(k, s, p, op, cout, use_bias=True):
    return nn.ConvTranspose(
        cout, (k, k), strides=(s, s), padding=torch_to_flax_padding(k, s, p, op),
        use_bias=use_bias, transpose_kernel=False,
    )


def _init(k, s, p, op, hw, cin, cout, use_bias, seed=0):
    """Inputs and params from numpy: a new shape through jax.random costs ~1 s of compile."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
    mod = TorchConvTranspose(cout, k, s, p, op, use_bias=use_bias)
    shapes = jax.eval_shape(mod.init, jax.random.key(0), x)["params"]
    # Non-zero bias so that the bias path is actually tested.
    params = {n: jnp.asarray(rng.standard_normal(a.shape), a.dtype) for n, a in shapes.items()}
    return x, mod, {"params": params}


@pytest.mark.parametrize("k,s,p,op", CONFIGS + [(5, 3, 2, 2)])
@pytest.mark.parametrize("use_bias", [False, True])
def test_matches_flax_conv_transpose(k, s, p, op, use_bias):
    for (hw, cin, cout), impl in itertools.product(SIZES, IMPLS):
        x, mod, params = _init(k, s, p, op, hw, cin, cout, use_bias)
        ref = _ref_flax(k, s, p, op, cout, use_bias)
        # Same param tree (names, shapes) as flax: the stored layout is flax's.
        ref_shapes = jax.eval_shape(ref.init, jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, ref_shapes) == jax.tree.map(jnp.shape, params)
        y = mod.clone(implementation=impl).apply(params, x)
        want = ref.apply(params, x)
        h_out = (hw[0] - 1) * s - 2 * p + k + op
        w_out = (hw[1] - 1) * s - 2 * p + k + op
        assert y.shape == want.shape == (2, h_out, w_out, cout)
        np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5, err_msg=f"{impl} {hw}")


@pytest.mark.parametrize("k,s,p,op", CONFIGS)
def test_kernel_gradients_match_flax(k, s, p, op):
    x, mod, params = _init(k, s, p, op, (7, 5), 3, 4, use_bias=True)
    ref = _ref_flax(k, s, p, op, 4)
    cot = jnp.asarray(np.random.default_rng(7).standard_normal((2, 14, 10, 4)), jnp.float32)

    def loss(apply):
        return lambda prm, xx: jnp.sum(apply(prm, xx) * cot)

    want = jax.grad(loss(ref.apply), argnums=(0, 1))(params, x)
    for impl in IMPLS:
        apply = mod.clone(implementation=impl).apply
        got = jax.grad(loss(apply), argnums=(0, 1))(params, x)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=impl)


def _numpy_torch_conv_transpose(x, w, s, p, op):
    """torch ConvTranspose2d by its definition: scatter x[i] * w[:, :, a] to output i*s - p + a.

    x: f64[N, H, W, C_in] (NHWC); w: f64[C_in, C_out, k, k] (torch layout).
    """
    n, h, wd, _ = x.shape
    _, cout, k, _ = w.shape
    full = np.zeros((n, (h - 1) * s + k + op, (wd - 1) * s + k + op, cout))
    for i, j, a, b in itertools.product(range(h), range(wd), range(k), range(k)):
        full[:, i * s + a, j * s + b, :] += x[:, i, j, :] @ w[:, :, a, b]
    h_out, w_out = (h - 1) * s - 2 * p + k + op, (wd - 1) * s - 2 * p + k + op
    return full[:, p : p + h_out, p : p + w_out, :]


@pytest.mark.parametrize("k,s,p,op", CONFIGS + [(5, 3, 2, 2), (3, 2, 0, 0)])
def test_matches_direct_numpy_with_torch_weights(k, s, p, op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 3))
    w_torch = rng.standard_normal((3, 2, k, k))  # [C_in, C_out, k, k]
    want = _numpy_torch_conv_transpose(x, w_torch, s, p, op)
    kernel = kernel_from_torch(w_torch)
    assert kernel.shape == (k, k, 3, 2)
    np.testing.assert_array_equal(kernel_to_torch(kernel), w_torch)
    params = {"params": {"kernel": jnp.asarray(kernel, jnp.float32)}}
    for impl in IMPLS:
        mod = TorchConvTranspose(2, k, s, p, op, use_bias=False, implementation=impl)
        y = mod.apply(params, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5, err_msg=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_compute_with_f32_params(impl):
    x, mod, params = _init(5, 2, 2, 1, (8, 8), 16, 8, use_bias=True)
    want = mod.clone(implementation=impl).apply(params, x)
    bf = mod.clone(implementation=impl, dtype=jnp.bfloat16)
    bf_params = jax.eval_shape(bf.init, jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf_params))
    y = bf.apply(params, x)
    assert y.dtype == jnp.bfloat16
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=2e-2 * scale, rtol=0)
    g = jax.grad(lambda prm: jnp.sum(bf.apply(prm, x).astype(jnp.float32)))(params)
    assert g["params"]["kernel"].dtype == jnp.float32


def test_auto_batch_dims_and_defaults():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 4, 4, 3)), jnp.float32)
    mod = TorchConvTranspose(6, 5, 2, 2, 1)  # implementation='auto', two batch dims below
    params = mod.init(jax.random.key(1), x)
    y = mod.apply(params, x)
    assert y.shape == (3, 2, 8, 8, 6)
    flat = mod.clone(implementation="transpose").apply(params, x.reshape(6, 4, 4, 3))
    np.testing.assert_allclose(y.reshape(6, 8, 8, 6), flat, atol=1e-5)
    std = float(jnp.std(params["params"]["kernel"]))
    assert 0.015 < std < 0.025  # DCGAN N(0, 0.02) init
    assert default_upsample_impl("cpu") in ("subpixel", "transpose")


def test_errors_name_the_fix():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="output_padding"):
        TorchConvTranspose(2, 5, 2, 2, output_padding=2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="implementation"):
        TorchConvTranspose(2, 4, implementation="fft").init(jax.random.key(0), x)
