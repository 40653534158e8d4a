"""Learning curves of a study: per cell, a metric against examples and time.

The rows are the runs' `curve` (the `curve.jsonl` of
`train.curve_start_examples`, kept in each study record):

* `cell_curve(records, key)`: per step of the curve, the examples seen,
  the mean +- std over the seeds of the metric `key` (ddof 1; 0 for one
  seed) and the mean training seconds, over the seeds that reached it;
* `plot_curves(path, cells, key)`: two panels, the metric against examples
  seen (log scale) and against training minutes, one line per cell with
  a band of +- one std over seeds; the figure `study_report.write_figures`
  writes as `curves.png`;
* `line_style(i)`: the colour, line style and marker of the i-th cell,
  distinct for the first 40 cells (the ten colours of the default cycle,
  then again with another line style and marker).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from matplotlib import figure as mpl_figure
import numpy as np

COHERENCE = 'coherence/cond/mean'


@dataclasses.dataclass(frozen=True)
class CellCurve:
  """A cell's curve, one entry per step that some seed reached."""

  steps: np.ndarray  # [P]
  examples: np.ndarray  # [P]
  mean: np.ndarray  # [P] metric, mean over seeds
  std: np.ndarray  # [P] std over seeds (ddof 1; 0 with one seed)
  seconds: np.ndarray  # [P] training seconds, mean over seeds
  seeds: np.ndarray  # [P] number of seeds at that step


def cell_curve(records: Sequence[dict], key: str = COHERENCE
               ) -> CellCurve | None:
  """The curve of `key` over the records' seeds; None if none has one."""
  by_step: dict[int, list[dict]] = {}
  for rec in records:
    for row in rec.get('curve') or ():
      if key in row['metrics']:
        by_step.setdefault(int(row['step']), []).append(row)
  if not by_step:
    return None
  steps = np.array(sorted(by_step))
  rows = [by_step[s] for s in steps]
  vals = [np.array([r['metrics'][key] for r in rs], float) for rs in rows]
  return CellCurve(
      steps=steps,
      examples=np.array([rs[0]['examples'] for rs in rows]),
      mean=np.array([v.mean() for v in vals]),
      std=np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]),
      seconds=np.array([np.mean([r['train_seconds'] for r in rs])
                        for rs in rows]),
      seeds=np.array([len(v) for v in vals]))


_LINES = ('-', '--', ':', '-.')
_MARKERS = ('o', 's', '^', 'D')


def line_style(i: int) -> dict:
  """Keyword arguments of `Axes.plot` for the i-th cell: colour C{i % 10},
  line style and marker from i // 10 (distinct for i < 40)."""
  j = (i // 10) % len(_LINES)
  return {'color': f'C{i % 10}', 'ls': _LINES[j], 'marker': _MARKERS[j]}


def plot_curves(path: str, cells: Sequence[tuple[str, Sequence[dict]]],
                key: str = COHERENCE, *, title: str = '',
                chance: float | None = 0.1, dpi: int = 120) -> bool:
  """Writes the two-panel curve figure of `cells` ((name, records) pairs)
  to `path`; False (nothing written) when no record has a curve."""
  curves = [(n, cell_curve(r, key)) for n, r in cells]
  curves = [(n, c) for n, c in curves if c is not None]
  if not curves:
    return False
  fig = mpl_figure.Figure(figsize=(11, 4.2), dpi=dpi)
  ax_n, ax_t = fig.subplots(1, 2)
  for i, (name, c) in enumerate(curves):
    style = line_style(i)
    label = f'{name} (n={int(c.seeds.max())})'
    for ax, x in ((ax_n, c.examples), (ax_t, c.seconds / 60)):
      ax.plot(x, c.mean, ms=3, label=label, **style)
      ax.fill_between(x, c.mean - c.std, c.mean + c.std,
                      color=style['color'], alpha=0.2, lw=0)
  for ax, xlabel in ((ax_n, 'examples seen'),
                     (ax_t, 'training minutes (evaluation excluded)')):
    if chance is not None:
      ax.axhline(chance, color='k', ls=':', lw=1)
    ax.set(xlabel=xlabel, ylabel=key, ylim=(0, 1))
    ax.grid(alpha=0.3)
  ax_n.set_xscale('log')
  ax_t.legend(fontsize=7, loc='best')
  fig.suptitle(title or f'{key} during training (mean ± std over seeds;'
               ' dotted: chance)')
  fig.tight_layout()
  fig.savefig(path, facecolor='white')
  return True
