"""The end-of-run cross-modal coherence (`train.final_coherence`).

A final evaluator of `training.loop.train_and_evaluate` (`final_evals`):
it gets the last params and both data sources in memory, trains (or loads)
digit classifiers and prints the source x target coherence table. Handed
to the loop by `experiments.train.train` when the config asks for it.
"""

from __future__ import annotations

import os
import time

from absl import logging
import jax
import numpy as np

from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.infra import parallel


def final_coherence(config, workdir, model, params, train_src, eval_src, key,
                    mesh) -> dict[str, float]:
  """The run's cross-modal coherence, printed; returns its metrics.

  Classifiers: `evals.classifier_dir` if set, else one classifier per
  modality of architecture `train.final_coherence_clf_arch` ('': the
  default of the image shape, 'wide' for PolyMNIST; the demo's and smoke
  test's: the 'official' `ClfImg`) trained here on the whole train split for
  `train.final_coherence_clf_epochs` epochs (seed `config.seed`; every
  process trains the same ones) and saved to `workdir/classifiers`, so that
  `eval.py` can reuse them. The coherence is
  `coherence.conditional_coherence` on the first
  `train.final_coherence_examples` test examples (-1: all): keys
  `coherence/cond/<source>-><target>` (the diagonal is the
  self-reconstruction), per target and mean, plus the classifiers' test
  accuracies `coherence/classifier_test_accuracy/<name>` (the ceiling of
  the coherence).
  """
  tc, names = config.train, tuple(model.names)
  start = time.time()
  n_test = len(eval_src)
  if tc.final_coherence_examples > 0:
    n_test = min(n_test, int(tc.final_coherence_examples))
  test = eval_src.read(np.arange(n_test))
  if config.evals.classifier_dir:
    clf_params, meta = classifiers.load_classifiers(
        config.evals.classifier_dir, names)
    accs = {n: meta.get('test_accuracy', {}).get(n) for n in names}
  else:
    train = train_src.read(np.arange(len(train_src)))
    clf_params, accs = classifiers.train_and_evaluate(
        train, test, names, seed=config.seed,
        epochs=int(tc.final_coherence_clf_epochs),
        arch=tc.get('final_coherence_clf_arch') or None, log=logging.info)
    # Every process trained the same classifiers (same data and key); all
    # take part in orbax's save (host values: the primary host writes).
    classifiers.save_classifiers(
        os.path.join(workdir, 'classifiers'), jax.device_get(clf_params),
        metadata={'test_accuracy': accs, 'trained_by': 'final_coherence',
                  'epochs': int(tc.final_coherence_clf_epochs),
                  'num_test': n_test})
  clf_params = parallel.replicate(mesh, jax.device_get(clf_params))
  # The key as a replicated global array (a multi-process mesh is not
  # addressable by device_put).
  key = parallel.replicate_key(mesh, key)
  result = coherence.conditional_coherence(
      key, model, params, classifiers.classify, clf_params, test,
      batch_size=config.evals.batch_size, mesh=mesh)
  out = result.metrics('coherence/cond')
  for name in names:
    if accs.get(name) is not None:
      out[f'coherence/classifier_test_accuracy/{name}'] = float(accs[name])
  if jax.process_index() == 0:
    print(_coherence_table(result, accs, time.time() - start), flush=True)
  return out


def _coherence_table(result, accs, seconds) -> str:
  """Cross-modal coherence as a source x target table, for the console."""
  names = result.names
  lines = [f'Cross-modal coherence on {result.total} test examples (rows:'
           ' source, columns: target; diagonal: self-reconstruction;'
           f' chance 0.10; {seconds:.0f} s):',
           '        ' + ''.join(f'{n:>8}' for n in names)]
  for e, src in enumerate(names):
    lines.append(f'{src:>8}' + ''.join(
        f'{result.matrix[e, d]:8.3f}' for d in range(len(names))))
  pairs = [result.matrix[e, d] for e in range(len(names))
           for d in range(len(names)) if e != d]
  lines.append(f'cross-modal: mean {result.mean:.3f}, worst pair'
               f' {min(pairs) if pairs else float("nan"):.3f}; classifier'
               ' test accuracy ' + ', '.join(
                   f'{n} {accs[n]:.3f}' for n in names
                   if accs.get(n) is not None))
  return '\n'.join(lines)
