"""oneDNN convolutions (`model.conv_impl='onednn'`, mmvaeplus_jax/infra/onednn.py).

Error bound (as tests/conv_test.py): each output element of a convolution
and of its two gradients is a sum of n products (k * k * C for the value,
k * k * O for the input gradient, N * H' * W' for the weight gradient).
oneDNN and XLA sum the same products in other orders; any two orders differ
by at most 2 gamma_n * sum |products|, gamma_n = n u / (1 - n u), u = 2^-24
(Higham, eq. 3.5), on every host and thread count. `sum |products|` is the
same convolution (or gradient) of the operands' absolute values. The bound
is applied to the whole array in L2 norm (never per element):
||a - b|| <= 2 gamma_n ||magnitude||.

Skipped, with the reason, where oneDNN or a C++ compiler is missing (the
`[onednn]` extra is opt-in); the error paths are tested everywhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.infra import onednn
from mmvaeplus_jax.models import conv as conv_lib
from mmvaeplus_jax.models import polymnist

U = 2.0**-24
DN = ('NHWC', 'HWIO', 'NHWC')


def _gamma(n):
  return n * U / (1 - n * U)


def _why_unavailable():
  try:
    onednn.register()
  except onednn.OnednnUnavailable as e:
    return str(e)
  return None


_REASON = _why_unavailable()
needs_onednn = pytest.mark.skipif(
    _REASON is not None,
    reason=f'oneDNN convolutions unavailable here: {_REASON}')
_BF16_REASON = _REASON or onednn.bf16_unsupported()
needs_onednn_bf16 = pytest.mark.skipif(
    _BF16_REASON is not None,
    reason=f'oneDNN bf16 convolutions unavailable here: {_BF16_REASON}')

# (N, H, W, C, O, kernel, stride, padding): the networks' layer kinds and
# the rest of what the module supports.
LAYERS = [
    (5, 28, 28, 3, 16, 3, 1, ((1, 1), (1, 1))),   # image conv
    (5, 28, 28, 16, 16, 3, 1, ((1, 1), (1, 1))),
    (4, 14, 14, 16, 32, 3, 1, 'SAME'),
    (4, 7, 7, 32, 16, 1, 1, ((0, 0), (0, 0))),    # 1x1 shortcut, no bias
    (4, 28, 28, 16, 3, 3, 1, ((1, 1), (1, 1))),   # to image
    (3, 14, 14, 8, 12, 4, 2, ((1, 1), (1, 1))),   # strided 4x4
    (3, 9, 11, 5, 7, 3, 2, ((0, 2), (1, 0))),     # odd sizes, uneven pads
]


def _layer_arrays(i, n, h, w, c, o, k, dtype=jnp.float32):
  kx, kw, kg = jax.random.split(jax.random.key(100 + i), 3)
  x = jax.random.normal(kx, (n, h, w, c)).astype(dtype)
  wt = (jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)).astype(dtype)
  return x, wt, kg


def _rel_excess(a, b, bound):
  """||a - b|| / bound (<= 1 passes)."""
  diff = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return diff / bound


@needs_onednn
@pytest.mark.parametrize('i', range(len(LAYERS)))
def test_layer_value_and_gradients_within_reassociation(i):
  n, h, w, c, o, k, s, pad = LAYERS[i]
  x, wt, kg = _layer_arrays(i, n, h, w, c, o, k)

  def ref(x, wt):
    return jax.lax.conv_general_dilated(x, wt, (s, s), pad,
                                        dimension_numbers=DN)

  def ours(x, wt):
    return onednn.conv_general_dilated(x, wt, (s, s), pad,
                                       dimension_numbers=DN)

  y0, vjp0 = jax.jit(lambda x, wt: jax.vjp(ref, x, wt))(x, wt)
  y1, vjp1 = jax.jit(lambda x, wt: jax.vjp(ours, x, wt))(x, wt)
  assert y1.shape == y0.shape and y1.dtype == y0.dtype
  g = jax.random.normal(kg, y0.shape)
  dx0, dw0 = vjp0(g)
  dx1, dw1 = vjp1(g)
  ax, aw, ag = jnp.abs(x), jnp.abs(wt), jnp.abs(g)
  y_mag = ref(ax, aw)
  dx_mag = jax.vjp(lambda x: ref(x, aw), ax)[1](ag)[0]
  dw_mag = jax.vjp(lambda wt: ref(ax, wt), aw)[1](ag)[0]
  out_pixels = y0.shape[1] * y0.shape[2]
  for name, a, b, terms, mag in (
      ('value', y1, y0, k * k * c, y_mag),
      ('input gradient', dx1, dx0, k * k * o, dx_mag),
      ('weight gradient', dw1, dw0, n * out_pixels, dw_mag)):
    bound = 2 * _gamma(terms) * np.linalg.norm(np.asarray(mag, np.float64))
    assert _rel_excess(a, b, bound) <= 1, (name, _rel_excess(a, b, bound))
    # Not vacuous: the bound is a few per cent of the values' own size at
    # most (the weight gradient's 3,920-term sums of random-sign products:
    # 1.8 %), so a wrong tap, stride or padding (an O(1) change) fails.
    assert bound < 0.05 * np.linalg.norm(np.asarray(b)), name


@needs_onednn_bf16
def test_bfloat16_operands():
  """bf16 operands: oneDNN multiplies them exactly and accumulates in
  float32, then rounds to bf16 (relative 2^-8 per element) for a bf16
  result; the reference is the float32 convolution of the same bf16
  values. Weight gradients come back in float32 (then the kernel's
  dtype)."""
  n, h, w, c, o, k, s, pad = LAYERS[1]
  x, wt, kg = _layer_arrays(1, n, h, w, c, o, k, jnp.bfloat16)
  f32 = lambda a: a.astype(jnp.float32)

  def ref(x, wt):
    return jax.lax.conv_general_dilated(f32(x), f32(wt), (s, s), pad,
                                        dimension_numbers=DN)

  y = jax.jit(lambda x, wt: onednn.conv_general_dilated(
      x, wt, (s, s), pad, dimension_numbers=DN))(x, wt)
  assert y.dtype == jnp.bfloat16
  y_ref = ref(x, wt)
  mag = np.linalg.norm(np.asarray(ref(jnp.abs(x), jnp.abs(wt))))
  bound = (2.0**-8 * np.linalg.norm(np.asarray(y_ref))
           + 2 * _gamma(k * k * c) * mag)
  assert _rel_excess(f32(y), y_ref, bound) <= 1
  # float32 result from bf16 operands (preferred_element_type).
  y32 = onednn.conv_general_dilated(x, wt, (s, s), pad, dimension_numbers=DN,
                                    preferred_element_type=jnp.float32)
  assert y32.dtype == jnp.float32
  assert _rel_excess(y32, y_ref, 2 * _gamma(k * k * c) * mag) <= 1
  g = jax.random.normal(kg, y.shape).astype(jnp.bfloat16)
  dw = jax.grad(lambda wt: jnp.sum(f32(onednn.conv_general_dilated(
      x, wt, (s, s), pad, dimension_numbers=DN)) * f32(g)))(wt)
  dw_ref = jax.grad(lambda wt: jnp.sum(ref(x, wt) * f32(g)))(f32(wt))
  dw_mag = jax.grad(lambda wt: jnp.sum(ref(jnp.abs(x), wt) * jnp.abs(
      f32(g))))(f32(jnp.abs(wt)))
  terms = n * h * w
  bound = (2.0**-8 * np.linalg.norm(np.asarray(dw_ref))
           + 2 * _gamma(terms) * np.linalg.norm(np.asarray(dw_mag)))
  assert dw.dtype == jnp.bfloat16
  assert _rel_excess(f32(dw), dw_ref, bound) <= 1


def _objective(impl, vmap_modalities=False, program=False):
  """(loss, flat gradient, optimised program text or None) of a small
  MMVAE+ DReG objective (M = 2, width 1/8, K = 2, B = 4) with
  `conv_impl=impl`; asserts that the jitted step compiles once."""
  rng = np.random.default_rng(0)
  batch = {f'm{i}': jnp.asarray(rng.integers(0, 256, (4, 28, 28, 3)) / 255.0,
                                jnp.float32) for i in range(2)}
  model = polymnist.make_mmvaeplus(
      num_modalities=2, dim_w=4, dim_z=4, width=0.125, conv_wgrad_chunk=0,
      vmap_modalities=vmap_modalities, conv_impl=impl)
  params = model.init(jax.random.key(0), batch)

  def loss(p):
    return -jnp.mean(estimators.sample_objective(
        jax.random.key(1), model, p, batch, num_samples=2, beta=2.5,
        estimator='dreg'))

  fn = jax.jit(jax.value_and_grad(loss))
  value, grads = fn(params)
  fn(params)
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  flat = np.concatenate([np.ravel(t) for t in jax.tree.leaves(grads)])
  text = fn.lower(params).compile().as_text() if program else None
  return float(value), flat, text


@needs_onednn
@pytest.mark.parametrize(
    'vmap_modalities',
    [pytest.param(False, marks=pytest.mark.slow),  # ~35 s: slow suite (the
     pytest.param(True, marks=pytest.mark.slow)])  # layers stay in default)
def test_model_objective_and_gradient_match_xla(vmap_modalities):
  """The whole MMVAE+ DReG objective with every convolution on oneDNN
  against XLA's: same bound and gradient up to float32 reassociation.

  Bound: per example a sum of n = 2 * 2 * 2,352 per-pixel terms of one
  sign (log-densities), each computed from convolutions reassociated
  within their own 2 gamma bound: within 2 gamma_n (1.1e-3) relative.
  Gradient: each weight-gradient element is a reordered sum of at most
  n = 8 * 28 * 28 = 6,272 products, so its change is at most 2 gamma_n
  (7.5e-4) of its sum of magnitudes; the whole-tree relative L2 change is
  far smaller unless the terms cancel, and we allow 1e-4 (the allowance of
  tests/conv_test.py's sliced weight gradient; measured 2.6e-7 here,
  2026-12-05).
  Also: one compilation, and every convolution left to XLA is gone from
  the program (all went to oneDNN)."""
  v0, flat0, _ = _objective('xla', vmap_modalities)
  v1, flat1, text = _objective('onednn', vmap_modalities, program=True)
  assert ' convolution(' not in text
  assert onednn.TARGETS['bwd_weights'] in text
  assert flat1.shape == flat0.shape
  np.testing.assert_allclose(v1, v0, rtol=2 * _gamma(2 * 2 * 2352))
  rel = np.linalg.norm(flat1 - flat0) / np.linalg.norm(flat0)
  print(f'onednn: gradient rel L2 {rel:.2e}')
  assert rel < 1e-4


@needs_onednn
def test_unsupported_arguments_raise():
  x = jnp.ones((1, 8, 8, 2))
  w = jnp.ones((3, 3, 2, 2))
  with pytest.raises(ValueError, match='rhs_dilation'):
    onednn.conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2),
                                dimension_numbers=DN)
  with pytest.raises(ValueError, match='one group'):
    onednn.conv_general_dilated(x, jnp.ones((3, 3, 1, 2)), (1, 1), 'SAME',
                                dimension_numbers=DN, feature_group_count=2)
  with pytest.raises(ValueError, match='NHWC'):
    onednn.conv_general_dilated(jnp.ones((1, 2, 8, 8)), jnp.ones((2, 2, 3, 3)),
                                (1, 1), 'SAME',
                                dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  with pytest.raises(ValueError, match='float32 or bfloat16'):
    onednn.conv_general_dilated(x.astype(jnp.float16), w.astype(jnp.float16),
                                (1, 1), 'SAME', dimension_numbers=DN)


def test_config_errors_name_the_fix(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match='conv_impl must be one of'):
    conv_lib.resolve_conv(-1, 'cudnn')
  with pytest.raises(ValueError, match="runs on CPU only.*conv_impl='xla'"):
    conv_lib.resolve_conv(-1, 'onednn', platform='gpu')
  # No oneDNN anywhere: one error naming the pip extra.
  monkeypatch.setattr(onednn, '_prefixes', lambda: [tmp_path])
  with pytest.raises(onednn.OnednnUnavailable, match=r'mmvaeplus_jax\[onednn\]'):
    onednn.find_onednn()
  # The SYCL build of oneDNN (the plain `onednn` wheel) is refused by name.
  inc = tmp_path / 'include' / 'oneapi' / 'dnnl'
  inc.mkdir(parents=True)
  (inc / 'dnnl.hpp').write_text('')
  (inc / 'dnnl_config.h').write_text(
      '#define DNNL_CPU_RUNTIME DNNL_RUNTIME_SYCL\n')
  (tmp_path / 'lib').mkdir()
  (tmp_path / 'lib' / 'libdnnl.so').write_text('')
  with pytest.raises(onednn.OnednnUnavailable, match='onednn-cpu-gomp'):
    onednn.find_onednn()
  # The default path never touches oneDNN.
  assert conv_lib.resolve_conv(0, 'xla', platform='cpu') == 0
  assert conv_lib.make_conv_general_dilated(0) is jax.lax.conv_general_dilated


@needs_onednn
def test_bf16_is_refused_where_the_cpu_has_no_bf16_kernels(monkeypatch):
  """'onednn_bf16' on a CPU whose oneDNN has no bf16 convolution (AVX2-only)
  stops when the model is built, naming the alternatives, instead of
  failing inside the first step; where the kernels exist it is accepted."""
  if onednn.bf16_unsupported() is None:
    assert conv_lib.resolve_conv(-1, 'onednn_bf16', platform='cpu') == (
        conv_lib.ONEDNN_BF16)
    monkeypatch.setattr(onednn, 'bf16_unsupported',
                        lambda: 'oneDNN has no bf16 convolution on this CPU')
  with pytest.raises(ValueError, match=r"no bf16 convolution on this CPU.*"
                     r"conv_impl='onednn' \(float32 operands\) or 'xla'"):
    conv_lib.resolve_conv(-1, 'onednn_bf16', platform='cpu')


@needs_onednn_bf16
@pytest.mark.parametrize('i', [1, 4])  # bf16 weight gradient, float32 one
def test_bf16_operands_equal_float32_convolution_of_rounded_operands(i):
  """`conv_impl='onednn_bf16'`: float32 in and out, operands (and the output
  cotangent) rounded to bf16. bf16 values multiply exactly in float32, so
  the value and both gradients are the float32 convolution of the rounded
  operands up to reassociation (2 gamma_n, as above), whichever weight-
  gradient kernel the size rule picks (layer 1: bf16, layer 4: float32)."""
  n, h, w, c, o, k, s, pad = LAYERS[i]
  x, wt, kg = _layer_arrays(i, n, h, w, c, o, k)
  rnd = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)

  def ref(x, wt):
    return jax.lax.conv_general_dilated(x, wt, (s, s), pad,
                                        dimension_numbers=DN)

  y, vjp = jax.jit(lambda x, wt: jax.vjp(lambda x, wt: onednn.bf16_operands(
      x, wt, (s, s), pad, dimension_numbers=DN), x, wt))(x, wt)
  assert y.dtype == jnp.float32
  g = jax.random.normal(kg, y.shape)
  dx, dw = vjp(g)
  assert dx.dtype == dw.dtype == jnp.float32
  xr, wr, gr = rnd(x), rnd(wt), rnd(g)
  y0, vjp0 = jax.vjp(ref, xr, wr)
  dx0, dw0 = vjp0(gr)
  ax, aw, ag = jnp.abs(xr), jnp.abs(wr), jnp.abs(gr)
  mags = (ref(ax, aw), jax.vjp(lambda x: ref(x, aw), ax)[1](ag)[0],
          jax.vjp(lambda wt: ref(ax, wt), aw)[1](ag)[0])
  uses_bf16 = onednn.bf16_weight_gradient(x.shape, wt.shape, y.shape)
  assert uses_bf16 == (i == 1)
  for a, b, terms, mag in ((y, y0, k * k * c, mags[0]),
                           (dx, dx0, k * k * o, mags[1]),
                           (dw, dw0, n * y.shape[1] * y.shape[2], mags[2])):
    bound = 2 * _gamma(terms) * np.linalg.norm(np.asarray(mag, np.float64))
    assert _rel_excess(a, b, bound) <= 1
  # Not vacuous: the unrounded float32 convolution differs from it by far
  # more than that bound (bf16 rounding, relative 2^-8 per operand).
  bound = 2 * _gamma(k * k * c) * np.linalg.norm(np.asarray(mags[0]))
  assert _rel_excess(ref(x, wt), y0, bound) > 10


@needs_onednn_bf16
def test_bf16_operands_model_within_bf16_bound():
  """The whole MMVAE+ objective and gradient with bf16 convolution operands
  against float32 XLA. Each operand is rounded with relative error
  <= 2^-8, so each convolution output moves by at most about 2^-7 of its
  sum of magnitudes; the objective (a sum of log-densities of one sign)
  within 1e-2 relative, and the gradient within 1e-2 relative L2, the
  project's bf16 bound (tests/conv_test.py; bf16 rounding through a dozen
  layers, not a float32 reassociation bound). Measured on this model:
  3.1e-5 and 1.3e-3 (2026-12-04); operand rounding is deterministic, only
  the float32 sums vary between hosts."""
  v0, flat0, _ = _objective('xla')
  v1, flat1, _ = _objective('onednn_bf16')
  rel_v = abs(v1 - v0) / abs(v0)
  rel_g = np.linalg.norm(flat1 - flat0) / np.linalg.norm(flat0)
  print(f'bf16 operands: loss rel {rel_v:.2e}, grad rel L2 {rel_g:.2e}')
  assert rel_v < 1e-2 and rel_g < 1e-2
  # Not the float32 program: rounding is visible in the gradient.
  assert rel_g > 1e-5


@needs_onednn
def test_training_refuses_a_sharded_run(tmp_path):
  """The test process has 8 CPU devices (conftest): a run on a mesh of 8
  with oneDNN convolutions stops with one error before any step."""
  from mmvaeplus_jax.configs import polymnist as polymnist_configs  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import loop  # pylint: disable=g-import-not-at-top
  assert jax.device_count() > 1
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2
  c.data.data_dir = str(tmp_path / 'tfds')
  c.model.conv_impl = 'onednn'
  with pytest.raises(ValueError, match='one CPU device'):
    loop.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@needs_onednn
def test_evaluation_refuses_a_sharded_run(tmp_path):
  """eval.py on the 8 test devices with oneDNN convolutions: the same one
  error, before any data or checkpoint is read; one device is accepted."""
  from mmvaeplus_jax.configs import polymnist as polymnist_configs  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  c = polymnist_configs.get_config('smoke')
  c.data.data_dir = str(tmp_path / 'tfds')
  c.model.conv_impl = 'onednn'
  with pytest.raises(ValueError, match='one CPU device.*8 devices'):
    runner.evaluate(c, str(tmp_path / 'missing_run'))
  # One device passes the check and stops later, at the missing run.
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    runner.evaluate(c, str(tmp_path / 'missing_run'),
                    devices=jax.devices()[:1])
