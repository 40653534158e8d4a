"""Convolutions with a batch-sliced weight gradient (XLA:CPU speed).

With XLA:CPU's convolutions on Eigen (opt-in, `mmvaeplus_jax/infra/xla_cpu.py`:
$MMVAEPLUS_CPU_CONVOLUTIONS=eigen) the automatic setting uses XLA's own
weight gradient: there the forward pass plus weight gradient of the
64 -> 64 layer at 28 x 28 took 112-119 ms for 80 rows and 945 ms for 640
(linear), against 153 and 877 ms with the slices below, and the
full-width step was faster with XLA's own (2026-12-03/04). Everything
below is about XLA's default, YNNPACK convolutions.

On XLA:CPU (JAX 0.10), the weight gradient of a 3x3 convolution is lowered
to a YNNPACK convolution whose "kernel" is the output gradient's whole
spatial extent, and its cost grows faster than the batch: on the 2-core
CPU of `bench/RESULTS.md`, the weight gradient of the decoders' 64 -> 64
convolution at 28 x 28 ran at 6 GFLOP/s for 80 rows and 3 GFLOP/s for 640,
while the forward pass and the input gradient ran at 58-80 GFLOP/s
(2026-12-03, other jobs sharing the CPU: ratios, not rates). Summed over
static slices of a few rows, the same weight gradient ran at 33-63 GFLOP/s
(quiet), and its cost became linear in the batch (full-width step:
K = 1, B = 128 171 s -> 38.7 s; bench/RESULTS.md).

`make_conv_general_dilated(wgrad_chunk)` returns a drop-in replacement for
`lax.conv_general_dilated` (Flax's `nn.Conv(conv_general_dilated=...)`)
with a `jax.custom_vjp`:

* value: `lax.conv_general_dilated` itself (the same program);
* input gradient: the transpose XLA derives for the convolution (the same
  program as without the switch);
* weight gradient: sum over static batch slices of about `wgrad_chunk`
  rows (strided: slice s holds rows s, s + S, ...) of the per-slice weight
  gradient, an unrolled Python loop (not `lax.scan`: XLA:CPU ran the same
  weight gradients inside `lax.scan` / `fori_loop` at 1-4 GFLOP/s).

Values and input gradients are bit-identical to the plain convolution; the
weight gradient differs only by the order of a sum (float32 reassociation:
within 2 gamma_n of the sum of the products' magnitudes, n products per
element; tested in `tests/conv_test.py`). `wgrad_chunk = 0` (or a batch no larger than it)
returns the plain `lax.conv_general_dilated` call.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp

from mmvaeplus_jax.infra import onednn
from mmvaeplus_jax.infra import xla_cpu

# The automatic slice size on XLA:CPU: about `CPU_WGRAD_PIXELS` output pixels
# per slice (1 row at 28 x 28, 4 at 14 x 14, 16 at 7 x 7), at most
# `CPU_WGRAD_MAX_ROWS` rows, and `CPU_WGRAD_THIN_ROWS` rows when a side of
# the kernel has at most 4 channels (the image convolutions 3 -> c and
# c -> 3, which ran 15-40x slower in one-row slices). Measured per layer
# shape on the 2-core CPU of bench/RESULTS.md, 2026-12-03 ("Where the time
# goes").
# At most `CPU_WGRAD_MAX_SLICES` slices per layer: each slice is one more
# operation to compile (about 15 ms of compile time each on this CPU; the
# full-width B = 128 step with one-row slices did not finish compiling in
# 16 minutes), so large batches get larger slices.
CPU_WGRAD_PIXELS = 784
CPU_WGRAD_MAX_ROWS = 16
CPU_WGRAD_THIN_ROWS = 8
CPU_WGRAD_MAX_SLICES = 32
# Weight gradients under this many FLOPs are left to XLA (small layers: the
# reduced-width demo and test models; compile time over speed there).
CPU_WGRAD_MIN_FLOPS = 2e8
AUTO = -1  # config value: automatic per platform and layer shape
# What the networks get instead of a slice size when `model.conv_impl` is
# 'onednn': every convolution on oneDNN custom calls (infra/onednn.py).
ONEDNN = 'onednn'
# ... with the convolutions' operands rounded to bfloat16 (float32 sums and
# results; `onednn.bf16_operands`).
ONEDNN_BF16 = 'onednn_bf16'
CONV_IMPLS = ('xla', ONEDNN, ONEDNN_BF16)


def cpu_wgrad_rows(rows: int, spatial: int, in_channels: int,
                   out_channels: int, kernel_size: int = 9) -> int:
  """Rows per weight-gradient slice on XLA:CPU for `rows` inputs, an output
  of `spatial` pixels per row and a kernel of `kernel_size` taps,
  `in_channels` -> `out_channels` (`rows` or more: no slicing)."""
  flops = 2 * rows * spatial * kernel_size * in_channels * out_channels
  if flops < CPU_WGRAD_MIN_FLOPS:
    return rows
  if min(in_channels, out_channels) <= 4:
    size = CPU_WGRAD_THIN_ROWS
  else:
    size = max(1, min(CPU_WGRAD_MAX_ROWS, CPU_WGRAD_PIXELS // max(spatial, 1)))
  return max(size, -(-rows // CPU_WGRAD_MAX_SLICES))


def resolve_wgrad_chunk(value: int, platform: str | None = None,
                        convolutions: str | None = None) -> int:
  """Config value -> what the networks get: `AUTO` (-1) stays automatic on
  CPU with YNNPACK convolutions (per layer shape, `cpu_wgrad_rows`) and
  becomes 0 (XLA's own weight gradient) on GPU and TPU and on CPU with Eigen
  convolutions (`xla_cpu.cpu_convolutions()`, opt-in: XLA's own weight
  gradient through Eigen was linear in the batch and faster than the
  slices, see the module doc); 0 = off; n > 0 = slices of n rows."""
  if not isinstance(value, int) or value < AUTO:
    raise ValueError(
        f'model.conv_wgrad_chunk must be -1 (automatic), 0 (off) or a'
        f' positive number of rows, got {value!r}')
  if value == AUTO:
    platform = platform or jax.default_backend()
    convolutions = convolutions or xla_cpu.cpu_convolutions()
    if platform != 'cpu' or convolutions == xla_cpu.EIGEN:
      return 0
    return AUTO
  return value


def resolve_conv(wgrad_chunk: int, impl: str = 'xla',
                 platform: str | None = None) -> int | str:
  """`model.conv_wgrad_chunk` and `model.conv_impl` -> what the networks'
  convolutions get (`make_conv_general_dilated`'s argument): `ONEDNN` /
  `ONEDNN_BF16` for impl 'onednn' / 'onednn_bf16' (CPU only; builds and
  registers the custom calls now, so a missing oneDNN or compiler, or a
  CPU without oneDNN's bf16 kernels, stops here with one error naming the
  fix),
  else `resolve_wgrad_chunk(wgrad_chunk)`."""
  if impl not in CONV_IMPLS:
    raise ValueError(
        f'model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}')
  if impl in (ONEDNN, ONEDNN_BF16):
    platform = platform or jax.default_backend()
    if platform != 'cpu':
      raise ValueError(
          f"model.conv_impl={impl!r} runs on CPU only, this program runs on"
          f" {platform!r}: use model.conv_impl='xla'")
    onednn.register()
    if impl == ONEDNN_BF16 and (why := onednn.bf16_unsupported()):
      raise ValueError(
          f"model.conv_impl='onednn_bf16': {why}; use model.conv_impl="
          "'onednn' (float32 operands) or 'xla'")
    return impl
  return resolve_wgrad_chunk(wgrad_chunk, platform)


@functools.lru_cache(maxsize=None)
def make_conv_general_dilated(wgrad_chunk: int | str):
  """`lax.conv_general_dilated` whose weight gradient is computed over static
  batch slices of `wgrad_chunk` rows (`AUTO`: `cpu_wgrad_rows` of the
  layer's shape; 0: the plain convolution). Any layout, strides, padding,
  dilation. `ONEDNN`: `onednn.conv_general_dilated` (oneDNN custom calls)."""
  if wgrad_chunk in (ONEDNN, ONEDNN_BF16):
    return (onednn.conv_general_dilated if wgrad_chunk == ONEDNN else
            onednn.bf16_operands)
  if not wgrad_chunk:
    return lax.conv_general_dilated

  def conv_general_dilated(lhs, rhs, window_strides, padding,
                           lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None,
                           preferred_element_type=None):
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides,
        padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    batch_axis = dn.lhs_spec[0]
    rows = wgrad_chunk
    if rows == AUTO:
      out = jax.eval_shape(conv, lhs, rhs).shape
      spatial = 1
      for axis in dn.out_spec[2:]:
        spatial *= out[axis]
      taps = 1
      for axis in dn.rhs_spec[2:]:
        taps *= rhs.shape[axis]
      rows = cpu_wgrad_rows(lhs.shape[batch_axis], spatial,
                            rhs.shape[dn.rhs_spec[1]] * feature_group_count,
                            rhs.shape[dn.rhs_spec[0]], taps)
    if lhs.shape[batch_axis] <= rows or batch_group_count != 1:
      return conv(lhs, rhs)
    return _sliced_wgrad(conv, batch_axis, rows, lhs, rhs)

  return conv_general_dilated


def _sliced_wgrad(conv, batch_axis, chunk, lhs, rhs):
  """`conv(lhs, rhs)` with the custom weight gradient (see module doc)."""

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    # Input gradient: XLA's transpose of the convolution, unchanged.
    dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
    # Weight gradient: a sum over static batch slices (unrolled). Slice s
    # holds rows s, s + S, s + 2S, ... (S slices), so that when the batch is
    # sharded over devices in contiguous blocks every slice keeps rows on
    # every device (contiguous slices would each live on one device).
    n = x.shape[batch_axis]
    num_slices = -(-n // chunk)
    # Accumulated in float32 (a bf16 kernel's slices would otherwise be
    # rounded to bf16 at every partial sum).
    dw = None
    for start in range(num_slices):
      xs = lax.slice_in_dim(x, start, n, stride=num_slices, axis=batch_axis)
      gs = lax.slice_in_dim(g, start, n, stride=num_slices, axis=batch_axis)
      d = jax.vjp(lambda w, xs=xs: conv(xs, w), w)[1](gs)[0]
      d = d.astype(jnp.promote_types(d.dtype, jnp.float32))
      dw = d if dw is None else dw + d
    return dx, dw.astype(w.dtype)

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)
