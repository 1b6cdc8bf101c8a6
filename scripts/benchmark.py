"""Training-step speed of the HW6 DCGAN: jaxgan against PyTorch, measured in the same run.

    python scripts/benchmark.py                       # CPU, batch 64, f32, gan + wgan-gp
    python scripts/benchmark.py --device gpu --dtype bfloat16 --batch 512 --peak_tflops 989

Model: configs/hw6_anime.py (64x64x3, DCGAN, 5x5 transposed convs, z 100, Adam 1e-4 b1 0.5).
  gan      HW6 exactly: batch norm in G and D, n_critic 1, BCE on logits (non-saturating G).
  wgan-gp  layer-norm critic (model.d_norm='layer'), n_critic 5, gradient penalty 10.
PyTorch: scripts/torch_reference.py, the same architecture, init, optimizers, batch, n_critic
and losses (penalty via autograd.grad(create_graph=True)); eager, and torch.compile where it works.

Each variant runs in its own worker process (so peak memory is its own and thread settings do
not leak) and the parent interleaves the timed repeats round-robin (A B C A B C ...), so a load
spike on a shared machine hits every variant alike. A repeat is `--steps` full training steps
(n_critic critic updates + 1 generator update each) ended by block_until_ready / synchronize;
compilation and `--warmup` steps are excluded. Reported: median seconds per step, images/second
(real images consumed: batch * n_critic per step, as jaxgan.train logs it), compile time (jaxgan:
trace + lower + XLA compile of the step; torch.compile: the first step minus a normal step),
peak memory (CPU: the worker's peak RSS, and its rise over the worker's RSS before the models
were built; GPU: peak device bytes), and speed ratios: "vs torch-eager" = torch-eager time /
this variant's time (the jaxgan row is the issue's goal, >= 1.2 on CPU), "vs jaxgan" likewise.
Below the table, each variant's speed against torch eager round by round (the median of those
ratios), and the ratio of the two variants' fastest repeats (their quietest moment).

Data: random uint8 images resident on the device, gathered by index inside the step for both
(the step is measured, not the input pipeline). FLOPs (GPU MFU, or whenever --peak_tflops is
given): XLA's cost analysis of the jaxgan step lowered with the n_critic loop unrolled and the
plain transposed-conv formulation, i.e. model FLOPs (the sub-pixel kernel's zero taps are not
counted); the same count is used for torch's MFU.

GEMM reference (`--gemm_peak`, any device): each worker also times an n x n x n matmul in the
step's dtype with its own library (n = 2048 on CPU, 8192 on GPU, f32 accumulation, median of
5), and the table gives each variant's model GFLOP/s and its share of the fastest of those GEMM
rates ("of GEMM"), plus the rate issue 5's speed goal would take (1.2x torch eager on CPU, 2x
on GPU). On CPU, where no peak is published for a shared 2-core slice, this is the ceiling a
step of dense convolutions can approach.

Knobs for profiling jaxgan (monkeypatched here; jaxgan itself is not changed):
  --upsample auto|phase|subpixel|transpose   TorchConvTranspose implementation
  --critic_loop auto|scan|unrolled     n_critic loop form
  --xla_flags "..."                    appended to XLA_FLAGS in the jaxgan workers
  --conv auto|fast|table|xla           conv gradients (layers.default_conv_impl): 'fast' =
                                       input gradients of strided convs by output phase, GEMM
                                       kernel gradients of thin layers, transposed convs as
                                       adjoints of strided ones (auto on CPU); 'table' = the
                                       same VJP table in XLA's own forms (auto on GPU); 'xla' =
                                       JAX's own VJPs
  --variants jaxgan:upsample=transpose,jaxgan:conv=xla,...  extra jaxgan variants; keys:
                                       upsample, critic_loop, xla_flags, conv, dw_gemm_max_cin
                                       (layers.DW_GEMM_MAX_CIN: widest input whose kernel
                                       gradient is computed by GEMMs), s2d_max_cin
                                       (layers.S2D_MAX_CIN: widest strided conv that 'table'
                                       computes by space to depth), step_options (auto |
                                       none: XLA's default options | off: no YNNPACK),
                                       thin_output_channels (layers.THIN_OUTPUT_CHANNELS:
                                       widest transposed-conv output computed in the
                                       sub-pixel form; 0 = always by phases),
                                       thin_gemm_max_channels
                                       (layers.THIN_GEMM_MAX_CHANNELS: thinnest side of a
                                       stride-1 conv computed as GEMMs; 0 = off), onednn
                                       (layers.ONEDNN_OPS: 0 = XLA's convolutions),
                                       onednn_tune (0: oneDNN's first implementation per
                                       shape instead of the fastest measured one)
  --variants torch-eager:preload=LIB;keep_memory=1,...   the two keys for every
                                       implementation: preload starts the worker with LIB in
                                       LD_PRELOAD (e.g. libtcmalloc_minimal.so.4, an allocator
                                       that keeps freed memory; a LIB the loader skips is the
                                       worker's error); keep_memory 0 | 1 switches
                                       jaxgan.host_memory (default: on for jaxgan, as its
                                       CLIs run; off for torch; torch gets glibc's half)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FALLBACK_TORCH_PYTHON = "/tmp/pvenv/bin/python"


# ----------------------------------------------------------------------------- workers


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def hw6_config(loss: str, batch: int, critic_loop: str = "auto"):
    sys.path[:0] = [REPO, os.path.join(REPO, "configs")]
    import hw6_anime

    c = hw6_anime.get_config()
    c.data.name = "folder"
    c.data.path = "<random uint8>"
    c.train.batch_size = batch
    c.train.critic_loop = critic_loop
    if loss == "wgan-gp":
        c.loss.name = "wgan-gp"
        c.model.d_norm = "layer"
        c.train.n_critic = 5
    return c


def random_images(n_img: int) -> dict:
    """Device-resident random uint8 images: the benchmark measures the step, not input."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    data = {"images": jax.device_put(rng.integers(0, 256, (n_img, 64, 64, 3), dtype=np.uint8))}
    return jax.block_until_ready(data)


def initial_state(c, n_img: int, dtype=None):
    """Config c's initial train state over n_img resident images (dtype: models.build's)."""
    import jax

    sys.path.insert(0, REPO)
    from jaxgan import models, optim
    from jaxgan import state as state_lib

    g, d = models.build(c, dtype=dtype)
    g_tx, d_tx = optim.make(c)
    create = jax.jit(lambda: state_lib.create(int(c.seed), g, d, g_tx, d_tx, int(c.model.z_dim),
                                              models.data_shape(c), n_img))
    # Random initializers compile slowly on XLA:CPU and are not what is measured.
    return create.lower().compile({"xla_backend_optimization_level": 0})()


def compiled_hw6_step(c, dtype, data):
    """The initial train state and compiled step for config c; also (trace+lower s, compile s)."""
    import jax

    from jaxgan import layers, models, optim
    from jaxgan import step as step_lib

    state = initial_state(c, data["images"].shape[0], dtype)
    g, d = models.build(c, dtype=dtype)
    g_tx, d_tx = optim.make(c)
    t0 = time.perf_counter()
    step_fn = step_lib.make_train_step(g, d, g_tx, d_tx, c)
    lowered = jax.jit(step_fn, donate_argnums=0,  # compiled as jaxgan.train compiles it
                      compiler_options=layers.step_compiler_options(jax.default_backend())
                      ).lower(state, data)
    t1 = time.perf_counter()
    step = lowered.compile()
    return state, step, (t1 - t0, time.perf_counter() - t1)


def _matmul_gflops(matmul, n: int) -> float:
    """GFLOP/s of `matmul()`, an n x n x n matmul that returns when it is done: median of 5
    after one untimed call."""
    matmul()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / sorted(times)[2] / 1e9


def jax_gemm_gflops(dtype_name: str, n: int = 2048) -> float:
    """`_matmul_gflops` in this dtype on JAX's default device. bf16 inputs: the faster of an f32
    output and a bf16 one (what PyTorch's reference, `a @ a`, returns). XLA:CPU ran the bf16
    output at half the f32 one's rate (2048^3 on the 2-core EPYC, session 24: 153-158 against
    329-364 GFLOP/s); on an H200 JAX's f32-output form reached 576-691 TFLOP/s where PyTorch's
    bf16 one reached 865-875 (session 23), so each backend gets its faster form."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32)
    forms = [jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))]
    if dtype_name == "bfloat16":
        forms.append(jax.jit(jnp.dot))  # bf16 output
    return max(_matmul_gflops(lambda: f(a, a).block_until_ready(), n) for f in forms)


def _torch_gemm_gflops(torch, dtype_name: str, dev: str, n: int) -> float:
    """The same matmul with torch (bf16 inputs, as autocast runs them; f32 otherwise)."""
    a = torch.ones(n, n, dtype=torch.bfloat16 if dtype_name == "bfloat16" else torch.float32,
                   device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return _matmul_gflops(lambda: (a @ a, sync()), n)


def _gemm_n(device: str) -> int:
    return 8192 if device == "gpu" else 2048


def _keep_memory(spec: dict) -> bool:
    """Whether this worker keeps freed memory (`jaxgan.host_memory`): jaxgan's by default, as
    its CLIs do; torch's only when the variant asks (`keep_memory=1`: glibc's half)."""
    from jaxgan import host_memory

    jaxgan = spec["impl"] == "jaxgan"
    if (spec.get("keep_memory") or ("1" if jaxgan else "0")) != "1":
        return False
    return host_memory.keep_freed_memory() if jaxgan else host_memory.keep_freed_heap()


def _jax_worker(spec: dict, send) -> None:
    if spec.get("xla_flags"):
        flags = os.environ.get("XLA_FLAGS", "") + " " + spec["xla_flags"]
        os.environ["XLA_FLAGS"] = flags.strip()
    if spec["device"] == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif spec["count_flops"] and os.environ.get("JAX_PLATFORMS") in ("cuda", "gpu"):
        os.environ["JAX_PLATFORMS"] += ",cpu"  # `_model_flops` counts on a CPU lowering
    import jax
    import jax.numpy as jnp

    kept = _keep_memory(spec)  # before the first computation creates the CPU client
    from jaxgan import config as config_lib, layers, onednn, step as step_lib

    if spec["upsample"] != "auto":
        layers.default_upsample_impl = lambda backend: spec["upsample"]
    if spec.get("conv", "auto") != "auto":
        layers.default_conv_impl = lambda backend: spec["conv"]
    apply_layer_knobs(spec)
    if spec.get("onednn_tune") is not None:
        onednn.set_tuning(spec["onednn_tune"] == "1")
    apply_step_options(spec.get("step_options"))
    dtype = jnp.bfloat16 if spec["dtype"] == "bfloat16" else jnp.float32
    c = hw6_config(spec["loss"], spec["batch"], spec["critic_loop"])
    config_lib.validate(c)
    data = random_images(spec["num_images"])
    rss0 = _rss_mb()
    state, step, (trace_lower_s, xla_compile_s) = compiled_hw6_step(c, dtype, data)
    info = {"compile_s": trace_lower_s + xla_compile_s, "trace_lower_s": trace_lower_s,
            "xla_compile_s": xla_compile_s,
            "backend": jax.default_backend(), "devices": len(jax.devices()),
            "device_kind": jax.devices()[0].device_kind,
            "loop": step_lib.loop_kind(c.train.critic_loop),
            "upsample": layers.default_upsample_impl(jax.default_backend()),
            "conv": layers.default_conv_impl(jax.default_backend()),
            **{key: getattr(layers, name) for key, name in LAYER_KNOBS.items()},
            "step_options": layers.step_compiler_options(jax.default_backend()),
            "kept_memory": kept, "onednn_calls": onednn_calls(step.as_text()),
            "onednn_unavailable": onednn.unavailable_reason()}
    if spec["count_flops"]:
        try:
            info["flops"] = _model_flops(c, dtype, state, data)
        except Exception as e:  # a missing FLOP count costs the MFU column, not the timing
            print(f"model FLOPs not counted: {type(e).__name__}: {e}", file=sys.stderr)
    if spec.get("gemm_peak"):
        info["gemm_gflops"] = jax_gemm_gflops(spec["dtype"], _gemm_n(spec["device"]))
    for _ in range(spec["warmup"]):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    info["onednn_tuned"] = onednn.tuning_stats()  # the shapes the warm-up step timed

    def run(n):
        nonlocal state
        t = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, data)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - t, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def memory():
        out = {"peak_rss_mb": _peak_rss_mb(), "rss_before_models_mb": rss0}
        try:
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
        except Exception:  # CPU devices have no memory stats
            pass
        return out

    _serve(send, info, run, memory, spec["steps"])


def _model_flops(c, dtype, state, data) -> float:
    """XLA cost-analysis FLOPs of one step with plain (lax) convs and an unrolled loop.

    The count is the HLO's, so any backend's lowering gives it; jax 0.11's GPU lowering
    answers None (seen on an H200), so there the step is lowered for the CPU from shapes alone."""
    import jax

    from jaxgan import layers, models, optim
    from jaxgan import step as step_lib

    saved, saved_conv = layers.default_upsample_impl, layers.default_conv_impl
    layers.default_upsample_impl = lambda backend: "transpose"
    layers.default_conv_impl = lambda backend: "xla"
    try:
        c = c.copy_and_resolve_references()
        c.train.critic_loop = "unrolled"
        g, d = models.build(c, dtype=dtype)
        g_tx, d_tx = optim.make(c)
        step = jax.jit(step_lib.make_train_step(g, d, g_tx, d_tx, c))
        cost = _flops_of(step.lower(state, data))
        if cost is None and jax.default_backend() != "cpu":
            cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
            shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu),
                                  (state, data))
            cost = _flops_of(step.lower(*shapes))
        if cost is None:
            raise RuntimeError("XLA's cost analysis has no FLOP count on this backend")
        return cost
    finally:
        layers.default_upsample_impl, layers.default_conv_impl = saved, saved_conv


def _flops_of(lowered) -> float | None:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _torch_worker(spec: dict, send) -> None:
    kept = _keep_memory(spec)
    import torch

    sys.path.insert(0, HERE)
    import torch_reference

    gpu = spec["device"] == "gpu"
    if not gpu:
        torch.set_num_threads(spec["threads"])
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    dev = "cuda" if gpu else "cpu"
    amp = torch.bfloat16 if spec["dtype"] == "bfloat16" else None
    n_critic = 5 if spec["loss"] == "wgan-gp" else 1
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rss0 = _rss_mb()
    step, _ = torch_reference.make_step(
        spec["loss"], spec["batch"], n_critic, lr=1e-4, device=dev, amp_dtype=amp,
        channels_last=gpu, compile_mode="default" if spec["impl"] == "torch-compile" else None,
        num_images=spec["num_images"])

    def sync():
        if gpu:
            torch.cuda.synchronize()

    # compile / autotune / allocator warm-up happen in the first steps
    t0 = time.perf_counter()
    out = step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(spec["warmup"], 1)):
        step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    normal = time.perf_counter() - t0
    info = {"compile_s": max(first - normal, 0.0) if spec["impl"] == "torch-compile" else None,
            "first_step_s": first, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "kept_memory": kept}
    if spec.get("gemm_peak"):
        info["gemm_gflops"] = _torch_gemm_gflops(torch, spec["dtype"], dev,
                                                 _gemm_n(spec["device"]))
    if gpu:
        torch.cuda.reset_peak_memory_stats()

    def run(n):
        t = time.perf_counter()
        for _ in range(n):
            out = step()
        sync()
        dt = time.perf_counter() - t
        return dt, {"d/loss": float(out[0]), "g/loss": float(out[1])}

    def memory():
        m = {"peak_rss_mb": _peak_rss_mb(), "rss_before_models_mb": rss0}
        if gpu:
            m["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return m

    del out
    _serve(send, info, run, memory, spec["steps"])


def _serve(send, info, run, memory, steps) -> None:
    """Line protocol on stdin/stdout: 'run' -> {'t': seconds}, 'done' -> memory, exit."""
    send({"ready": info})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t, metrics = run(steps)
            send({"t": t, "metrics": metrics})
        elif cmd == "done":
            send({"memory": memory()})
            return


def protocol_send():
    """A worker's side of the line protocol: its stdout carries only '@@' + JSON lines, library
    chatter goes to stderr (the worker log). Returns send(obj)."""
    out = sys.stdout
    sys.stdout = sys.stderr

    def send(obj):
        out.write("@@" + json.dumps(obj) + "\n")
        out.flush()

    return send


def error_text(e: BaseException) -> str:
    """A worker's error in one line for the parent: its type and first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def read_message(proc) -> dict:
    """The next '@@' message from a worker process; {'error': ...} when it exited instead."""
    while True:
        line = proc.stdout.readline()
        if not line:
            return {"error": f"worker exited (code {proc.wait()}); see the log"}
        if line.startswith("@@"):
            return json.loads(line[2:])


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    send = protocol_send()
    sys.path.insert(0, REPO)  # jaxgan, for either implementation (host_memory)
    try:
        if os.environ.get("LD_PRELOAD") and os.path.exists("/proc/self/maps"):
            with open("/proc/self/maps") as f:
                missing = preload_missing(os.environ["LD_PRELOAD"], f.read())
            if missing:
                raise RuntimeError(f"LD_PRELOAD library not loaded: {', '.join(missing)}")
        if spec["impl"].startswith("jaxgan"):
            _jax_worker(spec, send)
        else:
            _torch_worker(spec, send)
    except Exception as e:  # report, the parent prints it in the table
        import traceback

        traceback.print_exc()
        send({"error": error_text(e)})


# ----------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, name: str, python: str, spec: dict, env: dict, log):
        self.name, self.spec = name, spec
        self.log = log
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            cwd=REPO)
        self.times: list[float] = []
        self.info: dict = {}
        self.error: str | None = None
        self.metrics: dict = {}
        self.memory: dict = {}

    def recv(self) -> dict:
        return read_message(self.proc)

    def start(self) -> None:
        msg = self.recv()
        if "error" in msg:
            self.error = msg["error"]
        else:
            self.info = msg["ready"]

    def repeat(self) -> None:
        if self.error:
            return
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        msg = self.recv()
        if "error" in msg:
            self.error = msg["error"]
            return
        self.times.append(msg["t"] / self.spec["steps"])
        self.metrics = msg["metrics"]

    def finish(self) -> None:
        if not self.error:
            self.proc.stdin.write("done\n")
            self.proc.stdin.flush()
            msg = self.recv()
            self.memory = msg.get("memory", {})
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        self.proc.wait(timeout=60)


IMPLS = ("jaxgan", "torch-eager", "torch-compile")
# --variants keys that set an integer threshold in jaxgan.layers: key -> attribute
LAYER_KNOBS = {"dw_gemm_max_cin": "DW_GEMM_MAX_CIN", "s2d_max_cin": "S2D_MAX_CIN",
               "thin_output_channels": "THIN_OUTPUT_CHANNELS",
               "thin_gemm_max_channels": "THIN_GEMM_MAX_CHANNELS", "onednn": "ONEDNN_OPS"}


def onednn_calls(hlo_text: str) -> int:
    """How many of a compiled program's operations are jaxgan's oneDNN convolutions."""
    return hlo_text.count('custom_call_target="jaxgan_onednn_conv_')


def apply_layer_knobs(knobs: dict) -> None:
    """Sets the jaxgan.layers thresholds named by LAYER_KNOBS keys in `knobs` (None: leave)."""
    from jaxgan import layers

    for key, name in LAYER_KNOBS.items():
        if knobs.get(key) is not None:
            setattr(layers, name, int(knobs[key]))


STEP_OPTIONS = ("auto", "none", "off")


def apply_step_options(choice: str | None) -> None:
    """How the step is compiled: 'auto' (or None) as jaxgan.train does
    (`layers.step_compiler_options`), 'none' with XLA's default options (YNNPACK wherever the
    jaxlib uses it), 'off' without YNNPACK at all (`layers._WITHOUT_YNNPACK`, the option that
    Intel CPUs get under jaxlib >= 0.12; AMD ones under 0.10 and >= 0.12 keep YNNPACK's
    reductions)."""
    from jaxgan import layers

    if choice == "none":
        layers.step_compiler_options = lambda backend: {}
    elif choice == "off":
        layers.step_compiler_options = lambda backend: dict(layers._WITHOUT_YNNPACK)
    elif choice not in (None, "auto"):
        raise ValueError(f"step options must be one of {', '.join(STEP_OPTIONS)}, got {choice!r}")


SPEED_GOAL = {"cpu": 1.2, "gpu": 2.0}  # issue 5: jaxgan's speed over torch eager (+ AMP on GPU)
# --variants keys (jaxgan only) and their allowed values (None: any; int: an integer); the
# same choices as the command-line options of those names
VARIANT_KEYS = {"upsample": ("auto", "phase", "subpixel", "transpose"),
                "critic_loop": ("auto", "scan", "unrolled"), "xla_flags": None,
                "conv": ("auto", "fast", "table", "xla"), **dict.fromkeys(LAYER_KNOBS, int),
                "step_options": STEP_OPTIONS, "preload": None,
                "keep_memory": ("0", "1"), "onednn_tune": ("0", "1")}
# how a worker process starts or allocates, so valid for any implementation
PROCESS_KEYS = {"preload", "keep_memory"}


def _parse_variants(text: str) -> list[tuple[str, dict]]:
    """'jaxgan:upsample=transpose;critic_loop=scan,torch-eager' -> [(impl, overrides)].

    Raises ValueError (one line) for an unknown implementation, key or value: a misspelt key
    would otherwise time the defaults under the variant's name."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        impl, _, rest = item.partition(":")
        if impl not in IMPLS:
            raise ValueError(f"unknown implementation {impl!r} (one of {', '.join(IMPLS)})")
        kv = {}
        for pair in filter(None, rest.split(";")):
            key, eq, value = pair.partition("=")
            allowed = VARIANT_KEYS.get(key, ())
            if not eq or key not in VARIANT_KEYS:
                raise ValueError(f"{pair!r} in {item!r} is not KEY=VALUE with KEY one of "
                                 f"{', '.join(VARIANT_KEYS)}")
            if allowed is int and not value.lstrip("-").isdigit() or (
                    isinstance(allowed, tuple) and value not in allowed):
                want = "an integer" if allowed is int else "one of " + ", ".join(allowed)
                raise ValueError(f"{key}={value!r} in {item!r}: {key} must be {want}")
            kv[key] = value
        if set(kv) - PROCESS_KEYS and impl != "jaxgan":
            raise ValueError(f"{item!r}: {impl} takes only {', '.join(sorted(PROCESS_KEYS))}; "
                             "the other variant keys are jaxgan's knobs")
        out.append((impl, kv))
    return out


def worker_env(env: dict, kv: dict) -> dict:
    """A variant's worker environment: `preload` appended to LD_PRELOAD."""
    if not kv.get("preload"):
        return env
    return dict(env, LD_PRELOAD=":".join(filter(None, [env.get("LD_PRELOAD"), kv["preload"]])))


def preload_missing(preload: str, maps: str) -> list[str]:
    """LD_PRELOAD entries not mapped into the process whose /proc/self/maps is `maps`: the
    loader only warns about a library it cannot load, and the worker would time the default."""
    mapped = {fields[-1] for fields in map(str.split, maps.splitlines())
              if fields and "/" in fields[-1]}
    names = {os.path.basename(path) for path in mapped}
    missing = []
    for lib in filter(None, preload.replace(" ", ":").split(":")):
        if "/" in lib:  # a path: the file it resolves to (a .so.4 link names .so.4.5.10)
            loaded = os.path.realpath(lib) in mapped
        else:  # a bare name, found on the loader's path
            loaded = any(name.startswith(lib) for name in names)
        if not loaded:
            missing.append(lib)
    return missing


def _label(impl: str, kv: dict) -> str:
    return impl + ("[" + ",".join(f"{k}={v}" for k, v in kv.items()) + "]" if kv else "")


def torch_interpreter() -> str:
    """This interpreter if it imports torch, else FALLBACK_TORCH_PYTHON where that exists
    (torch is a benchmark-only extra, often in a venv of its own)."""
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0 and os.path.exists(FALLBACK_TORCH_PYTHON):
        return FALLBACK_TORCH_PYTHON
    return sys.executable


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--losses", default="gan,wgan-gp")
    ap.add_argument("--impls", default="jaxgan,torch-eager,torch-compile",
                    help="comma list of jaxgan, torch-eager, torch-compile")
    ap.add_argument("--variants", default="",
                    help="extra variants, e.g. 'jaxgan:upsample=transpose,jaxgan:critic_loop=scan'")
    ap.add_argument("--upsample", default="auto",
                    choices=VARIANT_KEYS["upsample"])
    ap.add_argument("--critic_loop", default="auto", choices=VARIANT_KEYS["critic_loop"])
    ap.add_argument("--xla_flags", default="")
    ap.add_argument("--conv", default="auto", choices=VARIANT_KEYS["conv"],
                    help="jaxgan conv gradients (layers.default_conv_impl); auto: fast on CPU, "
                         "table on GPU")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (median)")
    ap.add_argument("--steps", type=int, default=1, help="training steps per timed repeat")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch intra-op threads on CPU (XLA:CPU uses one per core it may run on)")
    ap.add_argument("--num_images", type=int, default=1024, help="device-resident random images")
    ap.add_argument("--peak_tflops", type=float, default=0.0,
                    help="accelerator peak (dense, this dtype) for model FLOPs utilization")
    ap.add_argument("--gemm_peak", action="store_true",
                    help="also time a large matmul in each worker and report the step's model "
                         "GFLOP/s against the fastest")
    ap.add_argument("--torch_python", default="",
                    help="interpreter for torch workers (default: this one if it imports torch, "
                         f"else {FALLBACK_TORCH_PYTHON})")
    ap.add_argument("--json", default="", help="also write all results here")
    ap.add_argument("--log", default="", help="worker stderr (default: a temp file)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    try:
        variants = _parse_variants(args.impls) + _parse_variants(args.variants)
    except ValueError as e:
        ap.error(str(e))

    torch_python = args.torch_python or torch_interpreter()
    log_path = args.log or os.path.join("/tmp", f"jaxgan_benchmark_{os.getpid()}.log")
    log = open(log_path, "w")
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    else:  # the workers share the GPU: JAX's would each reserve 75% of it by default
        n_jax = sum(impl == "jaxgan" for impl, _ in variants)
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.4, 0.8 / max(1, n_jax)):.2f}")

    count_flops = args.device == "gpu" or args.peak_tflops > 0 or args.gemm_peak
    cmd = [os.path.basename(sys.executable), "scripts/benchmark.py"]
    cmd += argv if argv is not None else sys.argv[1:]
    print(f"# {' '.join(cmd)}")
    print(f"# device={args.device} batch={args.batch} dtype={args.dtype} "
          f"cpus={len(os.sched_getaffinity(0))} "
          f"load={os.getloadavg()[0]:.1f} repeats={args.repeats} x {args.steps} step(s), "
          f"warmup={args.warmup}; torch python: {torch_python}; worker log: {log_path}")
    results = []
    for loss in args.losses.split(","):
        workers = []
        for impl, kv in variants:
            spec = {"impl": impl, "loss": loss, "device": args.device, "batch": args.batch,
                    "dtype": args.dtype, "steps": args.steps, "warmup": args.warmup,
                    "threads": args.threads, "num_images": args.num_images,
                    "upsample": kv.get("upsample", args.upsample),
                    "critic_loop": kv.get("critic_loop", args.critic_loop),
                    "xla_flags": kv.get("xla_flags", args.xla_flags),
                    "conv": kv.get("conv", args.conv),
                    **{key: kv.get(key) for key in LAYER_KNOBS},
                    "step_options": kv.get("step_options"), "gemm_peak": args.gemm_peak,
                    "keep_memory": kv.get("keep_memory"), "onednn_tune": kv.get("onednn_tune"),
                    "count_flops": count_flops and impl == "jaxgan" and not kv}
            w = Worker(_label(impl, kv), sys.executable if impl == "jaxgan" else torch_python,
                       spec, worker_env(env, kv), log)
            w.start()  # one at a time: compile times are not disturbed by each other
            workers.append(w)
        for _ in range(args.repeats):
            for w in workers:
                w.repeat()
        for w in workers:
            w.finish()
        results += _report(loss, workers, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _ratio(v: float, width: int) -> str:
    """A speed ratio column; '-' where the reference variant was not run (nan)."""
    return f"{v:>{width - 1}.2f}x" if v == v else f"{'-':>{width}}"


def paired_speedups(ref_times: list[float], times: list[float]) -> dict:
    """A variant's speed against the reference, repeat by repeat. The repeats are interleaved
    round-robin, so round i's two times saw the same machine: the median of the per-round
    ratios resists a drift that the ratio of medians absorbs, and the fastest repeats' ratio is
    the two on the quietest machine this run saw (a load spike can slow one library's threads
    more than the other's)."""
    rounds = [r / t for r, t in zip(ref_times, times)]
    return {"per_round": rounds, "median_of_rounds": statistics.median(rounds),
            "fastest": min(ref_times) / min(times)}


def _report(loss: str, workers, args) -> list[dict]:
    n_critic = 5 if loss == "wgan-gp" else 1
    flops = next((w.info.get("flops") for w in workers if w.info.get("flops")), None)
    times = {w.name: w.times for w in workers if w.times}
    ref = {name: statistics.median(ts) for name, ts in times.items()}
    base = ref.get("jaxgan")
    print(f"\n## {loss} (n_critic={n_critic}, batch {args.batch}, {args.dtype})")
    head = f"{'variant':<34}{'ms/step':>9}{'img/s':>8}{'compile s':>10}{'peak MB':>9}{'+MB':>7}"
    head += f"{'vs torch-eager':>15}{'vs jaxgan':>10}"
    head += f"{'MFU':>7}" if args.peak_tflops and flops else ""
    gemm = max((w.info.get("gemm_gflops", 0.0) for w in workers), default=0.0)
    head += f"{'GFLOP/s':>9}{'of GEMM':>8}" if gemm and flops else ""
    print(head)
    rows = []
    for w in workers:
        row = {"loss": loss, "variant": w.name, **{k: w.info.get(k) for k in w.info},
               "memory": w.memory, "times_s": w.times, "error": w.error, "metrics": w.metrics}
        rows.append(row)
        if w.error or not w.times:
            print(f"{w.name:<34}  failed: {w.error}")
            continue
        t = statistics.median(w.times)
        ips = args.batch * n_critic / t
        comp = w.info.get("compile_s")
        mem = w.memory.get("device_peak_mb") or w.memory.get("peak_rss_mb", 0)
        rise = (w.memory.get("peak_rss_mb", 0) - w.memory.get("rss_before_models_mb", 0)
                if "device_peak_mb" not in w.memory else float("nan"))
        # speed ratios: > 1 means this variant is faster than the reference
        vs_torch = ref["torch-eager"] / t if "torch-eager" in ref else float("nan")
        vs_jax = base / t if base else float("nan")
        line = (f"{w.name:<34}{1e3 * t:>9.0f}{ips:>8.1f}"
                f"{(f'{comp:.1f}' if comp is not None else '-'):>10}{mem:>9.0f}{rise:>7.0f}"
                f"{_ratio(vs_torch, 15)}{_ratio(vs_jax, 10)}")
        if args.peak_tflops and flops:
            mfu = flops / t / (args.peak_tflops * 1e12)
            row["mfu"] = mfu
            line += f"{100 * mfu:>6.1f}%"
        if gemm and flops:
            rate = row["model_gflops_per_s"] = flops / t / 1e9
            line += f"{rate:>9.1f}{100 * rate / gemm:>7.0f}%"
        row.update({"median_s": t, "images_per_s": ips, "speed_vs_torch_eager": vs_torch,
                    "speed_vs_jaxgan": vs_jax})
        if "torch-eager" in times and w.name != "torch-eager":
            row["paired_vs_torch_eager"] = paired_speedups(times["torch-eager"], w.times)
        print(line)
    extra = []
    for w, row in zip(workers, rows):
        if "threads" in w.info:
            extra.append(f"{w.name}: torch {w.info['torch']} threads={w.info['threads']} "
                         f"interop={w.info['interop_threads']} "
                         f"kept_memory={w.info['kept_memory']}")
        if "loop" in w.info:
            i = w.info
            extra.append(f"{w.name}: {i['backend']} x{i['devices']} loop={i['loop']} "
                         f"upsample={i['upsample']} conv={i['conv']} "
                         f"dw_gemm<={i['dw_gemm_max_cin']} s2d<={i['s2d_max_cin']} "
                         f"thin<={i['thin_output_channels']} "
                         f"gemm<={i['thin_gemm_max_channels']} "
                         f"onednn={i['onednn']} ({i['onednn_calls']} calls"
                         + (f", unavailable: {i['onednn_unavailable']}"
                            if i["onednn_unavailable"] else "")
                         + (", {} shapes tuned in {:.1f}s".format(*i["onednn_tuned"])
                            if i.get("onednn_tuned", (0,))[0] else "") + ") "
                         f"kept_memory={i['kept_memory']} "
                         f"options={i['step_options']} trace+lower {i['trace_lower_s']:.1f}s "
                         f"+ XLA {w.info['xla_compile_s']:.1f}s")
        if w.times:
            extra.append(f"{w.name}: ms/step per repeat "
                         + " ".join(f"{1e3 * x:.0f}" for x in w.times))
        pair = row.get("paired_vs_torch_eager")
        if pair:
            extra.append(f"{w.name}: vs torch-eager per round "
                         + " ".join(f"{x:.2f}" for x in pair["per_round"])
                         + f" (median {pair['median_of_rounds']:.2f}x); fastest repeats "
                         f"{pair['fastest']:.2f}x")
        if w.info.get("gemm_gflops"):
            extra.append(f"{w.name}: {_gemm_n(args.device)}^3 {args.dtype} matmul "
                         f"{w.info['gemm_gflops']:.0f} GFLOP/s")
    if flops:
        extra.append("model FLOPs/step (XLA cost analysis, transpose conv, unrolled): "
                     f"{flops / 1e9:.1f} G")
    if gemm and flops and "torch-eager" in ref:
        factor = SPEED_GOAL[args.device]
        goal = flops / (ref["torch-eager"] / factor) / 1e9
        extra.append(f"{factor:g}x torch eager would take {goal:.1f} model GFLOP/s, "
                     f"{100 * goal / gemm:.0f}% of the fastest matmul here ({gemm:.0f} GFLOP/s)")
    for e in extra:
        print("#   " + e)
    return rows


if __name__ == "__main__":
    sys.exit(main())
