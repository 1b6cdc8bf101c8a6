"""Times the HW6 generator's x2 upsampling stack: phase and sub-pixel vs transposed convolution.

Forward + backward (grads w.r.t. kernels and input) of each torch
ConvTranspose2d(k=5, s=2, p=2, output_padding=1, bias=False) layer at batch 64, and of the
four layers chained, for the three implementations in the same run ('phase': the CPU default,
one conv per output phase, gradients as the adjoint of a strided conv; 'subpixel': one stride-1
conv + depth-to-space; 'transpose': lax's conv over the stride-dilated input); prints the ratios
transpose / phase and transpose / subpixel (> 1 means faster than 'transpose').

    PYTHONPATH=. python scripts/benchmark_upsample.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.layers import TorchConvTranspose

# (H, C_in, C_out) of the HW6 generator's upsampling layers: 4x4x512 -> ... -> 64x64x3.
LAYERS = [(4, 512, 256), (8, 256, 128), (16, 128, 64), (32, 64, 3)]
K, S, P, OP = 5, 2, 2, 1
IMPLS = ("phase", "subpixel", "transpose")


def make_step(layers, impl):
    """jit(grad) of sum(stack(x) * cot) w.r.t. (params, x): one forward + one backward."""
    mods = [TorchConvTranspose(c, K, S, P, OP, use_bias=False, implementation=impl)
            for _, _, c in layers]

    def loss(params, x, cot):
        for mod, prm in zip(mods, params):
            x = mod.apply(prm, x)
        return jnp.sum(x * cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def bench(layers, impl, batch, repeats, rng):
    """Median seconds of one forward+backward of `layers` (list of (H, C_in, C_out))."""
    h0, c0, _ = layers[0]
    x = jnp.asarray(rng.standard_normal((batch, h0, h0, c0)), jnp.float32)
    params, cin = [], c0
    for _, _, c in layers:
        params.append({"params": {"kernel": jnp.asarray(
            0.02 * rng.standard_normal((K, K, cin, c)), jnp.float32)}})
        cin = c
    h_out = h0 * 2 ** len(layers)
    cot = jnp.asarray(rng.standard_normal((batch, h_out, h_out, cin)), jnp.float32)
    step = make_step(layers, impl)
    jax.block_until_ready(step(params, x, cot))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, x, cot))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"backend={jax.default_backend()} devices={jax.devices()} batch={args.batch} "
          f"k={K} s={S} p={P} op={OP}, forward+backward, median of {args.repeats}")
    print(f"{'layer':<26}{'phase ms':>10}{'subpixel ms':>13}{'transpose ms':>14}"
          f"{'t/phase':>9}{'t/subpixel':>12}")
    cases = [([(h, ci, co)], f"{h}x{h}x{ci}->{2 * h}x{2 * h}x{co}") for h, ci, co in LAYERS]
    cases.append((LAYERS, "stack (4 layers)"))
    for layers, name in cases:
        t = {impl: bench(layers, impl, args.batch, args.repeats, rng) for impl in IMPLS}
        print(f"{name:<26}{1e3 * t['phase']:>10.1f}{1e3 * t['subpixel']:>13.1f}"
              f"{1e3 * t['transpose']:>14.1f}{t['transpose'] / t['phase']:>8.1f}x"
              f"{t['transpose'] / t['subpixel']:>11.1f}x")


if __name__ == "__main__":
    main()
