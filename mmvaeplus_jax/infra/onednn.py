"""Convolutions on oneDNN through XLA's FFI (CPU only; opt-in).

XLA:CPU's own convolutions (YNNPACK, or Eigen) ran the full-width PolyMNIST
step 1.15-1.45x slower than the official PyTorch step on the same CPU
(bench/RESULTS.md, 2026-12-04), which runs its convolutions on oneDNN. This
module runs the networks' convolutions on oneDNN too, as three XLA FFI
custom calls (forward, input gradient, weight gradient;
`mmvaeplus_jax/native/onednn_conv.cc`), while XLA keeps fusing everything
around them (activations, residuals, the likelihoods).

Two model config switches (`model.conv_impl`):

* 'onednn': float32, the same products as XLA's convolutions;
* 'onednn_bf16': the convolutions' operands rounded to bfloat16 (float32
  sums and results; everything outside the convolutions stays float32):
  oneDNN's AVX512-BF16 kernels, about twice the float32 rate on CPUs that
  have them (`bf16_operands`).

They need:

* oneDNN's OpenMP build and its headers from PyPI:
  `pip install "mmvaeplus_jax[onednn]"` (onednn-cpu-gomp and
  onednn-devel-cpu-gomp 2023.2.0, oneDNN 3.2);
* a C++17 compiler (`g++`, or $CXX): the extension is compiled on first use
  (a few seconds) into `$MMVAEPLUS_CACHE_DIR` (default
  `~/.cache/mmvaeplus_jax`), keyed by the source, jaxlib and oneDNN.

Without them, `conv_impl='onednn'` stops with one error naming what is
missing; nothing falls back silently. The default (`conv_impl='xla'`) is
unchanged and needs none of this.

Values: 'onednn' accumulates the same products as XLA in another order, so
values and gradients agree within float32 reassociation; 'onednn_bf16'
equals the float32 convolution of the bf16-rounded operands within the
same bound, and a whole MMVAE+ gradient is within 1e-2 relative L2 of
float32's (tests/onednn_test.py, bounds stated there). The sharded step is
refused by the training shell (one error). Scope: 2-D convolutions in
NHWC / HWIO with explicit padding, any stride, no dilation, one group,
float32 or bfloat16 operands; one CPU device (the custom calls have no
sharding rule: under a mesh of several devices every device would compute
the whole batch).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).parents[1] / 'native' / 'onednn_conv.cc'
TARGETS = {
    'fwd': 'MmvaeOnednnConvFwd',
    'bwd_data': 'MmvaeOnednnConvBwdData',
    'bwd_weights': 'MmvaeOnednnConvBwdWeights',
}
INSTALL_HINT = ('pip install "mmvaeplus_jax[onednn]" (onednn-cpu-gomp and'
                ' onednn-devel-cpu-gomp 2023.2.0)')


class OnednnUnavailable(RuntimeError):
  """The oneDNN convolutions cannot be built or loaded here."""


def _prefixes():
  """Where pip puts wheel data files (include/, lib/): this environment's
  prefix, then the user scheme's."""
  seen = []
  for p in (sys.prefix, sysconfig.get_config_var('userbase') or '',
            os.path.expanduser('~/.local')):
    if p and p not in seen:
      seen.append(p)
  return [pathlib.Path(p) for p in seen]


def find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
  """(include dir, lib dir) of the pip-installed oneDNN, or an error naming
  the install command."""
  for prefix in _prefixes():
    header = prefix / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp'
    libs = list((prefix / 'lib').glob('libdnnl.so*'))
    if header.exists() and libs:
      config = (prefix / 'include' / 'oneapi' / 'dnnl' /
                'dnnl_config.h').read_text()
      if 'DNNL_CPU_RUNTIME DNNL_RUNTIME_OMP' not in config:
        raise OnednnUnavailable(
            f'the oneDNN in {prefix} is not the OpenMP build (this module'
            f' needs onednn-cpu-gomp; the plain `onednn` wheel is a SYCL'
            f' build): {INSTALL_HINT}')
      return prefix / 'include', prefix / 'lib'
  raise OnednnUnavailable(
      "model.conv_impl='onednn' needs oneDNN's library and headers, not"
      f' found under {[str(p) for p in _prefixes()]}: {INSTALL_HINT}')


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      'MMVAEPLUS_CACHE_DIR', os.path.expanduser('~/.cache/mmvaeplus_jax')))


@functools.lru_cache(maxsize=None)
def build() -> pathlib.Path:
  """Compiles the extension (once per source / jaxlib / oneDNN) and returns
  the shared library's path."""
  include, lib = find_onednn()
  jax_include = pathlib.Path(jax.ffi.include_dir())
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not cxx:
    raise OnednnUnavailable(
        "model.conv_impl='onednn' compiles a small C++ extension on first"
        ' use and needs a C++17 compiler: install g++ (Debian/Ubuntu:'
        ' apt-get install g++) or set $CXX')
  version = (include / 'oneapi' / 'dnnl' / 'dnnl_version.h').read_bytes()
  digest = hashlib.sha256(
      SOURCE.read_bytes() + version + jax.lib.__version__.encode() +
      str(jax_include).encode() + str(lib).encode()).hexdigest()[:16]
  out = _cache_dir() / f'libmmvae_onednn_{digest}.so'
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(f'.{os.getpid()}.tmp')
  cmd = [cxx, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
         f'-I{jax_include}', f'-I{include}', str(SOURCE), f'-L{lib}',
         '-ldnnl', f'-Wl,-rpath,{lib}', '-o', str(tmp)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise OnednnUnavailable(
        f'compiling the oneDNN convolutions failed ({" ".join(cmd)}):\n'
        f'{proc.stderr[-3000:]}')
  os.replace(tmp, out)  # atomic: concurrent builders agree
  return out


@functools.lru_cache(maxsize=None)
def register() -> None:
  """Builds, loads and registers the three custom calls with XLA (CPU).

  Sets OMP_WAIT_POLICY=PASSIVE unless the environment sets it: oneDNN's
  OpenMP threads otherwise spin between convolutions and take the cores
  from XLA's own threads (width 1/4, B = 32 step: 2.7 s spinning against
  1.3 s passive, and 1.7 s for XLA's convolutions; 2026-12-04). libgomp
  reads it when it loads, i.e. here, unless something loaded it before."""
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except OSError as e:
    raise OnednnUnavailable(
        f'loading the oneDNN convolutions failed ({e}); oneDNN 3.2\'s OpenMP'
        f' build needs libgomp.so.1 (Debian/Ubuntu: apt-get install'
        f' libgomp1): {INSTALL_HINT}') from e
  for name in TARGETS.values():
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu')


def available() -> bool:
  """Whether `conv_impl='onednn'` can run here (builds on first call)."""
  try:
    register()
  except OnednnUnavailable:
    return False
  return True


def _attrs(strides, pads):
  (pt, pb), (pl, pr) = pads
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pt), pad_bottom=np.int64(pb),
              pad_left=np.int64(pl), pad_right=np.int64(pr))


def _call(kind, out_shape, out_dtype, a, b, strides, pads):
  return jax.ffi.ffi_call(
      TARGETS[kind], jax.ShapeDtypeStruct(out_shape, out_dtype),
      vmap_method='sequential')(a, b, **_attrs(strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_nhwc(x, w, strides, pads, out_dtype, operand_dtype):
  """2-D convolution `x [N, H, W, C]` * `w [KH, KW, C, O]` -> `[N, OH, OW,
  O]` on oneDNN (`strides` (sh, sw), `pads` ((top, bottom), (left, right)),
  result in `out_dtype`). The operands (and, in the backward pass, the
  output cotangent) are cast to `operand_dtype` for oneDNN; products are
  accumulated in float32. Gradients are the convolution's, at the cast
  operands (the cast itself passes cotangents through)."""
  return _forward(x, w, strides, pads, out_dtype, operand_dtype)[0]


def _out_shape(x, w, strides, pads):
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape
  (pt, pb), (pl, pr) = pads
  return (n, (h + pt + pb - kh) // strides[0] + 1,
          (wd + pl + pr - kw) // strides[1] + 1, o)


def _forward(x, w, strides, pads, out_dtype, operand_dtype):
  xc, wc = x.astype(operand_dtype), w.astype(operand_dtype)
  y = _call('fwd', _out_shape(x, w, strides, pads), out_dtype, xc, wc,
            strides, pads)
  return y, (xc, wc)


def _fwd(x, w, strides, pads, out_dtype, operand_dtype):
  y, (xc, wc) = _forward(x, w, strides, pads, out_dtype, operand_dtype)
  # Residuals in the operand dtype, plus the inputs' dtypes (zero-size
  # arrays: static dtypes for the cotangents).
  return y, (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


# oneDNN 3.2's bf16 weight gradient ran 12-59x slower than its float32 one
# on thin layers (3 -> 64, 64 -> 3) and on small ones (at most 3,136 output
# pixels over the batch: 16 rows at 7 x 7 or 14 x 14), and about 2x faster
# elsewhere (full-width PolyMNIST step, B = 16, 2-core AMD EPYC,
# 2026-12-04, ONEDNN_VERBOSE). Below these sizes the bf16 operands are
# widened to float32 for the weight gradient: the same products (bf16
# values multiply exactly in float32), summed in another order.
BF16_WGRAD_MIN_PIXELS = 3500
BF16_WGRAD_MIN_CHANNELS = 16


def bf16_weight_gradient(x_shape, w_shape, g_shape) -> bool:
  """Whether the bf16 weight-gradient kernel is used for this layer."""
  pixels = g_shape[0] * g_shape[1] * g_shape[2]
  return (pixels >= BF16_WGRAD_MIN_PIXELS and
          min(x_shape[3], w_shape[3]) >= BF16_WGRAD_MIN_CHANNELS)


def _bwd(strides, pads, out_dtype, operand_dtype, res, g):
  del out_dtype
  xc, wc, x_like, w_like = res
  g = g.astype(operand_dtype)
  dx = _call('bwd_data', xc.shape, x_like.dtype, g, wc, strides, pads)
  xw, gw = xc, g
  if (xc.dtype == jnp.bfloat16 and
      not bf16_weight_gradient(xc.shape, wc.shape, g.shape)):
    xw, gw = xc.astype(jnp.float32), g.astype(jnp.float32)
  dw = _call('bwd_weights', wc.shape, jnp.float32, xw, gw, strides, pads)
  return dx, dw.astype(w_like.dtype)


conv_nhwc.defvjp(_fwd, _bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None,
                         preferred_element_type=None, *,
                         operand_dtype=None):
  """Drop-in for `lax.conv_general_dilated` (Flax's
  `nn.Conv(conv_general_dilated=...)`) on oneDNN, for what the module doc
  lists; anything else raises a ValueError naming the unsupported
  argument. `operand_dtype=jnp.bfloat16` rounds float32 operands to bf16
  for the products (float32 accumulation and result: `bf16_operands`)."""
  del precision  # oneDNN computes in the operands' type, float32 accumulated
  register()
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (dn.lhs_spec, dn.rhs_spec, dn.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1),
                                                 (0, 3, 1, 2)):
    raise ValueError(
        "conv_impl='onednn' supports 2-D NHWC / HWIO / NHWC convolutions"
        f' only, got dimension_numbers={dimension_numbers!r}')
  for name, d in (('lhs_dilation', lhs_dilation),
                  ('rhs_dilation', rhs_dilation)):
    if d is not None and tuple(d) != (1, 1):
      raise ValueError(f"conv_impl='onednn': no {name}, got {d!r}")
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError("conv_impl='onednn': one group only")
  if lhs.dtype != rhs.dtype or lhs.dtype not in (jnp.float32, jnp.bfloat16):
    raise ValueError(
        "conv_impl='onednn': float32 or bfloat16 operands of one type, got"
        f' {lhs.dtype} and {rhs.dtype}')
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  out_dtype = jnp.dtype(preferred_element_type or lhs.dtype)
  return conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), pads,
                   out_dtype, jnp.dtype(operand_dtype or lhs.dtype))


@functools.lru_cache(maxsize=None)
def bf16_unsupported() -> str | None:
  """Why this CPU's oneDNN cannot run bf16 convolutions, or None.

  oneDNN 3.2 has bf16 convolution kernels only on AVX-512 CPUs (AVX512-BF16
  natively, emulated on AVX512-core); elsewhere (e.g. an AVX2-only CPU)
  creating the primitive fails when the program runs. Probed once per
  process with one tiny bf16 convolution (registers the custom calls)."""
  register()
  x = jnp.ones((1, 4, 4, 2), jnp.float32)
  w = jnp.ones((3, 3, 2, 2), jnp.float32)
  try:
    jax.block_until_ready(jax.jit(lambda x, w: bf16_operands(
        x, w, (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')))(x, w))
  except jax.errors.JaxRuntimeError as e:
    return (f'oneDNN has no bf16 convolution on this CPU (it needs AVX-512;'
            f' {str(e).splitlines()[0][:160]})')
  return None


def bf16_operands(*args, **kwargs):
  """`conv_general_dilated` with bfloat16 operands: float32 activations and
  weights are rounded to bf16 for oneDNN's bf16 kernels (AVX512-BF16: about
  twice the float32 rate on the CPU of bench/RESULTS.md), products summed in
  float32, float32 result; the input and weight gradients likewise (the
  output cotangent rounded to bf16). `model.conv_impl='onednn_bf16'`."""
  return conv_general_dilated(*args, operand_dtype=jnp.bfloat16, **kwargs)
