"""Speed options: bf16 compute, rematerialisation, one compilation per run.

* bf16 (`model.compute_dtype='bfloat16'`): float32 master parameters, Conv /
  Dense products and activations in bfloat16, bias gradients summed in
  float32, likelihoods and bound in float32. On the tiny model below
  (2 modalities, width 1/16, Dw = Dz = 4, B = 8, K = 4, DReG, beta 2.5, at
  initialisation, random uint8 images) the per-example bound (about -5,100
  nats) differed from float32 by at most 8.8e-5 relative (0.44 nats) and the
  full gradient by at most 2.5e-3 relative L2, over 4 seeds (2026-11-26,
  XLA:CPU). Tolerances: bound rtol 5e-4, gradient relative L2 1e-2 (about
  5x and 4x the measured worst cases).
* remat (`model.remat=True`): the decoders run one sample slice at a time
  under `jax.checkpoint`; loss and gradients equal the plain step's up to
  float reassociation, and the compiled step's temporary memory shrinks.
* The trainer's jitted step (`step.jit_train_step`, sharded over 8 fake CPU
  devices) compiles once for several steps with different batches.
* `bench/step.py` builds the documented cases and sweeps.
"""

import importlib.util
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.models import polymnist
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax import train_state

TINY = dict(num_modalities=2, dim_w=4, dim_z=4, width=0.0625)
BOUND_RTOL_BF16 = 5e-4  # measured worst 8.8e-5 (module docstring)
GRAD_REL_L2_BF16 = 1e-2  # measured worst 2.5e-3


def _images(model, batch_size, seed):
  """uint8-valued images in [0, 1], as the input pipeline produces them."""
  rng = np.random.default_rng(seed)
  return {n: jnp.asarray(rng.integers(0, 256, (batch_size, 28, 28, 3)),
                         jnp.float32) / 255.0 for n in model.names}


def _bound_and_grad(model, params, batch, noise):
  def bound(p):
    return estimators.objective(model, p, batch, noise, beta=2.5,
                                estimator='dreg')

  return jax.jit(lambda p: (bound(p), jax.grad(
      lambda q: -jnp.mean(bound(q)))(p)))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def test_config_switches_reach_the_model():
  c = polymnist_configs.get_config('smoke')
  assert c.model.compute_dtype == 'float32' and not c.model.remat
  assert not c.model.vmap_modalities
  c.model.update(compute_dtype='bfloat16', remat=True)
  model = models.get_model(c.model)
  assert model.remat
  assert model.modalities[0].decoder.dtype == jnp.bfloat16
  assert model.modalities[1].encoder.dtype == jnp.bfloat16
  c.model.compute_dtype = 'float16'
  with pytest.raises(ValueError, match='compute_dtype'):
    models.get_model(c.model)


@pytest.fixture(scope='module')
def plain_float32():
  """The tiny float32 model's bound and gradient: the reference of both the
  bf16 and the remat test (compiled once)."""
  model = polymnist.make_mmvaeplus(**TINY)
  batch = _images(model, 8, seed=0)
  params = model.init(jax.random.key(0), batch)
  noise = model.sample_noise(jax.random.key(1), 4, 8)
  compiled = _bound_and_grad(model, params, batch, noise).lower(
      params).compile()
  return dict(batch=batch, params=params, noise=noise,
              out=compiled(params),
              temp=compiled.memory_analysis().temp_size_in_bytes)


def test_bf16_bound_and_gradient_match_float32(plain_float32):
  batch, params, noise = (plain_float32[k] for k in ('batch', 'params',
                                                     'noise'))
  bf16 = polymnist.make_mmvaeplus(**TINY, compute_dtype='bfloat16')
  # The bf16 model has the same float32 parameters.
  shapes = jax.eval_shape(bf16.init, jax.random.key(0), batch)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
      lambda p: (p.shape, p.dtype), params)
  # Its convolutions really run in bf16 (else this test could not fail).
  jaxpr = str(jax.make_jaxpr(lambda p: bf16.decode(p, 'm0', jnp.zeros(
      (2, 8))))(params))
  assert re.search(r'bf16\[[^\]]*\] = conv_general_dilated', jaxpr)

  b32, g32 = plain_float32['out']
  b16, g16 = _bound_and_grad(bf16, params, batch, noise)(params)
  assert b16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
  assert not np.array_equal(b16, b32)  # bf16 rounding is visible ...
  np.testing.assert_allclose(b16, b32, rtol=BOUND_RTOL_BF16)  # ... but small
  a, b = _flat(g32), _flat(g16)
  assert np.linalg.norm(b - a) / np.linalg.norm(a) < GRAD_REL_L2_BF16


def test_remat_same_loss_and_gradients_less_memory(plain_float32):
  batch, params, noise = (plain_float32[k] for k in ('batch', 'params',
                                                     'noise'))
  remat = polymnist.make_mmvaeplus(**TINY, remat=True)
  fn = _bound_and_grad(remat, params, batch, noise)
  assert re.search(r'\b(remat\w*|checkpoint)\[', str(jax.make_jaxpr(fn)(params)))
  compiled = fn.lower(params).compile()
  bound, grad = compiled(params)
  b_ref, g_ref = plain_float32['out']
  # Tolerances from the forward-error bound of a float32 sum, not from a
  # measurement: per-slice decoding only reorders sums, and a sum of n terms
  # in another order differs by at most (n - 1) u sum_i |t_i| (u = 2**-24).
  # The bound is a sum of n = 3 * 28 * 28 = 2,352 same-sign pixel terms per
  # modality: (n - 1) u = 1.4e-4 relative. The largest gradient reduction
  # remat reorders is over one slice's B * H * W = 6,272 positions: 3.7e-4 of
  # sum |t|; over the whole tree (relative L2, dominated by the large leaves,
  # whose terms do not cancel) that is the bound we use. A slicing bug moves
  # both by O(1).
  np.testing.assert_allclose(bound, b_ref, rtol=2e-4)
  numerics.assert_rel_l2(grad, g_ref, 5e-4, 'remat vs plain gradient')
  # The point of remat: the K = 4 slices' decodes no longer live at once.
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 0.6 * plain_float32['temp'], (temp, plain_float32['temp'])


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_train_step_compiles_once_on_the_8_device_mesh():
  config = polymnist_configs.get_config('smoke')
  config.model.num_modalities = 2
  config.objective.update(num_samples=1, estimator='iwae')  # fast compile
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8  # tests/conftest.py
  b = config.train.batch_size
  batches = [{n: np.asarray(x) for n, x in _images(model, b, s).items()}
             for s in range(3)]
  # Small random parameters of the model's shapes (a real init costs another
  # compilation; only shapes matter here), placed as a restored checkpoint.
  shapes = jax.eval_shape(model.init, jax.random.key(0), batches[0])
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: (0.05 * rng.uniform(-1, 1, s.shape)).astype(s.dtype), shapes)
  zero = np.zeros((), np.int32)
  state = train_state.TrainState(step=zero, params=params,
                              opt_state=tx.init(params),
                              nonfinite_consecutive=zero, nonfinite_total=zero)
  state = jax.device_put(jax.tree.map(np.asarray, state),
                         parallel.replicated(mesh))
  train_fn = step_lib.jit_train_step(config, model, tx, mesh)
  key = jax.random.key(1)
  for batch in batches + batches[:1]:  # 4 steps, 3 different batches
    state, metrics = train_fn(state, parallel.global_batch(mesh, batch), key)
  assert int(state.step) == 4 and np.isfinite(float(metrics['train/loss']))
  assert train_fn._cache_size() == 1  # pylint: disable=protected-access


def _bench_step_module():
  path = pathlib.Path(__file__).resolve().parents[1] / 'bench' / 'step.py'
  spec = importlib.util.spec_from_file_location('bench_step', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_bench_cases_sweeps_and_fake_devices():
  """bench/step.py: --help names every case and sweep, the sweeps hold the
  asked values, and the CPU devices sweep sets the fake device count in the
  worker's environment (it must be set before JAX starts). No JAX here."""
  bench = _bench_step_module()
  epilog = bench._help_epilog()  # pylint: disable=protected-access
  for name in list(bench.CASES) + list(bench.SWEEPS):
    assert f'  {name} ' in epilog
  args = bench.parse_args(['--sweep=K,M,devices', '--compute_dtype=bfloat16'])
  cases = bench.build_cases(args, 'cpu', 1)
  assert [c.num_samples for c in cases if c.sweep == 'K'] == [1, 2, 5, 10, 20]
  assert [c.num_modalities for c in cases if c.sweep == 'M'] == [2, 3, 4, 5]
  devices = [c for c in cases if c.sweep == 'devices']
  assert [c.fake_devices for c in devices] == [1, 2, 4, 8]
  assert all(c.width == 0.125 and c.batch_size == 32 for c in cases)
  assert all(c.name.endswith('+bf16') for c in cases)
  env = bench._worker_env(4)  # pylint: disable=protected-access
  assert '--xla_force_host_platform_device_count=4' in env['XLA_FLAGS'].split()
  assert '--xla_force_host_platform_device_count=8' not in env['XLA_FLAGS']
  gpu = bench.build_cases(bench.parse_args(['--sweep=devices']), 'gpu', 4)
  assert [(c.num_devices, c.fake_devices) for c in gpu] == [(1, None),
                                                            (2, None),
                                                            (4, None)]
  assert [c.name for c in bench.build_cases(bench.parse_args([]), 'cpu', 1)
          ] == ['cpu_default']
