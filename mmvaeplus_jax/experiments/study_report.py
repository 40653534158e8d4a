"""A study's figures and its re-scoring with another classifier set.

* `write_figures(study, root, out_dir)`: from the finished runs
  (`records.collect`), PNGs for docs/results.md: `scatter.png` (Fig. 1
  right: conditional coherence vs FD_clf, and the unconditional pair; one
  point per cell, mean +- std over seeds), `latent.png` (Fig. 11: linear
  latent classification on z, w, u per cell), `diversity.png` (sample
  diversity vs coherence, the real within-class spread as a line) and
  `grid_<cell>.png` (Fig. 1 left: the conditional samples of the cell's
  first finished seed, copied from its `eval/<step>/`: the `figures`
  evaluator's `cross_modal_<first modality>.png`, else the `grids`
  evaluator's `cross_modal_<step>.png`), and `curves.png` when runs kept
  a learning curve (`experiments/curves.py`: mean cross-modal coherence
  against examples seen and training minutes, per cell).
* `write_tables(study, root, out_dir)`: `tables.md` for docs/results.md:
  per cell the mean +- std over seeds of the headline metrics (`COLUMNS`;
  coherence also with every other classifier set of `Study.rescore`) and
  the published value under the same protocol (`Study.published`), then
  one row per run with its times.
* `rescore(study, root, classifier_dir, tag)`: re-runs the classifier-based
  evaluators (coherence by default) of every finished run with another
  classifier set into `eval/<step>-<tag>/` (`runner.evaluate(tag=...)`;
  the main evaluation is left as it is; runs already re-scored are
  skipped) and writes `root/rescore_<tag>.md`: per cell, the metric with
  the study's classifiers, with the other set, and their difference, mean
  +- std over seeds. Scores are kept in the runs' records
  (`rescored/<tag>`, also those made at training time by `Study.rescore`),
  so with `records` the table needs no run directory.

Command line: `python -m mmvaeplus_jax.tools.study ... --report OUT_DIR`
and `--rescore CLASSIFIER_DIR --tag NAME` (tools/study.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Callable, Sequence

from matplotlib import figure as mpl_figure
import numpy as np

from mmvaeplus_jax import models
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.experiments import curves as curves_lib
from mmvaeplus_jax.experiments import records as records_lib
from mmvaeplus_jax.experiments import study as study_lib

DPI = 120
LATENT_KINDS = ('z', 'w', 'u')
# The paper's names: z the shared latent, w_m the private one, u = [w, z]
# (this project's `latent/<m>/<kind>` metrics;
# evaluation/latent_classification.py).
LATENT_LABELS = {'z': 'z (shared)', 'w': 'w (private)', 'u': 'u = [w, z]'}


def _mean_std(records, key):
  vals = _values(records, key)
  if not vals:
    return math.nan, math.nan
  return float(np.mean(vals)), (
      float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)


def _finished(study, root, records):
  """The finished runs' records (`records.collect`), or an error naming
  the fix."""
  out = records_lib.collect(study, root, records)
  if not out:
    raise FileNotFoundError(
        f'{root}: no finished run (no */seed*/{records_lib.DONE_FILE}); run'
        ' the study first')
  return out


def _by_cell(study, records):
  return [(c.name, [r for r in records if r['cell'] == c.name])
          for c in study.cells]


def _scatter(ax, cells, x_key, y_key, title):
  for i, (name, recs) in enumerate(cells):
    (x, dx), (y, dy) = _mean_std(recs, x_key), _mean_std(recs, y_key)
    if not (math.isfinite(x) and math.isfinite(y)):
      continue
    ax.errorbar(x, y, xerr=dx, yerr=dy, fmt='o', color=f'C{i % 10}',
                capsize=3, label=f'{name} (n={len(recs)})')
  ax.set(xlabel=x_key, ylabel=y_key, title=title)
  ax.grid(alpha=0.3)


def write_figures(study, root: str, out_dir: str, *,
                  cond=('fd_clf/cond/mean/with_self', 'coherence/cond/mean'),
                  uncond=('fd_clf/uncond/mean', 'coherence/uncond'),
                  grid_file: str | None = None,
                  records: str | None = None) -> list[str]:
  """Writes the study's figures (module docstring) into `out_dir`.

  Args:
    study: the study (`records.load_study`).
    root: its directory.
    out_dir: where the PNGs go (created).
    cond, uncond: (x, y) metric keys of the two scatter panels.
    grid_file: the conditional grid copied per cell (default
      `cross_modal_<first modality>.png` of `evaluation.figures`).
    records: the study's records folder (`study.run_study(records=...)`): runs
      kept only there count in the plots; a cell's grid comes from its
      first run whose directory is still in `root`.

  Returns:
    The written file names.

  Raises:
    FileNotFoundError: no run of the study has finished.
  """
  records = _finished(study, root, records)
  os.makedirs(out_dir, exist_ok=True)
  cells = [(n, r) for n, r in _by_cell(study, records) if r]
  files = []

  fig = mpl_figure.Figure(figsize=(11, 4.2), dpi=DPI)
  ax_c, ax_u = fig.subplots(1, 2)
  _scatter(ax_c, cells, *cond, 'conditional')
  _scatter(ax_u, cells, *uncond, 'unconditional')
  if ax_u.get_legend_handles_labels()[0]:
    ax_u.legend(fontsize=7, loc='best')
  fig.suptitle(f'{study.name}: coherence vs FD_clf (mean ± std over seeds)')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'scatter.png'), facecolor='white')
  files.append('scatter.png')

  fig = mpl_figure.Figure(figsize=(max(6, 1.2 * len(cells)), 3.8), dpi=DPI)
  ax = fig.subplots()
  width = 0.8 / len(LATENT_KINDS)
  for j, kind in enumerate(LATENT_KINDS):
    stats = [_mean_std(r, f'latent/mean/{kind}') for _, r in cells]
    xs = np.arange(len(cells)) + (j - 1) * width
    ax.bar(xs, [m if math.isfinite(m) else 0.0 for m, _ in stats], width,
           yerr=[s if math.isfinite(s) else 0.0 for _, s in stats],
           label=LATENT_LABELS[kind], capsize=2)
  ax.set_xticks(np.arange(len(cells)), [n for n, _ in cells], rotation=30,
                ha='right', fontsize=8)
  ax.set(ylabel='linear latent classification', ylim=(0, 1),
         title='Latent classification (absent bar: no such latent)')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'latent.png'), facecolor='white')
  files.append('latent.png')

  fig = mpl_figure.Figure(figsize=(6, 4.2), dpi=DPI)
  ax = fig.subplots()
  _scatter(ax, cells, 'coherence/cond/mean', 'diversity/cond/mean',
           'sample diversity vs conditional coherence')
  real, _ = _mean_std(records, 'diversity/real/mean')
  if math.isfinite(real):
    ax.axhline(real, color='k', ls='--', lw=1,
               label='real images, within class')
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'diversity.png'), facecolor='white')
  files.append('diversity.png')

  if curves_lib.plot_curves(
      os.path.join(out_dir, 'curves.png'), cells,
      title=f'{study.name}: mean cross-modal coherence during training'
      ' (mean ± std over seeds; dotted: chance)', dpi=DPI):
    files.append('curves.png')

  for name, recs in cells:
    cell = next(c for c in study.cells if c.name == name)
    grid = _grid_of(cell, recs, root, grid_file)
    if grid:
      shutil.copyfile(grid, os.path.join(out_dir, f'grid_{name}.png'))
      files.append(f'grid_{name}.png')
  return files


# A derived metric: the mean of the diagonal `coherence/cond/<m>-><m>` (a
# modality generated from itself; the paper's coherence excludes it).
SELF = 'coherence/cond/self'


def _metric(metrics: dict, key: str):
  if key != SELF or key in metrics:
    return metrics.get(key)
  diag = [v for k, v in metrics.items() if k.startswith('coherence/cond/')
          and '->' in k and k.split('/')[-1].split('->')[0]
          == k.split('->')[-1]]
  return float(np.mean(diag)) if diag else None


# The tables' columns: (header, metric keys joined by ' / ', format).
COLUMNS = (
    ('cond. coherence (per target, diag. excl.) / uncond. coherence',
     ('coherence/cond/mean', 'coherence/uncond'), '.3f'),
    ('self-reconstruction coherence (diagonal)', (SELF,), '.3f'),
    ('FD_clf cond. (with self) / uncond.',
     ('fd_clf/cond/mean/with_self', 'fd_clf/uncond/mean'), '.1f'),
    ('latent linear z / w / u (mean of 5)',
     ('latent/mean/z', 'latent/mean/w', 'latent/mean/u'), '.3f'),
    ('diversity cond. / ratio to real', ('diversity/cond/mean',
                                         'diversity/ratio'), '.3f'),
    ('all-subsets coherence, 1/2/3/4 inputs',
     tuple(f'coherence/subsets/size{i}' for i in range(1, 5)), '.3f'),
    ('test bound', ('eval/bound',), ',.1f'),
)


def _values(recs, key, tag=None):
  out = []
  for r in recs:
    src = r.get('rescored', {}).get(tag, {}) if tag else r['eval']
    v = _metric(src, key)
    if records_lib.is_number(v) and math.isfinite(float(v)):
      out.append(float(v))
  return out


def _cell_text(recs, keys, fmt, tag=None):
  parts = []
  for k in keys:
    v = _values(recs, k, tag)
    if not v:
      parts.append('–')
      continue
    text = format(v[0], fmt) if len(v) == 1 else (
        f'{format(float(np.mean(v)), fmt)} ±'
        f' {format(float(np.std(v, ddof=1)), fmt)}')
    parts.append(text if len(v) == len(recs) else f'{text} (n={len(v)})')
  return ' / '.join(parts)


def write_tables(study, root: str, out_dir: str, *,
                 records: str | None = None) -> str:
  """Writes `out_dir/tables.md` (module docstring); returns its name.

  Raises:
    FileNotFoundError: no run of the study has finished.
  """
  records = _finished(study, root, records)
  tags = [t for t, _ in study.rescore]
  published = dict(study.published)
  heads = ['cell', 'seeds'] + [h for h, _, _ in COLUMNS] + [
      f'coherence cond. / uncond., classifier set `{t}`' for t in tags]
  if published:
    heads.append('published, same protocol')
  lines = [f'# {study.name}: {len(records)} of {len(study.runs())} runs',
           '', 'Per cell: mean ± std over the finished seeds (std with'
           ' ddof = 1; a single value: one seed).', '',
           '| ' + ' | '.join(heads) + ' |', '|' + '---|' * len(heads)]
  for name, recs in _by_cell(study, records):
    if not recs:
      continue
    row = [f'`{name}`', ', '.join(str(r['seed']) for r in recs)]
    row += [_cell_text(recs, keys, fmt) for _, keys, fmt in COLUMNS]
    row += [_cell_text(recs, ('coherence/cond/mean', 'coherence/uncond'),
                       '.3f', t) for t in tags]
    if published:
      row.append(published.get(name, '–'))
    lines.append('| ' + ' | '.join(row) + ' |')
  heads = (['run'] + [h for h, _, _ in COLUMNS]
           + [f'coherence, set `{t}`' for t in tags]
           + ['train / eval time', 'commit'])
  lines += ['', 'Per run:', '', '| ' + ' | '.join(heads) + ' |',
            '|' + '---|' * len(heads)]
  order = {c.name: i for i, c in enumerate(study.cells)}
  for r in sorted(records, key=lambda r: (order[r['cell']], r['seed'])):
    row = [f'`{r["cell"]}`, seed {r["seed"]}']
    row += [_cell_text([r], keys, fmt)
            for _, keys, fmt in COLUMNS]
    row += [_cell_text([r], ('coherence/cond/mean', 'coherence/uncond'),
                       '.3f', t) for t in tags]
    times = [r.get('train_seconds'), r.get('eval_seconds')]
    row.append(' / '.join(f'{t:.0f}' if records_lib.is_number(t) else '–'
                          for t in times) + ' s')
    row.append(str(r.get('commit', '–')))
    lines.append('| ' + ' | '.join(row) + ' |')
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'tables.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return 'tables.md'


def _grid_of(cell, recs, root, grid_file):
  """The conditional grid of the cell's first run that still has one."""
  for rec in recs:
    step = rec['eval'].get('step')
    eval_dir = os.path.join(records_lib.run_dir(root, cell, rec['seed']),
                            'eval', str(step))
    if grid_file is not None:
      candidates = [grid_file]
    else:  # `figures`' grid of the first source, else the `grids` one
      first = models.get_model(cell.config.model).names[0]
      candidates = [f'cross_modal_{first}.png', f'cross_modal_{step:08d}.png'
                    if isinstance(step, int) else '']
    for want in candidates:
      if want and os.path.isfile(os.path.join(eval_dir, want)):
        return os.path.join(eval_dir, want)
  return None


def rescore(study, root: str, classifier_dir: str, tag: str, *,
            evaluators: str = study_lib.RESCORE_EVALUATORS,
            keys: Sequence[str] = ('coherence/cond/mean', 'coherence/uncond'),
            evaluate: Callable | None = None,
            log: Callable[[str], None] = print,
            records: str | None = None) -> str:
  """Re-scores every finished run with another classifier set (module
  docstring); returns the markdown table (also `root/rescore_<tag>.md`).

  A run whose record already holds `rescored/<tag>` (scored at training
  time, `Study.rescore`, or by an earlier call) is not evaluated again, so
  this works from the records alone; a new score is written back into the
  run's record (and its copy in `records`).
  """
  if evaluate is None:
    evaluate = runner.evaluate
  if not os.path.isdir(classifier_dir):
    raise FileNotFoundError(f'classifier directory {classifier_dir} not found')
  rows = {}
  for rec in records_lib.collect(study, root, records):
    other = rec.get('rescored', {}).get(tag)
    if other is None:
      cell = next(c for c in study.cells if c.name == rec['cell'])
      workdir = records_lib.run_dir(root, cell, rec['seed'])
      step = rec['eval'].get('step')
      path = os.path.join(workdir, 'eval', f'{step}-{tag}', 'metrics.json')
      if os.path.isfile(path):
        with open(path) as f:
          other = json.load(f)
      elif not os.path.isdir(workdir):
        log(f'{rec["cell"]} seed {rec["seed"]}: no run directory and no'
            f' "{tag}" score in its record; left out')
        continue
      else:
        other = study_lib.rescore_run(
            records_lib.run_config(cell, rec['seed'], ''), workdir, step,
            classifier_dir, tag, evaluate=evaluate, evaluators=evaluators)
        log(f'rescored {rec["cell"]} seed {rec["seed"]} with'
            f' {classifier_dir}')
      other = {k: v for k, v in other.items() if records_lib.is_number(v)}
      rec.setdefault('rescored', {})[tag] = other
      records_lib.update_record(root, records, cell, rec)
    rows.setdefault(rec['cell'], []).append((rec['eval'], other))
  lines = [f'# Re-scored with `{classifier_dir}` (tag `{tag}`)', '',
           'Per cell: the study\'s classifiers, the other set, other - study'
           ' (mean ± std over seeds).', '',
           '| cell | metric | study classifiers | other set | difference |',
           '|---|---|---|---|---|']
  for cell in study.cells:
    for k in keys:
      pairs = [(a[k], b[k]) for a, b in rows.get(cell.name, ())
               if k in a and k in b]
      if not pairs:
        continue
      a, b = np.array(pairs, np.float64).T
      sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
      lines.append(
          f'| {cell.name} | {k} | {a.mean():.3f} ± {sd(a):.3f} |'
          f' {b.mean():.3f} ± {sd(b):.3f} | {(b - a).mean():+.3f} ±'
          f' {sd(b - a):.3f} (n={len(a)}) |')
  text = '\n'.join(lines) + '\n'
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f'rescore_{tag}.md'), 'w') as f:
    f.write(text)
  return text
