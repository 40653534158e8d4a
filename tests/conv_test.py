"""The batch-sliced weight-gradient convolution (`models/conv.py`).

Error bound used throughout: the weight gradient is a sum of n = N * H' * W'
products per element (N rows, H' x W' output pixels); summing the same
products in another order changes a float32 result by at most
gamma_n * sum |products| with gamma_n = n u / (1 - n u), u = 2^-24 (Higham,
Accuracy and Stability of Numerical Algorithms, eq. 3.5), for ANY order,
so the bound holds on every host and thread count. `sum |products|` is the
same weight gradient computed from |x| and |g|.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.models import conv as conv_lib
from mmvaeplus_jax.models import polymnist

U = 2.0**-24
VALUE_RTOL = 2 * (4 * 2352 * U) / (1 - 4 * 2352 * U)  # 2 gamma_n, n = 9,408


def _gamma(n):
  return n * U / (1 - n * U)


def _num_convs(fn, *args):
  """Convolutions left in the optimised program (dead ones removed)."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  return text.count(' convolution(')


CASES = [
    # (N, H, W, C, O, kernel, stride, padding)
    (13, 28, 28, 3, 8, 3, 1, ((1, 1), (1, 1))),   # image conv, ragged slices
    (12, 14, 14, 8, 16, 3, 1, ((1, 1), (1, 1))),
    (12, 28, 28, 40, 40, 3, 1, ((1, 1), (1, 1))),  # sliced under AUTO too
    (10, 7, 7, 16, 8, 1, 1, ((0, 0), (0, 0))),    # 1x1 shortcut
    (9, 12, 12, 4, 6, 3, 2, 'SAME'),              # strided
]


@pytest.mark.parametrize('chunk', [conv_lib.AUTO, 1, 4])
@pytest.mark.parametrize('case', CASES)
def test_sliced_wgrad_equals_plain_convolution(case, chunk):
  n, h, w, c, o, k, stride, padding = case
  kx, kw, kg = jax.random.split(jax.random.key(n * 7 + c), 3)
  x = jax.random.normal(kx, (n, h, w, c))
  kernel = jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def plain(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=dn)

  sliced_fn = conv_lib.make_conv_general_dilated(chunk)

  def sliced(x, kernel):
    return sliced_fn(x, kernel, (stride, stride), padding,
                     dimension_numbers=dn)

  y0, vjp0 = jax.vjp(plain, x, kernel)
  y1, vjp1 = jax.jit(lambda x, k: jax.vjp(sliced, x, k))(x, kernel)
  g = jax.random.normal(kg, y0.shape)
  dx0, dw0 = vjp0(g)
  dx1, dw1 = vjp1(g)
  # Value and input gradient: the plain convolution's operations (another
  # compiled module may fuse them differently): each element a sum of
  # k * k * C (resp. k * k * O) products, within 2 gamma of its magnitudes.
  y_ref = jax.jit(plain)(x, kernel)
  dx_ref = jax.jit(lambda x, k, g: jax.vjp(plain, x, k)[1](g)[0])(
      x, kernel, g)
  y_mag = plain(jnp.abs(x), jnp.abs(kernel))
  dx_mag = jax.vjp(lambda x: plain(x, jnp.abs(kernel)), x)[1](jnp.abs(g))[0]
  assert np.all(np.abs(np.asarray(y1 - y_ref))
                <= 2 * _gamma(k * k * c) * np.asarray(y_mag))
  assert np.all(np.abs(np.asarray(dx1 - dx_ref))
                <= 2 * _gamma(k * k * o) * np.asarray(dx_mag))
  # Weight gradient: a reordered sum, within gamma_n * sum |products|.
  _, vjp_abs = jax.vjp(plain, jnp.abs(x), kernel)
  magnitude = np.asarray(vjp_abs(jnp.abs(g))[1])
  terms = n * y0.shape[1] * y0.shape[2]
  # Two roundings of the same sum (ours and XLA's), plus the per-slice
  # partial sums: 2 gamma_n bounds their difference.
  bound = 2 * _gamma(terms) * magnitude
  err = np.abs(np.asarray(dw1) - np.asarray(dw0))
  assert np.all(err <= bound), float(np.max(err / np.maximum(bound, 1e-30)))
  # Not vacuous: a slice left out moves the gradient far beyond the bound.
  assert np.max(np.abs(np.asarray(dw0)) - bound) > 0
  # The weight gradient really was sliced (more than one conv in its jaxpr).
  rows = chunk if chunk > 0 else conv_lib.cpu_wgrad_rows(
      n, y0.shape[1] * y0.shape[2], c, o, k * k)
  num_plain = _num_convs(lambda x, k: jax.grad(
      lambda k: jnp.sum(plain(x, k) * g))(k), x, kernel)
  num_sliced = _num_convs(lambda x, k: jax.grad(
      lambda k: jnp.sum(sliced(x, k) * g))(k), x, kernel)
  expected_slices = -(-n // rows)
  assert num_plain == 1
  assert num_sliced == expected_slices


def test_resolve_wgrad_chunk():
  assert conv_lib.resolve_wgrad_chunk(-1, 'cpu', 'ynnpack') == conv_lib.AUTO
  assert conv_lib.resolve_wgrad_chunk(-1, 'cpu', 'eigen') == 0
  assert conv_lib.resolve_wgrad_chunk(-1, 'gpu') == 0
  assert conv_lib.resolve_wgrad_chunk(-1, 'tpu') == 0
  assert conv_lib.resolve_wgrad_chunk(0, 'cpu') == 0
  assert conv_lib.resolve_wgrad_chunk(5, 'gpu') == 5
  with pytest.raises(ValueError, match='conv_wgrad_chunk'):
    conv_lib.resolve_wgrad_chunk(-2)
  # GPU/TPU keep XLA's program: the plain lax function, not a wrapper.
  assert conv_lib.make_conv_general_dilated(0) is jax.lax.conv_general_dilated


def test_cpu_rows_rule():
  assert conv_lib.cpu_wgrad_rows(80, 28 * 28, 64, 64) == 3  # 32-slice cap
  assert conv_lib.cpu_wgrad_rows(16, 28 * 28, 64, 64) == 1
  assert conv_lib.cpu_wgrad_rows(16, 14 * 14, 64, 128) == 4
  assert conv_lib.cpu_wgrad_rows(80, 7 * 7, 256, 128) == 16
  assert conv_lib.cpu_wgrad_rows(80, 28 * 28, 64, 3) == 8  # thin kernel
  assert conv_lib.cpu_wgrad_rows(6400, 28 * 28, 64, 64) == 200
  # Small layers (under 0.2 GFLOP) keep XLA's weight gradient.
  assert conv_lib.cpu_wgrad_rows(96, 28 * 28, 8, 8) == 96
  assert conv_lib.cpu_wgrad_rows(13, 28 * 28, 3, 8) == 13


@pytest.mark.slow  # ~37 s float32, more bf16 (the layer tests above: default)
@pytest.mark.parametrize('compute_dtype', ['float32', 'bfloat16'])
def test_model_bound_and_gradient_match_xla_weight_gradient(compute_dtype):
  """The whole MMVAE+ DReG objective with the switch on (2-row slices) and
  off: same bound; gradients within float32 reassociation.

  Bound: the same forward operations (XLA may still fuse the two programs
  differently): the loss sums at most n = 2 * 2 * 2,352 = 9,408 per-pixel
  terms per example, so within 2 gamma_n = 1.1e-3 of their magnitudes,
  and the terms share a sign (log-densities). Gradient: each
  weight-gradient element is a reordered sum of at most n = 8 * 28 * 28 = 6,272 products (M * K * B = 8 decoder
  rows here), so its change is at most 2 gamma_n (7.5e-4) of its sum of
  magnitudes; the whole-tree relative L2 change is far smaller unless the
  terms cancel, and we allow 1e-4 for float32 (measured 2.4e-7 on this
  model, 2026-12-03) and bf16's own bound 1e-2 (tests/speed_test.py).
  """
  kw = dict(num_modalities=2, dim_w=4, dim_z=4, width=0.0625,
            compute_dtype=compute_dtype)
  rng = np.random.default_rng(0)
  out = {}
  # (At this width the automatic rule leaves every layer to XLA: under
  # CPU_WGRAD_MIN_FLOPS. The per-layer test above covers AUTO.)
  chunks = (0, 2)
  for chunk in chunks:
    model = polymnist.make_mmvaeplus(conv_wgrad_chunk=chunk, **kw)
    batch = {n: jnp.asarray(rng.integers(0, 256, (4, 28, 28, 3)) / 255.0,
                            jnp.float32) for n in model.names}
    rng = np.random.default_rng(0)  # same images for every chunk
    params = model.init(jax.random.key(0), batch)

    def loss(p, model=model, batch=batch):
      return -jnp.mean(estimators.sample_objective(
          jax.random.key(1), model, p, batch, num_samples=1, beta=2.5,
          estimator='dreg'))

    out[chunk] = jax.jit(jax.value_and_grad(loss))(params)
  v0, g0 = out[0]
  flat0 = np.concatenate([np.ravel(t) for t in jax.tree.leaves(g0)])
  tol = 1e-4 if compute_dtype == 'float32' else 1e-2
  for chunk in chunks[1:]:
    v, g = out[chunk]
    np.testing.assert_allclose(float(v), float(v0), rtol=VALUE_RTOL)
    flat = np.concatenate([np.ravel(t) for t in jax.tree.leaves(g)])
    rel = np.linalg.norm(flat - flat0) / np.linalg.norm(flat0)
    assert rel < tol, (chunk, rel)
