"""The caption figures' layout and tables (`evaluation/caption_figures.py`)
on synthetic arrays: sizes follow the inputs, text is drawn, tables hold
every caption."""

import numpy as np
import pytest

from mmvaeplus_jax.evaluation import caption_figures as cf
from mmvaeplus_jax.input import captions

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

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


def test_source_figures_put_each_dimension_in_a_column():
  """Fig. 16 / 21 layout: a column per traversed dimension (alpha), a row
  per value (draw), each image at its cell, under a text title."""
  rng = np.random.default_rng(2)
  dz, dw, v, a, s = 3, 2, 5, 4, 2
  out = {'traversal_z': rng.uniform(size=(dz, v, 64, 64, 3)),
         'traversal_w': rng.uniform(size=(dw, v, 64, 64, 3)),
         'alpha': rng.uniform(size=(a, s, 64, 64, 3))}
  values = np.linspace(-1, 1, v)
  figs = cf.source_figures('a red bird', out, values, True,
                           (0.5, 1.0, 2.0, 3.0), title_alpha=1.0)
  assert sorted(figs) == ['alpha_grid.png', 'traversal_w.png',
                          'traversal_z.png']
  z = figs['traversal_z.png']
  cell = 64 + cf.PAD
  assert z.shape[1] == cf.PAD + 56 + cf.PAD + dz * cell
  # Row 3 (value index 3), dimension 2: the image of out[...][2, 3],
  # counted from the bottom of the grid (the title's height aside).
  top = z.shape[0] - (v - 3) * cell
  left = cf.PAD + 56 + cf.PAD + 2 * cell
  want = np.round(out['traversal_z'][2, 3] * 255).astype(np.uint8)
  np.testing.assert_array_equal(z[top:top + 64, left:left + 64], want)
  assert (z[:20] < 128).any()  # the title is drawn
  alpha = figs['alpha_grid.png']
  assert alpha.shape[1] == cf.PAD + 56 + cf.PAD + a * cell
  assert alpha.shape[0] - s * cell == z.shape[0] - v * cell
  # No private latent: no w traversal.
  del out['traversal_w']
  assert 'traversal_w.png' not in cf.source_figures(
      'a', out, values, True, (0.5, 1.0, 2.0, 3.0), title_alpha=1.0)
