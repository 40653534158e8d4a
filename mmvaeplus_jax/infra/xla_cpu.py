"""XLA:CPU convolutions through Eigen instead of YNNPACK: an opt-in switch.

jaxlib 0.10 runs XLA:CPU convolutions through YNNPACK by default. The flag

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

removes only YNNPACK's convolutions from XLA's default YNNPACK fusions (the
other fusions stay), so convolutions fall back to XLA's Eigen kernels. It
is a CPU-only flag (GPU and TPU programs are unchanged) and changes only
the order of float32 sums inside each convolution (tested in
tests/xla_cpu_test.py: every layer kind within the reassociation bound, a
whole MMVAE+ DReG gradient within 3.4e-8 relative L2).

Measured on the 2-core AMD EPYC (AVX-512) of bench/RESULTS.md, 2026-12-04
("Eigen convolutions and the official PyTorch step"): one 3x3 convolution
64 -> 64 at 28 x 28 (NHWC, jit) ran about twice as fast through Eigen
(80 rows: forward 50 -> 27 ms, forward + both gradients 192 -> 106 ms),
but the whole full-width train step did not: in one quiet side-by-side
run, Eigen against YNNPACK, K = 1: B = 16 3.35 / 3.23 s, B = 64 13.61 /
12.91 s, B = 128 25.41 / 22.48 s; K = 10 DReG: B = 4 6.38 / 6.00 s,
B = 16 24.53 / 23.70 s; width 1/4, B = 32: 0.83 / 0.98 s (an earlier run
the same day had Eigen ahead at B = 16 and B = 128 by 4-5 %: differences
of this size are run-to-run noise here). It does halve the full-width
step's compile time (no sliced weight gradients: 9-17 s against 25-38 s).
So it is off by default; set $MMVAEPLUS_CPU_CONVOLUTIONS=eigen to use it
(e.g. to measure it on another CPU).

`configure()` runs in the shells (`parallel.configure_jax`, called by
train.py, eval.py and the study driver; never on import). It appends the flag to
$XLA_FLAGS when all of these hold:

* $MMVAEPLUS_CPU_CONVOLUTIONS is `eigen` (unset or `xla`: XLA's default);
* the installed jaxlib is one where the flag was measured (0.10.x: an
  unknown flag in XLA_FLAGS aborts XLA, so other versions are left alone);
* $XLA_FLAGS names no `--xla_cpu_experimental_ynn_fusion_type` of its own
  (the user's choice wins);
* no JAX backend has started yet (XLA reads XLA_FLAGS once, when the CPU
  client starts; call `parallel.configure_jax()` before running JAX computations,
  or one warning says that the setting could not be applied).

`cpu_convolutions()` says which implementation the CPU backend uses, so
that the automatic weight gradient of `models/conv.py` follows it (XLA's
own under Eigen, where the batch slices were slower; the slices under
YNNPACK).
"""

from __future__ import annotations

import os
import warnings

FLAG_NAME = '--xla_cpu_experimental_ynn_fusion_type'
EIGEN_FLAG = FLAG_NAME + '=-individual_convolution'
ENV = 'MMVAEPLUS_CPU_CONVOLUTIONS'
CHOICES = ('eigen', 'xla')
# jaxlib (major, minor) versions on which the flag was measured.
MEASURED_JAXLIB = ((0, 10),)

EIGEN = 'eigen'
YNNPACK = 'ynnpack'


def _choice() -> str:
  value = os.environ.get(ENV, 'xla').strip().lower() or 'xla'
  if value not in CHOICES:
    raise ValueError(
        f'${ENV}={os.environ[ENV]!r}: must be one of {CHOICES} (eigen: XLA:CPU'
        ' convolutions through Eigen; xla: XLA\'s own default, YNNPACK on'
        ' jaxlib 0.10; unset: xla)')
  return value


def _jaxlib_version() -> tuple[int, int]:
  import jaxlib  # pylint: disable=g-import-not-at-top
  major, minor = jaxlib.__version__.split('.')[:2]
  return int(major), int(minor)


def _backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _user_flag(flags: str) -> str | None:
  for flag in flags.split():
    if flag.split('=')[0] == FLAG_NAME:
      return flag
  return None


def configure() -> str:
  """Applies the Eigen-convolution flag where it is safe (module doc);
  returns `cpu_convolutions()`."""
  flags = os.environ.get('XLA_FLAGS', '')
  if (_choice() == 'eigen' and _user_flag(flags) is None
      and _jaxlib_version() in MEASURED_JAXLIB):
    if _backends_started():
      warnings.warn(
          f'{ENV}=eigen has no effect: it was applied after a JAX backend'
          ' started, so XLA:CPU keeps its YNNPACK convolutions. Call'
          ' mmvaeplus_jax.infra.parallel.configure_jax() before running JAX'
          ' computations, or set'
          f' XLA_FLAGS={EIGEN_FLAG} before starting Python.', stacklevel=2)
    else:
      os.environ['XLA_FLAGS'] = f'{flags} {EIGEN_FLAG}'.strip()
  return cpu_convolutions()


def cpu_convolutions() -> str:
  """`'eigen'` when XLA:CPU's convolutions run through Eigen in this
  process (the flag is in $XLA_FLAGS), else `'ynnpack'` (XLA's default on
  jaxlib 0.10; on other versions, whatever XLA's default is)."""
  flag = _user_flag(os.environ.get('XLA_FLAGS', ''))
  if flag is None:
    return YNNPACK
  value = flag.split('=', 1)[1] if '=' in flag else ''
  names = [n.strip() for n in value.split(',') if n.strip()]
  if names and all(n[0] in '+-' for n in names):  # edits of XLA's default set
    return EIGEN if '-individual_convolution' in names else YNNPACK
  # A list without signs replaces the set (empty: no YNNPACK fusions).
  return YNNPACK if 'individual_convolution' in names else EIGEN
