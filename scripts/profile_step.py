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
  * the FLOP rate of the convolutions and dots in YNNPACK together, to set against the CPU's
    peak (a large f32 / bf16 matmul is timed for that reference: `--peak_matmul`), and the
    bandwidth of XLA's own fusions and copies together (operands' and results' bytes over time);
  * time by model layer and pass (forward, backward, second order), from the HLO's JAX names;
  * the slowest operations with their convolution or dot shapes, FLOPs (2 x output elements x
    contraction length, from the compiled HLO) and the GFLOP/s they ran at, or for a fusion the
    GB/s it ran at (one far below the others reads an operand in a slow order);
  * where oneDNN's convolutions run (`layers.ONEDNN_OPS`): their time by the handlers' own
    clocks (`onednn.call_stats`), per shape and operation with its FLOP rate, and the time
    calls spent waiting for one another, which the custom calls' events include.

Only YNNPACK's calls (`ynn_fusion`) are timed as work. Convolutions and dots that XLA:CPU runs
with its own Eigen kernels (all of them with jax 0.8; those of the step compiled without YNNPACK,
`layers.step_compiler_options`) run on Eigen's thread pool, and their events can end before
the work does (session 18: 9-150 TFLOP/s "measured" on 2 cores). The script prints no rate for
those and says so; their work shows only in the wall time. `--step_options none` profiles the
step as XLA compiles it by default instead (YNNPACK's convolutions where the jaxlib has them).

On a GPU (`--device gpu`) the trace's kernels on the device's streams are summed by the HLO
operation that launched them (the kernel name where none is recorded), so the table says how much
of the step is cuDNN's convolutions (custom calls `cudnn-conv*`, FLOPs counted as above from
their forward shapes) and how much XLA's own fusions (normalisation, activations, optimizer),
how much of the wall time the GPU sat idle, and which model layer and pass (forward, backward,
the gradient penalty's second order) each operation belongs to, from the JAX names in the HLO's
metadata. XLA's own kernels are memory-bound, so for them it prints the bandwidth they ran at
(their operands' and results' bytes over their time) instead of a FLOP rate. XLA's command buffers (CUDA graphs) are off while profiling, since a buffer's kernels
name only the buffer (`--command_buffers` keeps them). `--save_hlo F` writes the compiled HLO
(gzip), `--json F` the per-operation table with each kernel name, to read the run again offline
(`--replay JSON HLO` prints its tables again, here or on any machine).

    python scripts/profile_step.py --device gpu --dtype bfloat16 --batch 512 --json F
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


def _computations(hlo: str) -> tuple[dict[str, str], dict[str, str]]:
    """({computation name: its body}, {fused computation: the fusion instruction that calls
    it}) of HLO text."""
    computations = {m.group(1): m.group(2) for m in re.finditer(
        r"\n(?:ENTRY )?%?([\w.\-]+) [^\n{]*\{\n(.*?)\n\}", hlo, re.S)}
    callers = {m.group(2): m.group(1) for m in re.finditer(
        r"\n\s*(?:ROOT )?%?([\w.\-]+) = [^\n]* fusion\([^\n]*calls=%?([\w.\-]+)", hlo)}
    return computations, callers


def op_flops(hlo: str) -> dict[str, tuple[float, str]]:
    """{operation name: (FLOPs, description)} for every convolution and dot in compiled HLO,
    named as the profile names them: the fusion that holds it (jax 0.10's XLA:CPU fuses them
    into YNNPACK calls), else the instruction itself (jax 0.8's). Convolution FLOPs: 2 x
    output elements x kernel spatial taps x input channels (HWIO kernels, as every conv here);
    dot: 2 x output elements x contraction length."""
    computations, callers = _computations(hlo)
    out = {}
    for computation, body in computations.items():
        shapes = {m.group(1): _shape(m.group(2)) for m in re.finditer(
            r"%?([\w.\-]+) = \(?(\w+\[[\d,]*\])", body)}
        for line in body.split("\n"):
            if "custom-call(" in line and _CUDNN_CONV.search(line):
                counted = _custom_call_flops(line, shapes)
                name = re.search(r"%?([\w.\-]+) = ", line).group(1)
                if counted:
                    owner = callers.get(computation, name)
                    f0, d0 = out.get(owner, (0.0, ""))
                    out[owner] = (f0 + counted[0], f"{d0}; {counted[1]}" if d0 else counted[1])
                continue
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


_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                  "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY_TYPE = re.compile(r"\b(pred|bf16|[fsu](?:8|16|32|64))\[([\d,]*)\]")


def _type_bytes(hlo_type: str) -> int:
    """Bytes of an HLO type: 'bf16[512,64]{1,0}', or a tuple of them (summed)."""
    return sum(_ELEMENT_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY_TYPE.findall(hlo_type))


def op_bytes(hlo: str) -> dict[str, int]:
    """{fusion name: bytes of its operands and its result} for every kernel XLA writes itself
    (a fusion that is not inside another one, or a copy): what an elementwise or reduction
    kernel reads and writes if it touches each operand once, so ms and bytes give the memory
    bandwidth it ran at. An operand read only in part (a slice) or twice counts once, in full."""
    computations, fused = _computations(hlo)
    out = {}
    for computation, body in computations.items():
        if computation in fused:
            continue
        types = {}
        for line in body.split("\n"):
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)", line)
            if not m:
                continue
            name, hlo_type, opcode, rest = m.groups()
            types[name] = hlo_type
            if opcode in ("fusion", "copy"):
                operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
                out[name] = _type_bytes(hlo_type) + sum(_type_bytes(types.get(o, ""))
                                                        for o in operands)
    return out


_CUDNN_CONV = re.compile(r'custom_call_target="__cudnn\$conv(\w*)"')


def _custom_call_flops(line: str, shapes: dict) -> tuple[float, str] | None:
    """FLOPs of a cuDNN convolution custom call (XLA:GPU's form of every convolution and its
    gradients): 2 x forward output elements x kernel taps x input channels per group, i.e.
    2 |W| |Y| / Cout. Forward (and its fused forms): (X, W) -> Y; BackwardInput: (Y, W) -> X;
    BackwardFilter: (X, Y) -> W; dim_labels describe the forward convolution in every kind."""
    call = re.search(r"%?([\w.\-]+) = \(?(\w+\[[\d,]*\])[^=]*? custom-call\(([^)]*)\)", line)
    kind = _CUDNN_CONV.search(line)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", line)
    if not (call and kind and labels):
        return None
    operands = [_shape(o.strip().split(" ")[0]) if "[" in o else shapes.get(o.strip().lstrip("%"))
                for o in call.group(3).split(",") if o.strip()]
    result = _shape(call.group(2))
    kind = kind.group(1) or "Forward"
    if len(operands) < 2 or not all(operands[:2]):
        return None
    w, y = ((result, operands[1]) if kind == "BackwardFilter" else
            (operands[1], operands[0]) if kind == "BackwardInput" else (operands[1], result))
    cout = y[labels.group(1).index("f")]
    window = re.search(r"window=\{([^}]*)\}", line)
    desc = f"cudnn {kind} {operands[0]}*{operands[1]}->{result} {window.group(1) if window else ''}"
    return 2.0 * math.prod(w) * math.prod(y) / cout, desc


def is_xla_operation(event_name: str) -> bool:
    """Whether a CPU trace event is one XLA operation (thunk), not Python frames ('$...'), jit
    dispatch ('...(...)') or the runtime's bookkeeping, e.g. ThunkExecutor or
    'CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice', which spans the whole program
    when it runs on the calling thread (as jaxgan.host_memory has it)."""
    return not (event_name.startswith("$") or "ThunkExecutor" in event_name
                or "Await" in event_name or "(" in event_name or "::" in event_name)


def launch_timed(ops: dict) -> set[str]:
    """The convolutions and dots of `op_flops` whose trace events need not time their work: all
    but YNNPACK's calls (Eigen's kernels finish on its thread pool after the event ends)."""
    return {name for name in ops if not name.startswith("ynn_fusion")}


def device_kernels(planes) -> list[dict]:
    """Kernel (and copy) events on the GPUs' streams of a `jax.profiler.ProfileData`'s planes:
    {op: the HLO operation that launched it (its `hlo_op` stat, else the kernel name), kernel,
    start_ns, ns}."""
    out = []
    for plane in planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue  # derived lines (XLA Ops / Modules) would count a kernel twice
            for e in line.events:
                stats = dict(e.stats)
                out.append({"op": str(stats.get("hlo_op") or e.name), "kernel": e.name,
                            "start_ns": e.start_ns, "ns": e.duration_ns})
    return out


_PASSES = ("forward", "backward", "second order")


def layer_of(op_name: str) -> tuple[str, str]:
    """(model layer, pass) of an HLO operation from the JAX name in its metadata:
    'jit(train_step)/while/body/eval_jaxpr/transpose(jvp(DCGANDiscriminator))/Conv_0/conv'
    -> ('DCGANDiscriminator/Conv_0', 'backward'). The pass counts the transposes (reverse-mode
    differentiations) around the model: 2 is the gradient penalty's second order. Operations
    outside any Flax module (optimizer, losses, sampling) are ('outside the models', '')."""
    passes = op_name.count("transpose(")
    path = re.sub(r"[\w.<>]+\(|\)", "", op_name).split("/")
    modules = [i for i, seg in enumerate(path) if seg[:1].isupper()]
    if not modules:
        return "outside the models", ""
    layer = "/".join(path[modules[0]:modules[0] + 2][:len(path) - modules[0] - 1] or
                     path[modules[0]:modules[0] + 1])
    return layer, _PASSES[min(passes, 2)]


def op_layers(hlo: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (layer, pass)} for every HLO instruction that carries a JAX name."""
    return {m.group(1): layer_of(m.group(2)) for m in re.finditer(
        r"\n\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", hlo)}


def per_operation(kernels: list[dict], steps: int) -> list[dict]:
    """Kernel time per HLO operation, slowest first: {op, ms (per step), runs (per step, as
    often as its slowest kernel was launched: an operation inside the n_critic loop runs
    n_critic times), kernels ({name: ms per step}, slowest first)}."""
    ns, count = collections.defaultdict(collections.Counter), collections.defaultdict(
        collections.Counter)
    for k in kernels:
        ns[k["op"]][k["kernel"]] += k["ns"]
        count[k["op"]][k["kernel"]] += 1
    rows = [{"op": op, "ms": sum(per.values()) / 1e6 / steps,
             "runs": count[op][per.most_common(1)[0][0]] / steps,
             "kernels": {name: t / 1e6 / steps for name, t in per.most_common()}}
            for op, per in ns.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def busy_ns(kernels: list[dict]) -> float:
    """Time at least one kernel ran: the union of their intervals (streams may overlap)."""
    total, end = 0.0, float("-inf")
    for k in sorted(kernels, key=lambda k: k["start_ns"]):
        start, stop = k["start_ns"], k["start_ns"] + k["ns"]
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def main(argv=None) -> int:
    sys.path[:0] = [HERE, os.path.dirname(HERE)]  # benchmark.py and jaxgan, for what follows
    from benchmark import STEP_OPTIONS

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
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--save_hlo", help="write the compiled step's HLO text here (gzip)")
    p.add_argument("--command_buffers", action="store_true",
                   help="GPU: keep XLA's command buffers (CUDA graphs) while profiling; by "
                        "default they are off, so that every kernel names its HLO operation")
    p.add_argument("--step_options", choices=STEP_OPTIONS, default="auto",
                   help="auto: compile the step as jaxgan.train does "
                        "(layers.step_compiler_options); none: XLA's default options; off: "
                        "no YNNPACK at all")
    p.add_argument("--layer_knob", action="append", default=[], metavar="KEY=N",
                   help="set a jaxgan.layers threshold before compiling, as benchmark.py's "
                        "--variants keys do (e.g. thin_gemm_max_channels=16); repeatable")
    p.add_argument("--replay", nargs=2, metavar=("JSON", "HLO"),
                   help="print the GPU tables again from a --json table and a --save_hlo file "
                        "of an earlier --device gpu run, without running anything")
    args = p.parse_args(argv)
    args.knobs = _parse_knobs(p, args.layer_knob)

    if args.replay:
        return replay_gpu(*args.replay, top=args.top)
    if args.device == "gpu":
        return profile_gpu(args)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_xprof_traceme=true").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from benchmark import apply_step_options, jax_gemm_gflops
    from jaxgan import host_memory, layers, onednn

    host_memory.keep_freed_memory()  # as jaxgan.train runs; before the first computation
    if jax.default_backend() != "cpu":
        print("error: without --device gpu, profile_step.py reads XLA:CPU thunk events; "
              "run it on CPU", file=sys.stderr)
        return 2
    apply_step_options(args.step_options)
    state, step, data, hlo = _compiled(args)
    ops = op_flops(hlo)
    untimed = launch_timed(ops)
    state, _ = _run_steps(step, state, data, args.warmup)
    trace_dir = tempfile.mkdtemp(prefix="jaxgan-profile-")
    onednn.call_stats(reset=True)  # count the profiled steps' calls only
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        state, wall = _run_steps(step, state, data, args.steps, block_each=True)
    onednn_calls = onednn.call_stats(reset=True)
    [path] = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]

    # one XLA operation per event, so `per_operation` counts its runs as the GPU's kernels'
    rows = per_operation([{"op": e["name"], "kernel": e["name"], "ns": e["dur"] * 1e3}
                          for e in events if is_xla_operation(e["name"])], args.steps)
    summed = sum(r["ms"] for r in rows)
    print(f"# HW6 {args.loss}, batch {args.batch}, {args.dtype}, {jax.device_count()} CPU "
          f"device(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.steps} "
          f"profiled step(s)" + "".join(f"; {k}={v}" for k, v in args.knobs.items()))
    print(f"wall {wall * 1e3:.0f} ms/step; events summed over threads {summed:.0f} ms/step")
    options = layers.step_compiler_options(jax.default_backend())
    print(f"step compiled with {options or 'XLA default options'}")
    if untimed:
        hint = " (--step_options none: YNNPACK's, timed)" if options else ""
        print(f"# note: {len(untimed)} of {len(ops)} convolutions / dots run in XLA's Eigen "
              "kernels, whose events may time only their launch:\n# no FLOP rate is printed for "
              f"them ('launch'); their work is in the wall time{hint}")
    print("\n".join(cpu_tables(rows, hlo, untimed, args.top)))
    if onednn_calls:
        print("\n".join(onednn_table(onednn_calls, args.steps, wall, args.top)))
    if args.peak_matmul:
        print(f"\n2048^3 matmul: f32 {jax_gemm_gflops('float32'):.0f} GFLOP/s, "
              f"bf16 {jax_gemm_gflops('bfloat16'):.0f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_ms": wall * 1e3, "summed_ms": summed, "ops": rows}, f, indent=1)
    return 0


def _run_steps(step, state, data, n: int, block_each: bool = False):
    """(state after n steps, seconds per step). block_each waits for every step (the CPU trace:
    each step's operations end before the next is dispatched); else only for the last."""
    import jax

    t0 = time.perf_counter()
    for _ in range(n):
        state, _ = step(state, data)
        if block_each:
            jax.block_until_ready(state)
    jax.block_until_ready(state)
    return state, (time.perf_counter() - t0) / max(n, 1)


def _parse_knobs(parser, items: list[str]) -> dict[str, int]:
    """--layer_knob KEY=N items as {key: N}; an unknown key or a non-integer is a usage error."""
    from benchmark import LAYER_KNOBS

    knobs = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in LAYER_KNOBS or not value.lstrip("-").isdigit():
            parser.error(f"--layer_knob {item!r}: expected KEY=N with KEY one of "
                         f"{', '.join(LAYER_KNOBS)}")
        knobs[key] = int(value)
    return knobs


def _compiled(args):
    """(state, compiled step, data, its HLO text) of the benchmark's HW6 step, as its jaxgan
    worker builds it; the HLO is saved if --save_hlo asks."""
    import jax.numpy as jnp

    from benchmark import apply_layer_knobs, compiled_hw6_step, hw6_config, random_images

    apply_layer_knobs(args.knobs)
    c = hw6_config(args.loss, args.batch)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    data = random_images(4 * args.batch)
    state, step, _ = compiled_hw6_step(c, dtype, data)
    hlo = step.as_text()
    if args.save_hlo:
        with gzip.open(args.save_hlo, "wt") as f:
            f.write(hlo)
    return state, step, data, hlo


def _annotate(rows: list[dict], hlo: str, no_layer: str) -> collections.Counter:
    """Adds desc and gflops (a convolution or dot), gbytes (else XLA's own kernel: its
    operands and result), layer and pass to `per_operation`'s rows from the compiled HLO; returns
    ms per step by layer and pass (`no_layer` for an operation without a JAX name)."""
    ops, layers_of, moved = op_flops(hlo), op_layers(hlo), op_bytes(hlo)
    by_layer = collections.Counter()
    for r in rows:
        row_flops, r["desc"] = ops.get(r["op"], (0.0, ""))
        r["gflops"] = row_flops / 1e9
        r["gbytes"] = 0.0 if row_flops else moved.get(r["op"], 0) / 1e9
        r["layer"], r["pass"] = layers_of.get(r["op"], (no_layer, ""))
        by_layer[f"{r['layer']} {r['pass']}".strip()] += r["ms"]
    return by_layer


def _memory_traffic(rows: list[dict]) -> tuple[float, float]:
    """(ms, GB) per step of the annotated rows that are XLA's own kernels."""
    memory = [r for r in rows if r["gbytes"]]
    return sum(r["ms"] for r in memory), sum(r["gbytes"] * r["runs"] for r in memory)


def cpu_tables(rows: list[dict], hlo: str, untimed: set[str], top: int) -> list[str]:
    """The CPU report's lines from `per_operation`'s rows of the trace's XLA operations and the
    compiled step's HLO. Adds desc, gflops, gbytes, layer, pass and launch_only to each row
    (the --json table).

    Rates: GFLOP/s of a convolution or dot that YNNPACK ran (its event times the work),
    'launch' for one in XLA's Eigen kernels (its event may end before the work does), and
    GB/s of XLA's own fusions and copies, their operands' and result's bytes over their time:
    a fusion far below the others' rate reads an operand in a slow order (session 26: Adam
    reading a gradient with its channels swapped ran at 5-12 GB/s, 4x slower than from a
    contiguous one). Events overlap on the threads, so the shares are of their sum."""
    by_layer = _annotate(rows, hlo, "(no JAX name)")
    summed = max(sum(r["ms"] for r in rows), 1e-9)
    by_kind = collections.Counter()
    for r in rows:
        r["launch_only"] = r["op"] in untimed
        by_kind[re.sub(r"\.\d+$", "", r["op"])] += r["ms"]
    lines = ["", "## by kind (ms/step, share of the summed events)"]
    lines += [f"{ms:9.1f}  {100 * ms / summed:5.1f}%  {kind}" for kind, ms in
              by_kind.most_common(12)]
    timed = [r for r in rows if r["gflops"] and not r["launch_only"]]
    if timed:
        conv_ms = sum(r["ms"] for r in timed)
        conv_gflops = sum(r["gflops"] * r["runs"] for r in timed)
        lines += ["", f"convolutions and dots in YNNPACK: {conv_ms:.0f} ms/step, "
                  f"{conv_gflops:.1f} GFLOP, {conv_gflops / max(conv_ms, 1e-9) * 1e3:.0f} GFLOP/s"]
    memory_ms, memory_gb = _memory_traffic(rows)
    lines += ["", f"XLA's own fusions and copies: {memory_ms:.1f} ms/step, {memory_gb:.2f} GB/step "
              f"of operands and results, {memory_gb / max(memory_ms, 1e-9) * 1e3:.1f} GB/s "
              "while they run"]
    lines += ["", "## by model layer and pass (ms/step of events, share; Eigen's convolutions "
              "count only their launch)"]
    lines += [f"{ms:9.1f}  {100 * ms / summed:5.1f}%  {layer}" for layer, ms in
              by_layer.most_common(top)]
    lines += ["", f"## slowest {top} operations (ms/step; rate: GFLOP/s of a convolution or "
              "dot, 'launch' in Eigen, GB/s of a fusion's operands and result)"]
    for r in rows[:top]:
        rate = ("  launch" if r["launch_only"] else
                f"{r['gflops'] * r['runs'] / r['ms'] * 1e3:5.0f} GF" if r["gflops"] else
                f"{r['gbytes'] * r['runs'] / r['ms'] * 1e3:5.1f} GB" if r["gbytes"] else
                "       -")
        lines.append(f"{r['ms']:7.1f} {rate}  {r['op']:<28} {r['desc'] or r['layer']}")
    return lines


def onednn_table(calls: list, steps: int, wall_s: float, top: int) -> list[str]:
    """oneDNN's convolutions by the handlers' own clocks (`onednn.call_stats`): the time they
    worked, against the wall, and the time calls spent waiting for one another, which the
    ffi_call events above include (two XLA threads call; the handlers run one call at a time)."""
    busy = sum(c.busy_s for c in calls) / steps * 1e3
    waiting = sum(c.waiting_s for c in calls) / steps * 1e3
    n = sum(c.calls for c in calls) / steps
    lines = ["", "## oneDNN's convolutions, by the handlers' clocks (ms/step; GFLOP/s: 2 x output "
             "elements x cin x kernel taps of the forward conv, padding taps included)",
             f"busy {busy:.0f} ms/step in {n:.0f} calls ({100 * busy / (wall_s * 1e3):.0f}% of "
             f"the wall); waiting for the lock {waiting:.0f} ms/step (in the ffi_call events, "
             "not work); the rest of the wall is XLA's own work outside them"]
    for c in calls[:top]:
        flops = 2.0 * c.n * c.out_h * c.out_w * c.cout * c.cin * c.kh * c.kw
        rate = flops * c.calls / c.busy_s / 1e9 if c.busy_s > 0 else float("nan")
        lines.append(f"{c.busy_s / steps * 1e3:9.1f}  x{c.calls / steps:<4.0f} "
                     f"{c.busy_s / c.calls * 1e3:6.1f} ms/call {rate:6.0f} GFLOP/s  {c.label}")
    return lines


def gpu_tables(rows: list[dict], hlo: str, top: int) -> list[str]:
    """The GPU report's tables from `per_operation`'s rows and the compiled step's HLO: time in
    convolutions and dots (their FLOP rate) and in XLA's own fusions (their bandwidth), by kind,
    by model layer and pass, and the slowest operations. Adds desc, gflops, gbytes, layer and
    pass to each row (the --json table)."""
    by_layer = _annotate(rows, hlo, "(not one HLO operation)")
    summed = sum(r["ms"] for r in rows)
    by_kind = collections.Counter()
    for r in rows:
        # XLA's own kernels are named after their fusion (input_reduce_fusion_12); an operation
        # may be a command buffer (a CUDA graph of several fusions), so group by kernel name
        by_kind["convolutions and dots (counted)" if r["gflops"] else
                re.sub(r"_\d+$", "", next(iter(r["kernels"])))] += r["ms"]
    counted = [r for r in rows if r["gflops"]]
    conv_ms = sum(r["ms"] for r in counted)
    total_flops = sum(r["gflops"] * r["runs"] for r in counted)
    memory_ms, memory_gb = _memory_traffic(rows)
    lines = [
        f"convolutions and dots: {conv_ms:.2f} ms/step ({100 * conv_ms / max(summed, 1e-9):.0f}% "
        f"of kernel time), {total_flops:.1f} GFLOP/step (all taps), "
        f"{total_flops / max(conv_ms, 1e-9):.0f} TFLOP/s while they run",
        f"XLA's own kernels (fusions): {memory_ms:.2f} ms/step, {memory_gb:.2f} GB/step of "
        f"operands and results, {memory_gb / max(memory_ms, 1e-9):.2f} TB/s while they run",
        "", "## by kind (ms/step, share of kernel time)"]
    lines += [f"{ms:8.2f}  {100 * ms / summed:5.1f}%  {kind}"
              for kind, ms in by_kind.most_common(15)]
    lines += ["", "## by model layer and pass (ms/step, share of kernel time; pass: how many "
              "times the layer was differentiated)"]
    lines += [f"{ms:8.2f}  {100 * ms / summed:5.1f}%  {layer}"
              for layer, ms in by_layer.most_common(top)]
    lines += ["", f"## slowest {top} operations (ms/step, runs/step, rate: TFLOP/s of a "
              "convolution or dot, TB/s of a fusion's operands and result; slowest kernel)"]
    for r in rows[:top]:
        rate = (f"{r['gflops'] * r['runs'] / r['ms']:4.0f} TF" if r["gflops"] else
                f"{r['gbytes'] * r['runs'] / r['ms']:4.2f} TB" if r["gbytes"] else "      -")
        lines.append(f"{r['ms']:7.3f} {r['runs']:4.0f} {rate}  {r['op'][:36]:<36} "
                     f"{next(iter(r['kernels']))[:60]}  {r['desc'][:90]}")
    return lines


def replay_gpu(json_path: str, hlo_path: str, top: int) -> int:
    """`gpu_tables` from a saved run: its per-operation rows and its compiled HLO (gzip or
    text). Rows written before runs were counted (session 23's first run) count one run each
    and list their kernels without times."""
    try:
        with open(json_path) as f:
            saved = json.load(f)
        opener = gzip.open if hlo_path.endswith(".gz") else open
        with opener(hlo_path, "rt") as f:
            hlo = f.read()
    except (OSError, ValueError) as e:
        print(f"error: --replay: {e}", file=sys.stderr)
        return 2
    rows = [{"op": r["op"], "ms": r["ms"], "runs": r.get("runs", 1.0),
             "kernels": (r["kernels"] if isinstance(r["kernels"], dict)
                         else dict.fromkeys(r["kernels"], 0.0))}
            for r in saved["ops"]]
    rows.sort(key=lambda r: -r["ms"])
    print(f"# replay of {json_path}: kernels {sum(r['ms'] for r in rows):.2f} ms/step summed")
    print("\n".join(gpu_tables(rows, hlo, top)))
    return 0


def profile_gpu(args) -> int:
    """The GPU table: kernel time per HLO operation, by kind, against the wall time."""
    os.environ.setdefault("JAX_PLATFORMS", "cuda")
    if not args.command_buffers:  # a command buffer's kernels name only the buffer
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_gpu_enable_command_buffer=").strip()
    import jax
    from jax.profiler import ProfileData

    if jax.default_backend() != "gpu":
        print(f"error: --device gpu, but JAX's backend is {jax.default_backend()}",
              file=sys.stderr)
        return 2
    state, step, data, hlo = _compiled(args)
    state, _ = _run_steps(step, state, data, args.warmup)
    state, untraced = _run_steps(step, state, data, args.steps)
    trace_dir = tempfile.mkdtemp(prefix="jaxgan-profile-")
    with jax.profiler.trace(trace_dir):
        state, wall = _run_steps(step, state, data, args.steps)
    [path] = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    planes = ProfileData.from_file(path).planes
    kernels = device_kernels(planes)
    if not kernels:
        print("error: no kernel events on a GPU stream; the trace's planes and lines: " + "; ".join(
            f"{p.name}: {[line.name for line in p.lines][:8]}" for p in planes), file=sys.stderr)
        return 1
    rows = per_operation(kernels, args.steps)
    busy = busy_ns(kernels) / 1e6 / args.steps
    summed = sum(r["ms"] for r in rows)
    print(f"# HW6 {args.loss}, batch {args.batch}, {args.dtype}, {jax.devices()[0].device_kind}; "
          f"{args.steps} profiled step(s); XLA's command buffers "
          f"{'on' if args.command_buffers else 'off (the times below are without them)'}"
          + "".join(f"; {k}={v}" for k, v in args.knobs.items()))
    print(f"wall {untraced * 1e3:.2f} ms/step untraced, {wall * 1e3:.2f} traced; kernels "
          f"{summed:.2f} ms/step summed, GPU busy {busy:.2f} ({100 * busy / (wall * 1e3):.0f}% of "
          f"the traced wall), {len(kernels) / args.steps:.0f} kernels/step")
    print("\n".join(gpu_tables(rows, hlo, args.top)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_ms": wall * 1e3, "untraced_ms": untraced * 1e3, "busy_ms": busy,
                       "kernel_ms": summed, "layer_knobs": args.knobs, "ops": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
