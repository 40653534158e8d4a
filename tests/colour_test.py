"""The weight-free colour coherence (`evaluation/colour.py`) and the caption
helpers it reads (`evaluation/text.py`): HSV against `colorsys`, the pixel
rules on named colours, crops, the AUROC against a pairwise count, the
per-colour coherence, caption mentions and decoding."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.evaluation import colour
from mmvaeplus_jax.evaluation import text
from mmvaeplus_jax.input import captions

VOCAB = captions.Vocabulary(captions.SPECIAL_TOKENS + (
    'a', 'bird', 'with', 'red', 'gray', 'grey', 'wings', 'blue', 'and', '.'))


def _ids(line):
  return captions.encode(line, VOCAB)[None]


def test_hsv_matches_colorsys():
  rng = np.random.default_rng(0)
  px = rng.uniform(size=(500, 3)).astype(np.float64)
  px[:20] = px[:20, :1]  # greys: hue 0
  h, s, v = colour.hsv(px)
  want = np.array([colorsys.rgb_to_hsv(*p) for p in px])
  np.testing.assert_allclose(h, 360 * want[:, 0], atol=1e-9)
  np.testing.assert_allclose(s, want[:, 1], atol=1e-12)
  np.testing.assert_allclose(v, want[:, 2], atol=1e-12)
  hj, sj, vj = colour.hsv(jnp.asarray(px, jnp.float32))
  # float32: |error| <= a few ulps of 360 in the hue.
  np.testing.assert_allclose(hj, h, atol=360 * 1e-5)
  np.testing.assert_allclose(vj, v, atol=1e-6)


@pytest.mark.parametrize('rgb,name', [
    ((1, 0, 0), 'red'), ((1, 0.5, 0), 'orange'), ((1, 1, 0), 'yellow'),
    ((0, 0.8, 0), 'green'), ((0, 0, 1), 'blue'), ((0.6, 0.2, 0.8), 'purple'),
    ((0.5, 0.3, 0.1), 'brown'), ((0.05, 0.05, 0.05), 'black'),
    ((0.9, 0.9, 0.9), 'white'), ((0.5, 0.5, 0.5), 'grey'),
    ((0.9, 0.1, 0.3), 'red')])
def test_named_colours(rgb, name):
  got = colour.pixel_colours(np.asarray(rgb, np.float32)[None, None])
  assert colour.COLOURS[int(got[0, 0])] == name
  assert int(colour.pixel_colours(jnp.asarray(rgb)[None, None])[0, 0]) == int(
      got[0, 0])


def test_fractions_count_the_central_crop():
  img = np.zeros((1, 8, 8, 3), np.float32)
  img[..., 2] = 1.0  # blue border
  img[:, 2:6, 2:4] = (1, 0, 0)  # the crop's left half red
  img[:, 2:6, 4:6] = (1, 1, 0)  # right half yellow
  f = colour.colour_fractions(img, crop=0.5)
  idx = {c: i for i, c in enumerate(colour.COLOURS)}
  assert f.shape == (1, len(colour.COLOURS))
  np.testing.assert_allclose(f[0, idx['red']], 0.5)
  np.testing.assert_allclose(f[0, idx['yellow']], 0.5)
  assert f[0, idx['blue']] == 0
  full = colour.colour_fractions(img, crop=1.0)
  np.testing.assert_allclose(full[0, idx['blue']], 48 / 64)
  np.testing.assert_allclose(f.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(colour.colour_fractions(jnp.asarray(img), 0.5), f)


def test_auroc_is_the_pairwise_probability():
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 5, 200).astype(float)  # many ties
  labels = rng.uniform(size=200) < 0.3 + 0.1 * scores
  pos, neg = scores[labels], scores[~labels]
  want = ((pos[:, None] > neg[None]).sum()
          + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
  assert colour.auroc(scores, labels) == pytest.approx(want, abs=1e-12)
  assert np.isnan(colour.auroc(scores, np.zeros(200, bool)))


def test_coherence_counts_only_used_colours():
  n, c = 100, len(colour.COLOURS)
  rng = np.random.default_rng(2)
  mentions = rng.uniform(size=(n, c)) < 0.5
  mentions[:, 0] = False  # never named: not counted
  fractions = mentions * 0.5 + rng.uniform(size=(n, c)) * 0.1
  counted = colour.counted_colours(mentions, min_count=20)
  assert not counted[0] and counted[1:].all()
  perfect = colour.coherence(fractions, mentions, counted)
  assert perfect['mean'] == 1.0 and colour.COLOURS[0] not in perfect
  flipped = colour.coherence(-fractions, mentions, counted)
  assert flipped['mean'] == 0.0
  # Generated captions that never name a colour carry no information.
  silent = colour.coherence(fractions, np.zeros_like(mentions), counted)
  assert silent['mean'] == 0.5


def test_mentions_read_words_before_eos():
  ids = np.concatenate([
      _ids('a bird with gray wings .'),
      _ids('a bird with red and blue wings .'),
      _ids('a bird with purple wings .'),  # purple: not in VOCAB
  ])
  ids[2, 3] = captions.EOS_ID  # a second caption cut before 'purple'
  ids[2, 5] = VOCAB.ids['red']  # after <eos>: ignored
  sets = [('red',), ('grey', 'gray'), ('blue',), ('purple',)]
  got = text.mentions(ids, VOCAB, sets)
  np.testing.assert_array_equal(got, [[0, 1, 0, 0], [1, 0, 1, 0],
                                      [0, 0, 0, 0]])


def test_decoding_logits():
  ids = np.concatenate([_ids('a red bird .'), _ids('blue wings .')])
  logits = 30.0 * jax.nn.one_hot(ids, VOCAB.size)  # [2, 32, V]
  np.testing.assert_array_equal(text.argmax_ids(np.asarray(logits)), ids)
  np.testing.assert_array_equal(text.argmax_ids(logits), ids)
  # exp(-30) per other word: a draw is the argmax with prob > 1 - 1e-10.
  np.testing.assert_array_equal(
      text.sample_ids(jax.random.key(0), logits), ids)
  assert text.to_texts(ids, VOCAB) == ['a red bird .', 'blue wings .']
  flat = jnp.zeros((4000, 1, 3))  # uniform over 3 words
  draws = np.asarray(text.sample_ids(jax.random.key(1), flat))[:, 0]
  # each count ~ Binomial(4000, 1/3): std 30, 5 std margin.
  assert np.all(np.abs(np.bincount(draws, minlength=3) - 4000 / 3) < 150)
  with pytest.raises(ValueError, match='temperature'):
    text.sample_ids(jax.random.key(0), logits, temperature=0)
  with pytest.raises(ValueError, match='outside the vocabulary'):
    text.to_texts(ids + VOCAB.size, VOCAB)
