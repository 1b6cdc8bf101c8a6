"""scripts/benchmark.py end to end on a tiny batch (jaxgan only: torch is a benchmark extra):
it must keep running when the layers it times change."""

import os
import re
import subprocess
import sys
import types

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import benchmark  # noqa: E402


def test_benchmark_runs_the_hw6_step_and_reports_it():
    cmd = [sys.executable, os.path.join(REPO, "scripts", "benchmark.py"), "--losses", "gan",
           "--impls", "jaxgan", "--batch", "4", "--repeats", "1", "--steps", "1",
           "--num_images", "8", "--warmup", "0", "--gemm_peak"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("jaxgan "))
    fields = row.split()
    assert float(fields[1]) > 0  # ms/step
    assert fields[6] == "-" and fields[7] == "1.00x"  # no torch row to compare with
    assert "upsample=phase conv=fast" in out.stdout  # the CPU defaults were timed
    assert "kept_memory=True" in out.stdout  # as the CLIs run (jaxgan.host_memory)
    # the row says whether its step ran oneDNN's convolutions: it does wherever the default
    # asks for them and the handlers build here
    calls = int(re.search(r"onednn=\d+ \((\d+) calls", out.stdout).group(1))
    from jaxgan import layers, onednn
    assert (calls > 0) == bool(layers.ONEDNN_OPS and onednn.available())
    # --gemm_peak: model GFLOP/s = model FLOPs / step time, and its share of the matmul's rate
    flops = float(out.stdout.split("model FLOPs/step (XLA cost analysis")[1].split(": ")[1]
                  .split(" G")[0])
    gemm = float(out.stdout.split("2048^3 float32 matmul ")[1].split(" GFLOP/s")[0])
    rate, share = float(fields[8]), float(fields[9].rstrip("%"))
    assert rate == pytest.approx(flops / (float(fields[1]) / 1e3), rel=0.02, abs=0.1)
    assert share == pytest.approx(100 * rate / gemm, abs=1)


def test_a_misspelt_variant_is_a_one_line_error_not_a_run_of_the_defaults():
    for variant, needle in [("jaxgan:dw_gemm_max=4", "'dw_gemm_max=4'"),
                            ("jaxgan:conv=fastt", "conv must be one of auto, fast, table, xla"),
                            ("jaxgan:thin_gemm_max_channels=x",
                             "thin_gemm_max_channels must be an integer"),
                            ("torch-eager:conv=xla",
                             "torch-eager takes only keep_memory, preload"),
                            ("torch:", "unknown implementation 'torch'")]:
        out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmark.py"),
                              "--variants", variant], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (variant, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("benchmark.py: error: ") and needle in last, (variant, last)
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_preload_and_keep_memory_are_keys_for_every_implementation():
    assert benchmark._parse_variants(
        "torch-eager:preload=libx.so;keep_memory=1,jaxgan:preload=/a/liby.so") == [
        ("torch-eager", {"preload": "libx.so", "keep_memory": "1"}),
        ("jaxgan", {"preload": "/a/liby.so"})]
    base = {"PATH": "/bin"}
    assert benchmark.worker_env(base, {}) is base
    assert benchmark.worker_env(base, {"preload": "libx.so"}) == {"PATH": "/bin",
                                                                  "LD_PRELOAD": "libx.so"}
    assert benchmark.worker_env({"LD_PRELOAD": "a.so"}, {"preload": "b.so"})["LD_PRELOAD"] == (
        "a.so:b.so")


def test_a_preload_the_loader_skipped_is_reported_as_missing():
    maps = ("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/"
            "libtcmalloc_minimal.so.4.5.10\n"
            "7f02-7f03 rw-p 00000000 00:00 0 \n"
            "7f04-7f05 r-xp 00000000 08:01 43 /usr/lib/libc.so.6\n")
    assert benchmark.preload_missing("libtcmalloc_minimal.so.4", maps) == []  # by its soname
    assert benchmark.preload_missing("libtcmalloc_minimal.so.4 libjemalloc.so.2:libc.so.6",
                                     maps) == ["libjemalloc.so.2"]
    assert benchmark.preload_missing("/nowhere/libc.so.6", maps) == ["/nowhere/libc.so.6"]


def test_a_worker_whose_preload_did_not_load_fails_instead_of_timing_the_default():
    cmd = [sys.executable, os.path.join(REPO, "scripts", "benchmark.py"), "--losses", "gan",
           "--impls", "jaxgan:preload=libjaxgan_no_such_allocator.so", "--batch", "4",
           "--repeats", "1", "--num_images", "8", "--warmup", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines()
               if line.startswith("jaxgan[preload="))
    assert ("failed: RuntimeError: LD_PRELOAD library not loaded: "
            "libjaxgan_no_such_allocator.so") in row


def test_step_options_compile_the_step_as_train_does_with_xla_defaults_or_without_ynnpack(
        monkeypatch):
    """The variant key and profile_step's --step_options: 'off' is the no-YNNPACK option that
    jaxlib 0.10 on AMD had before it kept YNNPACK's reductions, for A/B runs of the two."""
    from jaxgan import layers

    monkeypatch.setattr(layers, "step_compiler_options", layers.step_compiler_options)
    as_train = layers.step_compiler_options("cpu")
    benchmark.apply_step_options("auto")
    assert layers.step_compiler_options("cpu") == as_train
    benchmark.apply_step_options("off")
    assert layers.step_compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    benchmark.apply_step_options("none")
    assert layers.step_compiler_options("cpu") == {}
    with pytest.raises(ValueError, match="one of auto, none, off"):
        benchmark.apply_step_options("of")
    assert benchmark._parse_variants("jaxgan:step_options=off") == [
        ("jaxgan", {"step_options": "off"})]


def test_paired_speedups_compare_the_repeats_of_one_round_and_the_fastest_of_each():
    torch_times = [2.0, 3.0, 1.8, 2.4]  # a load spike in round 2 slows torch more
    jax_times = [1.6, 2.0, 1.5, 2.0]
    pair = benchmark.paired_speedups(torch_times, jax_times)
    assert pair["per_round"] == pytest.approx([1.25, 1.5, 1.2, 1.2])
    assert pair["median_of_rounds"] == pytest.approx(1.225)
    assert pair["fastest"] == pytest.approx(1.8 / 1.5)


def test_the_report_gives_each_variant_its_paired_speed_against_torch_eager(capsys):
    def worker(name, times):  # what _report reads of a finished benchmark.Worker
        return types.SimpleNamespace(name=name, times=times, info={}, memory={}, error=None,
                                     metrics={})

    workers = [worker("jaxgan", [1.6, 2.0, 1.5]), worker("torch-eager", [2.0, 3.0, 1.8])]
    args = types.SimpleNamespace(batch=64, dtype="float32", peak_tflops=0.0, device="cpu")
    rows = benchmark._report("gan", workers, args)
    out = capsys.readouterr().out
    assert "jaxgan: vs torch-eager per round 1.25 1.50 1.20 (median 1.25x); " \
           "fastest repeats 1.20x" in out
    assert rows[0]["paired_vs_torch_eager"]["fastest"] == pytest.approx(1.2)
    assert "paired_vs_torch_eager" not in rows[1]  # not against itself
    assert rows[0]["speed_vs_torch_eager"] == pytest.approx(2.0 / 1.6)  # ratio of medians
