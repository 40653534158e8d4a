"""The caption figures' layout and tables (`evaluation/caption_figures.py`)
on synthetic arrays: sizes follow the inputs, text is drawn, tables hold
every caption."""

import numpy as np

from mmvaeplus_jax.evaluation import caption_figures as cf
from mmvaeplus_jax.input import captions

VOCAB = captions.Vocabulary(captions.SPECIAL_TOKENS + (
    'a', 'red', 'bird', '|', '.'))


def test_text_cell_draws_and_cuts():
  empty = cf.text_cell([''], 200, 40)
  assert empty.shape == (40, 200, 3) and (empty == 255).all()
  cell = cf.text_cell(['a red bird'], 200, 40)
  assert (cell < 128).any()  # some dark pixels: text
  long = cf.text_cell(['word ' * 400], 100, 40)
  assert long.shape == (40, 100, 3)


def test_grids_have_one_row_per_example():
  n, s = 3, 2
  real = np.random.default_rng(0).uniform(size=(n, 64, 64, 3))
  gen = np.random.default_rng(1).uniform(size=(s, n, 64, 64, 3))
  grid = cf.caption_to_image(['a red bird'] * n, real, gen)
  side = 64 * cf.ZOOM
  assert grid.shape[0] == cf.PAD + n * (side + cf.PAD)
  assert grid.shape[1] == cf.PAD + cf.TEXT_WIDTH + (1 + s) * (
      side + cf.PAD) + cf.PAD
  # The first generated image sits pixel for pixel in row 0.
  top = cf.PAD
  left = cf.PAD + cf.TEXT_WIDTH + cf.PAD + side + cf.PAD
  want = (np.round(gen[0, 0] * 255).astype(np.uint8).repeat(cf.ZOOM, 0)
          .repeat(cf.ZOOM, 1))
  np.testing.assert_array_equal(grid[top:top + side, left:left + side], want)
  table = cf.image_to_caption(real, [['real: a', '1: b']] * n)
  assert table.shape[0] >= n * side


def test_tables_hold_every_caption():
  ids = lambda line: captions.encode(line, VOCAB)
  data = {'caption': np.stack([ids('a red bird .'), ids('a | bird .')]),
          'image': np.zeros((2, 64, 64, 3), np.uint8)}
  out = {'from_image': np.stack([data['caption'][::-1]] * 3),
         'sampled': data['caption'],
         'prior_caption': data['caption'][:1]}
  md = cf.caption_tables(data, VOCAB, out, ('image', 'caption'))
  rows = md['image_to_caption.md'].strip().split('\n')
  assert len(rows) == 6  # title, blank, header, rule, 2 rows
  assert rows[-2].startswith('| 0 | a red bird . | a \\| bird . |')
  assert rows[-2].count('a \\| bird .') == 3
  assert '| 0 | a red bird . |' in md['unconditional_captions.md']
