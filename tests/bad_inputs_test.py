"""Bad inputs the README promises clear errors for, and the per-host split of
the input pipeline."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import toy_models
from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax import train_state
from mmvaeplus_jax.models import polymnist

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun


def _toy(m=2, **kw):
  model = toy_models.make_toy(m, **kw)
  batch = toy_models.toy_batch(model, 4)
  params = model.init(jax.random.key(0), batch)
  return model, params, batch


def test_unknown_estimator_and_cross_private_raise():
  model, params, batch = _toy()
  noise = model.sample_noise(jax.random.key(1), 2, 4)
  with pytest.raises(ValueError, match="estimator must be one of.*'drge'"):
    estimators.objective(model, params, batch, noise, estimator='drge')
  with pytest.raises(ValueError, match="cross_private must be one of.*'prior'"):
    estimators.objective(model, params, batch, noise, estimator='dreg',
                         cross_private='prior')
  with pytest.raises(ValueError, match="cross_private must be one of"):
    estimators.objective(model, params, batch, noise, cross_private='prior')


def test_batch_not_divisible_by_devices_or_processes_raises():
  mesh = parallel.make_mesh()  # 8 fake devices (conftest)
  parallel.check_batch_size(16, mesh)
  with pytest.raises(ValueError, match=r'batch_size=12 must be divisible.*8'):
    parallel.check_batch_size(12, mesh)
  with pytest.raises(ValueError, match='divisible by the number of processes'):
    pipeline.host_indices(np.arange(8), 0, 3)


def test_unknown_config_argument_and_variant_raise():
  with pytest.raises(ValueError, match="unknown config argument 'bogus'"):
    polymnist_configs.get_config('smoke,bogus=1')
  with pytest.raises(ValueError, match="unknown polymnist variant 'nonsense'"):
    polymnist_configs.get_config('nonsense')
  c = polymnist_configs.get_config('smoke,beta=5,estimator=iwae')
  assert c.objective.beta == 5.0 and c.objective.estimator == 'iwae'
  # An unknown --config.section.key override: ConfigDicts reject new keys
  # when locked (absl's config flags lock them).
  c.lock()
  with pytest.raises(AttributeError):
    c.train.bogus = 1


def test_empty_or_duplicate_modality_names_raise():
  good, _, _ = _toy(2)
  with pytest.raises(ValueError, match='at least one Modality'):
    mmvaeplus.MMVAEPlus((), dim_w=2, dim_z=2)
  twice = (good.modalities[0], dataclasses.replace(good.modalities[1],
                                                   name='m0'))
  with pytest.raises(ValueError, match='names must be unique'):
    mmvaeplus.MMVAEPlus(twice, dim_w=2, dim_z=2)


def test_eval_on_a_workdir_without_checkpoint_raises(tmp_path):
  data_dir = tmp_path / 'tfds'
  builders.prepare('mini', data_dir)
  config = polymnist_configs.get_config('smoke')
  config.model.num_modalities = 2
  config.data.data_dir = str(data_dir)
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*train first'):
    runner.evaluate(config, str(tmp_path / 'empty_run'))


def _nan_gradient_likelihood(x, out):
  """A finite value whose gradient is NaN: d sqrt(0 * |out|) = inf * 0."""
  return (distributions.normal_log_prob(x, out, 0.5)
          + jnp.sum(jnp.sqrt(0.0 * jnp.abs(out)), -1))


def test_finite_loss_with_nonfinite_gradient_is_skipped():
  model, params, batch = _toy(2)
  mods = tuple(dataclasses.replace(m, log_likelihood=_nan_gradient_likelihood)
               for m in model.modalities)
  bad_model = dataclasses.replace(model, modalities=mods)
  tx = optax.adam(1e-3)
  zero = jnp.zeros((), jnp.int32)
  state = train_state.TrainState(step=zero, params=params,
                              opt_state=tx.init(params),
                              nonfinite_consecutive=zero, nonfinite_total=zero)
  step = jax.jit(lambda s, b, k: step_lib.train_step(
      s, b, k, model=bad_model, tx=tx, num_samples=2, beta=1.0,
      estimator='dreg'))
  new, metrics = step(state, batch, jax.random.key(0))
  assert np.isfinite(float(metrics['train/loss']))  # the loss is finite ...
  assert not np.isfinite(float(metrics['train/grad_norm']))  # ... not grads
  assert int(new.nonfinite_total) == 1 and int(new.nonfinite_consecutive) == 1
  jax.tree.map(np.testing.assert_array_equal, new.params, params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)
  # The same step on the good model updates.
  good = jax.jit(lambda s, b, k: step_lib.train_step(
      s, b, k, model=model, tx=tx, num_samples=2, beta=1.0, estimator='dreg'))
  new, _ = good(state, batch, jax.random.key(0))
  assert int(new.nonfinite_total) == 0
  assert not np.array_equal(new.params['decoders']['m0']['out']['kernel'],
                            params['decoders']['m0']['out']['kernel'])


class _RecordingSource(pipeline.ArraySource):
  def __init__(self, arrays):
    super().__init__(arrays)
    self.reads = []

  def read(self, indices):
    self.reads.append(np.asarray(indices).copy())
    return super().read(indices)


@pytest.mark.parametrize('process_count', [2, 4])
def test_each_host_reads_only_its_share(process_count):
  n, global_batch, steps = 40, 8, 7  # 5 steps per epoch: crosses an epoch
  arrays = {'m0': np.arange(n, dtype=np.float32)[:, None],
            'label': np.arange(n)}
  sources = [_RecordingSource(arrays) for _ in range(process_count)]
  for step in range(steps):
    shares = [pipeline.host_batch(src, step, seed=3, global_batch=global_batch,
                                  process_index=i, process_count=process_count)
              for i, src in enumerate(sources)]
    idx = pipeline.global_indices(step, seed=3, num_examples=n,
                                  global_batch=global_batch)
    read = [src.reads[-1] for src in sources]
    for i, r in enumerate(read):
      assert len(r) == global_batch // process_count
      np.testing.assert_array_equal(shares[i]['label'], r)
    # Disjoint, and together exactly the global batch, in order.
    np.testing.assert_array_equal(np.concatenate(read), idx)
    assert len(set(np.concatenate(read).tolist())) == global_batch
  for src in sources:  # one read per step, nothing else
    assert len(src.reads) == steps


def test_check_batch_rejects_bad_values_of_a_concrete_batch():
  """NaN, 0..255 floats and uint8 images give one error naming the
  modality, before any bound is computed; a traced batch is not read."""
  model = polymnist.make_mmvaeplus(num_modalities=2, dim_w=4, dim_z=4,
                                   width=0.0625)
  rng = np.random.default_rng(0)
  good = {n: rng.uniform(size=(2, 28, 28, 3)).astype(np.float32)
          for n in model.names}
  assert model.check_batch(good) == 2
  cases = [
      (np.nan, 'float32', r"batch\['m1'\] holds 1 non-finite"),
      (np.inf, 'float32', r"batch\['m1'\] holds 1 non-finite"),
      (255.0, 'float32', r"batch\['m1'\] has values in \[.*, 255\].*divide"),
      (-0.5, 'float32', r"batch\['m1'\] has values in \[-0.5"),
      (1.0, 'uint8', r"batch\['m1'\] has dtype uint8.*/ 255"),
  ]
  for value, dtype, message in cases:
    x = good['m1'].copy()
    x[1, 3, 4, 0] = value
    bad = dict(good, m1=x.astype(dtype))
    with pytest.raises(ValueError, match=message):
      model.check_batch(bad)
  # Under jit the values are not concrete: shapes are checked, values not.
  nan = dict(good, m1=np.full_like(good['m1'], np.nan))
  out = jax.eval_shape(lambda b: jnp.int32(model.check_batch(b)), nan)
  assert out.shape == ()
