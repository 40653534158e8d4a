"""Winograd F(2x2, 3x3) written in JAX against XLA's own 3x3 convolution,
one layer at a time (issue 11, item 2: fewer FLOPs for the 3x3 convolutions,
all of which are stride 1 in the PolyMNIST networks).

    python bench/winograd_layer.py

F(2x2, 3x3) computes each 2 x 2 output tile from a 4 x 4 input tile with
16 instead of 36 multiplications per (input, output) channel pair: the
input tiles are transformed (B^T d B: additions), multiplied by the
transformed kernels (G g G^T) as 16 matrix products [tiles, C] x [C, O],
and transformed back (A^T m A). Two layouts: the 16 products as one
batched `einsum` over stacked tiles, and as 16 separate `jnp.dot`s. Each is
checked against `lax.conv_general_dilated` first (float32, max abs error
printed), then timed like bench/conv_layer.py (median of 5 after one
untimed call; forward, and forward with the input and weight gradients by
autodiff), for the decoders' layer shapes at 80 rows (M K B of the
full-width step at K = 1, B = 16) and one at 16 rows.

Measured 2026-12-04 20:50 UTC (the 2-core AMD EPYC CPU, JAX 0.10.2; the
study and classifier training running beside it were paused with SIGSTOP
for the measurement), ms, forward / with gradients; max |error| against
XLA 5.7e-6 to 9.2e-6 (unit-scale inputs, float32):

| rows, size, channels | XLA | Winograd, einsum | Winograd, 16 dots |
|---|---|---|---|
| 80, 28 x 28, 64 | 47 / 164 | 74 / 196 | 52 / 154 |
| 80, 14 x 14, 128 | 25 / 85 | 41 / 107 | 31 / 97 |
| 80, 7 x 7, 256 | 27 / 86 | 42 / 106 | 25 / 101 |
| 16, 28 x 28, 64 | 10 / 30 | 6 / 40 | 5 / 32 |

Not faster: the 16-dot layout is 6 % faster to 17 % slower than XLA with
gradients, the einsum layout slower still. The products take 2.25x fewer
FLOPs, but the tile transforms
and the interleaving of the output tiles are memory-bound passes that XLA
runs as separate fusions, and they cost more than the products save. A
Winograd (or direct) kernel that beats XLA:CPU's needs the transforms fused
into the product, i.e. a hand-written kernel (a custom call), not JAX ops.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from conv_layer import _median_ms  # bench/ is on sys.path when run as a script

G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)


def _bt(r0, r1, r2, r3):  # rows of B^T d
  return (r0 - r2, r1 + r2, r2 - r1, r1 - r3)


def _at(m0, m1, m2, m3):  # rows of A^T m
  return (m0 + m1 + m2, m1 - m2 - m3)


def _tiles(x):
  """x [N, H, W, C] -> the 16 transformed 4 x 4 tile planes, each
  [N, ceil(H / 2), ceil(W / 2), C] (SAME padding)."""
  _, h, w, _ = x.shape
  th, tw = -(-h // 2), -(-w // 2)
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  out = []
  for t in _bt(*[xp[:, a:a + 2 * th:2] for a in range(4)]):
    out.extend(_bt(*[t[:, :, a:a + 2 * tw:2] for a in range(4)]))
  return out


def _untile(m, h, w):
  """m: 4 x 4 nested planes [N, th, tw, O] -> [N, H, W, O]."""
  rows = [jnp.stack(_at(*[r[k] for k in range(4)]), axis=-2)
          for r in _at(*[jnp.stack(m[k]) for k in range(4)])]
  y = jnp.stack(rows, axis=2)  # [N, th, 2, tw, 2, O]
  n, th, _, tw, _, o = y.shape
  return y.reshape(n, 2 * th, 2 * tw, o)[:, :h, :w]


def winograd_einsum(x, k):
  n, h, w, c = x.shape
  tiles = _tiles(x)
  v = jnp.stack(tiles).reshape(16, -1, c)  # [16, tiles, C]
  u = jnp.einsum('ai,ijco,bj->abco', G, k, G).reshape(16, c, -1)
  m = jnp.einsum('xtc,xco->xto', v, u).reshape(
      (16,) + tiles[0].shape[:3] + (-1,))
  return _untile([[m[4 * a + b] for b in range(4)] for a in range(4)], h, w)


def winograd_dots(x, k):
  n, h, w, c = x.shape
  v = _tiles(x)
  u = jnp.einsum('ai,ijco,bj->abco', G, k, G)
  m = [[jnp.dot(v[4 * a + b].reshape(-1, c), u[a, b]).reshape(
      v[0].shape[:3] + (-1,)) for b in range(4)] for a in range(4)]
  return _untile(m, h, w)


def xla_conv(x, k):
  return lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def main():
  impls = (('XLA', xla_conv), ('Winograd, einsum', winograd_einsum),
           ('Winograd, 16 dots', winograd_dots))
  print(f'backend {jax.default_backend()}; ms forward / with gradients')
  for rows, size, ch in ((80, 28, 64), (80, 14, 128), (80, 7, 256),
                         (16, 28, 64)):
    x = jax.random.normal(jax.random.key(0), (rows, size, size, ch))
    k = jax.random.normal(jax.random.key(1), (3, 3, ch, ch)) * 0.05
    ref = xla_conv(x, k)
    cells = []
    for name, fn in impls:
      err = float(jnp.max(jnp.abs(jax.jit(fn)(x, k) - ref)))
      grads = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k)**2),
                               argnums=(0, 1)))
      cells.append(f'{name} {_median_ms(jax.jit(fn), x, k, repeats=5):.0f} /'
                   f' {_median_ms(grads, x, k, repeats=5):.0f} (max |err| {err:.1e})')
    print(f'{rows} rows, {size} x {size}, {ch} channels: '
          + '; '.join(cells), flush=True)


if __name__ == '__main__':
  main()
