"""Tests of evaluation.classifiers: architecture, training, storage, CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.input import builders

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
      batch_size=BATCH, lr=LR)


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
  _, state = classifiers.ClfImg().apply(
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
      batch_size=BATCH, lr=LR)
  a, b, c = run(5), run(5), run(6)
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
  assert 'python -m mmvaeplus_jax.evaluation.classifiers' in msg
  assert f'--out {missing}' in msg
  # A folder holding some modalities but not the requested one.
  params = classifiers.init(jax.random.key(0))
  classifiers.save_classifiers(tmp_path / 'some', {'m0': params})
  with pytest.raises(FileNotFoundError, match=r"\['m3'\]"):
    classifiers.load_classifiers(tmp_path / 'some', names=['m0', 'm3'])


def test_command_line(tmp_path, mini_dir, mini, capsys):
  out = tmp_path / 'clfs'
  classifiers.main([
      '--dataset', 'mini', '--data_dir', str(mini_dir), '--out', str(out),
      '--epochs', '1', '--batch_size', str(BATCH), '--lr', str(LR)])
  meta = json.loads((out / classifiers.METADATA_FILE).read_text())
  names = [f'm{i}' for i in range(5)]
  assert meta['modalities'] == names
  assert meta['config']['epochs'] == 1 and meta['config']['num_train'] == 4000
  assert set(meta['test_accuracy']) == set(names)
  assert min(meta['test_accuracy'].values()) > 0.15  # one epoch: above 0.1
  assert 'm4: test accuracy' in capsys.readouterr().out
  loaded, _ = classifiers.load_classifiers(out)
  _, test = mini
  acc = classifiers.accuracy(loaded['m2'], test['m2'], test['label'])
  assert acc == pytest.approx(meta['test_accuracy']['m2'])
