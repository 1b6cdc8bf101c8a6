"""PyTorch-semantics transposed convolution with a fast sub-pixel path.

Why this exists: DCGAN generators (NTU ML2022 HW6, Radford et al. 2015) upsample with
`torch.nn.ConvTranspose2d`. XLA:CPU lowers a transposed convolution to a convolution over a
zero-dilated input, which is 10-20x slower than the same math written as a stride-1 convolution
to s*s*C_out channels followed by depth-to-space ("sub-pixel", Shi et al. 2016). The two give
the same numbers; only the order of the sums changes. On CPU the default ('phase') goes one
step further: one stride-1 conv per output phase with only that phase's taps (no multiplies by
the sub-pixel kernel's zero taps; with 1-4 output channels one GEMM over every tap and each
phase's sum of its taps); its gradients are a strided conv and that conv's kernel gradient,
because a transposed conv is the input gradient of a strided conv.

Conventions (everything NHWC):
  * torch `ConvTranspose2d(cin, cout, k, s, p, output_padding=op)` maps to
    `TorchConvTranspose(cout, k, stride=s, padding=p, output_padding=op)`;
    output size is (H - 1) * s - 2 * p + k + op, as in torch.
  * Parameters are stored exactly like `flax.linen.ConvTranspose(..., transpose_kernel=False)`
    stores them: `kernel: [k, k, C_in, C_out]`, `bias: [C_out]`. With
    `padding=torch_to_flax_padding(k, s, p, op)` that flax layer computes the same function from
    the same params (the tests check this).
  * A torch weight `w: [C_in, C_out, k, k]` becomes our kernel by a spatial flip and an axis
    move: `kernel = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)` (`kernel_from_torch`). The flip
    is there because flax's transpose_kernel=False kernel is correlated with the dilated input,
    while torch scatters each input pixel through the unflipped kernel.

Second part: `conv2d` / `conv_general_dilated`, ordinary convolutions (what `flax.linen.Conv`
computes, same parameters) whose *gradients* are written in the form each backend runs fast;
the DCGAN critic passes `conv_general_dilated` to `nn.Conv`. Chosen per backend by
`default_conv_impl`: 'fast' on CPU, 'table' (XLA's own forms, one VJP table) on GPU, lax's own
VJPs ('xla') on TPU.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from jaxgan import env, onednn

Array = jax.Array
IntOr2 = int | Sequence[int]

IMPLEMENTATIONS = ("auto", "phase", "subpixel", "transpose")
GRAD_IMPLEMENTATIONS = ("auto", "fast", "table", "xla")
_DN = ("NHWC", "HWIO", "NHWC")


def default_upsample_impl(backend: str) -> str:
    """Implementation that 'auto' picks for a JAX backend name ('cpu', 'gpu', 'tpu').

    CPU: 'phase' (forward 1.4-1.9x faster than 'subpixel' on the HW6 generator's layers, which
    are 10-20x faster than 'transpose'; BUILD_NOTES.md). GPU: 'subpixel'; the HW6 bf16 steps at
    batch 512 on an H200 with JAX's own VJPs (session 23), gan / WGAN-GP: 'subpixel' 6.37 /
    43.7 ms, 'phase' (then four convs by phase) 7.31 / 46.2 ms, 'transpose' 136 / 184 ms
    (XLA:GPU's conv rewriter gives a conv over a dilated input to cuDNN's backward-input
    kernel only when its kernel operand is a reverse, which flax's layout is not). 'phase' in
    the 'table' form, cuDNN's backward-input kernel, was slower still (session 25, against
    the 'table' default): 7.84 / 36.1 ms against 6.08 / 29.4 ms. TPU: 'subpixel', not
    measured.
    """
    return "phase" if backend == "cpu" else "subpixel"


def _pair(v: IntOr2, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v  # type: ignore[return-value]


def _check(k: int, s: int, p: int, op: int) -> None:
    if k < 1 or s < 1:
        raise ValueError(f"kernel_size and stride must be >= 1, got k={k}, s={s}")
    if p < 0:
        raise ValueError(f"padding must be >= 0 like torch's, got {p}")
    if not 0 <= op < s:
        raise ValueError(
            f"output_padding must be in [0, stride) like torch's, got op={op}, s={s}; "
            "use a larger stride or a smaller output_padding"
        )


def torch_to_flax_padding(
    kernel_size: IntOr2, stride: IntOr2, padding: IntOr2, output_padding: IntOr2 = 0
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit padding pairs that make `nn.ConvTranspose(transpose_kernel=False)` match torch.

    flax pads the stride-dilated input by these amounts and correlates it with the kernel, so
    torch's (p, op) becomes (k - 1 - p, k - 1 - p + op) per spatial axis.
    """
    ks, ss = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    ps, ops = _pair(padding, "padding"), _pair(output_padding, "output_padding")
    for k, s, p, op in zip(ks, ss, ps, ops):
        _check(k, s, p, op)
    return tuple((k - 1 - p, k - 1 - p + op) for k, p, op in zip(ks, ps, ops))  # type: ignore


def kernel_from_torch(w: Any) -> Any:
    """torch ConvTranspose2d weight [C_in, C_out, kh, kw] -> our kernel [kh, kw, C_in, C_out].

    Works on numpy or jax arrays (a torch tensor: pass `w.detach().cpu().numpy()`).
    """
    return w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)


def kernel_to_torch(kernel: Any) -> Any:
    """Inverse of `kernel_from_torch`: [kh, kw, C_in, C_out] -> [C_in, C_out, kh, kw]."""
    return kernel.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]


def _subpixel_axis_plan(k: int, s: int, p: int) -> tuple[np.ndarray, int]:
    """Per-phase taps of one spatial axis.

    Output o = s*q + r reads input q + d_r + m through kernel tap j0_r + s*m (m = 0, 1, ...),
    with P = k - 1 - p, j0_r = (P - r) mod s, d_r = (r + j0_r - P) / s. Aligning all phases on
    a common window starting at input offset dmin gives a stride-1 kernel of T taps.

    Returns:
      idx: int[s, T]; idx[r, t] is the kernel tap that phase r applies to input q + dmin + t,
        or k (an appended zero tap) where phase r reads nothing.
      dmin: input offset of tap 0 (usually negative, i.e. left zero padding).
    """
    big_p = k - 1 - p
    phases = []
    for r in range(s):
        j0 = (big_p - r) % s
        taps = list(range(j0, k, s))
        phases.append(((r + j0 - big_p) // s, taps))  # exact division by construction
    used = [(d, taps) for d, taps in phases if taps]
    dmin = min(d for d, _ in used)
    dmax = max(d + len(taps) - 1 for d, taps in used)
    idx = np.full((s, dmax - dmin + 1), k, dtype=np.int32)
    for r, (d, taps) in enumerate(phases):
        for m, j in enumerate(taps):
            idx[r, d - dmin + m] = j
    return idx, dmin


def subpixel_kernel(kernel: Array, stride: IntOr2, padding: IntOr2) -> Array:
    """Rearranges our transposed-conv kernel into the stride-1 sub-pixel kernel.

    A static gather, so gradients flow back to `kernel` in its canonical layout.

    Args:
      kernel: [kh, kw, C_in, C_out] (flax transpose_kernel=False layout).
    Returns:
      [Th, Tw, C_in, sh * sw * C_out], output channels ordered (row phase, col phase, C_out)
      as `depth_to_space` expects.
    """
    kh, kw, cin, cout = kernel.shape
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    iy, _ = _subpixel_axis_plan(kh, sh, ph)
    ix, _ = _subpixel_axis_plan(kw, sw, pw)
    kp = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index kh / kw = zero tap
    g = kp[iy[:, :, None, None], ix[None, None, :, :]]  # [sh, Th, sw, Tw, C_in, C_out]
    g = g.transpose(1, 3, 4, 0, 2, 5)  # [Th, Tw, C_in, sh, sw, C_out]
    return g.reshape(iy.shape[1], ix.shape[1], cin, sh * sw * cout)


def depth_to_space(y: Array, sh: int, sw: int) -> Array:
    """[N, H, W, sh*sw*C] with channels ordered (sh, sw, C) -> [N, H*sh, W*sw, C]."""
    n, h, w, c = y.shape
    c_out = c // (sh * sw)
    y = y.reshape(n, h, w, sh, sw, c_out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, h * sh, w * sw, c_out)


def conv_transpose_torch(
    x: Array,
    kernel: Array,
    stride: IntOr2 = 2,
    padding: IntOr2 = 0,
    output_padding: IntOr2 = 0,
    implementation: str = "auto",
    precision: Any = None,
    grad_impl: str = "auto",
) -> Array:
    """Functional torch-semantics transposed convolution (no bias).

    Args:
      x: [N, H, W, C_in].
      kernel: [kh, kw, C_in, C_out] (see `kernel_from_torch`); same dtype as x.
      implementation: 'phase', 'subpixel', 'transpose' or 'auto' (`default_upsample_impl`).
      grad_impl: 'fast' | 'table' | 'xla' | 'auto' (`conv2d`); same values. 'fast' and 'table':
        'phase' is the input gradient of a strided conv (`_phase_conv_transpose`),
        'subpixel''s conv goes through `conv2d`'s custom VJPs; 'xla': JAX differentiates the
        forward ops itself.
    Returns:
      [N, (H-1)*sh - 2*ph + kh + oph, (W-1)*sw - 2*pw + kw + opw, C_out].
    """
    kh, kw = kernel.shape[:2]
    strides = _pair(stride, "stride")
    pads = _pair(padding, "padding")
    opads = _pair(output_padding, "output_padding")
    flax_pads = torch_to_flax_padding((kh, kw), strides, pads, opads)  # also validates
    if implementation == "auto":
        implementation = default_upsample_impl(jax.default_backend())
    if implementation == "transpose":
        return lax.conv_general_dilated(
            x, kernel, (1, 1), flax_pads, lhs_dilation=strides,
            dimension_numbers=_DN, precision=precision,
        )
    if implementation == "phase":
        return _phase_conv_transpose(x, kernel, strides, pads, opads, precision, grad_impl)
    if implementation != "subpixel":
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return _subpixel_conv_transpose(x, kernel, strides, pads, opads, precision, grad_impl)


def _torch_out_size(n_in: int, k: int, s: int, p: int, op: int) -> int:
    """Output length of torch's ConvTranspose2d along one axis."""
    return (n_in - 1) * s - 2 * p + k + op


def _subpixel_conv_transpose(x, kernel, strides, pads, opads, precision, grad_impl):
    """The 'subpixel' implementation: the transposed conv as one stride-1 conv to s*s*C_out
    channels + depth-to-space, that conv through `conv2d`, whose gradients follow grad_impl."""
    kh, kw = kernel.shape[:2]
    out_sizes, conv_pads = [], []
    for axis, (k, s, p, op) in enumerate(zip((kh, kw), strides, pads, opads)):
        n_in = x.shape[1 + axis]
        n_out = _torch_out_size(n_in, k, s, p, op)
        idx, dmin = _subpixel_axis_plan(k, s, p)
        q = -(-n_out // s)  # rows per phase, ceil(n_out / s)
        lo = -dmin
        hi = q + idx.shape[1] - 1 - n_in - lo
        # Negative padding (large torch padding) means cropping the input instead.
        start, stop = max(0, -lo), n_in - max(0, -hi)
        x = lax.slice_in_dim(x, start, stop, axis=1 + axis)
        out_sizes.append(n_out)
        conv_pads.append((max(lo, 0), max(hi, 0)))
    y = conv2d(x, subpixel_kernel(kernel, strides, pads), (1, 1), tuple(conv_pads), precision,
               grad_impl)
    return depth_to_space(y, *strides)[:, : out_sizes[0], : out_sizes[1], :]


def _phase_axis_plan(n_in: int, k: int, s: int, p: int, op: int):
    """Per output phase r of one axis: (kernel taps, input padding lo, hi), rows per phase q,
    output size. Phase r computes outputs s*q' + r from inputs q' + d_r + m, m < len(taps)."""
    n_out = _torch_out_size(n_in, k, s, p, op)
    q = -(-n_out // s)
    big_p = k - 1 - p
    phases = []
    for r in range(s):
        j0 = (big_p - r) % s
        taps = tuple(range(j0, k, s))
        d = (r + j0 - big_p) // s
        phases.append((taps, -d, q + d + len(taps) - 1 - n_in))  # negative pads crop
    return phases, q, n_out


# Widest output (channels) of a transposed conv computed as one GEMM and a sum of its taps by
# phase (`_thin_phase_forward`) instead of one conv per phase: a conv with 1-4 output channels
# uses the CPU poorly. Forward of the HW6 32x32x64 -> 64x64x3 transposed convs, batch 64, alone
# (Zen 4 EPYC, BUILD_NOTES.md session 34): k5 8.8-9.3 ms vs oneDNN's 13.6-18.6 ms and XLA's
# sub-pixel conv 15.7-16.8 ms; k4 (the critic's input gradient) 4.0-4.5 vs 9.1-11.6 and 16 ms.
# Session 18 had measured phases (one conv each) slower than the sub-pixel conv up to 8
# channels and faster from 16.
THIN_OUTPUT_CHANNELS = 4


def _by_phases(x, kernel, strides, pads, opads, phase):
    """The transposed conv's output assembled from its s*s phases: `phase(ty, tx, y_pads,
    x_pads, (qy, qx))` computes the outputs (s*i + r, s*j + c) from kernel taps ty x tx (every
    s-th row / column) over x padded by y_pads, x_pads (negative: cropped), [N, qy, qx, C]."""
    (py, qy, oy), (px, qx, ox) = (
        _phase_axis_plan(x.shape[1 + a], kernel.shape[a], strides[a], pads[a], opads[a])
        for a in (0, 1))
    rows = [jnp.stack([phase(ty, tx, (loy, hiy), (lox, hix), (qy, qx)) for tx, lox, hix in px],
                      axis=3)  # [N, qy, qx, sx, C]
            for ty, loy, hiy in py]
    y = jnp.stack(rows, axis=2)  # [N, qy, sy, qx, sx, C]
    return y.reshape(x.shape[0], qy * strides[0], qx * strides[1], -1)[:, :oy, :ox]


def _spatial_pad(x, y_pads, x_pads):
    """x [N, H, W, ...] padded with zeros (cropped where negative) along H and W."""
    return lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0), (*y_pads, 0), (*x_pads, 0)) + ((0, 0, 0),) * (x.ndim - 3))


def _window(z, axis: int, start: int, size: int):
    """z[start:start + size] along axis, zeros where that runs past z's ends."""
    n = z.shape[axis]
    lo = min(max(start, 0), n)
    hi = max(lo, min(start + size, n))
    pads = [(0, 0, 0)] * z.ndim
    pads[axis] = (lo - start, start + size - hi, 0)
    return lax.pad(lax.slice_in_dim(z, lo, hi, axis=axis), jnp.zeros((), z.dtype), pads)


def _thin_phase_forward(x, kernel, strides, pads, opads, precision):
    """The transposed conv with few output channels as col2im: one GEMM multiplies every input
    pixel by every tap, z [N, H, W, kh, kw, C_out] (K = C_in, N = taps x C_out: GEMM-sized,
    unlike a conv to 3 channels), then each output phase sums its own taps' shifted windows of
    z, in f32; no multiplies by the zero taps that the sub-pixel kernel adds (36 for 25 at
    k5 s2, 36 for 16 at k4 s2). Each window is padded by itself rather than z once per phase:
    XLA then fuses the pads into the sum (HW6 RGB layer + tanh alone: 9.5-11.3 vs 14-17 ms)."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    z = lax.dot_general(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout),
                        (((3,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=jnp.float32).reshape(n, h, w, kh, kw, cout)

    def phase(ty, tx, y_pads, x_pads, q):
        # output (i, j) of this phase reads padded z at (i + my, j + mx): z at minus the pads
        return sum((_window(_window(z[:, :, :, a, b, :], 1, my - y_pads[0], q[0]),
                            2, mx - x_pads[0], q[1])
                    for my, a in enumerate(ty) for mx, b in enumerate(tx)),
                   jnp.zeros((n, *q, cout), jnp.float32))

    return _by_phases(x, kernel, strides, pads, opads, phase).astype(x.dtype)


def _phase_forward(x, kernel, strides, pads, opads, precision, cpu_forms=False):
    """One stride-1 conv per output phase with exactly that phase's taps (the sub-pixel conv
    also multiplies the zero taps: 36 instead of 25 for k5 s2, 36 instead of 16 for k4 s2);
    thin outputs (`THIN_OUTPUT_CHANNELS`) as one GEMM (`_thin_phase_forward`). cpu_forms
    (only where this is a custom VJP's value, never differentiated by JAX): the phase convs
    go to oneDNN's forward convolution where `_by_onednn` picks it."""
    if kernel.shape[3] <= THIN_OUTPUT_CHANNELS:
        return _thin_phase_forward(x, kernel, strides, pads, opads, precision)

    def phase(ty, tx, y_pads, x_pads, q):
        if not ty or not tx:  # k < s: this phase reads no tap
            return jnp.zeros((x.shape[0], *q, kernel.shape[3]), x.dtype)
        # the taps are every s-th row / column: a strided slice, not a gather
        kr = lax.slice(kernel, (ty[0], tx[0], 0, 0),
                       (ty[-1] + 1, tx[-1] + 1, *kernel.shape[2:]), (*strides, 1, 1))
        return _stride1_conv(x, kr, (y_pads, x_pads), precision, cpu_forms)
    return _by_phases(x, kernel, strides, pads, opads, phase)


def _stride1_conv(x, kernel, pads, precision, cpu_forms):
    """The stride-1 conv of x padded by pads ((lo, hi) per spatial axis; negative crops):
    oneDNN's forward (it pads by itself) where `_by_onednn` picks it, else XLA's over x padded."""
    crop = _spatial_pad(x, *(tuple(min(p, 0) for p in lo_hi) for lo_hi in pads))
    onednn_pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    if _by_onednn(ONEDNN_FORWARD, crop.shape, kernel.shape, (1, 1), onednn_pads, x.dtype,
                  cpu_forms):
        return onednn.conv(crop, kernel, (1, 1), onednn_pads)
    return _plain_conv(_spatial_pad(x, *pads), kernel, (1, 1), ((0, 0), (0, 0)), precision)


def _flip_io(kernel: Array) -> Array:
    """[k, k, A, B] -> [k, k, B, A], taps reversed: the kernel of the adjoint operation.

    A transposed conv with our kernel is the input gradient of the stride-s conv with
    `_flip_io(kernel)`, and the other way round (an involution)."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def _phase_conv_transpose(x, kernel, strides, pads, opads, precision, grad_impl):
    """The transposed conv as `_conv_dx`, the input gradient of the strided conv it is the
    adjoint of, so its own gradients are that conv's forward (input gradient) and kernel
    gradient: no multiplies by zero taps anywhere. 'fast' (CPU): computed by phases. 'table'
    (GPU): in XLA's own form, which cuDNN runs as its strided backward-input kernel; thin
    outputs (`THIN_OUTPUT_CHANNELS`) as the sub-pixel conv, because cuDNN's backward-input
    kernel ran the HW6 critic's 64 -> 3 channel input gradient at 14 TFLOP/s (H200, session
    23). 'xla': the forward by phases, differentiated by JAX."""
    impl = _resolve_grad_impl(grad_impl)
    if impl == "xla":
        return _phase_forward(x, kernel, strides, pads, opads, precision)
    if impl == "table" and kernel.shape[3] <= THIN_OUTPUT_CHANNELS:
        return _subpixel_conv_transpose(x, kernel, strides, pads, opads, precision, impl)
    out_shape = (x.shape[0],
                 *(_torch_out_size(x.shape[1 + a], kernel.shape[a], strides[a], pads[a], opads[a])
                   for a in (0, 1)),
                 kernel.shape[3])
    conv_pads = tuple((p, p - op) for p, op in zip(pads, opads))
    w = _flip_io(kernel)
    if impl == "table":
        # XLA:GPU maps a conv to cuDNN's backward-input kernel only when its kernel operand is
        # a `reverse` (GpuConvRewriter), and `_dx_value`'s reverse of this flip could be folded
        # away before that pass; the barrier keeps it (XLA removes barriers after it).
        w = lax.optimization_barrier(w)
    return _conv_dx(x, w, out_shape, strides, conv_pads, precision, impl == "fast")


# ----------------------------------------------------------------------------- convolutions
# Ordinary convolutions, gradients in the form XLA:CPU runs fast.
#
# Why: XLA:CPU (jax 0.10, its YNNPACK convolutions) runs a convolution's forward pass about
# as fast as PyTorch's oneDNN, but three other things slowly (HW6, batch 64; BUILD_NOTES.md):
#   * input gradients of strided convs: XLA convolves the stride-dilated dy (3/4 zeros for
#     stride 2) in a generic conv outside YNNPACK. Here they are transposed convs computed by
#     output phase (`_dx_value`), no multiplies by zeros.
#   * kernel gradients of thin layers on Intel CPUs (`DW_GEMM_MAX_CIN`: every layer of <= 64
#     input channels): a few GEMMs over shifted windows of the space-to-depth input
#     (`_dw_gemm`).
#   * WGAN-GP's second order: the penalty differentiates the input gradient of each strided
#     conv once more w.r.t. the kernel, which XLA derives as a kernel-gradient conv over the
#     stride-dilated dy. Here it is a kernel gradient like any other (the VJP table below);
#     the HW6 WGAN-GP step went from 50.6 to 16.0 s on the session-1-4 box.
# The generator's transposed convs are the same operations read backwards: a transposed conv
# is the input gradient of a strided conv (`_phase_conv_transpose`).
# Same sums, different order: values agree with `lax.conv_general_dilated` to float rounding
# (tests/test_layers.py, first and second order). Forward passes are XLA's own convs, the
# thinnest strided ones over their space-to-depth input (`S2D_MAX_CIN`).


def default_conv_impl(backend: str) -> str:
    """Gradient formulation that 'auto' picks for a JAX backend ('cpu', 'gpu', 'tpu').

    'fast' on CPU, where it was measured (BUILD_NOTES.md, "Speed and scale"). 'table' on GPU:
    XLA's own forms (cuDNN's kernels), but WGAN-GP's second-order term as a kernel gradient;
    in JAX's own form cuDNN ran it as a 32x32-window forward conv, 9.4 of the 44 ms of the HW6
    WGAN-GP step at batch 512 on an H200 (session 23). 'xla' (lax's own VJPs) on TPU, where
    nothing was measured.
    """
    return {"cpu": "fast", "gpu": "table"}.get(backend, "xla")


def jaxlib_version() -> tuple[int, ...]:
    import jaxlib
    return tuple(int(p) for p in jaxlib.__version__.split(".")[:2] if p.isdigit())


def step_compiler_options(backend: str) -> dict[str, str]:
    """XLA options the training step is compiled with on a JAX backend (`jax.jit(...,
    compiler_options=...)`: this one program, no process-wide flag).

    On CPU, where measured faster: XLA's own convolutions instead of YNNPACK's. HW6 steps,
    default vs without YNNPACK (BUILD_NOTES.md, sessions 16-17): jaxlib >= 0.12 on a 2-core
    Xeon gan 2697 vs 2322 ms, WGAN-GP 13086 vs 9749 ms, on a 2-core EPYC 1608 vs 1472 and
    7719 vs 7285 ms; jaxlib 0.10 on the EPYC 1874 vs 1649 and 1966 vs 1694 ms (gan), 9915 vs
    8505 and 9132 vs 8729 ms (WGAN-GP), on the Xeon within noise; jaxlib 0.11 on the EPYC gan
    8-11% slower without it. Elsewhere (0.11, 0.10 on Intel; 0.8 does not know the option)
    XLA's default stays.

    Under jaxlib 0.10 on AMD, YNNPACK keeps the reductions (batch-norm statistics, bias
    gradients), which it computes 7.5x faster than XLA's own and more exactly (a batch norm's
    sum and mean square of f32[64,32,32,64] per channel on a Zen 5 EPYC: 10.3 vs 1.4 ms, the
    sum's relative error 4.6e-6 vs 1.4e-7).
    On a Zen 5 EPYC (session 26) the HW6 gan step took 626 ms without YNNPACK, 562 ms with its
    reductions, 673 ms with XLA's default; WGAN-GP 3193 vs 3070 ms. On session 18's older
    EPYC the same change was within noise (gan 1542 vs 1459 and 1555 vs 1541 ms, WGAN-GP
    7312 vs 7546 ms). Under jaxlib 0.12 on AMD too (the Zen 5 EPYC: gan 622 vs 573 ms, WGAN-GP
    3084 vs 2928 ms in session 26; gan 673 vs 600 ms in session 27). There the step keeps
    `host_memory`'s kept memory (a few thousand page faults in an odd step, against ~60k
    without it), though a small program that ends in YNNPACK's reduce can fault its whole
    scratch in afresh in an odd call on a busy box. Intel under jaxlib >= 0.12: no YNNPACK
    (its reductions there not measured).
    """
    if backend != "cpu":
        return {}
    version = jaxlib_version()[:2]
    if _cpu_vendor() == "AuthenticAMD" and (version == (0, 10) or version >= (0, 12)):
        return dict(_YNNPACK_REDUCTIONS_ONLY)
    if version >= (0, 12):
        return without_ynnpack()
    return {}


_WITHOUT_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


def without_ynnpack() -> dict[str, str]:
    """XLA options for a CPU program without YNNPACK. jaxlibs before 0.10 call no YNNPACK
    fusions (checked: 0.8.0, 0.9.0) and 0.8 rejects the option ('No such compile option'):
    nothing to ask there."""
    return dict(_WITHOUT_YNNPACK) if jaxlib_version() >= (0, 10) else {}
# the enum's full name: through `compiler_options` XLA parses no short form ('reduce')
_YNNPACK_REDUCTIONS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def _amd_with_jaxlib_0_10() -> bool:
    """Where both the step and the sampler ran faster without YNNPACK's convolutions
    (BUILD_NOTES.md)."""
    return jaxlib_version()[:2] == (0, 10) and _cpu_vendor() == "AuthenticAMD"


def sampler_compiler_options(backend: str) -> dict[str, str]:
    """XLA options for the generator's sampling program (grids, `jaxgan.sample`, evaluation).

    Measured apart from the step: the HW6 generator's eval-mode forward pass at batch 500 on a
    2-core EPYC (BUILD_NOTES.md, session 17) ran 1.7x faster without YNNPACK under jaxlib 0.10
    (2323 / 2426 vs 1379 / 1438 ms) but 1.2x slower under 0.12 (1185 vs 1458 ms), so only
    jaxlib 0.10 on AMD drops it; elsewhere XLA's default stays.
    """
    if backend == "cpu" and _amd_with_jaxlib_0_10():
        return without_ynnpack()
    return {}


def _resolve_grad_impl(grad_impl: str) -> str:
    if grad_impl == "auto":
        grad_impl = default_conv_impl(jax.default_backend())
    if grad_impl == "auto" or grad_impl not in GRAD_IMPLEMENTATIONS:
        raise ValueError(f"grad_impl must be one of {GRAD_IMPLEMENTATIONS}, got {grad_impl!r}")
    return grad_impl


Pads = tuple[tuple[int, int], tuple[int, int]]


def _use_custom_vjp(cin: int, cout: int, strides: tuple[int, int]) -> bool:
    """Convs routed through `_conv` (the VJP table below): strided ones (the critic, and the
    generator's transposed convs read backwards), few input channels (critic layer 1) and wide
    stride-1 outputs (the 'subpixel' upsampling's convs), and thin stride-1 convs where they
    are computed as GEMMs (`THIN_GEMM_MAX_CHANNELS`). Others are plain lax convs."""
    return cin <= 4 or strides != (1, 1) or cout >= 128 or _thin_gemm((cin, cout), strides)


def _cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... ; '' where /proc/cpuinfo has none."""
    return env.cpuinfo("vendor_id")


def _default_dw_gemm_max_cin() -> int:
    """Widest input (in channels) whose kernel gradient `_dw_gemm` computes; wider layers use
    XLA's backward-filter conv. Which is faster depends on the CPU. HW6 steps, same process,
    alternating calls (BUILD_NOTES.md, "Speed and scale"): on an AVX-512 Intel Xeon (session 7)
    <= 64 beat <= 4, gan 1.14 vs 1.24 s, WGAN-GP 6.1 vs 6.7 s; on an AVX-512 AMD EPYC
    (session 9) <= 4 beat <= 64, gan 1.26 vs 1.48 s, WGAN-GP 5.8 vs 6.2 s. On a Zen 5 EPYC
    (session 27) XLA's was as fast or faster for the thin layers too, each alone at batch 64:
    the critic's first layer 3.55 vs 3.51 ms, the generator's last (k5: `_dw_gemm` also
    multiplies 11 zero taps of 36) 4.1 vs 7.0 ms; so AMD CPUs use XLA's throughout."""
    return 64 if _cpu_vendor() == "GenuineIntel" else 0


DW_GEMM_MAX_CIN = _default_dw_gemm_max_cin()


def _dw_by_gemm(cin: int) -> bool:
    """Kernel gradient by `_dw_gemm` rather than XLA's backward-filter conv: layers of up to
    64 input channels on Intel CPUs, none on AMD (see above)."""
    return cin <= DW_GEMM_MAX_CIN


def _plain_conv(x, w, strides, pads, precision):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN,
                                    precision=precision)


# The convolution y = C(x, w) is bilinear, and so are its two derivatives
#   DX(dy, w) = (dC/dx)^T dy   (input gradient)     DW(x, dy) = (dC/dw)^T dy   (kernel gradient).
# Their own derivatives are again C, DX and DW, from <g, DX(dy, w)> = <C(g, w), dy> =
# <w, DW(g, dy)> and <gw, DW(x, dy)> = <C(x, gw), dy>:
#   VJP of C  at (x, w),  cotangent dy:  (DX(dy, w), DW(x, dy))
#   VJP of DX at (dy, w), cotangent g :  (C(g, w),   DW(g, dy))
#   VJP of DW at (x, dy), cotangent gw:  (DX(dy, gw), C(x, gw))
# so gradients of any order (WGAN-GP's second order included) are built from these three
# operations, each computed in its fastest form. 'fast' (CPU): C is XLA's own conv, DX of a
# strided conv is computed by phases, DW of a thin layer by `_dw_gemm`. 'table' (GPU): all
# three in XLA's own first-order forms, which cuDNN runs as forward, backward-input and
# backward-filter kernels. Without the table JAX derives the second-order d/dw of DX as a conv
# over the stride-dilated dy with a reversed window, which XLA:GPU does not recognise as a
# kernel gradient: cuDNN ran it as a forward conv of batch C_in over a 32x32 window, 1.9 ms per
# critic update for the HW6 critic's first layer at batch 512 (H200, session 23).


# Thinnest side (in channels) of a stride-1 conv whose C, DX and DW the VJP table computes as
# one GEMM each (`_thin_gemm_conv`, `_thin_gemm_dw`) instead of a conv kernel: the HW6 step's
# 12-channel convs (the critic's first layer over its space-to-depth input, the generator's RGB
# sub-pixel conv) ran on cuDNN at 43-74 TFLOP/s and 0.7 TB/s, 15% of the kernel time of both
# bf16 steps at batch 512 on an H200 (session 25), against 390-810 TFLOP/s for the wide convs.
# 0 (off): not yet timed on a GPU; `scripts/device_check.sh` times 16.
THIN_GEMM_MAX_CHANNELS = 0


def _thin_gemm(w_shape, strides) -> bool:
    """A stride-1 conv computed as GEMMs; w_shape ends with (C_in, C_out)."""
    return strides == (1, 1) and min(w_shape[-2:]) <= THIN_GEMM_MAX_CHANNELS


def _windows(x, taps, pads: Pads, out_hw):
    """im2col: [N, oh, ow, th*tw*C], every window of the padded x that a stride-1 conv with
    `taps` reads for out_hw outputs, channels ordered (row tap, column tap, C)."""
    (th, tw), (oh, ow) = taps, out_hw
    x = _spatial_pad(x, *pads)
    return jnp.concatenate([x[:, a:a + oh, b:b + ow, :] for a in range(th) for b in range(tw)],
                           axis=-1)


def _sum_windows(z, pads: Pads, out_hw):
    """im2col's adjoint side: z [N, H, W, th, tw, C] holds every input pixel times every tap;
    output (i, j) of the stride-1 conv sums tap (a, b) of padded input pixel (i + a, j + b)."""
    (oh, ow), (th, tw) = out_hw, z.shape[3:5]
    z = _spatial_pad(z, *pads)
    return sum(z[:, a:a + oh, b:b + ow, a, b, :].astype(jnp.float32)
               for a in range(th) for b in range(tw))


def _transposed_pads(w_shape, pads: Pads) -> Pads:
    """Pads of the stride-1 conv with `_flip_io(w)` that computes the input gradient."""
    return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w_shape[:2], pads))


def _thin_gemm_conv(x, w, pads: Pads, precision):
    """A stride-1 conv with few input or output channels as one GEMM, whose K or N is then
    taps x channels (tensor-core sized) rather than the thin channel count. Thin input: the
    windows (`_windows`) times the kernel as a [taps*C_in, C_out] matrix. Thin output: x times
    the kernel as [C_in, taps*C_out], then each output sums its taps' shifted slices
    (`_sum_windows`, in f32). The input gradient is the same with `_flip_io(w)`."""
    kh, kw, cin, cout = w.shape
    out_hw = tuple(x.shape[1 + a] + sum(pads[a]) - w.shape[a] + 1 for a in (0, 1))
    contract_c = (((3,), (0,)), ((), ()))
    if cin <= cout:
        return lax.dot_general(_windows(x, (kh, kw), pads, out_hw),
                               w.reshape(kh * kw * cin, cout), contract_c, precision=precision)
    z = lax.dot_general(x, w.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout), contract_c,
                        precision=precision)
    return _sum_windows(z.reshape(*x.shape[:3], kh, kw, cout), pads, out_hw).astype(x.dtype)


def _thin_gemm_dw(x, dy, w_shape, pads: Pads, precision):
    """Kernel gradient of `_thin_gemm_conv`, a GEMM contracting over every pixel: thin input,
    windows(x)^T @ dy; thin output, x^T @ windows(dy) as the input gradient reads dy, whose
    taps come out reversed. Batched over examples and summed in f32 (an explicit split-K:
    K is every pixel of the batch, and [taps*C, C] is too small an output to keep a GPU busy
    with one GEMM)."""
    kh, kw, cin, cout = w_shape
    per_example = (((1, 2), (1, 2)), ((0,), (0,)))
    if cin <= cout:
        dw = lax.dot_general(_windows(x, (kh, kw), pads, dy.shape[1:3]), dy, per_example,
                             precision=precision, preferred_element_type=jnp.float32)
        return dw.sum(0).reshape(kh, kw, cin, cout).astype(x.dtype)
    dw = lax.dot_general(x, _windows(dy, (kh, kw), _transposed_pads(w_shape, pads), x.shape[1:3]),
                         per_example, precision=precision, preferred_element_type=jnp.float32)
    dw = dw.sum(0).reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
    return jnp.flip(dw, (0, 1)).astype(x.dtype)


# Which of a conv's three operations go to oneDNN (`jaxgan.onednn`) where it is available: a
# bit mask of ONEDNN_FORWARD, ONEDNN_INPUT_GRAD, ONEDNN_KERNEL_GRAD; 0 is off. Default: all
# three on CPUs with AVX-512 (`_default_onednn_ops`).
ONEDNN_FORWARD, ONEDNN_INPUT_GRAD, ONEDNN_KERNEL_GRAD = 1, 2, 4


def _default_onednn_ops() -> int:
    """All three operations on CPUs with AVX-512, none elsewhere; JAXGAN_ONEDNN=0 turns them
    off, =1 on. HW6 convolutions of one gan step at batch 64 (`scripts/layer_benchmark.py`,
    BUILD_NOTES.md session 31): on a Zen 4 EPYC (AVX-512) 1080 ms in XLA's forms, 929 ms with
    oneDNN, 943 ms in PyTorch; on AVX2 boxes (Zen 3, session 29) PyTorch's oneDNN
    convolutions were 1.2x slower than XLA's."""
    all_ops = ONEDNN_FORWARD | ONEDNN_INPUT_GRAD | ONEDNN_KERNEL_GRAD
    choice = os.environ.get("JAXGAN_ONEDNN", "")
    if choice in ("0", "1"):
        return all_ops * int(choice)
    return all_ops if "avx512f" in env.cpuinfo("flags").split() else 0


ONEDNN_OPS = _default_onednn_ops()


def _onednn_suits(op: int, x_shape, w_shape, strides, dy_hw) -> bool:
    """The shapes where oneDNN, with its implementation measured per shape (`jaxgan.onednn`),
    was the faster (Zen 4 EPYC, HW6 layers alone, batch 64, BUILD_NOTES.md session 32). Not:
    the critic's 1-channel head (under 0.5 ms either way), kernel gradients over a dy with
    fewer positions than the kernel has taps (the generator's first layer, 5x5 taps over 4x4:
    41-50 ms in XLA vs 52-62 ms), and strided convs' input gradients into 1-4 channels, which
    `_thin_phase_forward` computes as one GEMM (the critic's first layer 4.0-4.5 vs 9.1-11.6
    ms, the generator's RGB layer 8.8-9.3 vs 13.6-18.6 ms; session 34). Nor strided input
    gradients from a dy with fewer positions than the kernel has taps (the generator's first
    layer's forward): `_dx_value` computes those by phases, each phase a stride-1 oneDNN
    forward conv (Zen 5 EPYC, session 35: 19.0 vs 23.9 ms alone; gan steps 2.2-3.7% faster,
    WGAN-GP 0.8-2.3%)."""
    if w_shape[3] <= THIN_OUTPUT_CHANNELS:
        return False
    dy_covers_taps = dy_hw[0] * dy_hw[1] >= w_shape[0] * w_shape[1]
    if op == ONEDNN_INPUT_GRAD:
        return strides == (1, 1) or (x_shape[3] > THIN_OUTPUT_CHANNELS and dy_covers_taps)
    if op == ONEDNN_KERNEL_GRAD:
        return dy_covers_taps
    return True


def _by_onednn(op: int, x_shape, w_shape, strides, pads, dtype, cpu_forms: bool) -> bool:
    """Compute this operation with oneDNN: CPU forms, the op in ONEDNN_OPS, a shape and dtype
    the handlers take and oneDNN runs fast, one device (the custom call has no partitioning
    rule), handlers built."""
    if not (cpu_forms and ONEDNN_OPS & op) or jax.device_count() != 1:
        return False
    if not onednn.supports(x_shape, w_shape, strides, pads, dtype):
        return False
    dy_hw = onednn.output_hw(x_shape, w_shape, strides, pads)
    return _onednn_suits(op, x_shape, w_shape, strides, dy_hw) and onednn.available()


def _c_value(x, w, strides, pads, precision, cpu_forms):
    """Forward value. Strided with few input channels (`S2D_MAX_CIN`), CPU forms: the stride-1
    conv over the space-to-depth input, whose contraction is s*s times deeper (the HW6 critic's
    first layer, C_in 3: 1.8 vs 3.3 ms at batch 64 on a Zen 5 EPYC, BUILD_NOTES.md session 27)."""
    if _by_onednn(ONEDNN_FORWARD, x.shape, w.shape, strides, pads, x.dtype, cpu_forms):
        return onednn.conv(x, w, strides, pads)
    if _thin_gemm(w.shape, strides):
        return _thin_gemm_conv(x, w, pads, precision)
    if cpu_forms and strides != (1, 1) and w.shape[2] <= S2D_MAX_CIN:
        return _plain_conv(*_space_to_depth_operands(x, w, strides, pads), (1, 1),
                           ((0, 0), (0, 0)), precision)
    return _plain_conv(x, w, strides, pads, precision)


def _dx_value(dy, w, x_shape, strides, pads, precision, cpu_forms):
    """Input gradient. oneDNN's backward-data convolution where `_by_onednn` picks it.
    Strided, CPU forms: a transposed conv computed by phases (`_phase_forward`, its phase
    convs through oneDNN's forward where it runs them); XLA's own form convolves the
    stride-dilated dy, 3/4 of whose entries are zeros for stride 2, and XLA:CPU runs that
    conv outside its fast library (HW6 critic: ~245 ms of a 1.43 s gan step). Thin stride-1
    convs (`THIN_GEMM_MAX_CHANNELS`): the forward's GEMM form with the adjoint kernel.
    Otherwise XLA's own (cuDNN's backward-input kernel)."""
    if _by_onednn(ONEDNN_INPUT_GRAD, x_shape, w.shape, strides, pads, dy.dtype, cpu_forms):
        return onednn.conv_dx(dy, w, x_shape, strides, pads)
    if _thin_gemm(w.shape, strides):
        return _thin_gemm_conv(dy, _flip_io(w), _transposed_pads(w.shape, pads), precision)
    if strides != (1, 1) and cpu_forms:
        tpads = tuple(lo for lo, _ in pads)
        # output_padding that makes the transposed conv's output exactly x_shape
        topads = tuple(x_shape[1 + a] - _torch_out_size(dy.shape[1 + a], w.shape[a], strides[a],
                                                        tpads[a], 0) for a in (0, 1))
        return _phase_forward(dy, _flip_io(w), strides, tpads, topads, precision, True)
    zeros = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda x_: _plain_conv(x_, w, strides, pads, precision), zeros)[1](dy)[0]


def _space_to_depth(x, taps, strides, pads: Pads, out_hw):
    """The padded input that a stride-s conv with `taps` space-to-depth taps (ceil(k/s) per
    axis) reads for out_hw outputs, as [N, H/s, W/s, s*s*C], channels ordered (row phase,
    column phase, C): the stride-s conv is a stride-1 conv with those taps over it."""
    n, h, w, cin = x.shape
    (sh, sw), (th, tw), (oh, ow) = strides, taps, out_hw
    hn, wn = sh * (oh + th - 1), sw * (ow + tw - 1)  # padded extent the taps read
    (pt, _), (pl, _) = pads
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, hn - h - pt, 0),
                                            (pl, wn - w - pl, 0), (0, 0, 0)))
    x = x.reshape(n, hn // sh, sh, wn // sw, sw, cin).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, hn // sh, wn // sw, sh * sw * cin)


def _dw_gemm(x, dy, w_shape, strides, pads: Pads, precision):
    """Kernel gradient as a sum of GEMMs over shifted windows (im2col without the big concat).

    A stride-s conv is a stride-1 conv with ceil(k/s) taps over the space-to-depth input
    [N, H/s, W/s, s*s*C]; for each of those taps (a, b), the window of the padded input that
    meets dy gives one GEMM window^T @ dy: [s*s*C, C_out], the kernel rows (a*s + p, b*s + q)
    for every phase (p, q). Taps past the kernel (k not a multiple of s) are computed, dropped.
    """
    kh, kw, cin, cout = w_shape
    n, oh, ow, _ = dy.shape
    sh, sw = strides
    th, tw = -(-kh // sh), -(-kw // sw)  # taps of the space-to-depth conv
    x = _space_to_depth(x, (th, tw), strides, pads, (oh, ow))
    dy2 = dy.reshape(n * oh * ow, cout).astype(x.dtype)
    taps = [lax.dot_general(x[:, a:a + oh, b:b + ow, :].reshape(n * oh * ow, -1), dy2,
                            (((0,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32)
            for a in range(th) for b in range(tw)]
    dw = jnp.stack(taps).reshape(th, tw, sh, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return dw.reshape(th * sh, tw * sw, cin, cout)[:kh, :kw].astype(dy.dtype)


def _dw_value(x, dy, w_shape, strides, pads, precision, cpu_forms):
    if _by_onednn(ONEDNN_KERNEL_GRAD, x.shape, w_shape, strides, pads, x.dtype, cpu_forms):
        return onednn.conv_dw(x, dy, w_shape, strides, pads)
    if _thin_gemm(w_shape, strides):
        return _thin_gemm_dw(x, dy, w_shape, pads, precision)
    if cpu_forms and _dw_by_gemm(w_shape[2]):
        return _dw_gemm(x, dy, w_shape, strides, pads, precision)
    zeros = jnp.zeros(w_shape, x.dtype)
    return jax.vjp(lambda w_: _plain_conv(x, w_, strides, pads, precision), zeros)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, cpu_forms):
    return _c_value(x, w, strides, pads, precision, cpu_forms)


def _conv_fwd(x, w, strides, pads, precision, cpu_forms):
    return _conv(x, w, strides, pads, precision, cpu_forms), (x, w)


def _conv_bwd(strides, pads, precision, cpu_forms, res, dy):
    x, w = res
    dy = dy.astype(x.dtype)
    return (_conv_dx(dy, w, x.shape, strides, pads, precision, cpu_forms),
            _conv_dw(x, dy, w.shape, strides, pads, precision, cpu_forms))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_dx(dy, w, x_shape, strides, pads, precision, cpu_forms):
    return _dx_value(dy, w, x_shape, strides, pads, precision, cpu_forms)


def _conv_dx_fwd(dy, w, x_shape, strides, pads, precision, cpu_forms):
    return _conv_dx(dy, w, x_shape, strides, pads, precision, cpu_forms), (dy, w)


def _conv_dx_bwd(x_shape, strides, pads, precision, cpu_forms, res, g):
    dy, w = res
    g = g.astype(dy.dtype)
    return (_conv(g, w, strides, pads, precision, cpu_forms),
            _conv_dw(g, dy, w.shape, strides, pads, precision, cpu_forms))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_dw(x, dy, w_shape, strides, pads, precision, cpu_forms):
    return _dw_value(x, dy, w_shape, strides, pads, precision, cpu_forms)


def _conv_dw_fwd(x, dy, w_shape, strides, pads, precision, cpu_forms):
    return _conv_dw(x, dy, w_shape, strides, pads, precision, cpu_forms), (x, dy)


def _conv_dw_bwd(w_shape, strides, pads, precision, cpu_forms, res, gw):
    x, dy = res
    gw = gw.astype(x.dtype)
    return (_conv_dx(dy, gw, x.shape, strides, pads, precision, cpu_forms),
            _conv(x, gw, strides, pads, precision, cpu_forms))


_conv.defvjp(_conv_fwd, _conv_bwd)
_conv_dx.defvjp(_conv_dx_fwd, _conv_dx_bwd)
_conv_dw.defvjp(_conv_dw_fwd, _conv_dw_bwd)


# Widest input (in channels) of a strided conv computed as a stride-1 conv over the
# space-to-depth input: by 'table' with its gradients (`_space_to_depth_conv`), where the
# critic's first layer (C_in 3) gives cuDNN's tensor cores 4x the channels and no stride (HW6
# bf16 steps at batch 512 on an H200, session 23, 4 against 0 (off): gan 5.89 vs 6.39 ms,
# WGAN-GP 29.1 vs 32.0 ms); by 'fast' (CPU) for its forward value only (`_c_value`).
S2D_MAX_CIN = 4


def _space_to_depth_operands(x, w, strides, pads):
    """A stride-s conv's operands for the stride-1 VALID conv with ceil(k/s) taps over the
    padded input's space-to-depth form (`_space_to_depth`, as `_dw_gemm` reads it) that
    computes the same sums (taps past the kernel are zeros)."""
    kh, kw, cin, cout = w.shape
    sh, sw = strides
    (pt, pb), (pl, pr) = pads
    oh = (x.shape[1] + pt + pb - kh) // sh + 1
    ow = (x.shape[2] + pl + pr - kw) // sw + 1
    th, tw = -(-kh // sh), -(-kw // sw)
    x = _space_to_depth(x, (th, tw), strides, pads, (oh, ow))
    w = jnp.pad(w, ((0, th * sh - kh), (0, tw * sw - kw), (0, 0), (0, 0)))
    w = w.reshape(th, sh, tw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return x, w.reshape(th, tw, sh * sw * cin, cout)


def _space_to_depth_conv(x, w, strides, pads, precision):
    """The strided conv over its space-to-depth operands, through the VJP table in XLA's own
    forms ('table': its gradients are those of the stride-1 conv)."""
    return _conv(*_space_to_depth_operands(x, w, strides, pads), (1, 1), ((0, 0), (0, 0)),
                 precision, False)


def conv2d(x: Array, kernel: Array, strides: IntOr2 = 1, padding: Any = "VALID",
           precision: Any = None, grad_impl: str = "auto") -> Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding)` in NHWC / HWIO, no dilation.

    Args:
      x: [N, H, W, C_in]; kernel: [kh, kw, C_in, C_out] (flax nn.Conv's layout).
      padding: 'VALID' | 'SAME' | ((lo, hi), (lo, hi)).
      grad_impl: 'fast' (the VJP table in XLA:CPU's fast forms, see above), 'table' (the VJP
        table in XLA's own forms), 'xla' (lax's own VJP) or 'auto' (`default_conv_impl` of the
        default backend). Same values either way.
    Returns: [N, H', W', C_out].
    """
    strides = _pair(strides, "strides")
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    impl = _resolve_grad_impl(grad_impl)
    if impl == "table" and strides != (1, 1) and kernel.shape[2] <= S2D_MAX_CIN:
        return _space_to_depth_conv(x, kernel, strides, pads, precision)
    if impl == "table" or (impl == "fast" and _use_custom_vjp(*kernel.shape[2:], strides)):
        return _conv(x, kernel, strides, pads, precision, impl == "fast")
    return _plain_conv(x, kernel, strides, pads, precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, grad_impl: str = "auto"):
    """Drop-in for `lax.conv_general_dilated` (pass it as `nn.Conv(conv_general_dilated=...)`).

    2-D NHWC/HWIO convolutions without dilation or groups go through `conv2d` (fast gradients
    per `grad_impl`); anything else goes to lax unchanged. Parameters are nn.Conv's own.
    """
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
        rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
    if lhs.ndim != 4 or rhs.ndim != 4:
        return plain()
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    simple = (dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
              and all(d is None or all(int(v) == 1 for v in d)
                      for d in (lhs_dilation, rhs_dilation))
              and feature_group_count == 1 and batch_group_count == 1
              and preferred_element_type is None)
    if not simple:
        return plain()
    return conv2d(lhs, rhs, tuple(window_strides), padding, precision, grad_impl)


class TorchConvTranspose(nn.Module):
    """`torch.nn.ConvTranspose2d` semantics on NHWC inputs, params laid out like flax's.

    Params: `kernel: param_dtype[kh, kw, C_in, C_out]` (flax ConvTranspose with
    transpose_kernel=False; load torch weights with `kernel_from_torch`), `bias:
    param_dtype[C_out]` if use_bias. The sub-pixel rearrangement happens inside __call__, so
    optimizers, weight decay and clipping always see this canonical layout.

    Attributes:
      features: C_out.
      kernel_size, stride, padding, output_padding: torch's k, s, p, op (int or pair).
        HW6 generator: (5, 2, 2, 1); classic DCGAN: (4, 2, 1, 0); both double H and W.
      use_bias: torch's `bias=`; DCGAN layers before batch norm use False.
      implementation: 'auto' | 'phase' | 'subpixel' | 'transpose'; same math, different speed.
      grad_impl: 'auto' | 'fast' | 'table' | 'xla': how gradients are computed
        (`conv_transpose_torch`).
      dtype: compute dtype (e.g. jnp.bfloat16); None promotes from inputs and params.
      param_dtype: storage dtype of kernel and bias.
      kernel_init: DCGAN's N(0, 0.02) by default (Radford et al. 2015).
    """

    features: int
    kernel_size: IntOr2
    stride: IntOr2 = 2
    padding: IntOr2 = 0  # torch's defaults for padding and output_padding
    output_padding: IntOr2 = 0
    use_bias: bool = True
    implementation: str = "auto"
    grad_impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable[..., Array] = nn.initializers.normal(0.02)
    bias_init: Callable[..., Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [..., H, W, C_in] -> [..., H', W', features] with H' = (H-1)*s - 2p + k + op."""
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}"
            )
        kh, kw = _pair(self.kernel_size, "kernel_size")
        torch_to_flax_padding((kh, kw), self.stride, self.padding, self.output_padding)  # validate
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

        batch_shape = x.shape[:-3]
        x = x.reshape((math.prod(batch_shape),) + x.shape[-3:])
        y = conv_transpose_torch(
            x, kernel, self.stride, self.padding, self.output_padding,
            self.implementation, self.precision, self.grad_impl,
        )
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:])
