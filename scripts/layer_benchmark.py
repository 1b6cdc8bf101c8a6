"""Per-layer speed of the HW6 DCGAN's convolutions: jaxgan against PyTorch, pass by pass.

    python scripts/layer_benchmark.py                    # CPU, batch 64, f32, both libraries
    python scripts/layer_benchmark.py --impls jaxgan     # jaxgan alone (no torch needed)

`benchmark.py` says how fast the whole training step is; this says which layer and which pass
makes the difference. Each convolution of configs/hw6_anime.py (the critic's four k4 s2 p1
convs and its last k4 valid conv; the generator's four k5 s2 p2 op1 transposed convs) is timed
alone in its forward pass, its input gradient (dx) and its kernel gradient (dw):

  jaxgan   `layers.conv2d` / `layers.conv_transpose_torch` and their VJPs, each jitted alone with
           `layers.step_compiler_options`, as the training step compiles them (NHWC; with
           oneDNN's convolutions where `layers.ONEDNN_OPS` and the shape rules pick them);
  jaxgan-xla  the same with `layers.ONEDNN_OPS = 0`: XLA's own convolutions throughout;
  torch    `F.conv2d` / `F.conv_transpose2d` and `aten.convolution_backward` asked for that one
           gradient, what autograd calls (NCHW), with --threads intra-op threads.

Both get the same values (drawn here with numpy, transposed to each library's layout), and the
table says how far their outputs' sums of squares differ, so a row that times the wrong thing
shows. Each library runs in its own worker process and the parent alternates them round by
round (--rounds), each round timing every pass --calls times (its first call, compiling or
warming up, is made once before); a cell is the median over rounds of each round's median.
"per gan step" weighs each pass by how often one HW6 gan step runs it: critic forward 3 (real,
fake, the generator's update), kernel gradient 2, input gradient 3 (the first layer's 1: only
the generator's update needs the image's gradient); generator forward 2, each gradient 1. Convolutions only: normalisation, activations and the
optimizer are in benchmark.py's step time, and XLA may overlap or fuse differently inside the
step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import benchmark  # scripts/ (this script's directory): the worker line protocol

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PASSES = ("fwd", "dx", "dw")
IMPLS = ("jaxgan", "torch", "jaxgan-xla")


def hw6_layers(size: int = 64, width: int = 64, z_channels: int = 512) -> list[dict]:
    """The HW6 model's convolutions: name, kind, input H and C, output C, k, s, p, op, and how
    often one gan step runs each pass (see the module docstring)."""
    layers = []
    h, cin = size, 3
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers.append(dict(name=f"D conv{i} {h}x{h}x{cin}->{cout}", kind="conv", h=h, cin=cin,
                           cout=cout, k=4, s=2, p=1, op=0,
                           calls={"fwd": 3, "dx": 1 if i == 0 else 3, "dw": 2}))
        h, cin = h // 2, cout
    layers.append(dict(name=f"D conv4 {h}x{h}x{cin}->1", kind="conv", h=h, cin=cin, cout=1,
                       k=h, s=1, p=0, op=0, calls={"fwd": 3, "dx": 3, "dw": 2}))
    h, cin = 4, z_channels
    for i, cout in enumerate((z_channels // 2, z_channels // 4, z_channels // 8, 3)):
        layers.append(dict(name=f"G convT{i} {h}x{h}x{cin}->{cout}", kind="convT", h=h,
                           cin=cin, cout=cout, k=5, s=2, p=2, op=1,
                           calls={"fwd": 2, "dx": 1, "dw": 1}))
        h, cin = 2 * h, cout
    return layers


def out_size(layer: dict) -> int:
    h, k, s, p, op = (layer[key] for key in ("h", "k", "s", "p", "op"))
    if layer["kind"] == "convT":
        return (h - 1) * s - 2 * p + k + op
    return (h + 2 * p - k) // s + 1


def layer_data(layer: dict, batch: int, seed: int = 0):
    """x [N, H, W, C_in], kernel (flax layout: [k, k, C_in, C_out], a transposed conv's as
    TorchConvTranspose holds it) and the output cotangent dy [N, H', W', C_out], float32."""
    rng = np.random.default_rng(seed)
    o = out_size(layer)
    x = rng.standard_normal((batch, layer["h"], layer["h"], layer["cin"]), np.float32)
    w = 0.02 * rng.standard_normal((layer["k"], layer["k"], layer["cin"], layer["cout"]),
                                   np.float32)
    dy = rng.standard_normal((batch, o, o, layer["cout"]), np.float32)
    return x, w, dy


def _timed(fn, calls: int) -> float:
    """Median seconds of `calls` calls of fn (which returns when its work is done)."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sum_squares(a) -> float:
    a = np.asarray(a, np.float64)
    return float(np.sum(a * a))


# ----------------------------------------------------------------------------- workers


def jax_passes(layer: dict, batch: int) -> dict:
    """pass -> (run(): blocks until done, the output's sum of squares)."""
    import jax

    from jaxgan import layers

    x, w, dy = (jax.device_put(a) for a in layer_data(layer, batch))
    if layer["kind"] == "convT":
        def f(x, w):
            return layers.conv_transpose_torch(x, w, layer["s"], layer["p"], layer["op"])
    else:
        pads = ((layer["p"],) * 2,) * 2

        def f(x, w):
            return layers.conv2d(x, w, layer["s"], pads)
    fns = {"fwd": (lambda x, w, dy: f(x, w)),
           "dx": (lambda x, w, dy: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0]),
           "dw": (lambda x, w, dy: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0])}
    options = layers.step_compiler_options(jax.default_backend())
    passes = {}
    for name, fn in fns.items():
        compiled = jax.jit(fn, compiler_options=options).lower(x, w, dy).compile()
        out = jax.block_until_ready(compiled(x, w, dy))
        passes[name] = ((lambda c=compiled: jax.block_until_ready(c(x, w, dy))),
                        _sum_squares(out))
    return passes


def torch_passes(layer: dict, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    x, w, dy = layer_data(layer, batch)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    dy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
    s, p, op = layer["s"], layer["p"], layer["op"]
    transposed = layer["kind"] == "convT"
    # torch's layouts: conv [C_out, C_in, k, k]; ConvTranspose2d [C_in, C_out, k, k] with the
    # taps flipped against flax's (layers.kernel_to_torch)
    w = (w.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1] if transposed else w.transpose(3, 2, 0, 1))
    w = torch.from_numpy(w.copy())
    if transposed:
        def fwd():
            return F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op)
    else:
        def fwd():
            return F.conv2d(x, w, stride=s, padding=p)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, [s, s], [p, p], [1, 1], transposed, [op, op], 1, mask)

    fns = {"fwd": fwd, "dx": lambda: backward([True, False, False])[0],
           "dw": lambda: backward([False, True, False])[1]}
    passes = {}
    with torch.no_grad():
        for name, fn in fns.items():
            passes[name] = (fn, _sum_squares(fn().numpy()))
    return passes


def worker_main(impl: str, batch: int, calls: int, threads: int, names: list[str]) -> None:
    """Line protocol: after {'ready': sums}, each 'round' on stdin -> {'t': {layer: {pass: s}}}."""
    send = benchmark.protocol_send()
    try:
        if impl == "torch":
            import torch

            torch.set_num_threads(threads)
            make = torch_passes
        else:
            sys.path.insert(0, REPO)
            from jaxgan import host_memory

            host_memory.keep_freed_memory()  # as jaxgan's CLIs run
            if impl == "jaxgan-xla":  # XLA's own convolutions, oneDNN off
                from jaxgan import layers as jaxgan_layers

                jaxgan_layers.ONEDNN_OPS = 0
            make = jax_passes
        layers = [layer for layer in hw6_layers() if layer["name"] in names]
        passes = {layer["name"]: make(layer, batch) for layer in layers}
    except Exception as e:  # report; the parent says which worker failed
        import traceback

        traceback.print_exc()
        send({"error": benchmark.error_text(e)})
        return
    send({"ready": {n: {k: v[1] for k, v in p.items()} for n, p in passes.items()}})
    for line in sys.stdin:
        if line.strip() != "round":
            return
        send({"t": {n: {k: _timed(v[0], calls) for k, v in p.items()}
                    for n, p in passes.items()}})


class Worker:
    def __init__(self, impl: str, python: str, args, names: list[str], env: dict, log):
        self.impl = impl
        cmd = [python, os.path.abspath(__file__), "--worker", impl, "--batch", str(args.batch),
               "--calls", str(args.calls), "--threads", str(args.threads),
               "--layers", ",".join(names)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, env=env)
        self.times: dict = {}
        self.sums = self._recv()["ready"]

    def _recv(self) -> dict:
        msg = benchmark.read_message(self.proc)
        if "error" in msg:
            raise RuntimeError(f"{self.impl} worker: {msg['error']}")
        return msg

    def round(self) -> None:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        for name, passes in self._recv()["t"].items():
            for key, t in passes.items():
                self.times.setdefault(name, {}).setdefault(key, []).append(t)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ----------------------------------------------------------------------------- parent


def report(layers: list[dict], workers: dict, batch: int) -> list[dict]:
    """Prints the table; returns its rows (ms per call and per gan step, per implementation)."""
    impls = list(workers)
    head = f"{'layer':<26} {'pass':<4} " + " ".join(f"{i + ' ms':>10}" for i in impls)
    both = len(impls) == 2
    if both:
        head += f" {'torch/jaxgan':>12} {'sum sq diff':>11}"
    head += f" {'x/step':>6} " + " ".join(f"{i + '/step':>12}" for i in impls)
    print(head)
    rows, totals = [], dict.fromkeys(impls, 0.0)
    for layer in layers:
        for key in PASSES:
            name, n = layer["name"], layer["calls"][key]
            ms = {i: 1e3 * statistics.median(workers[i].times[name][key]) for i in impls}
            row = {"layer": name, "pass": key, "calls_per_gan_step": n, "ms": ms}
            line = f"{name:<26} {key:<4} " + " ".join(f"{ms[i]:>10.2f}" for i in impls)
            if both:
                a, b = (workers[i].sums[name][key] for i in impls)
                row["sum_squares_rel_diff"] = abs(a - b) / max(abs(a), abs(b), 1e-30)
                line += (f" {ms['torch'] / ms['jaxgan']:>11.2f}x"
                         f" {row['sum_squares_rel_diff']:>11.1e}")
            line += f" {n:>6} " + " ".join(f"{n * ms[i]:>12.1f}" for i in impls)
            for i in impls:
                totals[i] += n * ms[i]
            print(line)
            rows.append(row)
    print(f"# convolutions of one HW6 gan step (batch {batch}): "
          + ", ".join(f"{i} {totals[i]:.0f} ms" for i in impls)
          + (f"; torch/jaxgan {totals['torch'] / totals['jaxgan']:.2f}x" if both else ""))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--impls", default="jaxgan,torch",
                    help="comma list of jaxgan, torch, jaxgan-xla")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per library")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per pass and round")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch intra-op threads (XLA:CPU uses one per core it may run on)")
    ap.add_argument("--layers", default="", help="comma list of layer names (default: all)")
    ap.add_argument("--torch_python", default="",
                    help="interpreter for the torch worker (default as benchmark.py's)")
    ap.add_argument("--json", default="", help="also write the rows here")
    ap.add_argument("--log", default="", help="worker stderr (default: a temp file)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    all_names = [layer["name"] for layer in hw6_layers()]
    names = [n.strip() for n in args.layers.split(",") if n.strip()] or all_names
    if args.worker:
        worker_main(args.worker, args.batch, args.calls, args.threads, names)
        return 0
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in IMPLS] + [n for n in names if n not in all_names]
    if unknown or not impls:
        ap.error(f"unknown implementation or layer {', '.join(map(repr, unknown))}; "
                 f"implementations: {', '.join(IMPLS)}; layers: {', '.join(all_names)}")
    if min(args.batch, args.rounds, args.calls, args.threads) < 1:
        ap.error("--batch, --rounds, --calls and --threads must be at least 1")
    torch_python = args.torch_python or benchmark.torch_interpreter()
    log_path = args.log or os.path.join("/tmp", f"jaxgan_layer_benchmark_{os.getpid()}.log")
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    cmd = [os.path.basename(sys.executable), "scripts/layer_benchmark.py"]
    print(f"# {' '.join(cmd + (argv if argv is not None else sys.argv[1:]))}")
    print(f"# cpu batch={args.batch} float32 cpus={len(os.sched_getaffinity(0))} "
          f"load={os.getloadavg()[0]:.1f} rounds={args.rounds} x {args.calls} calls; "
          f"torch python: {torch_python}; worker log: {log_path}")
    with open(log_path, "w") as log:
        workers = {}
        try:
            for impl in impls:  # one at a time: compiling does not disturb the other's setup
                python = sys.executable if impl.startswith("jaxgan") else torch_python
                workers[impl] = Worker(impl, python, args, names, env, log)
            for _ in range(args.rounds):
                for w in workers.values():
                    w.round()
        except RuntimeError as e:
            print(f"error: {e} ({log_path})", file=sys.stderr)
            return 1
        finally:
            for w in workers.values():
                w.close()
    layers = [layer for layer in hw6_layers() if layer["name"] in names]
    rows = report(layers, workers, args.batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
