"""Tests of the coherence classifiers (evaluation.classifiers,
classifier_nets, classifier_training; tools.classifiers): architecture,
training, storage, CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmvaeplus_jax.evaluation import classifier_nets
from mmvaeplus_jax.evaluation import classifier_training
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.tools import classifiers as classifiers_cli

BATCH, LR = 64, 2e-3  # shared by the training tests (one compile)


@pytest.fixture(scope='module')
def mini_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def mini(mini_dir):
  return (builders.load_split('mini', 'train', mini_dir),
          builders.load_split('mini', 'test', mini_dir))


@pytest.fixture(scope='module')
def trained(mini):
  train, _ = mini
  return classifiers.train_classifier(
      jax.random.key(0), train['m4'], train['label'], epochs=10,
      batch_size=BATCH, lr=LR, arch='official')


def _torch_style_forward(p, x):
  """NCHW / OIHW reference with PyTorch's `view(N, -1)` flatten."""
  conv = lambda h, k, b: jax.lax.conv_general_dilated(
      h, jnp.transpose(k, (3, 2, 0, 1)), (2, 2), ((1, 1), (1, 1)),
      dimension_numbers=('NCHW', 'OIHW', 'NCHW')) + b[None, :, None, None]
  h = jnp.transpose(x, (0, 3, 1, 2))
  h = jax.nn.relu(conv(h, p['conv_0']['kernel'], p['conv_0']['bias']))
  h = jax.nn.relu(conv(h, p['conv_1']['kernel'], p['conv_1']['bias']))
  h = h.reshape((h.shape[0], -1))  # [N, 20 * 7 * 7], C,H,W order
  h = jax.nn.relu(h @ p['fc_0']['kernel'] + p['fc_0']['bias'])
  return jax.nn.log_softmax(h @ p['fc_1']['kernel'] + p['fc_1']['bias'])


def test_architecture_matches_official():
  params = classifiers.init(jax.random.key(0))
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {
      'conv_0': {'kernel': (4, 4, 3, 10), 'bias': (10,)},
      'conv_1': {'kernel': (4, 4, 10, 20), 'bias': (20,)},
      'fc_0': {'kernel': (980, 128), 'bias': (128,)},
      'fc_1': {'kernel': (128, 10), 'bias': (10,)},
  }
  assert sum(x.size for x in jax.tree.leaves(params)) == 130_568
  # PyTorch default init: U(+-1/sqrt(fan_in)) for kernels and biases. A
  # key-independent check: the bound holds; max |leaf| reaches t * bound with
  # t = 1e-6 ** (1 / n) (for a correct init P(max < t * bound) = t^n =
  # 1e-6); leaves of >= 1,000 elements pass a KS test against the uniform.
  for name, fan_in in (('conv_0', 48), ('conv_1', 160), ('fc_0', 980),
                       ('fc_1', 128)):
    bound = 1 / np.sqrt(fan_in)
    for leaf in params[name].values():
      leaf = np.asarray(leaf, np.float64).ravel()
      assert np.abs(leaf).max() <= bound
      assert np.abs(leaf).max() > 1e-6 ** (1 / leaf.size) * bound
      if leaf.size >= 1000:
        assert stats.kstest(leaf, stats.uniform(-bound, 2 * bound).cdf
                            ).pvalue > 1e-6, name
  x = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 3), np.uint8)
  lp = classifiers.log_probs(params, x)
  assert lp.shape == (6, 10)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  # uint8 input == float input / 255; C,H,W flatten as in PyTorch.
  xf = x.astype(np.float32) / 255
  np.testing.assert_allclose(lp, classifiers.log_probs(params, xf), atol=1e-6)
  np.testing.assert_allclose(lp, _torch_style_forward(params, xf), atol=1e-5)
  feats = classifiers.features(params, x)
  assert feats.shape == (6, 128) and float(feats.min()) >= 0.0
  out = classifiers.classify({'m0': params}, 'm0', x)
  np.testing.assert_array_equal(out, lp)


def test_dropout2d_drops_whole_channels():
  params = classifiers.init(jax.random.key(0))
  x = np.random.default_rng(1).random((4, 28, 28, 3)).astype(np.float32)
  _, state = classifier_nets.ClfImg().apply(
      {'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)},
      capture_intermediates=lambda m, _: isinstance(m, nn.Dropout))
  inter = state['intermediates']
  for name in ('Dropout_0', 'Dropout_1'):
    h = np.asarray(inter[name]['__call__'][0])  # [N, H, W, C]
    zero = np.all(h == 0, axis=(1, 2))  # [N, C] whole channel dropped
    kept = np.any(h != 0, axis=(1, 2))
    assert np.all(zero | kept) and zero.any() and kept.any()
    assert np.all(np.mean(h == 0, axis=(1, 2))[kept] < 0.5)
  # Eval mode is deterministic.
  a = classifiers.log_probs(params, x)
  np.testing.assert_array_equal(a, classifiers.log_probs(params, x))


def test_trains_above_90_percent_on_mini(mini, trained):
  _, test = mini
  acc = classifiers.accuracy(trained, test['m4'], test['label'],
                             batch_size=300)  # 1000 = 3 x 300 + padded 100
  assert acc > 0.9, acc
  pred = np.asarray(jnp.argmax(classifiers.log_probs(trained, test['m4']), -1))
  assert acc == pytest.approx(np.mean(pred == test['label']), abs=1e-9)


def test_training_is_deterministic_for_a_key(mini):
  train, _ = mini
  run = lambda seed: classifiers.train_classifier(
      jax.random.key(seed), train['m4'], train['label'], epochs=1,
      batch_size=BATCH, lr=LR, arch='official')
  a, b, c = run(5), run(5), run(6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a['fc_1']['kernel'], c['fc_1']['kernel'])


def test_wide_training_is_deterministic_for_a_key(mini):
  train, _ = mini
  # The default ('wide') recipe also draws translation keys.
  run = lambda seed: classifiers.train_classifier(
      jax.random.key(seed), train['m4'][:256], train['label'][:256],
      epochs=1, batch_size=32)
  a, b, c = run(5), run(5), run(6)
  assert classifiers.arch_of(a) == 'wide'
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a['fc_1']['kernel'], c['fc_1']['kernel'])


def test_save_load_round_trip(tmp_path, trained):
  meta = {'test_accuracy': {'m4': 0.93}, 'config': {'epochs': 10}}
  classifiers.save_classifiers(tmp_path / 'clf', {'m4': trained},
                               metadata=meta)
  loaded, got_meta = classifiers.load_classifiers(tmp_path / 'clf')
  assert list(loaded) == ['m4']
  assert got_meta['test_accuracy'] == {'m4': 0.93}
  assert got_meta['modalities'] == ['m4']
  for x, y in zip(jax.tree.leaves(trained), jax.tree.leaves(loaded['m4'])):
    np.testing.assert_array_equal(x, y)
  # Saving again over the same folder replaces the checkpoints.
  classifiers.save_classifiers(tmp_path / 'clf', {'m4': loaded['m4']})
  classifiers.load_classifiers(tmp_path / 'clf', names=['m4'])


def test_missing_classifiers_error_names_directory_and_command(tmp_path):
  missing = tmp_path / 'no_clfs'
  with pytest.raises(FileNotFoundError) as err:
    classifiers.load_classifiers(missing)
  msg = str(err.value)
  assert str(missing) in msg
  assert 'python -m mmvaeplus_jax.tools.classifiers' in msg
  assert f'--out {missing}' in msg
  # A folder holding some modalities but not the requested one.
  params = classifiers.init(jax.random.key(0))
  classifiers.save_classifiers(tmp_path / 'some', {'m0': params})
  with pytest.raises(FileNotFoundError, match=r"\['m3'\]"):
    classifiers.load_classifiers(tmp_path / 'some', names=['m0', 'm3'])


def test_command_line(tmp_path, mini_dir, mini, capsys):
  out = tmp_path / 'clfs'
  classifiers_cli.main([
      '--dataset', 'mini', '--data_dir', str(mini_dir), '--out', str(out),
      '--epochs', '1', '--batch_size', str(BATCH), '--lr', str(LR),
      '--arch', 'official'])  # the fast one; 'wide': test_wide_*
  meta = json.loads((out / classifiers.METADATA_FILE).read_text())
  names = [f'm{i}' for i in range(5)]
  assert meta['modalities'] == names
  assert meta['config']['epochs'] == 1 and meta['config']['num_train'] == 4000
  # The architecture and the rest of its recipe, recorded.
  assert meta['archs'] == {n: 'official' for n in names}
  assert meta['config']['arch'] == 'official'
  assert meta['config']['lr_schedule'] == 'constant'
  assert meta['config']['max_shift'] == 0
  assert meta['config']['lr'] == LR and meta['config']['batch_size'] == BATCH
  assert set(meta['test_accuracy']) == set(names)
  assert min(meta['test_accuracy'].values()) > 0.15  # one epoch: above 0.1
  assert 'm4: test accuracy' in capsys.readouterr().out
  loaded, _ = classifiers.load_classifiers(out)
  _, test = mini
  acc = classifiers.accuracy(loaded['m2'], test['m2'], test['label'])
  assert acc == pytest.approx(meta['test_accuracy']['m2'])


# ------------------------------------------------- the 'wide' architecture


def test_wide_architecture_shapes_and_features():
  params = classifiers.init(jax.random.key(0), arch='wide')
  assert jax.tree.map(jnp.shape, params) == {
      'conv_0': {'kernel': (3, 3, 3, 32), 'bias': (32,)},
      'conv_1': {'kernel': (3, 3, 32, 64), 'bias': (64,)},
      'conv_2': {'kernel': (3, 3, 64, 64), 'bias': (64,)},
      'fc_0': {'kernel': (3136, 128), 'bias': (128,)},
      'fc_1': {'kernel': (128, 10), 'bias': (10,)},
  }
  # LeCun-uniform kernels U(+-sqrt(3 / fan_in)) (near the bound for >= 864
  # draws), zero biases.
  for name, fan_in in (('conv_0', 27), ('conv_1', 288), ('conv_2', 576),
                       ('fc_0', 3136), ('fc_1', 128)):
    kernel = np.abs(np.asarray(params[name]['kernel']))
    assert 0.99 * np.sqrt(3 / fan_in) < kernel.max() <= np.sqrt(3 / fan_in)
    np.testing.assert_array_equal(params[name]['bias'], 0.0)
  assert classifiers.arch_of(params) == 'wide'
  assert classifiers.arch_of(classifiers.init(jax.random.key(0))) == (
      'official')
  assert classifiers.image_shape_of(params) == (28, 28, 3)
  x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3), np.uint8)
  lp = classifiers.log_probs(params, x)
  assert lp.shape == (5, 10)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      lp, classifiers.log_probs(params, x.astype(np.float32) / 255),
      atol=1e-6)
  feats = classifiers.features(params, x)
  assert feats.shape == (5, classifier_nets.FEATURE_DIM)
  assert float(feats.min()) >= 0.0
  np.testing.assert_array_equal(
      classifiers.classify({'m0': params}, 'm0', x), lp)
  # The module itself, by name; eval mode ignores dropout.
  direct = classifier_nets.MODULES['wide'].apply({'params': params}, x)
  np.testing.assert_allclose(direct, lp, atol=1e-6)
  with pytest.raises(ValueError, match='got images of shape'):
    classifiers.log_probs(params, np.zeros((2, 28, 28, 1), np.uint8))


def test_wide_trains_and_round_trips_with_official(tmp_path, mini):
  train, _ = mini
  x, y = train['m3'][:128], train['label'][:128]
  # The default architecture and recipe (one-cycle, translations), small.
  wide = classifiers.train_classifier(
      jax.random.key(0), x, y, epochs=1, batch_size=32)
  assert classifiers.arch_of(wide) == 'wide'
  official = classifiers.init(jax.random.key(1), arch='official')
  classifiers.save_classifiers(tmp_path / 'clf', {'m3': wide, 'm0': official})
  meta = json.loads((tmp_path / 'clf' / classifiers.METADATA_FILE
                     ).read_text())
  assert meta['archs'] == {'m3': 'wide', 'm0': 'official'}
  loaded, _ = classifiers.load_classifiers(tmp_path / 'clf')
  assert classifiers.arch_of(loaded['m3']) == 'wide'
  assert classifiers.arch_of(loaded['m0']) == 'official'
  for a, b in (('m3', wide), ('m0', official)):
    for u, v in zip(jax.tree.leaves(b), jax.tree.leaves(loaded[a])):
      np.testing.assert_array_equal(u, v)
  imgs = x[:7]
  np.testing.assert_array_equal(
      classifiers.classify(loaded, 'm3', imgs),
      classifiers.log_probs(wide, imgs))
  np.testing.assert_array_equal(
      classifiers.features(loaded['m0'], imgs),
      classifiers.features(official, imgs))


def test_old_folder_without_archs_loads_official(tmp_path):
  official = classifiers.init(jax.random.key(2))
  classifiers.save_classifiers(tmp_path / 'old', {'m1': official})
  meta_path = tmp_path / 'old' / classifiers.METADATA_FILE
  meta = json.loads(meta_path.read_text())
  del meta['archs'], meta['image_shapes']  # the oldest format
  meta_path.write_text(json.dumps(meta))
  loaded, got = classifiers.load_classifiers(tmp_path / 'old')
  assert 'archs' not in got
  assert classifiers.arch_of(loaded['m1']) == 'official'
  for u, v in zip(jax.tree.leaves(official), jax.tree.leaves(loaded['m1'])):
    np.testing.assert_array_equal(u, v)


def test_unknown_arch_is_one_clear_error(tmp_path):
  x = np.zeros((4, 28, 28, 3), np.uint8)
  y = np.zeros((4,), np.int32)
  with pytest.raises(ValueError, match=r"unknown classifier architecture"
                     r" 'resnet'.*\['official', 'wide'\]"):
    classifiers.train_classifier(jax.random.key(0), x, y, epochs=1,
                                 arch='resnet')
  with pytest.raises(ValueError, match="unknown classifier architecture"):
    classifiers.init(jax.random.key(0), arch='resnet')
  # A name of another image shape is refused too.
  with pytest.raises(ValueError, match="'digit'"):
    classifiers.check_arch('digit', (28, 28, 3))
  # A folder whose classifiers.json names an unknown architecture.
  classifiers.save_classifiers(tmp_path / 'c',
                               {'m0': classifiers.init(jax.random.key(0))})
  meta_path = tmp_path / 'c' / classifiers.METADATA_FILE
  meta = json.loads(meta_path.read_text())
  meta['archs'] = {'m0': 'resnet'}
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="unknown classifier architecture"):
    classifiers.load_classifiers(tmp_path / 'c')
  with pytest.raises(SystemExit):  # argparse: --lr_schedule choices
    classifiers_cli.main(['--data_dir', str(tmp_path), '--out', str(tmp_path),
                          '--lr_schedule', 'step'])


def test_shift_images_moves_pixels():
  x = np.arange(2 * 5 * 6 * 1, dtype=np.float32).reshape((2, 5, 6, 1))
  np.testing.assert_array_equal(
      classifier_training.shift_images(x, np.zeros((2, 2), np.int32)), x)
  out = np.asarray(classifier_training.shift_images(
      x, np.array([[1, 2], [-2, 0]])))
  # Image 0: content moves 1 down and 2 right; edges replicated.
  np.testing.assert_array_equal(out[0, 1:, 2:], x[0, :-1, :-2])
  np.testing.assert_array_equal(out[0, 0, 2:], x[0, 0, :-2])
  np.testing.assert_array_equal(out[0, 1:, 0], x[0, :-1, 0])
  # Image 1: content moves 2 up; the last rows repeat the last row.
  np.testing.assert_array_equal(out[1, :3], x[1, 2:])
  np.testing.assert_array_equal(out[1, 3], x[1, 4])
  np.testing.assert_array_equal(out[1, 4], x[1, 4])
  # dtype kept (uint8 images stay uint8).
  u = np.zeros((1, 28, 28, 3), np.uint8)
  assert classifier_training.shift_images(
      u, np.ones((1, 2), np.int32)).dtype == np.uint8


def test_random_translate_key_determinism_and_range():
  x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 3), np.uint8)
  a = classifier_training.random_translate(jax.random.key(0), x, 2)
  b = classifier_training.random_translate(jax.random.key(0), x, 2)
  c = classifier_training.random_translate(jax.random.key(1), x, 2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(
      classifier_training.random_translate(jax.random.key(0), x, 0), x)
  # Every output is one of the (2 * 2 + 1)^2 shifts of its input.
  shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
  cands = np.stack([np.asarray(classifier_training.shift_images(
      x, np.tile(np.array([s]), (64, 1)))) for s in shifts])  # [25, N, ...]
  match = np.all(cands == np.asarray(a)[None], axis=(2, 3, 4))  # [25, N]
  assert match.any(axis=0).all()
  assert len(set(np.argmax(match, axis=0).tolist())) > 5  # varied shifts
  with pytest.raises(ValueError, match='max_shift'):
    classifier_training.random_translate(jax.random.key(0), x, -1)


def test_standardize_is_contrast_invariant():
  x = np.random.default_rng(3).random((3, 28, 28, 3)).astype(np.float32)
  z = np.asarray(classifier_nets.standardize(x))
  np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=(1, 2, 3)), 1.0, atol=1e-4)
  np.testing.assert_allclose(classifier_nets.standardize(0.2 * x + 0.4), z,
                             atol=1e-4)
  # A constant image stays finite (zeros).
  c = np.full((1, 28, 28, 3), 0.5, np.float32)
  np.testing.assert_array_equal(classifier_nets.standardize(c), 0.0)
  # uint8 input is divided by 255 first.
  u = (x * 255).astype(np.uint8)
  np.testing.assert_allclose(classifier_nets.standardize(u),
                             classifier_nets.standardize(u / 255.0), atol=1e-5)
