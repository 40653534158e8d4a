"""Tests of MNIST-SVHN: pairing, SVHN reader, TFDS builder, networks,
classifier dispatch and configs.

The fixture writes tiny MNIST IDX files and SVHN `.mat` files (scipy.io, the
format-2 layout: X [32, 32, 3, N] uint8, y [N, 1] with 10 meaning 0) into
tmp_path. The check on the real MNIST files of ../shared/data skips when it
is absent.
"""

import gzip
import pathlib
import struct
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.configs import mnist_svhn as mnist_svhn_config
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.experiments import train as train_lib
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import mnist_files
from mmvaeplus_jax.input import mnist_svhn_data
from mmvaeplus_jax.models import get_model
from mmvaeplus_jax.models import mnist_svhn
from mmvaeplus_jax.models import networks

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
# Published SVHN format-2 class counts of digits 0..9 (the .mat files store
# digit 0 as 10): train 73,257, test 26,032 images.
SVHN_COUNTS = {
    'train': (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
    'test': (1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595),
}
# Fixture class counts: MNIST / SVHN, per digit 0..9 (unequal on purpose).
FIXTURE_COUNTS = {
    'train': ((3, 2, 4, 1, 2, 2, 3, 2, 2, 3), (2, 3, 4, 2, 1, 2, 2, 3, 2, 2)),
    'test': ((1, 2, 1, 1, 1, 1, 1, 1, 1, 2), (2, 1, 1, 2, 1, 1, 1, 1, 1, 1)),
}


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim])
  header += b''.join(struct.pack('>I', n) for n in array.shape)
  path.write_bytes(gzip.compress(
      header + np.ascontiguousarray(array, np.uint8).tobytes()))


def _labels(rng, counts):
  return rng.permutation(np.repeat(np.arange(10), counts))


def _write_fixture(root, *, svhn=True):
  """MNIST IDX files in root/mnist; SVHN .mat files in root/svhn."""
  rng = np.random.default_rng(7)
  (root / 'mnist').mkdir(parents=True)
  (root / 'svhn').mkdir()
  for split, (mnist_counts, svhn_counts) in FIXTURE_COUNTS.items():
    labels = _labels(rng, mnist_counts)
    images_name, labels_name = mnist_files.MNIST_FILES[split]
    _write_idx(root / 'mnist' / images_name,
               rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8))
    _write_idx(root / 'mnist' / labels_name, labels)
    if svhn:
      digits = _labels(rng, svhn_counts)
      scipy.io.savemat(root / 'svhn' / mnist_svhn_data.SVHN_FILES[split], {
          'X': rng.integers(0, 256, (32, 32, 3, len(digits)), np.uint8),
          'y': np.where(digits == 0, 10, digits)[:, None].astype(np.uint8)})
  return root


@pytest.fixture(name='manual_dir')
def _manual_dir(tmp_path):
  return _write_fixture(tmp_path / 'manual')


# ------------------------------------------------------------------ reading


def test_read_svhn_mat_layout_and_labels(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (32, 32, 3, 5), np.uint8)
  y = np.array([[10], [1], [9], [10], [5]], np.uint8)
  scipy.io.savemat(tmp_path / 'test_32x32.mat', {'X': x, 'y': y})
  images, labels = mnist_svhn_data.read_svhn_mat(tmp_path / 'test_32x32.mat')
  assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
  for i in range(5):
    np.testing.assert_array_equal(images[i], x[..., i])
  np.testing.assert_array_equal(labels, [0, 1, 9, 0, 5])  # 10 means 0


@pytest.mark.parametrize('bad', [
    {'X': np.zeros((28, 28, 3, 2), np.uint8), 'y': np.ones((2, 1))},
    {'X': np.zeros((32, 32, 3, 2), np.float32), 'y': np.ones((2, 1))},
    {'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.ones((3, 1))},
    {'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.full((2, 1), 11)},
    {'images': np.zeros((32, 32, 3, 2), np.uint8)},
])
def test_read_svhn_mat_rejects_bad_files(tmp_path, bad):
  scipy.io.savemat(tmp_path / 'train_32x32.mat', bad)
  with pytest.raises(mnist_svhn_data.InputFileError,
                     match='train_32x32.mat'):
    mnist_svhn_data.read_svhn_mat(tmp_path / 'train_32x32.mat')


def test_missing_svhn_is_one_clear_error(tmp_path):
  root = _write_fixture(tmp_path / 'manual', svhn=False)
  with pytest.raises(mnist_svhn_data.InputFileError) as err:
    builders.prepare('mnist_svhn/dm1', tmp_path / 'tfds', manual_dir=root)
  msg = str(err.value)
  for part in ('train_32x32.mat', 'test_32x32.mat', str(root),
               'http://ufldl.stanford.edu/housenumbers/', 'manual'):
    assert part in msg
  # Nothing was written for the failed build.
  assert not list((tmp_path / 'tfds').glob('mnist_svhn/dm1/*/*.array_record*'))


# ------------------------------------------------------------------ pairing


def _check_pairs(labels1, labels2, idx1, idx2, *, multiplier, max_per_class):
  """Label agreement, class-major order, dm * n_l pairs per class, every kept
  item used exactly dm times, kept items = the first n_l in file order."""
  np.testing.assert_array_equal(labels1[idx1], labels2[idx2])
  counts = mnist_svhn_data.class_counts(labels1, labels2,
                                        max_per_class=max_per_class)
  assert len(idx1) == multiplier * sum(counts.values())
  pair_labels = labels1[idx1]
  assert np.all(np.diff(pair_labels) >= 0)  # class-major
  for label, n in counts.items():
    for labels, idx in ((labels1, idx1), (labels2, idx2)):
      used = idx[pair_labels == label]
      assert len(used) == multiplier * n
      first_n = np.flatnonzero(labels == label)[:n]
      items, times = np.unique(used, return_counts=True)
      np.testing.assert_array_equal(items, first_n)
      assert np.all(times == multiplier)
      # Each block of n pairs is one permutation of the kept items.
      for block in used.reshape(multiplier, n):
        np.testing.assert_array_equal(np.sort(block), first_n)


@pytest.mark.parametrize('multiplier,max_per_class', [(30, 10_000), (3, 4)])
def test_pairing_matches_labels_and_multiplicity(multiplier, max_per_class):
  rng = np.random.default_rng(1)
  labels1 = rng.integers(0, 10, 200)
  labels2 = rng.integers(0, 10, 150)
  idx1, idx2 = mnist_svhn_data.pair_indices(
      labels1, labels2, seed=(0, 0), multiplier=multiplier,
      max_per_class=max_per_class)
  _check_pairs(labels1, labels2, idx1, idx2, multiplier=multiplier,
               max_per_class=max_per_class)
  if max_per_class == 4:
    assert set(mnist_svhn_data.class_counts(
        labels1, labels2, max_per_class=4).values()) == {4}


def test_pairing_is_deterministic_and_seeded():
  rng = np.random.default_rng(2)
  labels1, labels2 = rng.integers(0, 10, 100), rng.integers(0, 10, 120)
  pair = lambda seed: mnist_svhn_data.pair_indices(
      labels1, labels2, seed=seed, multiplier=5)
  a, b, c = pair((0, 0)), pair((0, 0)), pair((0, 1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  # dm = 1 is the first permutation of every class of dm = 5.
  one = mnist_svhn_data.pair_indices(labels1, labels2, seed=(0, 0),
                                     multiplier=1)
  counts = mnist_svhn_data.class_counts(labels1, labels2)
  starts = np.cumsum([0] + [5 * n for n in counts.values()])[:-1]
  first = np.concatenate([a[0][s:s + n]
                          for s, n in zip(starts, counts.values())])
  np.testing.assert_array_equal(one[0], first)


@pytest.mark.skipif(not (SHARED_DATA / 'mnist').is_dir(),
                    reason='../shared/data/mnist not present')
@pytest.mark.parametrize('split,num_pairs', [('train', 1_682_040),
                                             ('test', 300_000)])
def test_documented_sizes_with_real_mnist(split, num_pairs):
  """Real MNIST labels with the published SVHN class counts give the sizes
  the builder documents (per-class n_l capped by SVHN or MNIST)."""
  images, labels = mnist_svhn_data.load_mnist(SHARED_DATA / 'mnist', split)
  assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8
  svhn_labels = np.repeat(np.arange(10), SVHN_COUNTS[split])
  counts = mnist_svhn_data.class_counts(labels, svhn_labels)
  assert 30 * sum(counts.values()) == num_pairs


# ------------------------------------------------------------------ builder


def test_builder_pairs_images_by_label(manual_dir, tmp_path):
  mnist = {s: mnist_svhn_data.load_mnist(manual_dir, s) for s in ('train',
                                                                  'test')}
  svhn = {s: mnist_svhn_data.load_svhn(manual_dir, s) for s in ('train',
                                                                'test')}
  for config, dm in (('dm1', 1), ('dm30', 30)):
    for split in ('train', 'test'):
      data = builders.load_split(f'mnist_svhn/{config}', split,
                                 tmp_path / 'tfds', manual_dir=manual_dir)
      assert data['mnist'].shape[1:] == (28, 28, 1)
      assert data['svhn'].shape[1:] == (32, 32, 3)
      assert data['mnist'].dtype == data['svhn'].dtype == np.uint8
      (m_img, m_lab), (s_img, s_lab) = mnist[split], svhn[split]
      i1, i2 = data['mnist_index'], data['svhn_index']
      np.testing.assert_array_equal(data['mnist'], m_img[i1])
      np.testing.assert_array_equal(data['svhn'], s_img[i2])
      np.testing.assert_array_equal(data['label'], m_lab[i1])
      np.testing.assert_array_equal(data['label'], s_lab[i2])
      # The stored set of pairs is pair_indices' (TFDS reorders examples).
      want = mnist_svhn_data.pair_indices(
          m_lab, s_lab, seed=(0, {'train': 0, 'test': 1}[split]),
          multiplier=dm)
      assert sorted(zip(i1, i2)) == sorted(zip(*want))
      _check_pairs(m_lab, s_lab, *want, multiplier=dm,
                   max_per_class=10_000)
      # The compact in-memory source holds the same pairs, items once.
      src = builders.compact_source(f'mnist_svhn/{config}', split,
                                    manual_dir=manual_dir)
      assert len(src) == len(i1)
      got = src.read(np.arange(len(src)))
      assert sorted(zip(got['mnist_index'], got['svhn_index'])) == sorted(
          zip(i1, i2))
      np.testing.assert_array_equal(got['mnist'], m_img[got['mnist_index']])
      np.testing.assert_array_equal(got['svhn'], s_img[got['svhn_index']])
      np.testing.assert_array_equal(got['label'], m_lab[got['mnist_index']])
      part = src.read(np.array([3, 0, 3]))
      np.testing.assert_array_equal(part['svhn'], got['svhn'][[3, 0, 3]])
  # In a fixed shuffled order, not class-major (first-N subsets mix classes).
  assert np.any(np.diff(got['label']) < 0)
  assert builders.compact_source('mnist_svhn/dm1', 'train[:50%]',
                                 manual_dir=manual_dir) is None
  assert builders.compact_source('mnist_svhn/dm1', 'train') is None
  assert builders.compact_source('polymnist/mini', 'train') is None


# ------------------------------------------------------------------ networks


def _torch_counts(dim_w, dim_z):
  """MMVAE's networks' parameter counts by PyTorch's formulas, with private
  heads of size dim_w beside the shared ones (Linear/Conv with bias)."""
  lin = lambda i, o: i * o + o
  conv = lambda i, o, k: i * o * k * k + o
  heads = lambda head: 2 * head(dim_z) + (2 * head(dim_w) if dim_w else 0)
  u = dim_w + dim_z
  return {
      'mnist_enc': lin(784, 400) + heads(lambda d: lin(400, d)),
      'mnist_dec': lin(u, 400) + lin(400, 784),
      'svhn_enc': conv(3, 32, 4) + conv(32, 64, 4) + conv(64, 128, 4)
                  + heads(lambda d: conv(128, d, 4)),
      'svhn_dec': conv(u, 128, 4) + conv(128, 64, 4) + conv(64, 32, 4)
                  + conv(32, 3, 4),
  }


def _batch(b=2):
  rng = np.random.default_rng(0)
  return {'mnist': jnp.asarray(rng.uniform(size=(b, 28, 28, 1)), jnp.float32),
          'svhn': jnp.asarray(rng.uniform(size=(b, 32, 32, 3)), jnp.float32)}


@pytest.mark.parametrize('dim_w', [0, 3])
def test_mmvae_networks_parameter_counts(dim_w):
  model = mnist_svhn.make_mnist_svhn(
      'mmvae' if dim_w == 0 else 'mmvaeplus', dim_w=dim_w, dim_z=20,
      arch='mmvae')
  params = jax.eval_shape(model.init, jax.random.key(0), _batch())
  want = _torch_counts(dim_w, 20)
  count = networks.count_params
  assert count(params['encoders']['mnist']) == want['mnist_enc']
  assert count(params['decoders']['mnist']) == want['mnist_dec']
  assert count(params['encoders']['svhn']) == want['svhn_enc']
  assert count(params['decoders']['svhn']) == want['svhn_dec']


@pytest.mark.slow  # ~20 s each (compilation); CI runs the slow tests too
@pytest.mark.parametrize('arch', mnist_svhn.ARCHS)
def test_network_shapes_and_ranges(arch):
  batch = _batch(3)
  mnist, svhn = mnist_svhn.modalities((2, 5), 4, arch=arch)
  assert mnist.likelihood_scale == pytest.approx(3 * 32 * 32 / 784)
  assert svhn.likelihood_scale == 1.0
  key = jax.random.key(0)
  for mod, dim_w in ((mnist, 2), (svhn, 5)):
    x = batch[mod.name]
    enc = mod.encoder.init(key, x)
    loc_w, raw_w, loc_z, raw_z = mod.encoder.apply(enc, x)
    assert loc_w.shape == raw_w.shape == (3, dim_w)
    assert loc_z.shape == raw_z.shape == (3, 4)
    u = jax.random.normal(key, (7, dim_w + 4))
    out = mod.decoder.apply(mod.decoder.init(key, u), u)
    assert out.shape == (7,) + mod.event_shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert mod.log_likelihood(x, out[None, :3]).shape == (1, 3)
  # No private latent: no w heads, [B, 0] outputs.
  mnist0, _ = mnist_svhn.modalities(0, 4, arch=arch)
  enc = mnist0.encoder.init(key, batch['mnist'])
  assert set(enc['params']['heads']) == {'loc_z', 'raw_z'}
  assert mnist0.encoder.apply(enc, batch['mnist'])[0].shape == (3, 0)


@pytest.mark.slow  # ~25 s per case; the objectives are exact-tested in
# objectives_test / baselines_test
@pytest.mark.parametrize('arch', ['dmvae', 'mmvae'])
@pytest.mark.parametrize('name,dim_w', [('mmvaeplus', 2), ('mmvae', 0)])
def test_objective_runs(arch, name, dim_w):
  batch = _batch(2)
  model = mnist_svhn.make_mnist_svhn(name, dim_w=dim_w, dim_z=3, arch=arch)
  params = model.init(jax.random.key(0), batch)
  loss = lambda p: -jnp.mean(model.objective(
      jax.random.key(1), p, batch, num_samples=2, beta=2.5,
      estimator='iwae'))
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads['decoders']['svhn']['convt_3']['kernel']
                       ).sum()) > 0
  if dim_w:  # the auxiliary priors learn through the cross reconstructions
    assert float(jnp.abs(grads['aux_prior']['svhn']).sum()) > 0


def test_make_mnist_svhn_rejects_inconsistent_latents():
  with pytest.raises(ValueError, match='dim_w must be 0'):
    mnist_svhn.make_mnist_svhn('mmvae', dim_w=2)
  with pytest.raises(ValueError, match='dim_w >= 1'):
    mnist_svhn.make_mnist_svhn('mmvaeplus', dim_w=0)
  with pytest.raises(ValueError, match='arch'):
    mnist_svhn.modalities(1, 2, arch='resnet')


# ------------------------------------------------------------------ classifiers


def test_classifier_dispatch_by_image_shape(tmp_path):
  key = jax.random.key(0)
  shapes = {'mnist': (28, 28, 1), 'svhn': (32, 32, 3), 'm0': (28, 28, 3)}
  params = {n: classifiers.init(key, s) for n, s in shapes.items()}
  assert params['mnist']['fc_0']['kernel'].shape == (320, 50)
  assert params['svhn']['fc_0']['kernel'].shape == (500, 50)
  assert params['m0']['fc_0']['kernel'].shape == (980, 128)
  for name, shape in shapes.items():
    x = np.zeros((4,) + shape, np.uint8)
    assert classifiers.classify(params, name, x).shape == (4, 10)
    feat = classifiers.features(params[name], x)
    assert feat.shape == (4, 50 if name != 'm0' else 128)
    assert classifiers.image_shape_of(params[name]) == shape
    # PyTorch init bounds: U(+-1/sqrt(fan_in)).
    bound = 1 / np.sqrt(shape[-1] * 25 if name != 'm0' else shape[-1] * 16)
    assert float(jnp.abs(params[name]['conv_0']['kernel']).max()) <= bound
  with pytest.raises(ValueError, match='no digit classifier'):
    classifiers.log_probs(params['mnist'], np.zeros((1, 30, 30, 1)))
  # Mixed architectures round-trip through save / load.
  classifiers.save_classifiers(tmp_path / 'clf', params)
  loaded, meta = classifiers.load_classifiers(tmp_path / 'clf')
  assert meta['image_shapes'] == {n: list(s) for n, s in shapes.items()}
  for name in shapes:
    for a, b in zip(jax.tree.leaves(params[name]),
                    jax.tree.leaves(loaded[name])):
      np.testing.assert_array_equal(a, b)


def test_classifier_trains_on_distinct_items():
  rng = np.random.default_rng(0)
  labels = np.arange(40) % 10
  svhn = rng.integers(0, 256, (40, 32, 32, 3), np.uint8)
  # Each item twice, as MNIST-SVHN pairs repeat items.
  split = {'svhn': np.concatenate([svhn, svhn]),
           'label': np.concatenate([labels, labels]),
           'svhn_index': np.concatenate([np.arange(40), np.arange(40)])}
  x, y = classifiers.distinct_items(split, 'svhn')
  np.testing.assert_array_equal(x, svhn)
  np.testing.assert_array_equal(y, labels)
  assert classifiers.image_names({**split, 'mnist': np.zeros(
      (80, 28, 28, 1))}) == ['mnist', 'svhn']
  params, accs = classifiers.train_and_evaluate(
      split, split, ['svhn'], epochs=1, batch_size=20, log=lambda _: None)
  assert classifiers.image_shape_of(params['svhn']) == (32, 32, 3)
  assert 0.0 <= accs['svhn'] <= 1.0


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize('arg,name,dims', [
    (None, 'mnist_svhn_mmvae', (0, 20)),
    ('appf_mmvaeplus', 'mnist_svhn_mmvaeplus', (4, 10)),
    ('appf_mmvaeplus,dim_w=10', 'mnist_svhn_mmvaeplus', (10, 10)),
    ('smoke', 'mnist_svhn_mmvaeplus', (2, 4)),
])
def test_configs_build_models(arg, name, dims):
  config = mnist_svhn_config.get_config(arg)
  assert config.data.name == 'mnist_svhn' and config.model.name == name
  model = get_model(config.model)
  assert (model.dim_w, model.dim_z) == dims
  assert model.names == ('mnist', 'svhn')
  assert model.modalities[0].likelihood_scale == pytest.approx(3.918367, 1e-6)
  if arg is None:
    assert (config.objective.num_samples, config.train.num_epochs,
            config.train.batch_size) == (30, 30, 128)
  elif arg.startswith('appf'):
    assert (config.objective.num_samples, config.objective.beta,
            config.train.num_epochs) == (10, 2.5, 10)


@pytest.mark.slow  # builds and runs the DMVAE networks (~20 s)
def test_appf_dmvae_config_builds_dmvae():
  from mmvaeplus_jax.models import dmvae  # pylint: disable=g-import-not-at-top
  for dim_w in mnist_svhn_config.APPF_DIM_W:
    c = mnist_svhn_config.get_config(f'appf_dmvae,dim_w={dim_w}')
    assert c.model.dim_w == dim_w and c.model.dim_z == 10
    assert c.objective.beta == 2.5 and c.objective.estimator == 'elbo'
  model = get_model(c.model)
  assert isinstance(model, dmvae.DMVAE) and model.names == ('mnist', 'svhn')
  batch = _batch(2)
  params = model.init(jax.random.key(0), batch)
  value = model.objective(jax.random.key(1), params, batch, beta=2.5)
  assert value.shape == (2,) and np.all(np.isfinite(np.asarray(value)))


# ------------------------------------------------------------------ training


def test_display_pads_mnist_beside_svhn():
  shape = plotting.canvas_shape([(28, 28, 1), (32, 32, 3)])
  assert shape == (32, 32, 3)
  x = np.random.default_rng(0).uniform(size=(2, 5, 28, 28, 1))
  y = plotting.to_canvas(x, shape)
  assert y.shape == (2, 5, 32, 32, 3)
  np.testing.assert_array_equal(y[..., 2:30, 2:30, :],
                                np.repeat(x, 3, axis=-1))
  assert not y[..., :2, :, :].any() and not y[..., 30:, :, :].any()
  same = np.zeros((3, 28, 28, 3))
  assert plotting.to_canvas(same, (28, 28, 3)) is same


@pytest.mark.slow  # ~18 s of compilation
def test_cross_modal_by_target_keeps_each_targets_shape():
  batch = _batch(2)
  model = mnist_svhn.make_mnist_svhn('mmvaeplus', dim_w=1, dim_z=2,
                                     arch='dmvae')
  params = model.init(jax.random.key(0), batch)
  by_target = jax.jit(generation.cross_modal_by_target, static_argnums=1)(
      jax.random.key(1), model, params, batch)
  assert [t.shape for t in by_target] == [(2, 2, 28, 28, 1),
                                          (2, 2, 32, 32, 3)]


@pytest.mark.slow
def test_smoke_config_trains_with_final_coherence(tmp_path):
  """The training shell on the synthetic fixture: 4 steps, sample grids of
  both shapes, then cross-modal coherence with DigitClf classifiers."""
  counts = {'train': ((10,) * 10, (12,) * 10), 'test': ((5,) * 10, (6,) * 10)}
  with mock.patch.dict(FIXTURE_COUNTS, counts):
    manual = _write_fixture(tmp_path / 'manual')
  config = mnist_svhn_config.get_config('smoke')
  config.data.update(manual_dir=str(manual), data_dir=str(tmp_path / 'tfds'))
  config.train.update(final_coherence=True, final_coherence_clf_epochs=1)
  metrics = train_lib.train(config, str(tmp_path / 'work'))
  assert np.isfinite(metrics['eval/bound'])
  assert 0.0 <= metrics['coherence/cond/mnist->svhn'] <= 1.0
  assert sorted(p.name for p in (tmp_path / 'work' / 'samples').iterdir()) == [
      'cross_modal_00000002.png', 'cross_modal_00000004.png',
      'unconditional_00000002.png', 'unconditional_00000004.png']
  _, meta = classifiers.load_classifiers(tmp_path / 'work' / 'classifiers')
  assert meta['image_shapes'] == {'mnist': [28, 28, 1], 'svhn': [32, 32, 3]}
  # eval.py's evaluators of the MNIST-SVHN configs, on the saved run.
  config.evals.classifier_dir = str(tmp_path / 'work' / 'classifiers')
  evals = runner.evaluate(config, str(tmp_path / 'work'))
  for key in ('eval/bound', 'coherence/cond/svhn->mnist', 'coherence/uncond',
              'latent/svhn/z', 'fd_clf/cond/mnist->svhn', 'fd_clf/uncond/svhn'):
    assert np.isfinite(evals[key]), key
