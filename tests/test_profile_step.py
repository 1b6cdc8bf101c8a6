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
    without = op_flops(jax.jit(f, compiler_options=layers._WITHOUT_YNNPACK)
                       .lower(*args).compile().as_text())
    assert len(without) == 1
    assert launch_timed(without) == set(without)
    if layers.jaxlib_version() >= (0, 10):  # these jaxlibs call YNNPACK for such a convolution
        default = op_flops(jax.jit(f).lower(*args).compile().as_text())
        [name] = default  # the fusion that holds it (here the program's ROOT), not the conv
        assert name.startswith("ynn_fusion") and not launch_timed(default)
