"""scripts/profile_step.py's FLOP count, read from compiled HLO, against hand-computed FLOPs."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
from profile_step import op_flops  # noqa: E402


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU operation names")
def test_op_flops_counts_a_strided_conv_and_a_dot():
    def f(x, w, a, b):
        y = jax.lax.conv_general_dilated(x, w, (2, 2), ((2, 1), (2, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).sum() + jnp.tanh(a @ b).sum()

    args = (jnp.ones((2, 16, 16, 8)), jnp.ones((5, 5, 8, 32)), jnp.ones((64, 96)),
            jnp.ones((96, 48)))
    ops = op_flops(jax.jit(f).lower(*args).compile().as_text())
    by_desc = {desc.split()[0]: (flops, desc) for flops, desc in ops.values()}
    assert set(by_desc) == {"conv", "dot"}
    # 2 x output elements (2*8*8*32) x taps (5*5) x input channels (8); 2 x 64*48 x 96.
    assert by_desc["conv"][0] == 2 * (2 * 8 * 8 * 32) * (5 * 5) * 8
    assert "[2, 16, 16, 8]*[5, 5, 8, 32]->[2, 8, 8, 32]" in by_desc["conv"][1]
    assert "stride=2x2" in by_desc["conv"][1]
    assert by_desc["dot"][0] == 2 * (64 * 48) * 96


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU operation names")
def test_only_ynnpack_calls_count_as_timed_work():
    """XLA's Eigen convolutions finish on a thread pool after their trace event ends (session
    18: 9-150 TFLOP/s "measured" on 2 cores), so the profile must not print their rate."""
    from jaxgan import layers
    from profile_step import launch_timed

    def f(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()

    args = (jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64)))  # big enough for YNNPACK
    without = op_flops(jax.jit(f, compiler_options=layers.without_ynnpack())
                       .lower(*args).compile().as_text())
    assert len(without) == 1
    assert launch_timed(without) == set(without)
    if layers.jaxlib_version() >= (0, 10):  # these jaxlibs call YNNPACK for such a convolution
        default = op_flops(jax.jit(f).lower(*args).compile().as_text())
        [name] = default  # the fusion that holds it (here the program's ROOT), not the conv
        assert name.startswith("ynn_fusion") and not launch_timed(default)


def test_op_flops_counts_cudnn_convolutions_of_every_kind():
    """XLA:GPU's convolutions are cuDNN custom calls; each kind's FLOPs are the forward conv's.
    HLO in XLA:GPU's form (operands by name, tuple results, forward dim_labels)."""
    hlo = """HloModule m

ENTRY %main (x: bf16[4,32,32,64], w: bf16[3,3,64,32], dy: bf16[4,16,16,32]) -> bf16[4,16,16,32] {
  %x = bf16[4,32,32,64]{3,2,1,0} parameter(0)
  %w = bf16[3,3,64,32]{3,2,1,0} parameter(1)
  %dy = bf16[4,16,16,32]{3,2,1,0} parameter(2)
  %cudnn-conv.1 = (bf16[4,16,16,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 stride=2x2 pad=1_0x1_0}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward"
  %cudnn-conv-bw-input.2 = (bf16[4,32,32,64]{3,2,1,0}, u8[0]{0}) custom-call(%dy, %w), window={size=3x3 stride=2x2 pad=1_0x1_0}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.3 = (bf16[3,3,64,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3 stride=2x2 pad=1_0x1_0}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardFilter"
  ROOT %gte = bf16[4,16,16,32]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
}
"""
    ops = op_flops(hlo)
    # 2 x output elements (4*16*16*32) x taps (3*3) x input channels (64), for all three
    expected = 2 * (4 * 16 * 16 * 32) * (3 * 3) * 64
    assert {name: flops for name, (flops, _) in ops.items()} == {
        "cudnn-conv.1": expected, "cudnn-conv-bw-input.2": expected,
        "cudnn-conv-bw-filter.3": expected}
    assert "BackwardFilter" in ops["cudnn-conv-bw-filter.3"][1]


# XLA:GPU-form HLO: a tuple-result fusion in the entry, one inside a loop body, operands by
# name (a parameter, a tuple element), a cuDNN call; the fused computations' own instructions
# are not kernels.
GPU_FUSIONS_HLO = """HloModule m

%fused_reduce (p0: bf16[8,4,4,16]) -> (f32[8,16], f32[8,16]) {
  %p0 = bf16[8,4,4,16]{3,2,1,0} parameter(0)
  %inner = bf16[8,4,4,16]{3,2,1,0} fusion(%p0), kind=kLoop, calls=%fused_select
  ROOT %t = (f32[8,16]{1,0}, f32[8,16]{1,0}) tuple(%p0, %p0)
}

%body (s: (s32[], bf16[8,4,4,16])) -> (s32[], bf16[8,4,4,16]) {
  %s = (s32[], bf16[8,4,4,16]{3,2,1,0}) parameter(0)
  %x = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%s), index=1
  %loop_select_fusion.2 = bf16[8,4,4,16]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_select
  ROOT %r = (s32[], bf16[8,4,4,16]{3,2,1,0}) tuple(%x, %loop_select_fusion.2)
}

ENTRY %main (x: bf16[8,4,4,16], w: bf16[3,3,16,16]) -> (f32[8,16], f32[8,16]) {
  %x = bf16[8,4,4,16]{3,2,1,0} parameter(0)
  %w = bf16[3,3,16,16]{3,2,1,0} parameter(1)
  %cudnn-conv.1 = (bf16[8,4,4,16]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward"
  %y = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  ROOT %input_reduce_fusion.7 = (f32[8,16]{1,0}, /*index=1*/f32[8,16]{1,0}) fusion(%y), kind=kInput, calls=%fused_reduce
}
"""
ACTIVATION_BYTES = 8 * 4 * 4 * 16 * 2  # bf16[8,4,4,16]


def test_op_bytes_sums_a_fusions_operands_and_results():
    """XLA's own kernels are memory-bound: their bandwidth is their operands' and results'
    bytes over their time."""
    from profile_step import op_bytes

    assert op_bytes(GPU_FUSIONS_HLO) == {
        "input_reduce_fusion.7": ACTIVATION_BYTES + 2 * 8 * 16 * 4,
        "loop_select_fusion.2": 2 * ACTIVATION_BYTES}


def test_gpu_tables_rate_convolutions_by_flops_and_fusions_by_bandwidth():
    from profile_step import gpu_tables, per_operation

    def kernel(op, ns):
        return {"op": op, "kernel": op.replace(".", "_"), "start_ns": 0, "ns": ns}

    # one step: the conv once (1 us), the reduction once (10 ns), the select in a loop twice
    kernels = [kernel("cudnn-conv.1", 1000), kernel("input_reduce_fusion.7", 10),
               kernel("loop_select_fusion.2", 5), kernel("loop_select_fusion.2", 5)]
    rows = per_operation(kernels, steps=1)
    text = "\n".join(gpu_tables(rows, GPU_FUSIONS_HLO, top=5))
    flops = 2 * (8 * 4 * 4 * 16) * 9 * 16  # 2 x output elements x taps x input channels
    assert (f"convolutions and dots: 0.00 ms/step (98% of kernel time), {flops / 1e9:.1f} "
            f"GFLOP/step (all taps), {flops / 1e9 / 1e-3:.0f} TFLOP/s") in text
    moved = (ACTIVATION_BYTES + 2 * 8 * 16 * 4) + 2 * (2 * ACTIVATION_BYTES)  # in 20 ns
    assert moved / 1e9 / 2e-5 == pytest.approx(1.0752)
    assert "XLA's own kernels (fusions): 0.00 ms/step, 0.00 GB/step of operands and results, " \
        "1.08 TB/s" in text
    by_op = {r["op"]: r for r in rows}
    assert by_op["loop_select_fusion.2"]["runs"] == 2
    assert by_op["cudnn-conv.1"]["gbytes"] == 0.0  # a conv is rated by its FLOPs only


def test_replay_prints_the_gpu_tables_of_a_saved_run(tmp_path, capsys):
    """--replay JSON HLO: a GPU run's saved table and HLO read again on any machine; a missing
    file is a one-line error."""
    import gzip
    import json

    from profile_step import main

    table, hlo = tmp_path / "profile.json", tmp_path / "hlo.txt.gz"
    table.write_text(json.dumps({"ops": [
        {"op": "loop_select_fusion.2", "ms": 1e-5, "runs": 2.0,
         "kernels": {"loop_select_fusion_2": 1e-5}},
        {"op": "cudnn-conv.1", "ms": 1e-3, "runs": 1.0, "kernels": {"sm90_xmma": 1e-3}}]}))
    with gzip.open(hlo, "wt") as f:
        f.write(GPU_FUSIONS_HLO)
    assert main(["--replay", str(table), str(hlo)]) == 0
    out = capsys.readouterr().out
    assert f"{4 * ACTIVATION_BYTES / 1e9 / 1e-5:.2f} TB/s while they run" in out
    assert "cudnn Forward [8, 4, 4, 16]*[3, 3, 16, 16]->[8, 4, 4, 16]" in out
    assert main(["--replay", str(tmp_path / "missing.json"), str(hlo)]) == 2
    assert capsys.readouterr().err.startswith("error: --replay:")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's fusions")
def test_op_bytes_of_a_compiled_elementwise_kernel():
    from profile_step import op_bytes

    def f(x, y):
        return jnp.tanh(x) * y + 1.0

    args = (jnp.ones((64, 128)), jnp.ones((64, 128)))
    moved = op_bytes(jax.jit(f).lower(*args).compile().as_text())
    assert list(moved.values()) == [3 * 64 * 128 * 4]  # one fusion: two f32 inputs, one output


def test_gpu_kernel_events_are_summed_by_operation_and_their_busy_time_is_a_union():
    from types import SimpleNamespace as NS

    from profile_step import busy_ns, device_kernels

    def event(name, start, ns, op=None):
        return NS(name=name, start_ns=start, duration_ns=ns,
                  stats=[("hlo_op", op)] if op else [])

    planes = [NS(name="/host:CPU", lines=[NS(name="python", lines=[],
                                            events=[event("f", 0, 99)])]),
              NS(name="/device:GPU:0", lines=[
                  NS(name="Stream #13(Compute)", events=[event("sm90_xmma", 0, 10, "cudnn-conv.1"),
                                                         event("loop_fusion", 20, 5)]),
                  NS(name="Stream #14(Memcpy)", events=[event("MemcpyD2D", 8, 4, "copy.2")]),
                  NS(name="XLA Ops", events=[event("cudnn-conv.1", 0, 10, "cudnn-conv.1")])])]
    kernels = device_kernels(planes)
    assert [(k["op"], k["kernel"]) for k in kernels] == [
        ("cudnn-conv.1", "sm90_xmma"), ("loop_fusion", "loop_fusion"), ("copy.2", "MemcpyD2D")]
    assert busy_ns(kernels) == 10 + 2 + 5  # [0, 12) and [20, 25)


def test_kernel_time_per_operation_counts_runs_by_its_slowest_kernel():
    """A cuDNN conv inside the critic loop launches a memset and its conv kernel on each of
    its n_critic runs: 2 runs per step, not 4 launches."""
    from profile_step import per_operation

    kernels = [{"op": "cudnn-conv.1", "kernel": name, "start_ns": 0, "ns": ns}
               for _ in range(2) for _ in range(2) for name, ns in (("Memset", 1), ("xmma", 30))]
    kernels += [{"op": "fusion.2", "kernel": "loop_add_fusion_3", "start_ns": 0, "ns": 8}]
    rows = per_operation(kernels, steps=2)
    assert [r["op"] for r in rows] == ["cudnn-conv.1", "fusion.2"]
    conv = rows[0]
    assert conv["runs"] == 2 and conv["ms"] == 4 * 31 / 1e6 / 2
    assert list(conv["kernels"]) == ["xmma", "Memset"]  # slowest first
    assert rows[1]["runs"] == 0.5


def test_operations_are_attributed_to_model_layers_and_passes():
    """From the JAX names XLA keeps in each instruction's metadata; the pass counts reverse-mode
    transposes (2: the gradient penalty's second order)."""
    from profile_step import layer_of, op_layers

    body = "jit(train_step)/while/body/eval_jaxpr"
    hlo = f"""HloModule m

ENTRY %main {{
  %cudnn-conv.63 = (bf16[3,4,4,64]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%a, %b), window={{size=32x32}}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={{op_name="{body}/transpose(jvp(transpose(jvp(DCGANDiscriminator))))/Conv_0/conv_general_dilated" scheduling_name="cudnn-conv.63"}}
  %input_reduce_fusion.4 = f32[512]{{0}} fusion(%c), kind=kInput, calls=%fused_reduce, metadata={{op_name="{body}/DCGANGenerator/Norm_0/BatchNorm_0/reduce_sum"}}
  ROOT %loop_add_fusion = f32[8]{{0}} fusion(%d), kind=kLoop, calls=%fused_add, metadata={{op_name="jit(train_step)/jit(tree_bias_correction)/add"}}
}}
"""
    assert op_layers(hlo) == {
        "cudnn-conv.63": ("DCGANDiscriminator/Conv_0", "second order"),
        "input_reduce_fusion.4": ("DCGANGenerator/Norm_0", "forward"),
        "loop_add_fusion": ("outside the models", "")}
    assert layer_of("jit(train_step)/transpose(jvp(DCGANGenerator))/TorchConvTranspose_1/pad") \
        == ("DCGANGenerator/TorchConvTranspose_1", "backward")
    assert layer_of("jit(train_step)/jvp(DCGANDiscriminator)/add") == ("DCGANDiscriminator",
                                                                        "forward")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU operation names")
def test_cpu_tables_rate_fusions_by_bandwidth_and_eigen_convolutions_as_launches():
    from jaxgan import layers
    from profile_step import cpu_tables, launch_timed, op_bytes, per_operation

    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).transpose(3, 1, 2, 0) * 2

    args = (jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64)))
    hlo = jax.jit(f, compiler_options=layers.without_ynnpack()).lower(*args).compile().as_text()
    [conv] = op_flops(hlo)
    moved = op_bytes(hlo)
    assert moved and conv not in moved
    # every fusion reads the conv's output (or a fusion of it) and writes as many bytes
    activation = 8 * 16 * 16 * 64 * 4
    assert all(b >= 2 * activation for b in moved.values()), moved
    per_op = {conv: 0.25, **dict.fromkeys(moved, 0.5)}  # ms per step, one event each
    rows = per_operation([{"op": op, "kernel": op, "ns": ms * 1e6} for op, ms in per_op.items()],
                         steps=1)
    text = "\n".join(cpu_tables(rows, hlo, launch_timed(op_flops(hlo)), top=10))
    by_op = {r["op"]: r for r in rows}
    assert by_op[conv]["launch_only"] and by_op[conv]["gbytes"] == 0.0
    assert f"   0.2   launch  {conv}" in text
    for name, b in moved.items():  # bytes over 0.5 ms, in GB/s
        assert by_op[name]["gbytes"] == b / 1e9
        assert f"    0.5 {b / 1e9 / 0.5e-3:5.1f} GB  {name}" in text
    total = sum(moved.values()) / 1e9
    assert (f"XLA's own fusions and copies: {0.5 * len(moved):.1f} ms/step, {total:.2f} GB/step "
            f"of operands and results, {total / (0.5 * len(moved)) * 1e3:.1f} GB/s") in text
    assert "outside the models" in text  # no Flax module in f's names


def test_cpu_trace_events_count_only_xla_operations():
    from profile_step import is_xla_operation

    assert is_xla_operation("multiply_add_fusion.21") and is_xla_operation("ynn_fusion")
    for bookkeeping in ("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice",
                        "ThunkExecutor::Execute", "$profiler.py:307 trace", "jit_step(...)"):
        assert not is_xla_operation(bookkeeping), bookkeeping


def test_layer_knobs_are_validated_and_set_before_compiling(monkeypatch, capsys):
    """--layer_knob KEY=N sets the jaxgan.layers threshold benchmark.py's variant key of that
    name sets (so a candidate is profiled as it is timed); a wrong key or value is a usage
    error, before anything is compiled."""
    from benchmark import apply_layer_knobs
    from profile_step import main

    from jaxgan import layers

    for bad in ("thin_gemm=16", "thin_gemm_max_channels=x"):
        with pytest.raises(SystemExit) as e:
            main(["--layer_knob", bad])
        assert e.value.code == 2
        assert f"--layer_knob {bad!r}: expected KEY=N" in capsys.readouterr().err
    monkeypatch.setattr(layers, "THIN_GEMM_MAX_CHANNELS", 0)
    monkeypatch.setattr(layers, "S2D_MAX_CIN", 4)
    apply_layer_knobs({"thin_gemm_max_channels": 16, "s2d_max_cin": None})
    assert (layers.THIN_GEMM_MAX_CHANNELS, layers.S2D_MAX_CIN) == (16, 4)


def test_onednn_table_reports_work_waiting_and_flop_rates():
    """Per step: busy and waiting from the handlers' clocks, and each shape's FLOP rate (2 x
    output elements x cin x taps of its forward conv) over its busy time."""
    from profile_step import onednn_table

    from jaxgan.onednn import CallStats

    fwd = CallStats("forward", n=64, h=32, w=32, cin=64, out_h=16, out_w=16, cout=128, kh=4,
                    kw=4, strides=(2, 2), calls=6, busy_s=0.12, waiting_s=0.03)
    dw = CallStats("backward_weights", n=64, h=8, w=8, cin=256, out_h=4, out_w=4, cout=512,
                   kh=4, kw=4, strides=(2, 2), calls=4, busy_s=0.1, waiting_s=0.0)
    lines = onednn_table([fwd, dw], steps=2, wall_s=0.25, top=5)
    text = "\n".join(lines)
    # (0.12 + 0.1) / 2 steps = 110 ms/step of a 250 ms wall; 15 ms/step waiting; 5 calls/step
    assert "busy 110 ms/step in 5 calls (44% of the wall); waiting for the lock 15 ms/step" in text
    fwd_rate = 2 * 64 * 16 * 16 * 128 * 64 * 16 * 6 / 0.12 / 1e9  # 214.7 GFLOP/s
    assert (f"     60.0  x3      20.0 ms/call {fwd_rate:6.0f} GFLOP/s  "
            "forward 32x32x64->16x16x128 k4x4 s2") in lines
    assert lines[-1].endswith("backward_weights 8x8x256->4x4x512 k4x4 s2")
    assert len(onednn_table([fwd, dw], steps=2, wall_s=0.25, top=1)) == len(lines) - 1
