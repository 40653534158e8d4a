"""The evaluation pipeline: plug-in registry, sharded batching, the FID
real-statistics cache and averaging, the Fréchet protocol on fake features,
the importance-sampled likelihood against an exact linear-Gaussian model, and
eval.py end to end on 1 vs 8 devices (slow)."""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import common
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import fid
from mmvaeplus_jax.evaluation import frechet
from mmvaeplus_jax.evaluation import likelihood
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax import train_state
import numerics
import toy_models

REPO = pathlib.Path(__file__).resolve().parents[1]


def _mesh(n):
  return parallel.make_mesh(jax.devices()[:n])


# ------------------------------------------------------------------ registry


def test_unknown_evaluator_is_one_clear_error_listing_the_known_ones():
  with pytest.raises(KeyError, match='unknown evaluator .nonsense.') as e:
    runner.resolve('bound, nonsense')
  for name in ('bound', 'coherence', 'fid', 'fd_clf', 'likelihood',
               'latent_classification', 'figures'):
    assert name in str(e.value)
  assert [n for n, _ in runner.resolve('likelihood,bound,,likelihood')] == [
      'likelihood', 'bound']


def test_register_refuses_a_second_function_under_a_taken_name():
  with pytest.raises(ValueError, match='already registered'):
    api.register('bound')(lambda ctx: {})
  assert api.get('bound') is runner.bound_evaluator


def test_evaluator_keys_depend_on_the_name_only():
  root = jax.random.key(3)
  a, b = api.evaluator_key(root, 'fid'), api.evaluator_key(root, 'fd_clf')
  assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
  np.testing.assert_array_equal(
      jax.random.key_data(a),
      jax.random.key_data(jax.random.fold_in(root, api.stable_hash('fid'))))
  # sha256-based, not Python's per-process salted hash(): a fixed value (a
  # change would silently change every evaluator's numbers).
  assert api.stable_hash('fid') == 0xC710C9F


# ------------------------------------------------------------- map_batches


@jax.jit
def _per_example(scale, index, batch):
  noise = jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(jax.random.key(0), i), (3,)))(index)
  return {'y': batch['x'].astype(jnp.float32) * scale + noise[:, :1],
          'i': index}


def test_map_batches_same_for_any_device_count_and_batch_size():
  x = np.arange(21, dtype=np.uint8)[:, None] * np.ones((1, 2), np.uint8)
  outs = []
  for devices, batch in ((1, 4), (8, 3), (8, 16), (2, 100)):
    mesh = _mesh(devices)
    out = api.map_batches(
        _per_example, mesh, 21, batch_size=batch, inputs={'x': x},
        args=(jax.device_put(jnp.float32(2.0), parallel.replicated(mesh)),))
    assert out['y'].shape == (21, 2)
    np.testing.assert_array_equal(out['i'], np.arange(21))  # padding dropped
    outs.append(out['y'])
  for y in outs[1:]:
    np.testing.assert_array_equal(y, outs[0])
  assert api.global_batch_size(_mesh(8), 3) == 8
  assert api.global_batch_size(_mesh(8), 100, num=21) == 24


def _clf_features(params, index, batch, *, scale):
  del index
  return classifiers.features(params, batch['x'].astype(jnp.float32) * scale)


def test_map_batches_microbatch_bit_identical_features():
  """Conv features through `microbatch`: bit-identical for 1, 2 and 8
  devices and any batch size (plain batched calls differ in the last bits on
  XLA:CPU, which is why the Fréchet distances use this path)."""
  x = np.random.default_rng(0).integers(0, 256, (37, 28, 28, 3), np.uint8)
  outs = []
  for devices, batch in ((1, 64), (2, 8), (8, 16), (8, 100)):
    mesh = _mesh(devices)
    params = jax.device_put(classifiers.init(jax.random.key(0)),
                            parallel.replicated(mesh))
    out = api.map_batches(_clf_features, mesh, 37, batch_size=batch,
                          inputs={'x': x}, args=(params,), microbatch=4,
                          static={'scale': 1 / 255})
    assert out.shape == (37, 128)
    outs.append(out)
  for y in outs[1:]:
    np.testing.assert_array_equal(y, outs[0])
  # The same network without microbatching: equal up to rounding only.
  np.testing.assert_allclose(
      classifiers.features(params, jnp.asarray(x, jnp.float32) / 255), outs[0],
      rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='microbatch'):
    api.map_batches(_clf_features, mesh, 37, batch_size=8, inputs={'x': x},
                    args=(params,), static={'scale': 1.0})


# ------------------------------------------------- real-statistics cache


def test_real_statistics_cache_hit_miss_and_stale(tmp_path):
  calls = []

  def features(images):
    calls.append(len(images))
    return images.reshape(len(images), -1)[:, :5].astype(np.float64) ** 1.5

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8)
  kw = {'cache_dir': tmp_path, 'label': 'fid_polymnist-x_test_m0_n40',
        'network_id': 'net-a'}
  first = fid.cached_statistics(features, images, **kw)
  assert not first.cache_hit and calls == [40]
  ref = features(images)
  calls.clear()
  np.testing.assert_allclose(first.mu, ref.mean(0), rtol=1e-12)
  np.testing.assert_allclose(first.sigma, np.cov(ref, rowvar=False),
                             rtol=1e-12)
  assert first.path.startswith(str(tmp_path / 'fid_polymnist-x_test_m0_n40_'))

  hit = fid.cached_statistics(features, images, **kw)  # same images: hit
  assert hit.cache_hit and calls == [] and hit.path == first.path
  np.testing.assert_array_equal(hit.mu, first.mu)
  np.testing.assert_array_equal(hit.sigma, first.sigma)

  changed = images.copy()
  changed[7, 0, 1, 0] ^= 1  # one pixel of a changed dataset: stale, recompute
  stale = fid.cached_statistics(features, changed, **kw)
  assert not stale.cache_hit and calls == [40] and stale.path != first.path
  assert not np.array_equal(stale.mu, first.mu)
  other_net = fid.cached_statistics(  # other feature weights: recompute
      features, images, **{**kw, 'network_id': 'net-b'})
  assert not other_net.cache_hit and calls == [40, 40]

  # A file under the right name holding another key is not trusted.
  with np.load(first.path) as npz:
    tampered = dict(npz)
  tampered['key'] = np.str_('0' * 64)
  tampered['mu'] = tampered['mu'] + 1
  np.savez(first.path, **tampered)
  with warnings.catch_warnings(record=True):
    warnings.simplefilter('always')
    again = fid.cached_statistics(features, images, **kw)
  assert not again.cache_hit and calls == [40, 40, 40]
  np.testing.assert_array_equal(again.mu, first.mu)
  assert fid.cached_statistics(features, images, **kw).cache_hit  # rewritten
  none = fid.cached_statistics(features, images, **{**kw, 'cache_dir': None})
  assert not none.cache_hit and none.path == ''


def test_official_count_drops_the_last_partial_batch():
  assert fid.official_count(10_000) == 9_984
  assert fid.official_count(256) == 256
  assert fid.official_count(100) == 100  # not even one batch: all kept


def test_uint8_to_unit_is_exactly_k_over_255():
  k = np.arange(256, dtype=np.uint8)
  got = np.asarray(jax.jit(fid.uint8_to_unit)(k))
  np.testing.assert_array_equal(got, (np.arange(256) / 255).astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(fid.quantise_like_png(jnp.asarray(got))), got)


# --------------------------------------------------- conditional averaging


def test_conditional_average_with_and_without_the_diagonal():
  fd = np.array([[1.0, 10.0, 20.0],
                 [30.0, 2.0, 40.0],
                 [50.0, 60.0, 3.0]])  # [source, target]
  per, mean = fid.conditional_average(fd, include_self=True)
  np.testing.assert_allclose(per, [81 / 3, 72 / 3, 63 / 3])  # column means
  assert mean == pytest.approx(72 / 3)
  per, mean = fid.conditional_average(fd, include_self=False)
  np.testing.assert_allclose(per, [40.0, 35.0, 30.0])  # off-diagonal only
  assert mean == pytest.approx(35.0)
  with pytest.raises(ValueError):
    fid.conditional_average(np.ones((2, 3)), include_self=True)


def _scaled_features(params, images):
  """A fake feature network: the pixels times a per-modality factor."""
  return images.reshape(images.shape[0], -1) * params


def _toy_ctx(model, params, data, mesh, key, tmp_path):
  config = common.base_config()
  return api.EvalContext(
      config=config, model=model,
      params=jax.device_put(params, parallel.replicated(mesh)), data=data,
      train_source=None, mesh=mesh, key=key, out_dir=str(tmp_path), step=0,
      classifiers=None)


def test_frechet_protocol_on_fake_features_matches_a_direct_computation(
    tmp_path):
  """Which images go into which distance, the diagonal and both averages,
  against a direct numpy computation (8 devices, batches of 5 padded)."""
  model = toy_models.make_toy(3, dim_w=2, dim_z=2, dim_x=4)
  rng = np.random.default_rng(0)
  n = 24
  data = {m: rng.integers(0, 256, (n, 4)).astype(np.uint8)
          for m in model.names}
  data['label'] = np.zeros(n, np.int64)
  params = model.init(jax.random.key(1), {
      m: jnp.zeros((1, 4)) for m in model.names})
  key = jax.random.key(5)
  factors = {'m0': 1.0, 'm1': 2.0, 'm2': 0.5}

  mesh = _mesh(8)
  net = frechet.FeatureNet(
      prefix='fdx', apply=_scaled_features,
      params={m: jax.device_put(jnp.float32(f), parallel.replicated(mesh))
              for m, f in factors.items()},
      network_ids={m: f'scaled{f}' for m, f in factors.items()})
  ctx = _toy_ctx(model, params, data, mesh, key, tmp_path)
  out = frechet.frechet_metrics(
      ctx, net, num_real=n, num_unconditional=30, alpha=0.7, batch_size=5,
      cache_dir=str(tmp_path / 'cache'))

  def fd(gen, real):
    return fid.frechet_distance(*fid.feature_statistics(gen),
                                *fid.feature_statistics(real))

  real = {m: data[m] / 255 * factors[m] for m in model.names}
  k_u, k_c = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  q = lambda x: np.asarray(fid.quantise_like_png(x))
  for m in model.names:
    gen = q(frechet.unconditional_images(
        k_u, model, params, jnp.arange(30), target=m, alpha=0.7))
    assert out[f'fdx/uncond/{m}'] == pytest.approx(
        fd(gen * factors[m], real[m]), rel=1e-4)
  matrix = np.zeros((3, 3))
  for e, src in enumerate(model.names):
    for d, tgt in enumerate(model.names):
      gen = q(frechet.conditional_images(
          k_c, model, params, jnp.asarray(data[src] / 255, jnp.float32),
          jnp.arange(n), source=src, target=tgt, alpha=0.7))
      matrix[e, d] = fd(gen * factors[tgt], real[tgt])
      assert out[f'fdx/cond/{src}->{tgt}'] == pytest.approx(matrix[e, d],
                                                            rel=1e-4)
  off = ~np.eye(3, dtype=bool)
  for d, tgt in enumerate(model.names):
    assert out[f'fdx/cond/{tgt}/with_self'] == pytest.approx(
        matrix[:, d].mean(), rel=1e-4)
    assert out[f'fdx/cond/{tgt}/cross_only'] == pytest.approx(
        matrix[off[:, d], d].mean(), rel=1e-4)
  assert out['fdx/cond/mean/with_self'] == pytest.approx(matrix.mean(),
                                                         rel=1e-4)
  assert out['fdx/cond/mean/cross_only'] == pytest.approx(
      matrix[off].mean(), rel=1e-4)
  assert out['fdx/num_real'] == n and out['fdx/num_unconditional'] == 30
  # Real statistics were cached: one file per modality.
  assert len(list((tmp_path / 'cache').glob('fdx_*.npz'))) == 3


def test_generated_latents_follow_the_protocol():
  """Decoders that output u = [w, z]: the diagonal decodes the posterior w,
  the other targets w ~ p(w) scaled by alpha; z is shared by the targets of
  a source, and by the modalities of an unconditional sample."""
  dw = dz = 2
  model = toy_models.make_toy(2, dim_w=dw, dim_z=dz, dim_x=dw + dz)
  x = {m: jnp.zeros((1, 4)) for m in model.names}
  params = jax.tree.map(np.asarray, model.init(jax.random.key(0), x))
  for m in model.names:
    params['decoders'][m]['out'] = {'kernel': np.eye(4, dtype=np.float32),
                                    'bias': np.zeros(4, np.float32)}
    enc = params['encoders'][m]
    for k in enc:
      enc[k] = {'kernel': np.zeros_like(enc[k]['kernel']),
                'bias': np.full_like(enc[k]['bias'], {
                    'loc_w': 5.0, 'raw_w': -30.0, 'loc_z': -2.0,
                    'raw_z': 0.0}[k])}
  n, alpha = 4000, 0.5
  index, key = jnp.arange(n), jax.random.key(2)
  xs = jnp.zeros((n, 4))
  same = np.asarray(frechet.conditional_images(
      key, model, params, xs, index, source='m0', target='m0', alpha=alpha))
  cross = np.asarray(frechet.conditional_images(
      key, model, params, xs, index, source='m0', target='m1', alpha=alpha))
  np.testing.assert_allclose(same[:, :dw], 5.0, atol=1e-5)  # posterior w
  prior_std = alpha * float(model.prior_scale(1)[0])
  assert abs(cross[:, :dw].mean()) < 0.05
  assert cross[:, :dw].std() == pytest.approx(prior_std, rel=0.05)
  np.testing.assert_array_equal(same[:, dw:], cross[:, dw:])  # same z_e
  assert same[:, dw:].mean() == pytest.approx(-2.0, abs=0.05)
  u0, u1 = (np.asarray(frechet.unconditional_images(
      key, model, params, index, target=m, alpha=alpha)) for m in model.names)
  np.testing.assert_array_equal(u0[:, dw:], u1[:, dw:])  # one z per sample
  assert not np.allclose(u0[:, :dw], u1[:, :dw])  # w per modality
  assert u0[:, :dw].std() == pytest.approx(prior_std, rel=0.05)
  assert u0[:, dw:].std() == pytest.approx(float(model.prior_scale(1)[0]),
                                           rel=0.05)


# -------------------------------------------------------------- likelihood


def _exact_toy(m=2, dim_w=1, dim_z=1, dim_x=3, sigma_x=0.5, n=12):
  """A linear-Gaussian MMVAE+ (normal family) with known log p(x_1:M).

  Encoders are set to each modality's exact unimodal posterior marginals
  p(w_m | x_m), p(z | x_m) (a good, but not the joint, proposal).
  """
  model = toy_models.make_toy(m, dim_w=dim_w, dim_z=dim_z, dim_x=dim_x,
                              sigma_x=sigma_x)
  batch = toy_models.toy_batch(model, n, seed=1)
  params = jax.tree.map(np.asarray,
                        jax.jit(model.init)(jax.random.key(0), batch))
  s = float(model.prior_scale(1)[0])  # softplus(0): the normal prior's std
  a = np.zeros((m * dim_x, m * dim_w + dim_z))
  bias = np.zeros(m * dim_x)
  for i, name in enumerate(model.names):
    k = params['decoders'][name]['out']['kernel']  # [Dw + Dz, Dx]
    b = params['decoders'][name]['out']['bias']
    rows = slice(i * dim_x, (i + 1) * dim_x)
    a[rows, i * dim_w:(i + 1) * dim_w] = k[:dim_w].T
    a[rows, m * dim_w:] = k[dim_w:].T
    bias[rows] = b
    cov = np.linalg.inv(np.eye(dim_w + dim_z) / s**2 + k @ k.T / sigma_x**2)
    loc = k.T @ cov / sigma_x**2  # posterior mean = (x - b) @ loc
    raw = np.log(np.expm1(np.sqrt(np.diag(cov))))
    enc = params['encoders'][name]
    for part, sl in (('w', slice(0, dim_w)), ('z', slice(dim_w, None))):
      enc[f'loc_{part}'] = {'kernel': loc[:, sl], 'bias': -b @ loc[:, sl]}
      enc[f'raw_{part}'] = {'kernel': np.zeros_like(loc[:, sl]),
                            'bias': raw[sl]}
  x = np.concatenate([np.asarray(batch[n]) for n in model.names], -1)
  cov_x = s**2 * a @ a.T + sigma_x**2 * np.eye(m * dim_x)
  exact = stats.multivariate_normal(bias, cov_x).logpdf(x)
  return model, params, batch, exact


@pytest.fixture(scope='module')
def exact_toy():
  return _exact_toy(m=3, n=10)


def test_likelihood_converges_to_the_exact_log_px(exact_toy):
  model, params, batch, exact = exact_toy
  index = jnp.arange(len(exact))
  est = {k: np.asarray(likelihood.log_likelihood_jit(
      jax.random.key(3), model, params, batch, index, num_samples=k,
      chunk=1000)) for k in (2, 20_000)}  # K traced: one compilation
  err = est[20_000] - exact
  # Measured: max |err| 0.015, mean 0.001 at K = 20,000 per component.
  assert np.abs(err).max() < 0.03, err
  assert abs(err.mean()) < 0.01, err
  # Few samples: the estimator's downward (Jensen) bias is visible.
  assert (est[2] - exact).mean() < -0.05


def test_likelihood_does_not_depend_on_chunk_batch_or_devices(exact_toy):
  model, params, batch, _ = exact_toy
  whole = np.asarray(likelihood.log_likelihood_jit(
      jax.random.key(4), model, params, batch, jnp.arange(10),
      num_samples=300, chunk=300))  # unchunked: all 300 draws at once
  mesh = _mesh(8)
  repl = parallel.replicated(mesh)
  # 8 devices, 2 batches (one padded), chunks of 7 (not dividing 300).
  chunked = api.map_batches(
      lambda p, k, i, x: likelihood.log_likelihood_jit(
          k, model, p, x, i, num_samples=300, chunk=7),
      mesh, 10, batch_size=8,
      inputs={k: np.asarray(v) for k, v in batch.items()},
      args=(jax.device_put(params, repl),
            jax.device_put(jax.random.key(4), repl)))
  np.testing.assert_allclose(chunked, whole, rtol=1e-5)
  assert not np.allclose(chunked[:5], chunked[5:])  # examples differ


# --------------------------------------------------- eval.py end to end


def _assert_equal_up_to_rounding(a, b, num_examples, num_modalities,
                                 frechet_rtol=0.0):
  """Metrics of two evaluations whose programs differ only in float32
  rounding (another batch shape per device, another thread pool):

  * `eval/bound`, `likelihood/*`: per-example sums of n = M * 3 * 28 * 28
    same-sign pixel terms (plus a few latent terms) in float32: relative
    difference <= (n - 1) u (u = 2**-24), the bound we allow.
  * `latent/*`, `coherence/*` accuracies: an example's prediction flips
    only if it lies within rounding distance of a decision boundary (none
    did when measured); we allow one example (1 / num_examples, the
    smallest set), an O(1) bug moves many.
  * Fréchet distances (`fid/`, `fd_clf/`): within `frechet_rtol` (0 = equal:
    their features run in fixed chunks, bit-identical across device counts
    of one process).
  * everything else (coherence counts, set sizes, `skipped`): equal.
  """
  assert a.keys() == b.keys(), set(a) ^ set(b)
  sum_rtol = (num_modalities * 3 * 28 * 28 - 1) * numerics.U32
  for k in a:
    x, y = a[k], b[k]
    if k.startswith(('eval/bound', 'likelihood/')):
      np.testing.assert_allclose(y, x, rtol=sum_rtol, err_msg=k)
    elif (k.startswith(('latent/', 'coherence/')) and k != 'latent/num_train'
          and 'classifier_test_accuracy' not in k):
      assert abs(x - y) <= 1.0 / num_examples + 1e-12, (k, x, y)
    elif k.startswith(('fid/', 'fd_clf/')) and isinstance(x, float):
      np.testing.assert_allclose(y, x, rtol=frechet_rtol, err_msg=k)
    else:
      assert x == y, (k, x, y)


ALL = 'bound,coherence,fid,fd_clf,latent_classification,likelihood,figures'


@pytest.mark.slow
def test_eval_py_on_1_and_8_devices_and_twice(tmp_path):
  """A smoke checkpoint evaluated by eval.py on 1 device (subprocess) and by
  the runner on 8 devices, twice, and on a 1-device mesh: every metric
  family, FID skipped with the download address, identical on the re-run
  and on 1 vs 8 devices.

  (The checkpoint is a train state of the smoke model with random weights,
  saved as training saves it: compiling init and a train step would double
  this test's time; training is tested in train_test.py. The figures are
  made in the 8-device run only.)
  """
  from mmvaeplus_jax import models
  from mmvaeplus_jax.configs import polymnist as polymnist_configs
  from mmvaeplus_jax.input import builders
  
  data_dir = tmp_path / 'tfds'
  builders.prepare('mini', data_dir)
  workdir = tmp_path / 'run'
  config = polymnist_configs.get_config('smoke')
  config.model.num_modalities = 2
  config.data.data_dir = str(data_dir)
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  toy_models.save_random_checkpoint(model, tx, workdir / 'checkpoints', 3)
  clf_dir = tmp_path / 'clf'
  classifiers.save_classifiers(clf_dir, {
      n: classifiers.init(jax.random.key(i)) for i, n in enumerate(model.names)
  }, metadata={'test_accuracy': {'m0': 0.5, 'm1': 0.5}})

  overrides = {
      'model.num_modalities': 2, 'data.data_dir': str(data_dir),
      'evals.evaluators': ALL.replace(',figures', ''),
      'evals.num_examples': 32, 'evals.classifier_dir': str(clf_dir),
      'evals.inception_weights': str(tmp_path / 'absent.pth'),
      'evals.fid_stats_dir': str(tmp_path / 'stats'),
  }
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(
      [sys.executable, str(REPO / 'eval.py'),
       '--config=' + str(REPO / 'mmvaeplus_jax/configs/polymnist.py:smoke'),
       f'--workdir={workdir}'] + [f'--config.{k}={v}'
                                  for k, v in overrides.items()],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
      check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert 'coherence/uncond: ' in proc.stdout
  out = workdir / 'eval' / '3'
  one = json.loads((out / 'metrics.json').read_text())

  for k, v in overrides.items():
    section, name = k.split('.')
    config[section][name] = v
  config.evals.evaluators = ALL
  eight = runner.evaluate(config, str(workdir))
  assert json.loads((out / 'metrics.json').read_text()) == json.loads(
      json.dumps(eight))
  config.evals.evaluators = ALL.replace(',figures', '')
  again = runner.evaluate(config, str(workdir))
  files = eight.pop('figures/files', None)
  assert again == eight  # the same evaluation twice: identical
  # A mesh of 1 device vs 8 devices in this process: the Fréchet distances
  # and counts identical (fixed chunks); bound, likelihood and latent
  # accuracies equal up to rounding (map_batches without fixed chunks:
  # other batch shapes per device, `api.map_batches`).
  single = runner.evaluate(config, str(workdir), devices=jax.devices()[:1])
  _assert_equal_up_to_rounding(single, eight, 32, 2)
  # The 1-device eval.py process vs this 8-device process: identical except
  # the Fréchet distances (~5e-10 relative). Not the mesh (above): XLA:CPU
  # sizes its Eigen thread pool as max(#cores, #devices), and Eigen's
  # convolutions (those XLA does not hand to YNNPACK, e.g. 10 output
  # channels) depend on the pool size: the same HLO gives other
  # last bits with 8 threads than with 2 (measured 2026-11-27, 2-core CPU:
  # pools of 1-7, 9 and 16 threads agree, 8 and 12 differ).
  # Fréchet distances between processes: features carry the pool-dependent
  # rounding of a deep network (~ layers x reduction length x u, about 1e-5
  # relative per feature), entering the distance to first order: rtol 1e-4.
  _assert_equal_up_to_rounding(one, eight, 32, 2, frechet_rtol=1e-4)

  skipped = one['skipped']
  assert fid.FID_WEIGHTS_URL in skipped['fid']
  assert 'absent.pth' in skipped['fid']
  assert not any(k.startswith('fid/') for k in one)
  families = ('eval/bound', 'coherence/cond/m0->m1', 'coherence/cond/mean',
              'coherence/uncond', 'coherence/classifier_test_accuracy/m1',
              'fd_clf/uncond/m0', 'fd_clf/cond/m1->m0',
              'fd_clf/cond/mean/with_self', 'fd_clf/cond/mean/cross_only',
              'latent/m0/u', 'latent/m1/w', 'latent/mean/z', 'latent/all',
              'likelihood/log_px')
  for k in families:
    assert k in one and np.isfinite(one[k]), k
  # fd_clf values, not only finiteness: distances are >= 0, the means are
  # the means of their parts, and with_self includes the diagonal.
  names = ('m0', 'm1')
  fd = {k: v for k, v in one.items() if k.startswith('fd_clf/')
        and isinstance(v, float)}
  assert all(v >= 0 for k, v in fd.items() if '/num_' not in k)
  np.testing.assert_allclose(
      one['fd_clf/uncond/mean'],
      np.mean([one[f'fd_clf/uncond/{n}'] for n in names]), rtol=1e-12)
  for t in names:
    cross = [one[f'fd_clf/cond/{s}->{t}'] for s in names if s != t]
    np.testing.assert_allclose(one[f'fd_clf/cond/{t}/cross_only'],
                               np.mean(cross), rtol=1e-12)
    np.testing.assert_allclose(
        one[f'fd_clf/cond/{t}/with_self'],
        np.mean(cross + [one[f'fd_clf/cond/{t}->{t}']]), rtol=1e-12)
  assert files and all((out / f).exists() for f in files)  # the figures ran
  assert 'figures' not in eight.get('skipped', {})
  assert list((workdir / 'eval').glob('events.out.tfevents.*'))


def test_eval_finds_the_runs_own_classifiers(tmp_path):
  """`eval.py --workdir=<the demo's run>` uses the classifiers the run saved
  (`<workdir>/classifiers`) unless `evals.classifier_dir` names others."""
  assert runner.run_classifier_dir('', str(tmp_path)) == ''
  (tmp_path / 'classifiers').mkdir()
  own = str(tmp_path / 'classifiers')
  assert runner.run_classifier_dir('', str(tmp_path)) == own
  assert runner.run_classifier_dir('/elsewhere', str(tmp_path)) == '/elsewhere'
