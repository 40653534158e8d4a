"""The train step in microbatches (`train.microbatch_size`) equals the step
on the whole batch.

`microbatch.MicrobatchedTrainStep` draws `train_step`'s noise for the whole
batch, takes each microbatch's rows of the batch and of the noise (per
device: a slice of its block of the sharded batch) and sums the microbatches'
shares
-sum(bound) / B of the loss and their gradients. Against the one-call
reference (-mean(bound) of `model.objective`, same key) only the order of
float32 additions differs: |a - b| <= c n u sum_i |t_i| with n the batch,
u = 2^-24. The per-example bounds share their sign (no cancellation), so the
loss is within a few n u relative (rtol 1e-5 for n = 16). The gradient's
batch sums can cancel elementwise; over the whole tree the relative L2
bound of numerics.py applies: n u = 1e-6 for n = 16, and 1e-4 leaves 100x
for cancellation (measured 1.8e-7 for MMVAE+ and 8.5e-8 for MVAE,
2026-12-03). A slicing bug (rows of another device, noise of another
example) moves the gradient by what another key does: the tests check that
this is more than 100 times the tolerance (measured 0.037 and 0.30).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import numerics
from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.training import microbatch as microbatch_lib
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax import train_state

LOSS_RTOL = 1e-5
GRAD_REL_L2 = 1e-4


def test_resolve_microbatch_automatic_and_explicit():
  def r(setting, b, k=1, m=5, platform='cpu', width=1.0, name='polymnist'):
    limits = models.cpu_microbatch_limits(
        ml_collections.ConfigDict(dict(name=name, width=width)))
    return microbatch_lib.resolve_microbatch(
        setting, b, num_samples=k, num_modalities=m, platform=platform,
        limits=limits)

  assert r(-1, 128) == 16  # full-width recipe: 8 calls of 16 examples
  assert r(-1, 16) == 0 and r(-1, 8) == 0  # one call already small enough
  assert r(-1, 128, k=10) == 4  # 200 decoder rows per call
  assert r(-1, 24) == 12 and r(-1, 17) == 1  # largest divisor within limits
  assert r(-1, 128, width=0.25) == 64 and r(-1, 32, width=0.25) == 0
  assert r(-1, 32, k=10, width=0.125) == 0  # narrow: one call is faster
  assert r(-1, 128, name='mnist_svhn_mmvaeplus') == 0  # not measured
  assert r(-1, 128, platform='gpu') == 0 and r(-1, 128, platform='tpu') == 0
  assert r(0, 128) == 0 and r(8, 8) == 0 and r(4, 8) == 4
  for bad in (3, -2):
    with pytest.raises(ValueError, match='microbatch_size'):
      r(bad, 8)


def test_noise_batch_axes():
  config = polymnist_configs.get_config('smoke,model=mvae')
  config.model.num_modalities = 3
  model = models.get_model(config.model)
  axes = microbatch_lib.noise_batch_axes(model, 2, 8, (('mvae_subsets', 1),))
  assert axes == {'subsets': -1, 'z': 2}  # subsets: shared by the batch
  model = models.get_model(polymnist_configs.get_config('smoke').model)
  axes = microbatch_lib.noise_batch_axes(model, 2, 8)
  assert (axes.w, axes.z, axes.aux) == (2, 2, 3)


def _setup(kind, num_devices, batch_size):
  config = polymnist_configs.get_config(f'smoke,model={kind}')
  config.model.update(num_modalities=2)
  if kind == 'mvae':  # one random subset of size 2 of 3 modalities
    config.model.num_modalities = 3
    config.objective.mvae_subsets = 1
  config.train.batch_size = batch_size
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  rng = np.random.default_rng(0)
  host = {n: (rng.integers(0, 256, (batch_size, 28, 28, 3)) / 255.0).astype(
      np.float32) for n in model.names}
  # The model's own initialisation: there the noise moves the gradient by
  # a few percent (small random weights hide it).
  params = jax.jit(model.init, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0), {n: x[:1] for n, x in host.items()})
  return config, model, tx, mesh, params, host


def _reference(config, model):
  """(params, batch, key) -> `train_step`'s (loss, gradient) in one call."""
  o = config.objective
  options = models.objective_options(o, model)

  def loss_fn(p, batch, key):
    return -jnp.mean(model.objective(
        key, p, batch, num_samples=o.num_samples, beta=o.beta,
        estimator=o.estimator or None, **options))

  return jax.jit(jax.value_and_grad(loss_fn))


def _check(kind, num_devices, batch_size, microbatch):
  config, model, tx, mesh, params, host = _setup(kind, num_devices,
                                                 batch_size)
  config.train.microbatch_size = microbatch
  train_fn = step_lib.jit_train_step(config, model, tx, mesh)
  assert isinstance(train_fn, microbatch_lib.MicrobatchedTrainStep)
  assert train_fn.num_microbatches == batch_size // num_devices // microbatch
  batch = parallel.global_batch(mesh, host)
  state = train_state.TrainState(
      step=jnp.int32(3), params=params, opt_state=tx.init(params),
      nonfinite_consecutive=jnp.int32(0), nonfinite_total=jnp.int32(0))
  state = jax.device_put(state, parallel.replicated(mesh))
  base_key = jax.random.key(7)
  loss, grads = train_fn.loss_and_grad(params, batch, base_key, state.step)
  reference = _reference(config, model)
  ref_loss, ref_grads = reference(params, host,
                                  jax.random.fold_in(base_key, 3))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=LOSS_RTOL)
  numerics.assert_rel_l2(grads, ref_grads, GRAD_REL_L2,
                         f'{kind}: microbatched vs one-call gradient')
  # The comparison can fail: the same step at another key is far off.
  _, other = reference(params, host, jax.random.fold_in(base_key, 4))
  assert numerics.rel_l2(other, ref_grads) > 100 * GRAD_REL_L2
  # The whole step: the update of the summed gradient; compiles once.
  for _ in range(2):
    state, metrics = train_fn(state, batch, base_key)
  assert int(state.step) == 5 and int(metrics['train/nonfinite_steps']) == 0
  assert train_fn._cache_size() == 1  # pylint: disable=protected-access


def test_microbatched_step_equals_one_call_mmvaeplus_dreg_8_devices():
  """MMVAE+, K = 2, unbiased DReG; 8 devices x 2 examples, 2 microbatches
  of 1 example per device (rows 0 and 1 of each device's block)."""
  _check('mmvaeplus', 8, 16, 1)


@pytest.mark.slow  # ~45 s (three compilations)
def test_microbatched_step_equals_one_call_mvae_one_device():
  """MVAE: its random subsets are shared by the batch (no batch axis)."""
  _check('mvae', 1, 8, 2)


@pytest.mark.slow  # ~10 s each (two compilations)
@pytest.mark.parametrize('kind', ['mmvae', 'mopoe', 'mmjsd', 'dmvae'])
def test_microbatched_step_equals_one_call_other_models(kind):
  _check(kind, 8, 16, 1)


def test_bad_microbatch_size_is_one_clear_error():
  config = polymnist_configs.get_config('smoke')
  config.train.update(batch_size=8, microbatch_size=3)
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  mesh = parallel.make_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match='microbatch_size=3'):
    step_lib.jit_train_step(config, model, tx, mesh)
