"""FID: torch-free .pth loader, Inception parity with pytorch-fid, Fréchet.

The parity fixture (`../shared/data/fid_reference/`, README there) holds
random weights that NumPy rebuilds bit for bit, calibrated BN statistics,
8 inputs and pytorch-fid 0.2.1's own pool3 features. The weights are written
here into a real `.pth` (torch's legacy and zip formats, by a small writer
below) and read back through `fid.load_inception_variables`, so the loader,
the checksum, the conversion, the cache and the Flax network are all tested.
"""

import collections
import hashlib
import json
import pathlib
import pickle
import time
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from torch_files import _Storage, _Tensor, _View, write_pth

from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import fid
from mmvaeplus_jax.evaluation import frechet
from mmvaeplus_jax.evaluation import inception
from mmvaeplus_jax.evaluation import inception_weights
from mmvaeplus_jax.evaluation import torch_pickle

FIXTURE_DIR = (
    pathlib.Path(__file__).resolve().parents[2]
    / 'shared' / 'data' / 'fid_reference'
)
needs_fixture = pytest.mark.skipif(
    not (FIXTURE_DIR / 'features_float64.npy').is_file(),
    reason=f'FID parity fixture not found at {FIXTURE_DIR}',
)

# Tolerances from the fixture README (vs features_float64.npy).
F32_MAX_ABS, F32_REL_L2 = 7.0e-4, 2.7e-4
F64_MAX_ABS = 1e-10
N64 = 3  # images in the (slower) float64 pass
FRECHET_REL = 1e-9


def _rel_l2(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------
# Fixture weights (README recipe) and shared results.
# ---------------------------------------------------------------------------


def _recipe_state_dict():
  spec = json.loads((FIXTURE_DIR / 'state_dict_spec.json').read_text())
  stats = np.load(FIXTURE_DIR / 'bn_running_stats.npz')
  sd = collections.OrderedDict()
  for i, e in enumerate(spec):
    shape, kind = tuple(e['shape']), e['kind']
    if kind.startswith('bn_running'):
      sd[e['key']] = stats[e['key']]
      continue
    z = np.random.default_rng([20151205, i]).standard_normal(shape)
    if kind == 'conv_weight':
      a = z * np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    elif kind == 'bn_weight':
      a = 1.0 + 0.1 * z
    else:
      a = 0.1 * z
    sd[e['key']] = a.astype(np.float32)
  return sd


@pytest.fixture(scope='module')
def recipe_state_dict():
  if not (FIXTURE_DIR / 'state_dict_spec.json').is_file():
    pytest.skip(f'FID parity fixture not found at {FIXTURE_DIR}')
  sd = _recipe_state_dict()
  ref = json.loads((FIXTURE_DIR / 'weights_sha256.json').read_text())
  every = hashlib.sha256()
  for k, v in sd.items():
    data = np.ascontiguousarray(v, '<f4').tobytes()
    assert hashlib.sha256(data).hexdigest() == ref['per_tensor'][k], k
    every.update(data)
  assert every.hexdigest() == ref['sha256_all_concatenated_in_spec_order'], (
      'NumPy random stream changed: the recipe weights differ'
  )
  return sd


@pytest.fixture(scope='module')
def pth_file(recipe_state_dict, tmp_path_factory):
  """The recipe weights in a legacy-format .pth, plus what a strict torch
  state dict also holds (fc.* zeros, num_batches_tracked)."""
  sd = collections.OrderedDict(recipe_state_dict)
  for k in [k for k in sd if k.endswith('running_var')]:
    sd[k.replace('running_var', 'num_batches_tracked')] = np.array(4, np.int64)
  sd['fc.weight'] = np.zeros((1008, 2048), np.float32)
  sd['fc.bias'] = np.zeros((1008,), np.float32)
  path = tmp_path_factory.mktemp('weights') / 'fixture_inception.pth'
  write_pth(path, sd, fmt='legacy')
  return path


@pytest.fixture(scope='module')
def inputs_nhwc():
  return np.load(FIXTURE_DIR / 'inputs.npy').transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def loaded(pth_file, tmp_path_factory):
  cache = tmp_path_factory.mktemp('cache')
  prefix = fid.file_sha256(pth_file)[:8]
  variables = fid.load_inception_variables(
      pth_file, sha256_prefix=prefix, cache_dir=cache
  )
  return variables, cache, prefix


@pytest.fixture(scope='module')
def f32_run(loaded, inputs_nhwc):
  """Features of the 8 inputs, batch 5 (one full, one padded batch)."""
  variables, _, _ = loaded
  feature_fn = fid.make_feature_fn(variables, batch_size=5)
  t0 = time.perf_counter()
  feats = feature_fn(inputs_nhwc)
  return feature_fn, feats, time.perf_counter() - t0


# ---------------------------------------------------------------------------
# Loader.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('fmt', ['legacy', 'zip'])
def test_reader_round_trips_both_formats(tmp_path, fmt):
  rng = np.random.default_rng(0)
  base = rng.standard_normal(24).astype(np.float32)
  shared = _Storage('shared', base)
  sd = collections.OrderedDict(
      w=rng.standard_normal((3, 2, 1, 2)).astype(np.float32),
      d=rng.standard_normal(5),  # float64
      n=np.array(7, np.int64),  # 0-d, like num_batches_tracked
      # Two tensors on one storage: an offset slice and a transposed view.
      a=_Tensor(shared, (2, 3), offset=4),
      t=_Tensor(shared, (4, 6), stride=(1, 4)),
  )
  if fmt == 'legacy':  # legacy storage views
    sd['v'] = _Tensor(shared, (3,), offset=1,
                      view=_View(shared, 'shared_view', 10, 6))
  path = tmp_path / 'x.pth'
  write_pth(path, sd, fmt=fmt)
  got = torch_pickle.read_torch_state_dict(path)
  assert list(got) == list(sd)
  np.testing.assert_array_equal(got['w'], sd['w'])
  np.testing.assert_array_equal(got['d'], sd['d'])
  assert got['d'].dtype == np.float64 and got['n'].dtype == np.int64
  assert got['n'].shape == () and got['n'] == 7
  np.testing.assert_array_equal(got['a'], base[4:10].reshape(2, 3))
  np.testing.assert_array_equal(got['t'], base.reshape(6, 4).T)
  assert got['t'].flags.c_contiguous
  if fmt == 'legacy':
    np.testing.assert_array_equal(got['v'], base[11:14])


def test_reader_refuses_foreign_globals_and_out_of_bounds(tmp_path):
  evil = tmp_path / 'evil.pth'
  with zipfile.ZipFile(evil, 'w') as zf:
    zf.writestr('archive/data.pkl', b'cos\nsystem\n(S"echo pwned"\ntR.')
  with pytest.raises(pickle.UnpicklingError, match='refusing.*os.system'):
    torch_pickle.read_torch_state_dict(evil)
  with pytest.raises(fid.InceptionWeightsError, match='refusing'):
    fid.load_inception_variables(
        evil, sha256_prefix=fid.file_sha256(evil)[:8], use_cache=False
    )
  # A tensor claiming more elements than its storage holds.
  big = tmp_path / 'big.pth'
  write_pth(big, {'x': _Tensor(_Storage('0', np.zeros(4, np.float32)), (5,))})
  with pytest.raises(pickle.UnpicklingError, match='past its storage'):
    torch_pickle.read_torch_state_dict(big)


def test_missing_or_corrupt_weights_raise_one_clear_error(tmp_path):
  missing = tmp_path / fid.FID_WEIGHTS_FILENAME
  with pytest.raises(fid.InceptionWeightsError) as e:
    fid.load_inception_variables(missing, cache_dir=tmp_path)
  msg = str(e.value)
  assert str(missing) in msg and '6726825d' in msg and 'no such file' in msg
  assert fid.FID_WEIGHTS_URL in msg
  corrupt = tmp_path / 'corrupt.pth'
  corrupt.write_bytes(b'not the inception weights')
  actual = hashlib.sha256(b'not the inception weights').hexdigest()
  with pytest.raises(fid.InceptionWeightsError) as e:
    fid.load_inception_variables(corrupt, cache_dir=tmp_path)
  msg = str(e.value)
  assert str(corrupt) in msg and '6726825d' in msg and actual in msg
  assert fid.FID_WEIGHTS_URL in msg
  assert not list(tmp_path.glob('*.npz'))  # nothing converted or cached


def test_conversion_layout_and_strictness(recipe_state_dict):
  variables = inception_weights.convert_state_dict(recipe_state_dict)
  w = recipe_state_dict['Mixed_6b.branch7x7_2.conv.weight']  # [O, I, 1, 7]
  k = variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  assert k.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))
  bn = variables['batch_stats']['Mixed_7c']['branch_pool']['bn']
  np.testing.assert_array_equal(
      bn['var'], recipe_state_dict['Mixed_7c.branch_pool.bn.running_var'])
  np.testing.assert_array_equal(
      variables['params']['Mixed_7c']['branch_pool']['bn']['scale'],
      recipe_state_dict['Mixed_7c.branch_pool.bn.weight'])
  n = len(jax.tree.leaves(variables))
  assert n == 470
  broken = dict(recipe_state_dict)
  del broken['Mixed_5b.branch1x1.bn.running_mean']
  with pytest.raises(fid.InceptionWeightsError, match='1 missing'):
    inception_weights.convert_state_dict(broken)
  aux = dict(recipe_state_dict)
  aux['AuxLogits.conv0.conv.weight'] = np.zeros((128, 768, 1, 1), np.float32)
  with pytest.raises(fid.InceptionWeightsError, match='unexpected'):
    inception_weights.convert_state_dict(aux)


@needs_fixture
def test_loader_and_cache(loaded, pth_file, recipe_state_dict, monkeypatch):
  variables, cache, prefix = loaded
  expected = inception_weights.convert_state_dict(recipe_state_dict)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  assert len(list(cache.glob('fid_inception_*.npz'))) == 1
  # A second load comes from the cache: the .pth reader is not called.
  monkeypatch.setattr(torch_pickle, 'read_torch_state_dict', None)
  again = fid.load_inception_variables(
      pth_file, sha256_prefix=prefix, cache_dir=cache)
  jax.tree.map(np.testing.assert_array_equal, again, expected)


# ---------------------------------------------------------------------------
# Inception parity with pytorch-fid.
# ---------------------------------------------------------------------------


@needs_fixture
def test_resize_matches_torch_bilinear():
  w = np.load(FIXTURE_DIR / 'resize_matrix_28_to_299.npy')  # [299, 28]
  eye = np.eye(28)[:, :, None, None] * np.ones((1, 1, 28, 1))  # [28, 28, 28, 1]
  with jax.enable_x64(True):
    got = np.asarray(inception.resize_bilinear(jnp.asarray(eye)))
  np.testing.assert_allclose(got[:, :, 0, 0].T, w, atol=1e-15)  # column 0
  got32 = np.asarray(inception.resize_bilinear(jnp.asarray(eye, jnp.float32)))
  assert np.max(np.abs(got32[:, :, 0, 0].T - w)) < 3e-6


@needs_fixture
def test_float32_features_match_pytorch_fid(loaded, f32_run, inputs_nhwc):
  variables, _, _ = loaded
  _, feats, seconds = f32_run
  ref64 = np.load(FIXTURE_DIR / 'features_float64.npy')
  ref32 = np.load(FIXTURE_DIR / 'features_float32.npy')
  assert feats.shape == (8, 2048) and feats.dtype == np.float32
  max_abs = float(np.max(np.abs(feats - ref64)))
  rel = _rel_l2(feats, ref64)
  print(f'\nfloat32 vs pytorch-fid float64: max|d| {max_abs:.3g}, rel L2 '
        f'{rel:.3g}; vs torch float32 max|d| '
        f'{np.max(np.abs(feats - ref32)):.3g}; first call {seconds:.1f} s')
  assert max_abs <= F32_MAX_ABS and rel <= F32_REL_L2
  # Padding is dropped; the official quirks reuse the same compiled pass.
  dropped = fid.make_feature_fn(
      variables, batch_size=5, drop_last_partial_batch=True)
  first5 = dropped(inputs_nhwc)
  assert first5.shape == (5, 2048)
  np.testing.assert_array_equal(first5, feats[:5])


def _evaluator_body(fparams, index, batch, *, apply):
  """The `fid` evaluator's per-chunk body (`frechet._real_features`) minus
  the uint8 -> [0, 1] step: the fixture's inputs are float images."""
  del index
  return apply(fparams, batch['x'])


@needs_fixture
def test_fid_evaluator_path_matches_pytorch_fid(loaded, inputs_nhwc):
  """The features as the `fid` evaluator computes them: its apply function
  (`frechet._inception_apply`), through `api.map_batches` with microbatches
  on the 8-device mesh, with the fixture's weights: the same parity bounds
  as the plain pass."""
  variables, _, _ = loaded
  mesh = parallel.make_mesh()
  fparams = jax.device_put(variables, parallel.replicated(mesh))
  apply = frechet._inception_apply  # pylint: disable=protected-access
  feats = api.map_batches(
      _evaluator_body, mesh, len(inputs_nhwc), batch_size=8,
      inputs={'x': inputs_nhwc.astype(np.float32)}, args=(fparams,),
      microbatch=1, static={'apply': apply})
  ref64 = np.load(FIXTURE_DIR / 'features_float64.npy')
  assert feats.shape == (8, 2048) and feats.dtype == np.float32
  assert float(np.max(np.abs(feats - ref64))) <= F32_MAX_ABS
  assert _rel_l2(feats, ref64) <= F32_REL_L2


@needs_fixture
def test_official_png_quantisation_option(loaded, f32_run, inputs_nhwc):
  variables, _, _ = loaded
  _, feats, _ = f32_run
  # Fixture inputs are k/255: quantising a perturbed copy restores them.
  rng = np.random.default_rng(0)
  noisy = inputs_nhwc + rng.uniform(-0.45, 0.45, inputs_nhwc.shape) / 255
  noisy = noisy.astype(np.float32)
  quantised = fid.make_feature_fn(
      variables, batch_size=5, official_png_quantisation=True,
      drop_last_partial_batch=True)
  np.testing.assert_array_equal(quantised(noisy), feats[:5])


@pytest.mark.slow
@needs_fixture
def test_float64_features_and_blocks_match_pytorch_fid(loaded, inputs_nhwc):
  variables, _, _ = loaded
  ref64 = np.load(FIXTURE_DIR / 'features_float64.npy')[:N64]
  blocks = np.load(FIXTURE_DIR / 'block_means_float64.npz')
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    apply = jax.jit(lambda v, x: inception.FIDInceptionV3().apply(
        v, x, mutable=['intermediates']))
    feats, state = apply(v64, jnp.asarray(inputs_nhwc[:N64], jnp.float64))
    feats = np.asarray(feats)
    inter = jax.tree.map(np.asarray, state['intermediates'])
  max_abs = float(np.max(np.abs(feats - ref64)))
  print(f'\nfloat64 vs pytorch-fid float64: max|d| {max_abs:.3g}, rel L2 '
        f'{_rel_l2(feats, ref64):.3g}')
  assert feats.dtype == np.float64 and max_abs <= F64_MAX_ABS
  for name in ('block0', 'block1', 'block2'):
    got = inter[name][0].mean(axis=(1, 2))
    np.testing.assert_allclose(got, blocks[name][:N64], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------
# Feature function plumbing (no Inception pass).
# ---------------------------------------------------------------------------


def test_quantise_like_png_rounds_half_up_and_clamps():
  x = np.array([-0.2, 0.0, 0.49 / 255, 0.5 / 255, 0.51 / 255, 100.5 / 255,
                1.0, 1.3], np.float32)
  got = np.asarray(fid.quantise_like_png(x)) * 255
  np.testing.assert_allclose(got, [0, 0, 0, 1, 1, 101, 255, 255], atol=1e-4)


def test_feature_fn_rejects_bad_inputs():
  abstract = jax.eval_shape(
      inception.FIDInceptionV3().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  feature_fn = fid.make_feature_fn(variables, batch_size=4)
  with pytest.raises(TypeError, match='float'):
    feature_fn(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\]'):
    feature_fn(np.zeros((2, 3, 28, 28), np.float32))
  assert feature_fn(np.zeros((0, 28, 28, 3), np.float32)).shape == (0, 2048)


# ---------------------------------------------------------------------------
# Fréchet distance.
# ---------------------------------------------------------------------------


@needs_fixture
def test_frechet_distance_matches_pytorch_fid_reference():
  ref = json.loads((FIXTURE_DIR / 'frechet_reference.json').read_text())
  z = np.load(FIXTURE_DIR / 'frechet_reference.npz')
  expected = ref['expected_frechet_distance']
  got = fid.frechet_distance(z['mu1'], z['sigma1'], z['mu2'], z['sigma2'])
  assert abs(got - expected) <= FRECHET_REL * expected
  swapped = fid.frechet_distance(z['mu2'], z['sigma2'], z['mu1'], z['sigma1'])
  assert abs(swapped - ref['expected_frechet_distance_arguments_swapped']) <= (
      FRECHET_REL * expected)
  # Statistics from the raw samples (N - 1 covariance) give the same value.
  assert abs(fid.fid_from_features(z['samples1'], z['samples2']) - expected
             ) <= FRECHET_REL * expected
  mu, sigma = fid.feature_statistics(z['samples1'])
  np.testing.assert_allclose(mu, z['mu1'], rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(sigma, z['sigma1'], rtol=1e-12, atol=1e-15)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9
  # The known-wrong variants are reproduced and are far outside tolerance.
  wrong = ref['wrong_variants_for_negative_tests']
  off = 1e-6 * np.eye(64)  # pytorch-fid's fallback path, taken every time
  diff = z['mu1'] - z['mu2']
  always_eps = (diff @ diff + np.trace(z['sigma1']) + np.trace(z['sigma2'])
                - 2 * np.trace(linalg.sqrtm(
                    (z['sigma1'] + off) @ (z['sigma2'] + off)).real))
  biased = fid.frechet_distance(
      z['mu1'], np.cov(z['samples1'], rowvar=False, bias=True),
      z['mu2'], np.cov(z['samples2'], rowvar=False, bias=True))
  for value, key in ((always_eps, 'eps_1e-6_added_to_both_covariances_always'),
                     (biased, 'covariance_with_divisor_N_instead_of_N-1')):
    assert abs(value - wrong[key]) <= 1e-8 * expected, key
    assert abs(value - expected) > 1000 * FRECHET_REL * expected, key


def test_frechet_self_zero_and_monotone_in_noise():
  rng = np.random.default_rng(7)
  feats = rng.standard_normal((600, 32)) @ rng.standard_normal((32, 32))
  feats += rng.standard_normal(32)
  assert abs(fid.fid_from_features(feats, feats)) < 1e-8
  noise = rng.standard_normal(feats.shape)
  fids = [fid.fid_from_features(feats, feats + s * noise)
          for s in (0.1, 0.5, 2.0)]
  assert 0 < fids[0] < fids[1] < fids[2]


def test_frechet_singular_offset_and_imaginary_check():
  mu = np.zeros(3)
  zero = np.zeros((3, 3))  # singular product: the eps offset is used
  sigma = np.diag([1.0, 2.0, 3.0])
  with pytest.warns(UserWarning, match='singular'):
    got = fid.frechet_distance(mu, zero, mu, sigma)
  eps = 1e-6  # the offset enters the root only, not the traces
  expected = 6.0 - 2 * np.sum(np.sqrt(eps * (np.diag(sigma) + eps)))
  assert abs(got - expected) < 1e-9
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    with pytest.raises(ValueError, match='Imaginary component'):
      fid.frechet_distance(mu[:2], np.eye(2), mu[:2], np.diag([-1.0, 1.0]))
