"""PyTorch-semantics transposed convolution with a fast sub-pixel path.

Why this exists: DCGAN generators (NTU ML2022 HW6, Radford et al. 2015) upsample with
`torch.nn.ConvTranspose2d`. XLA:CPU lowers a transposed convolution to a convolution over a
zero-dilated input, which is 10-20x slower than the same math written as a stride-1 convolution
to s*s*C_out channels followed by depth-to-space ("sub-pixel", Shi et al. 2016). The two give
the same numbers; only the order of the sums changes.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

Array = jax.Array
IntOr2 = int | Sequence[int]

IMPLEMENTATIONS = ("auto", "subpixel", "transpose")


def default_upsample_impl(backend: str) -> str:
    """Implementation that 'auto' picks for a JAX backend name ('cpu', 'gpu', 'tpu').

    Sub-pixel everywhere: measured 10-20x faster on XLA:CPU (scripts/benchmark_upsample.py);
    not yet measured on GPU/TPU, where it is at worst a plain conv. Change this one function
    after a GPU measurement.
    """
    del backend  # Same answer everywhere until a GPU/TPU measurement says otherwise.
    return "subpixel"


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
) -> Array:
    """Functional torch-semantics transposed convolution (no bias).

    Args:
      x: [N, H, W, C_in].
      kernel: [kh, kw, C_in, C_out] (see `kernel_from_torch`); same dtype as x.
      implementation: 'subpixel', 'transpose' or 'auto' (`default_upsample_impl`).
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
    dn = ("NHWC", "HWIO", "NHWC")

    if implementation == "transpose":
        return lax.conv_general_dilated(
            x, kernel, (1, 1), flax_pads, lhs_dilation=strides,
            dimension_numbers=dn, precision=precision,
        )
    if implementation != "subpixel":
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")

    out_sizes, conv_pads = [], []
    for axis, (k, s, p, op) in enumerate(zip((kh, kw), strides, pads, opads)):
        n_in = x.shape[1 + axis]
        n_out = (n_in - 1) * s - 2 * p + k + op
        idx, dmin = _subpixel_axis_plan(k, s, p)
        q = -(-n_out // s)  # rows per phase, ceil(n_out / s)
        lo = -dmin
        hi = q + idx.shape[1] - 1 - n_in - lo
        # Negative padding (large torch padding) means cropping the input instead.
        start, stop = max(0, -lo), n_in - max(0, -hi)
        x = lax.slice_in_dim(x, start, stop, axis=1 + axis)
        out_sizes.append(n_out)
        conv_pads.append((max(lo, 0), max(hi, 0)))
    y = lax.conv_general_dilated(
        x, subpixel_kernel(kernel, strides, pads), (1, 1), conv_pads,
        dimension_numbers=dn, precision=precision,
    )
    y = depth_to_space(y, *strides)
    return y[:, : out_sizes[0], : out_sizes[1], :]


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
      implementation: 'auto' | 'subpixel' | 'transpose'; same math, different speed.
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
            self.implementation, self.precision,
        )
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:])
