"""Tests of the CUB species classifiers (`evaluation/species_nets.py`, their
dispatch in `classifier_nets`, storage in `classifiers`, training in
`classifier_training`) and of the coherence evaluator on a CUB model with
them. The real trained set (../shared/data, `tools/classifiers.py`) is only
read by the last test, skipped without the data."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cub_data_test
from mmvaeplus_jax import models
from mmvaeplus_jax.configs import cub as cub_configs
from mmvaeplus_jax.evaluation import classifier_training
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import species_nets
from mmvaeplus_jax.input import captions
from mmvaeplus_jax.tools import classifiers as classifiers_tool

C = 23  # CUB-23 species
V = 509  # the cub23 vocabulary
L = captions.MAX_LENGTH
SHARED = cub_data_test.SHARED_CUB.parent  # ../shared/data beside the checkout


def _ids(rng, n, vocab=V):
  return rng.integers(0, vocab, (n, L)).astype(np.int32)


def test_output_shapes_and_normalised_log_probs():
  rng = np.random.default_rng(0)
  img = classifiers.init(jax.random.key(0), (64, 64, 3), 'species_image', C)
  cap = classifiers.init(jax.random.key(1), (L,), 'species_caption', C, V)
  x = rng.integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
  for params, inp in ((img, x), (cap, _ids(rng, 3))):
    lp = classifiers.log_probs(params, inp)
    assert lp.shape == (3, C)
    # log_softmax: each row sums to 1 up to float32 rounding over C terms.
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)
    assert classifiers.features(params, inp).shape == (3, 128)
  assert classifiers.arch_of(img) == 'species_image'
  assert classifiers.arch_of(cap) == 'species_caption'
  assert classifiers.num_classes_of(cap) == C
  assert classifiers.vocab_size_of(cap) == V
  assert classifiers.vocab_size_of(img) is None


def test_caption_ids_and_their_logits_agree_and_eos_ends_the_caption():
  rng = np.random.default_rng(1)
  cap = classifiers.init(jax.random.key(2), (L,), 'species_caption', C, V)
  ids = _ids(rng, 4)
  # Any logits whose argmax is `ids` decode to the same caption: the same
  # log-probs, bit for bit (the same one-hot input).
  logits = (jax.nn.one_hot(ids, V) * 5.0
            + rng.uniform(0, 1, (4, L, V)).astype(np.float32))
  np.testing.assert_array_equal(classifiers.log_probs(cap, ids),
                                classifiers.log_probs(cap, logits))
  # Tokens after the first <eos> are read as <pad>.
  ids[:, 10] = captions.EOS_ID
  other = ids.copy()
  other[:, 11:] = rng.integers(0, V, (4, L - 11))
  padded = ids.copy()
  padded[:, 11:] = captions.PAD_ID
  want = np.asarray(classifiers.log_probs(cap, padded))
  np.testing.assert_array_equal(classifiers.log_probs(cap, other), want)
  assert not np.array_equal(  # and the ids before it do matter
      classifiers.log_probs(cap, np.roll(padded, 1, axis=0)), want)


def test_bad_inputs_and_sizes_are_one_clear_error():
  cap = classifiers.init(jax.random.key(0), (L,), 'species_caption', C, V)
  with pytest.raises(ValueError, match=r'int ids \[N, 32\] or float logits'
                     r' \[N, 32, 509\]'):
    classifiers.log_probs(cap, jnp.zeros((2, L, V + 1)))
  with pytest.raises(ValueError, match='int ids'):
    classifiers.log_probs(cap, jnp.zeros((2, L)))  # float "ids"
  img = classifiers.init(jax.random.key(0), (64, 64, 3), 'species_image', C)
  with pytest.raises(ValueError, match=r'images \[N, 64, 64, 3\]'):
    classifiers.log_probs(img, jnp.zeros((2, 28, 28, 3)))
  with pytest.raises(ValueError, match='num_classes'):
    classifiers.init(jax.random.key(0), (64, 64, 3), 'species_image')
  with pytest.raises(ValueError, match='vocab_size'):
    classifiers.init(jax.random.key(0), (L,), 'species_caption', C)
  with pytest.raises(ValueError, match='10 classes'):
    classifiers.init(jax.random.key(0), (28, 28, 3), 'wide', C)


def test_class_count_and_vocabulary_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  clfs = {'image': classifiers.init(jax.random.key(0), (64, 64, 3),
                                    'species_image', 7),
          'caption': classifiers.init(jax.random.key(1), (L,),
                                      'species_caption', 7, 40)}
  classifiers.save_classifiers(tmp_path, clfs, metadata={'note': 1})
  meta = json.loads((tmp_path / classifiers.METADATA_FILE).read_text())
  assert meta['num_classes'] == {'image': 7, 'caption': 7}
  assert meta['vocab_sizes'] == {'caption': 40}
  got, got_meta = classifiers.load_classifiers(tmp_path)
  assert got_meta['note'] == 1
  ids = _ids(rng, 3, 40)
  x = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
  for name, inp in (('image', x), ('caption', ids)):
    np.testing.assert_array_equal(classifiers.classify(got, name, inp),
                                  classifiers.classify(clfs, name, inp))
    assert classifiers.num_classes_of(got[name]) == 7


def _separable_captions(rng, n, num_classes, vocab):
  """Random-word captions; class c has word 3 + c at one random position
  before the <eos> at a random length (the rest <pad>)."""
  labels = rng.integers(0, num_classes, n)
  ids = rng.integers(3 + num_classes, vocab, (n, L)).astype(np.int32)
  lengths = rng.integers(5, L, n)
  for i in range(n):
    ids[i, rng.integers(0, lengths[i])] = 3 + labels[i]
    ids[i, lengths[i]] = captions.EOS_ID
    ids[i, lengths[i] + 1:] = captions.PAD_ID
  return ids, labels


def test_caption_training_learns_a_separable_task():
  rng = np.random.default_rng(3)
  k, vocab = 5, 60
  x, y = _separable_captions(rng, 640, k, vocab)
  tx, ty = _separable_captions(rng, 400, k, vocab)
  params = classifier_training.train_classifier(
      jax.random.key(0), x, y, arch='species_caption', vocab_size=vocab,
      epochs=4)
  assert classifiers.num_classes_of(params) == k  # from the labels
  # Chance is 0.2; a working trainer finds the class word (> 0.9 with 400
  # test examples is > 10 binomial standard errors above chance).
  assert classifier_training.accuracy(params, tx, ty) > 0.9


def _separable_images(rng, n):
  """Noisy 64x64 images of 3 classes: the brightest channel is the class."""
  labels = rng.integers(0, 3, n)
  x = rng.uniform(0, 0.5, (n, 64, 64, 3)).astype(np.float32)
  x[np.arange(n), :, :, labels] += 0.5
  return x, labels


def test_image_training_learns_a_separable_task():
  rng = np.random.default_rng(4)
  x, y = _separable_images(rng, 128)
  tx, ty = _separable_images(rng, 200)
  params = classifier_training.train_classifier(
      jax.random.key(0), x, y, arch='species_image', epochs=6)
  assert classifiers.num_classes_of(params) == 3
  assert classifier_training.accuracy(params, tx, ty) > 0.9  # chance 1/3


def test_random_flip_mirrors_half_the_images():
  x = np.arange(200 * 2 * 3).reshape(200, 1, 2, 3).astype(np.float32)
  out = np.asarray(classifier_training.random_flip(jax.random.key(0), x))
  same = np.all(out == x, axis=(1, 2, 3))
  mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)
  assert 60 < mirrored.sum() < 140  # Binomial(200, 1/2): +- 5.6 sd


# Slow: compiles a CUB model's conditional and unconditional counts (~100 s
# on the busy 2-core CPU).
@pytest.mark.slow
def test_coherence_on_a_tiny_cub_model_with_species_classifiers():
  c = cub_configs.get_config('smoke,vocab_size=40')
  model = models.get_model(c.model)
  rng = np.random.default_rng(5)
  n = 5
  data = {'image': rng.uniform(size=(n, 64, 64, 3)).astype(np.float32),
          'caption': _ids(rng, n, 40)}
  params = model.init(jax.random.key(0), dict(data))
  data['label'] = rng.integers(0, C, n)
  clfs = {'image': classifiers.init(jax.random.key(1), (64, 64, 3),
                                    'species_image', C),
          'caption': classifiers.init(jax.random.key(2), (L,),
                                      'species_caption', C, 40)}
  # The caption decoder's output (logits [N, 32, V]) is what the caption
  # classifier gets for generated captions.
  metrics = coherence.CoherenceEvaluator(
      model, classifiers.classify, clfs, data, key=jax.random.key(3),
      batch_size=4, num_unconditional=4).run(params)
  pairs = [f'coherence/cond/{s}->{t}' for s in model.names
           for t in model.names]
  for name in pairs + ['coherence/cond/mean', 'coherence/uncond']:
    # Counts over 5 examples (4 unconditional samples): multiples of 1/n.
    v = metrics[name]
    total = 4 if name.endswith('uncond') else n
    assert 0.0 <= v <= 1.0
    assert abs(v * total - round(v * total)) < 1e-6
  # FD_clf's feature path on the same decoder outputs.
  u = jnp.zeros((2, c.model.dim_w + c.model.dim_z))
  logits = model.decode(params, 'caption', u[None])[0]
  assert logits.shape == (2, L, 40)
  assert classifiers.features(clfs['caption'], logits).shape == (2, 128)
  image = model.decode(params, 'image', u[None])[0]
  assert classifiers.features(clfs['image'], image).shape == (2, 128)


# A trained CUB-23 set (python -m mmvaeplus_jax.tools.classifiers --dataset
# cub23 --out DIR), named by MMVAEPLUS_CUB_CLASSIFIERS; not committed.
TRAINED = pathlib.Path(os.environ.get('MMVAEPLUS_CUB_CLASSIFIERS', '') or
                       '/nonexistent')


@pytest.mark.skipif(not SHARED.is_dir(),
                    reason=f'needs the shared data dir {SHARED}')
@pytest.mark.skipif(not (TRAINED / classifiers.METADATA_FILE).is_file(),
                    reason='needs a trained CUB-23 classifier set named by'
                    ' MMVAEPLUS_CUB_CLASSIFIERS (python -m'
                    ' mmvaeplus_jax.tools.classifiers --dataset cub23 ...)')
def test_trained_cub23_classifiers_beat_chance():
  clfs, meta = classifiers.load_classifiers(TRAINED)
  assert meta['num_classes'] == {'image': C, 'caption': C}
  # Chance is 1/23 = 0.043.
  assert min(meta['test_accuracy'].values()) > 0.15
  assert species_nets.INPUT_SHAPES[classifiers.arch_of(clfs['caption'])] == (
      L,)


@pytest.mark.skipif(not SHARED.is_dir(),
                    reason=f'needs the shared data dir {SHARED}')
def test_command_line_refuses_arch_for_cub():
  assert classifiers_tool.dataset_name('cub23') == 'cub_image_captions/cub23'
  assert classifiers_tool.dataset_name('rebuilt') == 'rebuilt'
  with pytest.raises(ValueError, match='--arch is fixed for CUB'):
    classifiers_tool.main([
        '--dataset', 'cub23', '--data_dir', '~/tensorflow_datasets',
        '--manual_dir', str(SHARED), '--out', '/nonexistent', '--arch',
        'wide'])
