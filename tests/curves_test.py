"""A study's learning curves: mean +- std over seeds per step, the figure."""

import numpy as np

from mmvaeplus_jax.experiments import curves


def _record(values, seconds=1.0, batch=8):
  return {'curve': [
      {'step': s, 'examples': s * batch, 'train_seconds': seconds * s,
       'wall_seconds': 2 * seconds * s, 'eval_seconds': 0.5,
       'metrics': {'coherence/cond/mean': v}} for s, v in values]}


def test_cell_curve_mean_std_over_the_seeds_that_reached_a_step():
  recs = [_record([(1, 0.1), (2, 0.3), (4, 0.5)], seconds=1.0),
          _record([(1, 0.2), (2, 0.5)], seconds=3.0),  # stopped earlier
          {'eval': {}}]  # a run without a curve
  c = curves.cell_curve(recs)
  np.testing.assert_array_equal(c.steps, [1, 2, 4])
  np.testing.assert_array_equal(c.examples, [8, 16, 32])
  np.testing.assert_allclose(c.mean, [0.15, 0.4, 0.5])
  np.testing.assert_allclose(c.std, [np.std([0.1, 0.2], ddof=1),
                                     np.std([0.3, 0.5], ddof=1), 0.0])
  np.testing.assert_allclose(c.seconds, [2.0, 4.0, 4.0])
  np.testing.assert_array_equal(c.seeds, [2, 2, 1])
  assert curves.cell_curve([{'eval': {}}]) is None
  assert curves.cell_curve(recs, 'coherence/cond/m0') is None


def test_plot_curves_writes_a_png_only_when_there_is_a_curve(tmp_path):
  cells = [('a', [_record([(1, 0.1), (2, 0.3)])]),
           ('b', [{'eval': {}}])]
  path = tmp_path / 'curves.png'
  assert curves.plot_curves(str(path), cells)
  assert path.read_bytes()[:4] == b'\x89PNG'
  other = tmp_path / 'none.png'
  assert not curves.plot_curves(str(other), [('b', [{'eval': {}}])])
  assert not other.exists()



def test_line_styles_are_distinct_past_the_ten_colours(tmp_path):
  """The pilot has 14 cells: the 11th must not repeat the 1st's line."""
  styles = [tuple(sorted(curves.line_style(i).items())) for i in range(40)]
  assert len(set(styles)) == 40
  cells = [(f'c{i}', [_record([(1, 0.01 * i), (2, 0.02 * i)])])
           for i in range(14)]
  path = tmp_path / 'curves.png'
  assert curves.plot_curves(str(path), cells)  # the styles are valid kwargs
