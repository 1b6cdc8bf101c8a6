"""scripts/layer_benchmark.py: the HW6 layer list and an end-to-end run of jaxgan's side on a tiny
batch (torch is a benchmark extra; its side is checked in real runs by the sums-of-squares
column)."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import layer_benchmark  # noqa: E402

SCRIPT = os.path.join(REPO, "scripts", "layer_benchmark.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def test_the_layers_are_the_hw6_models_and_chain():
    layers = layer_benchmark.hw6_layers()
    critic = [layer for layer in layers if layer["kind"] == "conv"]
    generator = [layer for layer in layers if layer["kind"] == "convT"]
    assert [layer_benchmark.out_size(layer) for layer in critic] == [32, 16, 8, 4, 1]
    assert [layer_benchmark.out_size(layer) for layer in generator] == [8, 16, 32, 64]
    for a, b in zip(layers, layers[1:]):
        if a["kind"] == b["kind"]:  # each layer reads what the one before it writes
            assert (b["h"], b["cin"]) == (layer_benchmark.out_size(a), a["cout"])
    assert (critic[0]["cin"], generator[0]["cin"], generator[-1]["cout"]) == (3, 512, 3)
    # the critic runs 3x per gan step, its first layer's input gradient only for G's update
    assert critic[0]["calls"] == {"fwd": 3, "dx": 1, "dw": 2}
    assert generator[0]["calls"] == {"fwd": 2, "dx": 1, "dw": 1}


def test_the_data_is_the_same_for_both_libraries_and_shaped_for_the_layer():
    layer = layer_benchmark.hw6_layers()[5]  # G convT0 4x4x512 -> 8x8x256
    x, w, dy = layer_benchmark.layer_data(layer, 2)
    assert x.shape == (2, 4, 4, 512) and w.shape == (5, 5, 512, 256)
    assert dy.shape == (2, 8, 8, 256)
    again = layer_benchmark.layer_data(layer, 2)
    assert all((a == b).all() for a, b in zip((x, w, dy), again))


def test_jaxgan_side_runs_and_weighs_each_pass_by_the_gan_step():
    names = ["D conv0 64x64x3->64", "G convT3 32x32x64->3"]
    out = subprocess.run([sys.executable, SCRIPT, "--impls", "jaxgan", "--batch", "2",
                          "--rounds", "2", "--calls", "1", "--layers", ",".join(names)],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()
            if line.startswith(("D conv0", "G convT3"))]
    assert [r[3] for r in rows] == ["fwd", "dx", "dw"] * 2
    total = 0.0
    for r in rows:
        ms, calls, per_step = float(r[4]), int(r[5]), float(r[6])
        assert ms > 0 and per_step == pytest.approx(calls * ms, abs=0.06)
        total += calls * ms
    summary = out.stdout.split("# convolutions of one HW6 gan step (batch 2): jaxgan ")[1]
    assert float(summary.split(" ms")[0]) == pytest.approx(total, abs=1)


@pytest.mark.parametrize("args, needle", [
    (["--impls", "jaxgan,tf"], "'tf'"),
    (["--layers", "D conv9"], "'D conv9'"),
    (["--rounds", "0"], "at least 1"),
])
def test_bad_arguments_are_a_one_line_error(args, needle):
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                         timeout=60, env=ENV)
    assert out.returncode == 2 and needle in out.stderr
    assert "Traceback" not in out.stderr


def test_a_torch_worker_without_torch_is_a_one_line_error():
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here: the worker would run")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, SCRIPT, "--impls", "torch", "--torch_python",
                          sys.executable, "--batch", "2"],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 1 and "No module named 'torch'" in out.stderr
    assert "Traceback" not in out.stderr  # the worker's traceback went to its log
