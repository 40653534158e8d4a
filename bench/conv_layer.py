"""Times one 3x3 convolution layer on the current backend (forward, and
forward with both gradients), e.g. to compare XLA:CPU's convolution
kernels:

    python bench/conv_layer.py                                    # XLA's default
    MMVAEPLUS_CPU_CONVOLUTIONS=eigen python bench/conv_layer.py   # Eigen (xla_cpu.py)

The layer is the decoders' 64 -> 64 convolution at 28 x 28 (NHWC, HWIO,
'SAME'), on `--rows` inputs (80 = M K B of the full-width step at K = 1,
B = 16). Prints the median of `--repeats` timed calls after one untimed
call, and GFLOP/s from 2 N H W 9 C O FLOPs per pass (3 passes with
gradients).
"""

import argparse
import time

import mmvaeplus_jax  # noqa: F401  (applies $MMVAEPLUS_CPU_CONVOLUTIONS before JAX starts)
from mmvaeplus_jax.infra import xla_cpu

import jax  # pylint: disable=g-bad-import-order
from jax import lax
import jax.numpy as jnp


def _median_ms(f, *args, repeats):
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2] * 1e3


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--rows', default='80,640',
                 help='comma-separated batch sizes (rows)')
  p.add_argument('--channels', type=int, default=64)
  p.add_argument('--size', type=int, default=28)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args()
  c, h = a.channels, a.size
  print(f'backend {jax.default_backend()}, convolutions'
        f' {xla_cpu.cpu_convolutions()}, {a.dtype}')

  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  fwd = jax.jit(conv)
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w)**2),
                           argnums=(0, 1)))
  for rows in (int(r) for r in a.rows.split(',')):
    x = jax.random.normal(jax.random.key(0), (rows, h, h, c)).astype(a.dtype)
    w = (jax.random.normal(jax.random.key(1), (3, 3, c, c)) * 0.05).astype(
        a.dtype)
    gflop = 2 * rows * h * h * 9 * c * c / 1e9
    t_f = _median_ms(fwd, x, w, repeats=a.repeats)
    t_g = _median_ms(grads, x, w, repeats=a.repeats)
    print(f'{rows} rows: forward {t_f:.0f} ms ({gflop / t_f * 1e3:.0f}'
          f' GFLOP/s); forward + input and weight gradients {t_g:.0f} ms'
          f' ({3 * gflop / t_g * 1e3:.0f} GFLOP/s)', flush=True)


if __name__ == '__main__':
  main()
