"""Coherence against FID across runs (Fig. 1 right): one point per run, from
each run's latest `eval/<step>/metrics.json`. Command line:
`python -m mmvaeplus_jax.tools.scatter`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os

from matplotlib import figure as mpl_figure

from mmvaeplus_jax.evaluation import image_grids



def latest_metrics(workdir: str) -> tuple[int, dict]:
  """(step, metrics) of the newest `workdir/eval/<step>/metrics.json`.

  Raises:
    FileNotFoundError: naming the workdir when it has none.
  """
  eval_dir = os.path.join(workdir, 'eval')
  steps = []
  if os.path.isdir(eval_dir):
    steps = [int(d) for d in os.listdir(eval_dir) if d.isdigit()
             and os.path.isfile(os.path.join(eval_dir, d, 'metrics.json'))]
  if not steps:
    raise FileNotFoundError(
        f'{workdir}: no eval/<step>/metrics.json (looked in {eval_dir});'
        f' evaluate it first: python eval.py --config=<its config>'
        f' --workdir={workdir}')
  step = max(steps)
  with open(os.path.join(eval_dir, str(step), 'metrics.json')) as f:
    return step, json.load(f)


@dataclasses.dataclass(frozen=True)
class RunPoint:
  label: str
  workdir: str
  step: int
  coherence: float
  fid: float


def run_points(workdirs: Sequence[str], *, coherence_key: str, fid_key: str,
               labels: Sequence[str] | None = None) -> list[RunPoint]:
  """One (coherence, FID) point per run, from its latest metrics.json.

  Raises:
    FileNotFoundError / KeyError: listing every workdir without metrics or
    without one of the keys (all problems at once).
  """
  if labels and len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  points, missing, nokey = [], [], []
  for i, wd in enumerate(workdirs):
    try:
      step, metrics = latest_metrics(wd)
    except FileNotFoundError as e:
      missing.append(str(e))
      continue
    absent = [k for k in (coherence_key, fid_key)
              if not isinstance(metrics.get(k), (int, float))]
    if absent:
      prefixes = {k.split('/')[0] for k in absent}
      near = sorted(k for k in metrics if k.split('/')[0] in prefixes)
      skipped = metrics.get('skipped') or {}
      why = {p: skipped[p] for p in prefixes if p in skipped}
      nokey.append(f'{wd} (eval/{step}/metrics.json): no number for {absent};'
                   f' similar keys: {near[:12]}'
                   + (f'; skipped there: {why}' if why else ''))
      continue
    label = labels[i] if labels else os.path.basename(os.path.normpath(wd))
    points.append(RunPoint(label, wd, step, float(metrics[coherence_key]),
                           float(metrics[fid_key])))
  if missing:
    raise FileNotFoundError('runs without metrics:\n  ' + '\n  '.join(
        missing + nokey))
  if nokey:
    raise KeyError('runs without the requested metrics:\n  '
                   + '\n  '.join(nokey))
  return points


def plot_scatter(path: str, panels: Sequence[tuple[str, str, list]]) -> str:
  """One panel per (coherence_key, fid_key, points): FID (x) vs coherence (y),
  each point labelled with its run (Fig. 1 right: top-left is best)."""
  fig = mpl_figure.Figure(figsize=(4.8 * len(panels), 4.2), dpi=image_grids.DPI)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (ck, fk, points) in zip(axes, panels):
    for i, p in enumerate(points):
      ax.scatter([p.fid], [p.coherence], color=f'C{i % 10}', s=30)
      ax.annotate(p.label, (p.fid, p.coherence), textcoords='offset points',
                  xytext=(4, 4), fontsize=7)
    ax.set(xlabel=f'{fk} (lower is better)',
           ylabel=f'{ck} (higher is better)')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=image_grids.DPI, facecolor='white')
  return path


def write_scatter(workdirs: Sequence[str], out: str, *,
                  coherence_keys: Sequence[str] = ('coherence/cond/mean',),
                  fid_keys: Sequence[str] = ('fid/cond/mean/with_self',),
                  labels: Sequence[str] | None = None) -> list:
  """Coherence-vs-FID scatter of several runs; returns the panels' points."""
  if len(coherence_keys) != len(fid_keys):
    raise ValueError(
        f'give as many --coherence_key ({len(coherence_keys)}) as --fid_key'
        f' ({len(fid_keys)}): one panel per pair')
  panels = [(ck, fk, run_points(workdirs, coherence_key=ck, fid_key=fk,
                                labels=labels))
            for ck, fk in zip(coherence_keys, fid_keys)]
  plot_scatter(out, panels)
  return panels
