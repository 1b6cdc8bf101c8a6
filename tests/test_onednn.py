"""oneDNN convolutions (jaxgan/onednn.py): the same values as XLA's, first and second order,
and a clean fallback where oneDNN or a compiler is missing."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgan import env, layers, onednn

needs_onednn = pytest.mark.skipif(
    not onednn.available() or jax.device_count() != 1,
    reason=f"oneDNN handlers not available: {onednn.unavailable_reason()}")

# (N, H, W, C_in, C_out, k, stride, pads): the critic's k4 s2 p1, the generator's k5 s2 read
# backwards (pads (2, 1)), a stride-1 k3, a 3-channel input, a non-square one
SHAPES = [
    (2, 8, 8, 16, 32, 4, 2, ((1, 1), (1, 1))),
    (2, 8, 8, 16, 8, 5, 2, ((2, 1), (2, 1))),
    (3, 6, 6, 8, 16, 3, 1, ((1, 1), (1, 1))),
    (2, 16, 16, 3, 8, 4, 2, ((1, 1), (1, 1))),
    (1, 10, 6, 4, 8, 3, 1, ((0, 2), (1, 0))),
]


def _operands(n, h, w, cin, cout, k, s, pads, seed=0):
    rng = np.random.default_rng(seed)
    oh, ow = ((d + sum(p) - k) // s + 1 for d, p in zip((h, w), pads))
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.2, jnp.float32)
    dy = jnp.asarray(rng.standard_normal((n, oh, ow, cout)), jnp.float32)
    return x, kernel, dy


def _lax_conv(x, w, s, pads):
    return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=layers._DN,
                                    precision=lax.Precision.HIGHEST)


def _close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@needs_onednn
@pytest.mark.parametrize("shape", SHAPES)
def test_three_operations_match_lax(shape):
    n, h, w, cin, cout, k, s, pads = shape
    x, kernel, dy = _operands(*shape)
    st = (s, s)
    assert onednn.supports(x.shape, kernel.shape, st, pads, jnp.float32)
    _close(jax.jit(lambda x, w: onednn.conv(x, w, st, pads))(x, kernel),
           _lax_conv(x, kernel, s, pads))
    want_dx, want_dw = jax.vjp(lambda x, w: _lax_conv(x, w, s, pads), x, kernel)[1](dy)
    _close(jax.jit(lambda dy, w: onednn.conv_dx(dy, w, x.shape, st, pads))(dy, kernel), want_dx)
    _close(jax.jit(lambda x, dy: onednn.conv_dw(x, dy, kernel.shape, st, pads))(x, dy), want_dw)


def _blocked_forward_case():
    """A critic-like k4 s2 forward conv whose oneDNN kernel reads a blocked layout: x, the
    kernel, y's shape, strides, pads and the blocked kernel's floats (skips where it is HWIO)."""
    n, h, w, cin, cout, k, s, pads = shape = (2, 8, 8, 32, 64, 4, 2, ((1, 1), (1, 1)))
    x, kernel, _ = _operands(*shape)
    y_shape = (n, 4, 4, cout)
    floats = onednn.blocked_kernel_floats("forward", x.shape, kernel.shape, y_shape, (s, s), pads)
    if floats == 0:
        pytest.skip("this oneDNN reads this kernel in HWIO itself: nothing to reorder")
    return x, kernel, y_shape, (s, s), pads, floats


@needs_onednn
def test_a_kernel_is_reordered_once_for_the_convolutions_that_share_it(monkeypatch):
    """Where oneDNN's kernel reads a blocked layout, one op of its own puts the kernel in it
    and XLA shares that op between the convolutions of the same kernel value (a critic on
    real and fake batches); values equal lax's and those of the per-call reorder."""
    x, kernel, _, st, pads, floats = _blocked_forward_case()
    x2 = x[::-1] * 0.5
    assert floats >= kernel.size  # blocked: the same floats, channels padded to the block

    def two_batches(x, x2, w):
        return onednn.conv(x, w, st, pads), onednn.conv(x2, w, st, pads)
    compiled = jax.jit(two_batches).lower(x, x2, kernel).compile().as_text()
    assert compiled.count('custom_call_target="jaxgan_onednn_kernel_blocked"') == 1
    assert compiled.count('custom_call_target="jaxgan_onednn_conv_forward"') == 2
    got = jax.jit(two_batches)(x, x2, kernel)
    monkeypatch.setattr(onednn, "_kernel_for", lambda op, w, *args: w)  # each call reorders
    per_call = jax.jit(two_batches)(x, x2, kernel)
    for g, p, xi in zip(got, per_call, (x, x2)):
        _close(g, _lax_conv(xi, kernel, st[0], pads))
        np.testing.assert_array_equal(np.asarray(g), np.asarray(p))


@needs_onednn
def test_a_blocked_kernel_of_the_wrong_size_is_refused():
    x, kernel, y_shape, st, pads, floats = _blocked_forward_case()
    wrong = jnp.zeros((floats + 16,), jnp.float32)
    with pytest.raises(Exception, match="blocked kernel's size is not this plan's"):
        jax.block_until_ready(onednn._call("forward", x, wrong, y_shape, kernel.shape, st, pads))


def _penalty_grads(conv, x, kernel):
    """A WGAN-GP-like second-order quantity: d/dw of |d critic / dx|^2."""
    def critic(x, w):
        return jnp.sum(jnp.tanh(conv(x, w)))

    def penalty(w):
        g = jax.grad(critic)(x, w)
        return jnp.sum(g * g)
    return jax.grad(penalty)(kernel), jax.grad(critic, argnums=(0, 1))(x, kernel)


@needs_onednn
def test_layers_route_convs_to_onednn_with_equal_gradients(monkeypatch):
    """`layers.conv2d` on CPU forms with oneDNN on: the compiled program holds the custom
    calls, and first- and second-order gradients equal lax's."""
    shape = (2, 12, 12, 8, 16, 4, 2, ((1, 1), (1, 1)))
    x, kernel, _ = _operands(*shape)
    pads = shape[-1]
    monkeypatch.setattr(layers, "ONEDNN_OPS", 7)
    monkeypatch.setattr(layers, "_onednn_suits", lambda *a: True)

    def ours(x, w):
        return layers.conv2d(x, w, 2, pads, grad_impl="fast")
    hlo = jax.jit(lambda x, w: _penalty_grads(ours, x, w)).lower(x, kernel).as_text()
    for target in ("forward", "backward_data", "backward_weights"):
        assert f"jaxgan_onednn_conv_{target}" in hlo
    got = jax.jit(lambda x, w: _penalty_grads(ours, x, w))(x, kernel)
    want = _penalty_grads(lambda x, w: _lax_conv(x, w, 2, pads), x, kernel)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(g, w)


@needs_onednn
@pytest.mark.parametrize("pads", [((2, 1), (1, 2)), ((-1, 2), (1, -2)), ((0, 0), (-1, -1))])
def test_stride1_conv_through_onednn_pads_and_crops_like_xla(pads):
    """The phase convs of `_phase_forward`: oneDNN pads by itself, negative pads crop first."""
    x, kernel, _ = _operands(2, 7, 6, 8, 16, 3, 1, ((0, 0), (0, 0)))
    kernel = kernel[:, :2]  # a 3x2 phase kernel
    fn = jax.jit(lambda x, w, by_onednn: layers._stride1_conv(x, w, pads, None, by_onednn),
                 static_argnums=2)
    assert "jaxgan_onednn_conv_forward" in fn.lower(x, kernel, True).as_text()
    want = _lax_conv(layers._spatial_pad(x, *pads), kernel, 1, ((0, 0), (0, 0)))
    _close(fn(x, kernel, True), want)
    _close(fn(x, kernel, False), want)


@needs_onednn
def test_generator_first_layer_by_onednn_phases_matches_xla(monkeypatch):
    """A transposed conv whose input has fewer positions than its kernel taps (the HW6
    generator's 4x4 -> 8x8 layer, here 2x2 -> 4x4) is computed by phases, each a oneDNN
    forward conv, not by oneDNN's backward data; value and gradients equal XLA's forms."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 2, 2, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((5, 5, 16, 8)) * 0.2, jnp.float32)

    def f(x, w):
        return jnp.sum(jnp.sin(layers.conv_transpose_torch(x, w, 2, 2, 1, grad_impl="fast")))
    monkeypatch.setattr(layers, "ONEDNN_OPS", 0)
    want = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kernel)
    monkeypatch.setattr(layers, "ONEDNN_OPS", 7)
    forward = jax.jit(lambda x, w: layers.conv_transpose_torch(x, w, 2, 2, 1, grad_impl="fast"))
    hlo = forward.lower(x, kernel).as_text()
    assert hlo.count("jaxgan_onednn_conv_forward") == 4  # one per output phase
    assert "jaxgan_onednn_conv_backward_data" not in hlo
    got = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kernel)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(g, w)


@needs_onednn
def test_transposed_conv_through_onednn_matches_xla(monkeypatch):
    """The generator's layer (k5 s2 p2 op1) by oneDNN's backward-data convolution."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((5, 5, 16, 8)) * 0.2, jnp.float32)

    def f(x, w):
        return jnp.sum(jnp.sin(layers.conv_transpose_torch(x, w, 2, 2, 1, grad_impl="fast")))
    want = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, kernel)
    monkeypatch.setattr(layers, "ONEDNN_OPS", 7)
    monkeypatch.setattr(layers, "_onednn_suits", lambda *a: True)
    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    assert "jaxgan_onednn_conv_backward_data" in fn.lower(x, kernel).as_text()
    for g, w in zip(jax.tree.leaves(fn(x, kernel)), jax.tree.leaves(want)):
        _close(g, w)


def test_supports_only_what_the_handlers_compute():
    st, pads = (2, 2), ((1, 1), (1, 1))
    assert onednn.supports((2, 8, 8, 4), (4, 4, 4, 8), st, pads, jnp.float32)
    assert not onednn.supports((2, 8, 8, 4), (4, 4, 4, 8), st, pads, jnp.bfloat16)
    assert not onednn.supports((2, 8, 8, 4), (4, 4, 4, 8), st, ((-1, 1), (1, 1)), jnp.float32)
    # 9 + 2 - 4 is odd: a window count oneDNN would not derive from this padding
    assert not onednn.supports((2, 9, 8, 4), (4, 4, 4, 8), st, pads, jnp.float32)


def test_without_onednn_the_convs_stay_xla(monkeypatch):
    monkeypatch.setattr(layers, "ONEDNN_OPS", 7)
    monkeypatch.setattr(onednn, "available", lambda: False)
    x, kernel, _ = _operands(*SHAPES[0])
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.conv2d(x, w, 2, SHAPES[0][-1],
                                                                grad_impl="fast")),
                           argnums=(0, 1))).lower(x, kernel).as_text()
    assert "jaxgan_onednn" not in hlo


def test_default_follows_avx512_and_the_environment(monkeypatch):
    monkeypatch.delenv("JAXGAN_ONEDNN", raising=False)
    monkeypatch.setattr(env, "cpuinfo", lambda field: "fpu sse2 avx2 avx512f")
    assert layers._default_onednn_ops() == 7
    monkeypatch.setenv("JAXGAN_ONEDNN", "0")
    assert layers._default_onednn_ops() == 0
    monkeypatch.setattr(env, "cpuinfo", lambda field: "fpu sse2 avx2 fma")
    monkeypatch.delenv("JAXGAN_ONEDNN")
    assert layers._default_onednn_ops() == 0
    monkeypatch.setenv("JAXGAN_ONEDNN", "1")
    assert layers._default_onednn_ops() == 7


def test_cpuinfo_reads_the_exact_key(monkeypatch):
    """'model' is not 'model name' (the tuning file's key holds both: Zen 4 and Zen 5 VMs
    both say 'AMD EPYC'); a missing key or file gives ''."""
    import io

    text = ("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu avx512f\n")
    monkeypatch.setattr(env, "open", lambda path: io.StringIO(text), raising=False)
    assert [env.cpuinfo(k) for k in ("model", "model name", "cpu family", "flags", "flag")] == [
        "2", "AMD EPYC", "26", "fpu avx512f", ""]

    def missing(path):
        raise FileNotFoundError(path)
    monkeypatch.setattr(env, "open", missing, raising=False)
    assert env.cpuinfo("flags") == ""


def test_build_failure_is_one_clear_line(tmp_path, monkeypatch):
    if onednn.library_path() is None:
        pytest.skip("onednn-cpu-gomp not installed")
    monkeypatch.setenv("JAXGAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(OSError, match="building jaxgan's oneDNN handlers failed"):
        onednn._build(onednn.library_path())
    assert not any(p.suffix == ".so" for p in tmp_path.rglob("*"))  # no half-written library


def test_onednn_suits_the_measured_shapes():
    """Which HW6 operations go to oneDNN (`layers._onednn_suits`): not the 1-channel head, not
    a kernel gradient or strided input gradient over fewer dy positions than kernel taps (the
    generator's first layer), not a strided conv's input gradient into 3 channels (the
    critic's first layer: one GEMM, `layers._thin_phase_forward`), yes that layer's forward
    and kernel gradient."""
    suits, fwd, dx, dw = (layers._onednn_suits, layers.ONEDNN_FORWARD, layers.ONEDNN_INPUT_GRAD,
                          layers.ONEDNN_KERNEL_GRAD)
    s2, s1 = (2, 2), (1, 1)
    assert not suits(fwd, (64, 4, 4, 512), (4, 4, 512, 1), s1, (1, 1))
    assert not suits(dw, (64, 8, 8, 256), (5, 5, 256, 512), s2, (4, 4))
    assert suits(dw, (64, 8, 8, 256), (4, 4, 256, 512), s2, (4, 4))
    assert not suits(dx, (64, 64, 64, 3), (4, 4, 3, 64), s2, (32, 32))
    assert suits(dx, (64, 64, 64, 3), (3, 3, 3, 64), s1, (64, 64))
    assert suits(dx, (64, 16, 16, 128), (4, 4, 128, 256), s2, (8, 8))
    # the generator's first layer's forward (25 taps over 4x4 dy positions): by phases, while
    # the critic's last strided layer (16 over 16) keeps oneDNN's backward data
    assert not suits(dx, (64, 8, 8, 256), (5, 5, 256, 512), s2, (4, 4))
    assert suits(dx, (64, 8, 8, 256), (4, 4, 256, 512), s2, (4, 4))
    assert suits(fwd, (64, 64, 64, 3), (4, 4, 3, 64), s2, (32, 32))
    assert suits(dw, (64, 64, 64, 3), (4, 4, 3, 64), s2, (32, 32))


def test_calling_without_onednn_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(onednn, "_load", lambda: False)
    monkeypatch.setattr(onednn, "_reason", "onednn-cpu-gomp is not installed")
    x, kernel, _ = _operands(*SHAPES[0])
    with pytest.raises(RuntimeError, match="unavailable: onednn-cpu-gomp is not installed"):
        onednn.conv(x, kernel, (2, 2), SHAPES[0][-1])


# A fresh process (the choices live in the handlers' process-wide state): one conv of a
# shape no other test uses, then what the handlers measured, checked against lax.
_TUNING_RUN = """
import json, sys
import jax.numpy as jnp, numpy as np
from jax import lax
from jaxgan import onednn
x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 9, 9, 5)), jnp.float32)
w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 5, 7)), jnp.float32)
pads = ((1, 1), (1, 1))
got = onednn.conv(x, w, (2, 2), pads)
want = lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                precision=lax.Precision.HIGHEST)
print(json.dumps({"err": float(jnp.abs(got - want).max()), "stats": onednn.tuning_stats(),
                  "file": str(onednn.tuning_file())}))
"""


def _tuning_run(cache, tune="1"):
    import json
    import subprocess
    import sys

    environ = dict(os.environ, JAXGAN_CACHE_DIR=str(cache), JAXGAN_ONEDNN_TUNE=tune,
                   JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _TUNING_RUN], env=environ, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_onednn
def test_implementation_choice_is_measured_once_and_read_back(tmp_path):
    """The first process times the shape's implementations and records the fastest; the next
    one reads it instead of timing again; a record naming an implementation this oneDNN lacks
    (or a garbled line) falls back to oneDNN's first choice. Values equal lax's every time."""
    first = _tuning_run(tmp_path)
    assert first["err"] < 1e-4
    tuned, seconds = first["stats"]
    assert tuned == 1 and seconds > 0
    lines = open(first["file"]).read().splitlines()
    assert len(lines) == 1
    shape, impl = lines[0].split("\t")
    assert shape.startswith("0,3,5,9,9,7,3,3,5,5,2,2") and impl

    again = _tuning_run(tmp_path)
    assert again["stats"] == [0, 0.0] and again["err"] < 1e-4
    assert open(first["file"]).read().splitlines() == lines  # nothing appended

    with open(first["file"], "w") as f:
        f.write(f"garbled line without a tab\n{shape}\tno-such-implementation\n")
    fallback = _tuning_run(tmp_path)
    assert fallback["stats"] == [0, 0.0] and fallback["err"] < 1e-4


@needs_onednn
def test_tuning_off_keeps_onednns_first_choice(tmp_path):
    off = _tuning_run(tmp_path, tune="0")
    assert off["stats"] == [0, 0.0] and off["err"] < 1e-4
    assert not os.path.exists(off["file"]) or not open(off["file"]).read()


@needs_onednn
def test_call_stats_count_each_shapes_calls_and_reset():
    """The handlers' own clocks: one entry per shape and operation, named by the forward conv,
    with every call counted and time spent; reset clears them."""
    n, h, w, cin, cout, k, s, pads = SHAPES[0]
    x, kernel, dy = _operands(*SHAPES[0])
    st = (s, s)
    forward = jax.jit(lambda x, w: onednn.conv(x, w, st, pads))
    weights = jax.jit(lambda x, dy: onednn.conv_dw(x, dy, kernel.shape, st, pads))
    jax.block_until_ready((forward(x, kernel), weights(x, dy)))  # plans built (and tuned)
    onednn.call_stats(reset=True)
    for _ in range(3):
        forward(x, kernel).block_until_ready()
    weights(x, dy).block_until_ready()
    stats = {c.op: c for c in onednn.call_stats()}
    assert set(stats) == {"forward", "backward_weights"}
    fwd = stats["forward"]
    assert (fwd.n, fwd.h, fwd.w, fwd.cin, fwd.out_h, fwd.out_w, fwd.cout, fwd.kh, fwd.kw,
            fwd.strides) == (n, h, w, cin, 4, 4, cout, k, k, st)
    assert fwd.label == "forward 8x8x16->4x4x32 k4x4 s2"
    assert fwd.calls == 3 and stats["backward_weights"].calls == 1
    assert all(c.busy_s > 0 and c.waiting_s >= 0 for c in stats.values())
    assert onednn.call_stats(reset=True)  # still there until reset
    assert onednn.call_stats() == []


def test_call_stats_parse_the_handlers_lines():
    text = ("1,64,128,16,16,256,5,5,8,8,2,2,2,2,1,1\t2\t0.080000\t0.010000\n"
            "0,64,3,64,64,64,4,4,32,32,2,2,1,1,1,1\t3\t0.012000\t0.000000\n")
    dx, fwd = onednn._parse_call_stats(text)
    assert dx.op == "backward_data" and dx.calls == 2 and dx.busy_s == 0.08
    assert dx.label == "backward_data 16x16x128->8x8x256 k5x5 s2"
    assert fwd.label == "forward 64x64x3->32x32x64 k4x4 s2" and fwd.waiting_s == 0.0
