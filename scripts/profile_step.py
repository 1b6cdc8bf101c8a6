"""Where the HW6 training step's time goes: a jax.profiler trace summed by XLA operation.

    python scripts/profile_step.py                    # gan, batch 64, f32, 3 profiled steps
    python scripts/profile_step.py --loss wgan-gp --steps 1 --top 30

The step is the one `scripts/benchmark.py` times (configs/hw6_anime.py, random resident uint8
images, the layers' CPU defaults). After compiling and --warmup steps, --steps calls run under
`jax.profiler.trace` (XLA:CPU emits one event per thunk with --xla_cpu_enable_xprof_traceme,
which this script adds to XLA_FLAGS). Printed per step:

  * wall time, and the events' summed time (above wall where operations overlap on threads);
  * time by kind of operation: `ynn_fusion` are XLA:CPU's calls into YNNPACK (convolutions and
    dots; plain `convolution` / `dot_general` with older jax, e.g. 0.8), the other names are
    XLA's own fusions (elementwise, normalisation, optimizer, copies);
  * the slowest operations with their convolution or dot shapes, FLOPs (2 x output elements x
    contraction length, from the compiled HLO) and the GFLOP/s they ran at, and the FLOP rate of
    the convolutions and dots in YNNPACK together, to set against the CPU's peak (a large f32 /
    bf16 matmul is timed for that reference: `--peak_matmul`).

Only YNNPACK's calls (`ynn_fusion`) are timed as work. Convolutions and dots that XLA:CPU runs
with its own Eigen kernels (all of them with jax 0.8; those of the step compiled without YNNPACK,
`layers.step_compiler_options`) run on Eigen's thread pool, and their events can end before
the work does (session 18: 9-150 TFLOP/s "measured" on 2 cores). The script prints no rate for
those and says so; their work shows only in the wall time. `--step_options none` profiles the
step as XLA compiles it by default instead (YNNPACK's convolutions where the jaxlib has them).

CPU only: GPU traces name kernels, not HLO operations (use the benchmark's MFU there).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _shape(text: str) -> list[int]:
    m = re.match(r"\w+\[([\d,]*)\]", text)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def op_flops(hlo: str) -> dict[str, tuple[float, str]]:
    """{operation name: (FLOPs, description)} for every convolution and dot in compiled HLO,
    named as the profile names them: the fusion that holds it (jax 0.10's XLA:CPU fuses them
    into YNNPACK calls), else the instruction itself (jax 0.8's). Convolution FLOPs: 2 x
    output elements x kernel spatial taps x input channels (HWIO kernels, as every conv here);
    dot: 2 x output elements x contraction length."""
    computations = {m.group(1): m.group(2) for m in re.finditer(
        r"\n(?:ENTRY )?%?([\w.\-]+) [^\n{]*\{\n(.*?)\n\}", hlo, re.S)}
    callers = {m.group(2): m.group(1) for m in re.finditer(
        r"\n\s*(?:ROOT )?%?([\w.\-]+) = [^\n]* fusion\([^\n]*calls=%?([\w.\-]+)", hlo)}
    out = {}
    for computation, body in computations.items():
        shapes = {m.group(1): _shape(m.group(2)) for m in re.finditer(
            r"%?([\w.\-]+) = (\w+\[[\d,]*\])", body)}
        for line in body.split("\n"):
            op = re.search(r"%?([\w.\-]+) = (\w+\[[\d,]*\])\S* (convolution|dot)\("
                           r"%?([\w.\-]+), %?([\w.\-]+)\)", line)
            if not op:
                continue
            name, y, kind = op.group(1), _shape(op.group(2)), op.group(3)
            a, b = shapes.get(op.group(4)), shapes.get(op.group(5))
            if kind == "convolution":
                window = re.search(r"window=\{([^}]*)\}", line)
                flops = 2.0 * math.prod(y) * math.prod(b[:-1]) if b else 0.0
                desc = f"conv {a}*{b}->{y} {window.group(1) if window else ''}"
            else:
                dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
                k = math.prod(a[int(i)] for i in dims.group(1).split(",") if i) if a and dims else 0
                flops, desc = 2.0 * math.prod(y) * k, f"dot {a}*{b}->{y}"
            owner = callers.get(computation, name)
            f0, d0 = out.get(owner, (0.0, ""))
            out[owner] = (f0 + flops, f"{d0}; {desc}" if d0 else desc)
    return out


def launch_timed(ops: dict) -> set[str]:
    """The convolutions and dots of `op_flops` whose trace events need not time their work: all
    but YNNPACK's calls (Eigen's kernels finish on its thread pool after the event ends)."""
    return {name for name in ops if not name.startswith("ynn_fusion")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loss", choices=("gan", "wgan-gp"), default="gan")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=20, help="slowest operations to list")
    p.add_argument("--peak_matmul", action="store_true",
                   help="also time a 2048^3 matmul in f32 and bf16 (the CPU's GEMM rate)")
    p.add_argument("--json", help="also write the per-operation table here")
    p.add_argument("--step_options", choices=("auto", "none"), default="auto",
                   help="auto: compile the step as jaxgan.train does "
                        "(layers.step_compiler_options); none: XLA's default options")
    args = p.parse_args(argv)

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_xprof_traceme=true").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    from benchmark import compiled_hw6_step, hw6_config, jax_gemm_gflops, random_images
    from jaxgan import host_memory, layers

    host_memory.keep_freed_memory()  # as jaxgan.train runs; before the first computation
    if jax.default_backend() != "cpu":
        print("error: profile_step.py reads XLA:CPU thunk events; run it on CPU", file=sys.stderr)
        return 2
    if args.step_options == "none":
        layers.step_compiler_options = lambda backend: {}
    c = hw6_config(args.loss, args.batch)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    data = random_images(4 * args.batch)
    state, step, _ = compiled_hw6_step(c, dtype, data)
    ops = op_flops(step.as_text())
    untimed = launch_timed(ops)
    for _ in range(args.warmup):
        state, _ = step(state, data)
    jax.block_until_ready(state)

    trace_dir = tempfile.mkdtemp(prefix="jaxgan-profile-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, _ = step(state, data)
            jax.block_until_ready(state)
        wall = (time.perf_counter() - t0) / args.steps
    [path] = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]

    per_op = collections.Counter()
    for e in events:
        name = e["name"]
        if name.startswith("$") or "ThunkExecutor" in name or "Await" in name or "(" in name:
            continue  # python frames, executor bookkeeping, jit dispatch
        per_op[name] += e["dur"] / 1e3 / args.steps  # ms per step
    by_kind = collections.Counter()
    for name, ms in per_op.items():
        by_kind[re.sub(r"\.\d+$", "", name)] += ms
    summed = sum(per_op.values())
    print(f"# HW6 {args.loss}, batch {args.batch}, {args.dtype}, {jax.device_count()} CPU "
          f"device(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.steps} "
          f"profiled step(s)")
    print(f"wall {wall * 1e3:.0f} ms/step; events summed over threads {summed:.0f} ms/step")
    options = layers.step_compiler_options(jax.default_backend())
    print(f"step compiled with {options or 'XLA default options'}")
    if untimed:
        hint = " (--step_options none: YNNPACK's, timed)" if options else ""
        print(f"# note: {len(untimed)} of {len(ops)} convolutions / dots run in XLA's Eigen "
              "kernels, whose events may time only their launch:\n# no FLOP rate is printed for "
              f"them ('launch'); their work is in the wall time{hint}")
    print("\n## by kind (ms/step, share of the summed events)")
    for kind, ms in by_kind.most_common(12):
        print(f"{ms:9.1f}  {100 * ms / summed:5.1f}%  {kind}")
    timed = [name for name in per_op if name in ops and name not in untimed]
    conv_ms = sum(per_op[name] for name in timed)
    conv_flops = sum(ops[name][0] for name in timed)
    if timed:
        print(f"\nconvolutions and dots in YNNPACK: {conv_ms:.0f} ms/step, "
              f"{conv_flops / 1e9:.1f} GFLOP, {conv_flops / max(conv_ms, 1e-9) / 1e6:.0f} GFLOP/s")
    if args.peak_matmul:
        print(f"2048^3 matmul: f32 {jax_gemm_gflops('float32'):.0f} GFLOP/s, "
              f"bf16 {jax_gemm_gflops('bfloat16'):.0f} GFLOP/s")
    print(f"\n## slowest {args.top} operations (ms/step, GFLOP/s)")
    rows = []
    for name, ms in per_op.most_common():
        flops, desc = ops.get(name, (0.0, ""))
        rows.append({"op": name, "ms": ms, "gflops": flops / 1e9, "desc": desc,
                     "launch_only": name in untimed})
    for r in rows[:args.top]:
        rate = ("launch" if r["launch_only"] else
                f"{r['gflops'] / r['ms'] * 1e3:5.0f}" if r["gflops"] else "    -")
        print(f"{r['ms']:7.1f} {rate}  {r['op']:<28} {r['desc']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_ms": wall * 1e3, "summed_ms": summed, "ops": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
