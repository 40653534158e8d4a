"""Coherence and FD_clf against the test-time scale alpha of p(w) (Fig. 19).

Evaluator `alpha_sweep` (`evaluation.api`): conditional coherence and the
classifier-feature Fréchet distance FD_clf (`evaluation.fd_clf`) for each
alpha of `evals.alpha_sweep`, a two-panel line plot plus `alpha_sweep.json`;
skipped (with a reason) without classifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import json
import os

import jax
from matplotlib import figure as mpl_figure
import numpy as np

from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import fd_clf
from mmvaeplus_jax.evaluation import image_grids



def alpha_sweep(key, model, params, data: Mapping[str, np.ndarray], alphas,
                *, classify, clf_params, fd_fn: Callable | None = None,
                batch_size: int = 256,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, list]:
  """Conditional coherence (and FD) for each test-time alpha (Fig. 19).

  Every alpha uses the same key, hence the same standardised noise: w =
  alpha * scale * eps with eps fixed per example, so the curves are smooth
  in alpha (common random numbers).

  Args:
    key: PRNG key (`coherence.conditional_coherence`).
    model, params: the MMVAE+.
    data: `{name: [N, *event], 'label': [N]}` test examples.
    alphas: `[A]` scales of p(w).
    classify, clf_params: the coherence classifiers (coherence contract).
    fd_fn: optional `alpha -> {metric: float}` (e.g. FD_clf).
    batch_size: examples per device call (does not change the numbers).
    mesh: shard the coherence batches over it (`coherence`).

  Returns:
    `{'alpha': [A], metric: [A] values}` with `coherence/cond/mean`,
    `coherence/cond/<target>` and the keys of `fd_fn`.
  """
  out: dict[str, list] = {'alpha': [float(a) for a in alphas]}
  for a in alphas:
    res = coherence.conditional_coherence(
        key, model, params, classify, clf_params, data,
        batch_size=batch_size, alpha=float(a), mesh=mesh)
    vals = {f'coherence/cond/{n}': float(v)
            for n, v in zip(model.names, res.per_target)}
    vals['coherence/cond/mean'] = res.mean
    if fd_fn is not None:
      vals.update({k: float(v) for k, v in fd_fn(float(a)).items()
                   if isinstance(v, (int, float, np.floating))})
    for k, v in vals.items():
      out.setdefault(k, []).append(v)
  return out


def plot_alpha_sweep(path: str, sweep: Mapping[str, Sequence[float]], *,
                     fd_key: str = 'fd_clf/cond/mean/with_self',
                     names: Sequence[str] = ()) -> str:
  """Two panels: conditional coherence vs alpha, FD vs alpha (Fig. 19)."""
  alphas = np.asarray(sweep['alpha'], np.float64)
  fig = mpl_figure.Figure(figsize=(9, 3.6), dpi=image_grids.DPI)
  ax_c, ax_f = fig.subplots(1, 2)
  for n in names:
    k = f'coherence/cond/{n}'
    if k in sweep:
      ax_c.plot(alphas, sweep[k], lw=0.8, alpha=0.5, label=n)
  ax_c.plot(alphas, sweep['coherence/cond/mean'], 'o-', color='k', lw=1.8,
            label='mean')
  ax_c.set(xlabel='alpha (scale of p(w))', ylabel='conditional coherence',
           title='Coherence vs alpha')
  ax_c.legend(fontsize=7)
  if fd_key in sweep:
    ax_f.plot(alphas, sweep[fd_key], 'o-', color='C3')
  else:
    ax_f.text(0.5, 0.5, f'{fd_key}: not computed', ha='center',
              transform=ax_f.transAxes)
  ax_f.set(xlabel='alpha (scale of p(w))', ylabel=fd_key,
           title='Fréchet distance vs alpha')
  if np.all(alphas > 0):
    for ax in (ax_c, ax_f):
      ax.set_xscale('log', base=2)
  for ax in (ax_c, ax_f):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=image_grids.DPI, facecolor='white')
  return path


@api.register('alpha_sweep')
def alpha_sweep_evaluator(ctx: api.EvalContext) -> dict:
  """Coherence and FD_clf vs the test-time scale alpha of p(w) (Fig. 19)."""
  if ctx.classifiers is None:
    return api.skip(
        'alpha_sweep',
        'no classifiers: set --config.evals.classifier_dir to a folder made'
        ' by `python -m mmvaeplus_jax.tools.classifiers`')
  ec = ctx.config.evals
  alphas = tuple(float(a) for a in ec.alpha_sweep)
  fd_key = str(ec.alpha_sweep_fd_key)
  clf_params, meta = ctx.classifiers
  sweep = alpha_sweep(
      jax.random.fold_in(ctx.key, 0), ctx.model, ctx.params, ctx.data,
      alphas, classify=classifiers.classify, clf_params=clf_params,
      fd_fn=lambda a: fd_clf.fd_clf_metrics(ctx, alpha=a),
      batch_size=int(ec.batch_size), mesh=ctx.mesh)
  metrics: dict = {}
  for k in ('coherence/cond/mean', fd_key):
    for a, v in zip(alphas, sweep.get(k, ())):
      metrics[f'alpha_sweep/alpha_{a:g}/{k}'] = v
  files = ['alpha_sweep.json', 'alpha_sweep.png']
  metrics['alpha_sweep/files'] = files
  if fd_key not in sweep:
    metrics['skipped'] = {'alpha_sweep/fd': (
        f'fd_clf.fd_clf_metrics returned no {fd_key!r}; got'
        f' {sorted(k for k in sweep if k.startswith("fd"))}; set'
        ' --config.evals.alpha_sweep_fd_key')}
  if jax.process_index() == 0:
    record = dict(sweep, step=ctx.step, fd_key=fd_key,
                  num_examples=len(ctx.data['label']),
                  classifier_test_accuracy=meta.get('test_accuracy', {}))
    with open(os.path.join(ctx.out_dir, files[0]), 'w') as f:
      json.dump(record, f, indent=2, sort_keys=True)
    plot_alpha_sweep(os.path.join(ctx.out_dir, files[1]), sweep,
                     fd_key=fd_key, names=ctx.model.names)
  return metrics
