"""The opt-in Eigen convolutions of XLA:CPU (`mmvaeplus_jax/infra/xla_cpu.py`).

Error bound: a convolution output (or its input gradient, or its weight
gradient) element is a sum of n products; any two summation orders of the
same products differ by at most 2 gamma_n * sum |products| in float32,
gamma_n = n u / (1 - n u), u = 2^-24 (Higham, eq. 3.5), on any host and
thread count. `sum |products|` is the same quantity computed from |x|, |w|
and |g|. Eigen and YNNPACK compute the same products in other orders.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmvaeplus_jax  # noqa: F401  (configures XLA:CPU first)
from mmvaeplus_jax.infra import xla_cpu
from mmvaeplus_jax.models import conv as conv_lib

U = 2.0**-24


def _gamma(n):
  return n * U / (1 - n * U)


@pytest.fixture
def clean_env(monkeypatch):
  monkeypatch.delenv(xla_cpu.ENV, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  monkeypatch.setattr(xla_cpu, '_backends_started', lambda: False)
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: (0, 10))
  return monkeypatch


def test_off_by_default(clean_env):
  del clean_env
  assert xla_cpu.configure() == xla_cpu.YNNPACK
  assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=8'


def test_configure_appends_the_flag_once(clean_env):
  clean_env.setenv(xla_cpu.ENV, 'eigen')
  assert xla_cpu.configure() == xla_cpu.EIGEN
  assert xla_cpu.configure() == xla_cpu.EIGEN  # idempotent
  assert os.environ['XLA_FLAGS'].split() == [
      '--xla_force_host_platform_device_count=8', xla_cpu.EIGEN_FLAG]


@pytest.mark.parametrize('user_flag, expected', [
    ('--xla_cpu_experimental_ynn_fusion_type=', xla_cpu.EIGEN),
    ('--xla_cpu_experimental_ynn_fusion_type=+individual_convolution',
     xla_cpu.YNNPACK),
    ('--xla_cpu_experimental_ynn_fusion_type=individual_convolution,dot',
     xla_cpu.YNNPACK),
    ('--xla_cpu_experimental_ynn_fusion_type=dot', xla_cpu.EIGEN),
    ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
     xla_cpu.EIGEN),
])
def test_the_users_flag_wins(clean_env, user_flag, expected):
  clean_env.setenv(xla_cpu.ENV, 'eigen')
  clean_env.setenv('XLA_FLAGS', user_flag)
  assert xla_cpu.configure() == expected
  assert os.environ['XLA_FLAGS'] == user_flag


def test_opt_out_unmeasured_jaxlib_and_started_backend(clean_env):
  clean_env.setenv(xla_cpu.ENV, 'xla')
  assert xla_cpu.configure() == xla_cpu.YNNPACK
  assert xla_cpu.EIGEN_FLAG not in os.environ['XLA_FLAGS']
  clean_env.setenv(xla_cpu.ENV, 'bogus')
  with pytest.raises(ValueError, match='MMVAEPLUS_CPU_CONVOLUTIONS'):
    xla_cpu.configure()
  clean_env.setenv(xla_cpu.ENV, 'eigen')
  # An unknown flag aborts XLA: other jaxlib versions are left alone.
  clean_env.setattr(xla_cpu, '_jaxlib_version', lambda: (0, 11))
  assert xla_cpu.configure() == xla_cpu.YNNPACK
  assert xla_cpu.EIGEN_FLAG not in os.environ['XLA_FLAGS']
  # Too late to change the flags: one clear warning, nothing changed.
  clean_env.setattr(xla_cpu, '_jaxlib_version', lambda: (0, 10))
  clean_env.setattr(xla_cpu, '_backends_started', lambda: True)
  with pytest.warns(UserWarning, match='before running JAX computations'):
    assert xla_cpu.configure() == xla_cpu.YNNPACK
  assert xla_cpu.EIGEN_FLAG not in os.environ['XLA_FLAGS']


def test_automatic_weight_gradient_follows_the_convolutions():
  assert conv_lib.resolve_wgrad_chunk(-1, 'cpu', xla_cpu.EIGEN) == 0
  assert conv_lib.resolve_wgrad_chunk(-1, 'cpu', xla_cpu.YNNPACK) == (
      conv_lib.AUTO)
  assert conv_lib.resolve_wgrad_chunk(-1, 'gpu', xla_cpu.YNNPACK) == 0
  assert conv_lib.resolve_wgrad_chunk(3, 'cpu', xla_cpu.EIGEN) == 3


def test_this_process_follows_the_setting():
  """tests/conftest.py configured XLA:CPU before JAX started: Eigen exactly when the environment asked for it."""
  if os.environ.get(xla_cpu.ENV, 'xla') == 'eigen':
    assert xla_cpu.cpu_convolutions() == xla_cpu.EIGEN
    assert xla_cpu.EIGEN_FLAG in os.environ['XLA_FLAGS'].split()
  elif xla_cpu.FLAG_NAME not in os.environ.get('XLA_FLAGS', ''):
    assert xla_cpu.cpu_convolutions() == xla_cpu.YNNPACK


# (N, H, W, C, O, kernel, stride, padding): the networks' layer kinds.
LAYERS = [
    (6, 28, 28, 3, 32, 3, 1, 'SAME'),     # image conv
    (6, 28, 28, 32, 32, 3, 1, 'SAME'),
    (6, 14, 14, 32, 64, 3, 2, 'SAME'),    # strided
    (6, 7, 7, 64, 32, 1, 1, 'VALID'),     # 1x1 shortcut
    (6, 28, 28, 32, 3, 3, 1, 'SAME'),     # to image
]

_SCRIPT = r'''
import json, sys
import numpy as np
from mmvaeplus_jax.infra import xla_cpu as _xla_cpu
_xla_cpu.configure()  # before JAX starts
import jax, jax.numpy as jnp
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.infra import xla_cpu
from mmvaeplus_jax.models import polymnist
jax.config.update('jax_threefry_partitionable', False)
layers, out = json.loads(sys.argv[1]), sys.argv[2]
res = {}
for i, (n, h, w, c, o, k, s, pad) in enumerate(layers):
  kx, kw, kg = jax.random.split(jax.random.key(i), 3)
  x = jax.random.normal(kx, (n, h, w, c))
  wt = jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)
  f = lambda x, wt: jax.lax.conv_general_dilated(
      x, wt, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, vjp = jax.jit(lambda x, wt: jax.vjp(f, x, wt))(x, wt)
  g = jax.random.normal(kg, y.shape)
  dx, dw = jax.jit(lambda g: vjp(g))(g)
  res.update({f'y{i}': y, f'dx{i}': dx, f'dw{i}': dw})
model = polymnist.make_mmvaeplus(num_modalities=2, dim_w=4, dim_z=4,
                                 width=0.125, conv_wgrad_chunk=0)
rng = np.random.default_rng(0)
batch = {m: jnp.asarray(rng.integers(0, 256, (4, 28, 28, 3)) / 255.0,
                        jnp.float32) for m in model.names}
params = model.init(jax.random.key(0), batch)
loss = lambda p: -jnp.mean(estimators.sample_objective(
    jax.random.key(1), model, p, batch, num_samples=2, beta=2.5,
    estimator='dreg'))
v, grads = jax.jit(jax.value_and_grad(loss))(params)
res['loss'] = v
res['grad'] = jnp.concatenate([jnp.ravel(t) for t in jax.tree.leaves(grads)])
np.savez(out, **{k: np.asarray(v) for k, v in res.items()})
print(json.dumps(dict(convolutions=xla_cpu.cpu_convolutions())))
'''


def _run(tmp_path, setting):
  env = dict(os.environ)
  env[xla_cpu.ENV] = setting
  env['XLA_FLAGS'] = ' '.join(
      f for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith(xla_cpu.FLAG_NAME))
  out = tmp_path / f'{setting}.npz'
  proc = subprocess.run(
      [sys.executable, '-c', _SCRIPT, json.dumps(LAYERS), str(out)],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  return info['convolutions'], dict(np.load(out))


@pytest.mark.slow  # ~60 s (two subprocesses, each compiling a model)
def test_eigen_equals_ynnpack_within_reassociation(tmp_path):
  """Both backends, each in its own process (XLA reads its flags once):
  every layer kind's value, input gradient and weight gradient within the
  reassociation bound, and a whole MMVAE+ DReG loss and gradient."""
  conv_e, eigen = _run(tmp_path, 'eigen')
  conv_y, ynn = _run(tmp_path, 'xla')
  assert (conv_e, conv_y) == (xla_cpu.EIGEN, xla_cpu.YNNPACK)
  for i, (n, h, w, c, o, k, s, pad) in enumerate(LAYERS):
    kx, kw, kg = jax.random.split(jax.random.key(i), 3)
    x = jnp.abs(jax.random.normal(kx, (n, h, w, c)))
    wt = jnp.abs(jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c))
    f = lambda x, wt, s=s, pad=pad: jax.lax.conv_general_dilated(
        x, wt, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y_mag, vjp = jax.vjp(f, x, wt)
    g = jnp.abs(jax.random.normal(kg, y_mag.shape))
    dx_mag, dw_mag = vjp(g)
    terms = dict(y=k * k * c, dx=k * k * o,
                 dw=n * y_mag.shape[1] * y_mag.shape[2])
    for name, mag in (('y', y_mag), ('dx', dx_mag), ('dw', dw_mag)):
      # Magnitudes computed in float32 are within (1 + gamma) of exact.
      bound = 2 * _gamma(terms[name]) * np.asarray(mag) * (
          1 + _gamma(terms[name]))
      err = np.abs(eigen[f'{name}{i}'] - ynn[f'{name}{i}'])
      assert np.all(err <= bound), (i, name, float(np.max(err / bound)))
  # Whole model: the loss sums at most 2 * 2 * 2 * 2,352 per-pixel terms of
  # one sign per example (2 gamma_n = 2.2e-3 relative); the gradient is a
  # composition of such sums: relative L2 1e-4 (measured below 1e-6 here,
  # 2026-12-04), as for the sliced weight gradient (tests/conv_test.py).
  np.testing.assert_allclose(eigen['loss'], ynn['loss'],
                             rtol=2 * _gamma(4 * 2352 * 2))
  rel = (np.linalg.norm(eigen['grad'] - ynn['grad'])
         / np.linalg.norm(ynn['grad']))
  assert rel < 1e-4, rel
  print(f'eigen vs ynnpack: gradient relative L2 {rel:.2e}')
