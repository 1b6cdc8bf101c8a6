"""TorchConvTranspose equals torch's ConvTranspose2d math, through either implementation.

Reference 1: flax.linen.ConvTranspose with the same params and explicit padding.
Reference 2: a direct numpy scatter loop written from torch's definition, with torch-layout
weights, so we do not only check flax against itself (and the torch mapping is checked too).
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jaxgan.layers import (
    TorchConvTranspose,
    default_upsample_impl,
    kernel_from_torch,
    kernel_to_torch,
    torch_to_flax_padding,
)

IMPLS = ("phase", "subpixel", "transpose")
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


# (2, 3, 0, 1): output_padding > padding, so the strided conv that the fast path's gradients
# use has a negative (cropping) high pad.
@pytest.mark.parametrize("k,s,p,op", CONFIGS + [(5, 3, 2, 2), (2, 3, 0, 1)])
def test_kernel_gradients_match_flax(k, s, p, op):
    x, mod, params = _init(k, s, p, op, (7, 5), 3, 4, use_bias=True)
    ref = _ref_flax(k, s, p, op, 4)
    out = jax.eval_shape(ref.apply, params, x)
    cot = jnp.asarray(np.random.default_rng(7).standard_normal(out.shape), jnp.float32)

    def loss(apply):
        return lambda prm, xx: jnp.sum(apply(prm, xx) * cot)

    want = jax.grad(loss(ref.apply), argnums=(0, 1))(params, x)
    for impl in IMPLS:
        apply = mod.clone(implementation=impl).apply
        got = jax.grad(loss(apply), argnums=(0, 1))(params, x)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=impl)


@pytest.mark.parametrize("k,s,p,op", CONFIGS + [(2, 3, 0, 1)])
def test_phase_under_table_equals_flax_to_second_order(k, s, p, op):
    """'phase' in the GPU's 'table' form: the input gradient of a strided conv in XLA's own form
    (behind an optimization barrier, which XLA:GPU needs to see cuDNN's backward-input kernel),
    thin outputs as the sub-pixel conv; values and gradients of every order as flax's."""
    for cout, wide in ((4, False), (8, True)):  # layers.THIN_OUTPUT_CHANNELS = 4
        x, mod, params = _init(k, s, p, op, (5, 4), 3, cout, use_bias=True)
        table = mod.clone(implementation="phase", grad_impl="table")
        ref = _ref_flax(k, s, p, op, cout)
        jaxpr = str(jax.make_jaxpr(table.apply)(params, x))
        assert ("optimization_barrier" in jaxpr) == wide, cout
        assert "custom_vjp_call" in jaxpr
        cot = jnp.asarray(np.random.default_rng(8).standard_normal(
            jax.eval_shape(ref.apply, params, x).shape), jnp.float32)
        got = _first_and_second_order(table.apply, params, x, cot)
        want = _first_and_second_order(ref.apply, params, x, cot)
        for g, w, what in zip(got, want, ("output", "first order", "second order")):
            _close(g, w, f"{what}, C_out {cout}")


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


@pytest.mark.parametrize("k,s,p,op", CONFIGS + [(5, 3, 2, 2), (3, 2, 0, 0), (2, 3, 0, 1)])
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


@pytest.mark.parametrize("cout", [3, 8])  # 3: one GEMM (layers.THIN_OUTPUT_CHANNELS) on CPU
@pytest.mark.parametrize("impl,grad_impl", [(i, "auto") for i in IMPLS] + [("phase", "table")])
def test_bf16_compute_with_f32_params(impl, grad_impl, cout):
    x, mod, params = _init(5, 2, 2, 1, (8, 8), 16, cout, use_bias=True)
    want = mod.clone(implementation=impl).apply(params, x)
    bf = mod.clone(implementation=impl, grad_impl=grad_impl, dtype=jnp.bfloat16)
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
    assert default_upsample_impl("cpu") == "phase" and default_upsample_impl("gpu") == "subpixel"


def test_errors_name_the_fix():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="output_padding"):
        TorchConvTranspose(2, 5, 2, 2, output_padding=2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="implementation"):
        TorchConvTranspose(2, 4, implementation="fft").init(jax.random.key(0), x)


# ------------------------------------------------------------------ conv2d: fast gradients
from functools import partial  # noqa: E402

from jaxgan import layers  # noqa: E402

# (name, (H, W), C_in, C_out, k, stride, padding): each row exercises another part of
# layers._dw_gemm (space-to-depth taps, dropped taps, cropping) inside the custom VJPs; rows
# of <= 4 input channels compute the input gradient as one GEMM and its taps' sums
# (layers._thin_phase_forward, layers.THIN_OUTPUT_CHANNELS), the others by phases.
CONV_CASES = [
    ("k4 s2 p1 (the critic), 3 channels, odd and even sizes", (7, 8), 3, 5, 4, 2, ((1, 1), (1, 1))),
    ("k5 s3 p2: taps past the kernel dropped", (8, 7), 2, 3, 5, 3, ((2, 2), (2, 2))),
    ("strided, asymmetric pads, input cropped", (8, 8), 5, 4, 4, 2, ((1, 2), (0, 1))),
    ("the same, 3 channels", (8, 8), 3, 4, 4, 2, ((1, 2), (0, 1))),
    ("k5 s2 SAME, 1 channel: the input gradient's output padding is negative", (8, 7), 1, 4, 5,
     2, "SAME"),
    ("stride 1, SAME, wide output (the generator's sub-pixel convs)", (4, 4), 8, 128, 3, 1,
     "SAME"),
    ("strided, 72 input channels: XLA's kernel gradient inside the custom VJPs", (6, 5), 72, 4,
     4, 2, ((1, 1), (1, 1))),
]


def _first_and_second_order(apply, params, x, cot):
    """Output, d/d(params, x) of <y, cot>, and second order both ways round: d/dparams of a
    WGAN-GP-like penalty sum((d/dx sum(tanh(y) * cot))^2) (jax.grad of a function of jax.grad
    w.r.t. x), and d/dx of sum((d/dparams sum(tanh(y) * cot))^2)."""

    def all_orders(params, x, cot):
        y = apply(params, x)
        first = jax.grad(lambda p, xx: jnp.sum(apply(p, xx) * cot), argnums=(0, 1))(params, x)

        def f(p, xx):
            return jnp.sum(jnp.tanh(apply(p, xx)) * cot)

        def penalty(p):
            return jnp.sum(jnp.square(jax.grad(f, argnums=1)(p, x)))

        def param_grad_norm(xx):
            return sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(jax.grad(f)(params, xx)))

        return y, first, (jax.grad(penalty)(params), jax.grad(param_grad_norm)(x))

    return jax.jit(all_orders)(params, x, cot)  # one compile beats op-by-op dispatch here


def _close(got, want, what):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def _conv_and_ours(case, impl: str, seed: int):
    """For a CONV_CASES / THIN_CASES row: nn.Conv, the same layer through
    `layers.conv_general_dilated` with grad_impl=impl, random params, input and cotangent."""
    _, hw, cin, cout, k, s, pad = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
    ref = nn.Conv(cout, k if isinstance(k, tuple) else (k, k), strides=(s, s), padding=pad)
    ours = ref.clone(conv_general_dilated=partial(layers.conv_general_dilated, grad_impl=impl))
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                          jax.eval_shape(ref.init, jax.random.key(0), x))
    cot = jnp.asarray(rng.standard_normal(ref.apply(params, x).shape), jnp.float32)
    return ref, ours, params, x, cot


def _assert_every_order_equal(ours, ref, params, x, cot):
    want = _first_and_second_order(ref.apply, params, x, cot)
    got = _first_and_second_order(ours.apply, params, x, cot)
    _close(got[0], want[0], "output")
    _close(got[1], want[1], "first-order gradients (params, x)")
    _close(got[2], want[2], "second order: d/dparams of |d/dx|^2 and d/dx of |d/dparams|^2")


@pytest.mark.parametrize("impl", ["fast", "table"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_fast_conv_gradients_equal_flax_conv_to_second_order(case, impl, monkeypatch):
    _, _, cin, cout, _, s, _ = case
    # fast: the widest GEMM setting any CPU gets (Intel's), so that every row below 72 channels
    # exercises `_dw_gemm` whatever CPU runs the test; 72 channels take XLA's kernel gradient.
    monkeypatch.setattr(layers, "DW_GEMM_MAX_CIN", 64)
    # table: strided rows of <= 4 channels by space to depth, the others in XLA's own forms
    monkeypatch.setattr(layers, "S2D_MAX_CIN", 4)
    ref, fast, params, x, cot = _conv_and_ours(case, impl, seed=1)
    assert jax.tree.map(jnp.shape, jax.eval_shape(fast.init, jax.random.key(0), x)) == \
        jax.tree.map(jnp.shape, params)  # the same parameter tree as nn.Conv
    assert layers._use_custom_vjp(cin, cout, (s, s))  # routed through the custom VJPs
    assert layers._dw_by_gemm(cin) == (cin <= 64)
    if impl == "table":
        jaxpr = str(jax.make_jaxpr(fast.apply)(params, x))
        assert "custom_vjp_call" in jaxpr
        # space to depth: the strided conv is computed as a stride-1 one
        assert (f"window_strides=({s}, {s})" in jaxpr) == (s == 1 or cin > 4)
    _assert_every_order_equal(fast, ref, params, x, cot)


# (name, (H, W), C_in, C_out, k, stride, padding): convs with a thin side, computed as GEMMs
# (layers.THIN_GEMM_MAX_CHANNELS) in all three of the table's operations
THIN_CASES = [
    ("thin input, 2x2 VALID (the critic's first layer after space to depth)", (6, 7), 12, 20,
     2, 1, "VALID"),
    ("thin output, 3x3 SAME (the generator's RGB sub-pixel conv)", (6, 7), 20, 12, 3, 1,
     "SAME"),
    ("thin output, asymmetric pads, one negative in the input gradient", (6, 5), 24, 3, 3, 1,
     ((3, 0), (0, 1))),
    ("thin input, asymmetric pads", (6, 5), 3, 24, 3, 1, ((0, 2), (1, 0))),
    ("both sides thin, non-square kernel", (5, 6), 4, 6, (2, 3), 1, "SAME"),
    ("strided, 3 channels: by space to depth under 'table', then a GEMM", (8, 8), 3, 20, 4, 2,
     ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("impl", ["fast", "table"])
@pytest.mark.parametrize("case", THIN_CASES, ids=[c[0] for c in THIN_CASES])
def test_thin_convs_as_gemms_equal_flax_conv_to_second_order(case, impl, monkeypatch):
    s = case[5]
    monkeypatch.setattr(layers, "THIN_GEMM_MAX_CHANNELS", 16)
    monkeypatch.setattr(layers, "S2D_MAX_CIN", 4)
    # XLA's forms: with oneDNN (AVX-512 CPUs) the strided conv's operations are custom calls
    monkeypatch.setattr(layers, "ONEDNN_OPS", 0)
    ref, gemm, params, x, cot = _conv_and_ours(case, impl, seed=4)
    # every order runs without a convolution, except 'fast''s strided conv (no space to depth)
    hlo = jax.jit(partial(_first_and_second_order, gemm.apply)).lower(params, x, cot).as_text()
    assert ("convolution" in hlo) == (impl == "fast" and s > 1)
    _assert_every_order_equal(gemm, ref, params, x, cot)


def test_fast_transposed_conv_gradients_equal_xla_to_second_order():
    # 4 * C_out = 128 sub-pixel channels: the generator's GEMM kernel-gradient path.
    x, mod, params = _init(5, 2, 2, 1, (4, 4), 8, 32, use_bias=False)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 32)), jnp.float32)
    want = _first_and_second_order(mod.clone(grad_impl="xla").apply, params, x, cot)
    got = _first_and_second_order(mod.clone(grad_impl="fast").apply, params, x, cot)
    for g, w, what in zip(got, want, ("output", "first order", "second order")):
        _close(g, w, what)


@pytest.mark.parametrize("impl, thin", [("fast", 0), ("table", 0), ("table", 16)])
def test_fast_conv_gradients_in_bfloat16(impl, thin, monkeypatch):
    """Mixed precision: bf16 activations and kernels through the custom VJPs (table: by space
    to depth, then with thin=16 as GEMMs), second order included; same dtypes as lax's VJP and
    values within bf16 rounding of it."""
    monkeypatch.setattr(layers, "THIN_GEMM_MAX_CHANNELS", thin)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.bfloat16)
    w = jnp.asarray(0.3 * rng.standard_normal((4, 4, 3, 8)), jnp.bfloat16)

    def penalty(impl):
        def f(w, x):
            return jnp.sum(jnp.tanh(layers.conv2d(x, w, 2, ((1, 1), (1, 1)), grad_impl=impl)))
        return jax.jit(jax.grad(lambda w: jnp.sum(
            jnp.square(jax.grad(f, argnums=1)(w, x).astype(jnp.float32)))))(w)

    got, want = penalty(impl), penalty("xla")
    assert got.dtype == want.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=3e-2 * scale, rtol=0)


def test_conv_impl_is_chosen_per_backend_and_validated():
    assert layers.default_conv_impl("cpu") == "fast"
    assert layers.default_conv_impl("gpu") == "table"
    assert layers.default_conv_impl("tpu") == "xla"
    # a narrow stride-1 conv keeps lax's own VJP
    assert not layers._use_custom_vjp(8, 4, (1, 1))
    with pytest.raises(ValueError, match="grad_impl"):
        layers.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), grad_impl="im2col")


def test_step_compiler_options_turn_off_ynnpack_convolutions_only_where_measured_faster(monkeypatch):
    """Which programs drop YNNPACK where, and that XLA reads the options as meant."""
    from jaxgan import layers as layers_lib

    def options_for(version, vendor, backend="cpu", program="step"):
        monkeypatch.setattr(layers_lib, "jaxlib_version", lambda: version)
        monkeypatch.setattr(layers_lib, "_cpu_vendor", lambda: vendor)
        return {"step": layers_lib.step_compiler_options,
                "sampler": layers_lib.sampler_compiler_options}[program](backend)

    # measured faster without YNNPACK: jaxlib >= 0.12 anywhere, 0.10 on AMD (BUILD_NOTES.md)
    for version, vendor in [((0, 12), "GenuineIntel"), ((0, 13), "AuthenticAMD"),
                            ((0, 10), "AuthenticAMD")]:
        assert options_for(version, vendor), (version, vendor)
    for version, vendor in [((0, 10), "GenuineIntel"), ((0, 11), "AuthenticAMD"),
                            ((0, 8), "AuthenticAMD"), ((0, 10), "")]:
        assert options_for(version, vendor) == {}, (version, vendor)
    assert options_for((0, 12), "GenuineIntel", "gpu") == {}
    # the sampler's own measurement: faster without YNNPACK only under jaxlib 0.10 on AMD
    # (no YNNPACK at all: it has no batch statistics to reduce)
    assert (options_for((0, 10), "AuthenticAMD", program="sampler")
            == options_for((0, 12), "GenuineIntel"))
    for version, vendor, backend in [((0, 12), "GenuineIntel", "cpu"),
                                     ((0, 12), "AuthenticAMD", "cpu"),
                                     ((0, 10), "GenuineIntel", "cpu"),
                                     ((0, 10), "AuthenticAMD", "gpu")]:
        assert options_for(version, vendor, backend, "sampler") == {}, (version, vendor, backend)
    options = options_for((0, 12), "GenuineIntel")
    assert options
    x = jnp.ones((4, 8, 8, 16))
    w = jnp.full((3, 3, 16, 32), 0.01)

    def conv(a, b):
        return lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    plain = jax.jit(conv).lower(x, w).compile()
    if "ynn_fusion" not in plain.as_text():
        pytest.skip(f"this jaxlib ({jax.__version__}) does not use YNNPACK for convolutions")
    with_options = jax.jit(conv, compiler_options=options).lower(x, w).compile()
    assert "ynn_fusion" not in with_options.as_text()  # the option's name is the one XLA knows
    np.testing.assert_allclose(with_options(x, w), plain(x, w), rtol=1e-6)
    # jaxlib 0.10 and >= 0.12 on AMD: the convolution leaves YNNPACK, a batch norm's sums
    # stay in it
    amd = options_for((0, 10), "AuthenticAMD")
    assert amd != options and options_for((0, 12), "AuthenticAMD") == amd
    conv_amd = jax.jit(conv, compiler_options=amd).lower(x, w).compile()
    assert "ynn_fusion" not in conv_amd.as_text()

    def channel_stats(a):
        return a.mean((0, 1, 2)), jnp.square(a).mean((0, 1, 2))

    y = np.asarray(plain(x, w)) + np.random.RandomState(0).randn(4, 8, 8, 32).astype(np.float32)
    stats_amd = jax.jit(channel_stats, compiler_options=amd).lower(y).compile()
    stats_off = jax.jit(channel_stats, compiler_options=options).lower(y).compile()
    assert "ynn_fusion" in stats_amd.as_text()
    assert "ynn_fusion" not in stats_off.as_text()
    for ours, exact in zip(stats_amd(y), (y.astype(np.float64).mean((0, 1, 2)),
                                          np.square(y.astype(np.float64)).mean((0, 1, 2)))):
        np.testing.assert_allclose(ours, exact, rtol=1e-6)
