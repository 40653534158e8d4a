"""`samples.npz`: format, labels of the inputs, determinism for a seed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax import generation
from mmvaeplus_jax.configs import common
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import figures
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.evaluation import samples
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.models import polymnist

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun


def _setup(tmp_path, key=11):
  model = polymnist.make_mmvaeplus(num_modalities=2, dim_w=4, dim_z=4,
                                   width=0.0625)
  rng = np.random.default_rng(0)
  n = 7
  data = {name: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
          for name in model.names}
  data['label'] = rng.integers(0, 10, n)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            {k: data[k][:1] for k in model.names})
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.uniform(-0.3, 0.3, s.shape), np.float32),
      abstract)
  config = common.base_config()
  config.evals.update(samples_num_examples=5, samples_per_input=3,
                      samples_num_unconditional=4, figures_chunk=16)
  mesh = parallel.make_mesh()
  ctx = api.EvalContext(
      config=config, model=model, params=params, data=data,
      train_source=None, mesh=mesh, key=jax.random.key(key),
      out_dir=str(tmp_path), step=3, classifiers=None)
  return model, params, data, ctx


def test_samples_file_format_labels_and_determinism(tmp_path):
  model, params, data, ctx = _setup(tmp_path / 'a')
  (tmp_path / 'a').mkdir()
  assert 'samples' in runner.resolve('samples')[0]
  out = api.get('samples')(ctx)
  assert out == {'samples/files': [samples.FILE]}
  f = np.load(tmp_path / 'a' / samples.FILE)
  assert f['conditional'].shape == (5, 2, 2, 3, 28, 28, 3)
  assert f['conditional'].dtype == np.uint8
  assert f['unconditional'].shape == (4, 2, 28, 28, 3)
  assert f['unconditional'].dtype == np.uint8
  np.testing.assert_array_equal(f['labels'], data['label'][:5])
  np.testing.assert_array_equal(f['index'], np.arange(5))
  assert list(f['names']) == list(model.names) and int(f['step']) == 3
  # What is in the file is generation.py's latents decoded, as uint8.
  k_cond, _ = jax.random.split(ctx.key)
  post = figures.encode(model, params, {k: data[k][:5] for k in model.names})
  u = generation.cross_modal_latents(k_cond, model, post, 3)
  # The evaluator's chunk (evals.figures_chunk): the same decoder calls,
  # hence the same rounding on any CPU.
  x = figures.decode_latents(model, params, np.asarray(u)[0], chunk=16)
  np.testing.assert_array_equal(  # m0 -> m1: [S, N, ...] -> [N, S, ...]
      f['conditional'][:, 0, 1], np.swapaxes(plotting.to_uint8(x[1]), 0, 1))
  # The same seed gives the same file; another key other samples.
  (tmp_path / 'b').mkdir()
  api.get('samples')(_setup(tmp_path / 'b')[3])
  again = np.load(tmp_path / 'b' / 'samples.npz')
  for k in f.files:
    np.testing.assert_array_equal(f[k], again[k])
  (tmp_path / 'c').mkdir()
  api.get('samples')(_setup(tmp_path / 'c', key=12)[3])
  other = np.load(tmp_path / 'c' / 'samples.npz')
  assert not np.array_equal(f['conditional'], other['conditional'])
  np.testing.assert_array_equal(f['labels'], other['labels'])
