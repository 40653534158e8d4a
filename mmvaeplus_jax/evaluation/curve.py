"""Learning-curve points: conditional coherence during training.

`CoherenceCurve(config)` is a curve evaluator of
`training.loop.train_and_evaluate` (`curve_evals`): at every step of the
run's curve schedule (`train.curve_start_examples`, `train.curve_factor`;
`training.loop.curve_steps`) the loop hands it the current params and it
returns the conditional coherence (`coherence.conditional_coherence`) of
every source -> target pair on the first `train.curve_test_examples` test
examples, scored with the classifiers of `evals.classifier_dir` (loaded
once, at construction, so a missing set fails before training starts):

* `coherence/cond/<src>-><tgt>` for every pair (the diagonal is the
  self-reconstruction), `coherence/cond/<tgt>` per target, and
  `coherence/cond/mean`, the paper's mean over the cross-modal pairs;
* `coherence/self/mean`: the mean of the diagonal.

The loop writes each point, with the examples seen and the wall and
training seconds, to `<workdir>/curve.jsonl`. The evaluator reads nothing
of the training state but the params and draws from its own key, so the
run's parameters are the same with or without a curve (tested).
"""

from __future__ import annotations

import jax
import numpy as np

from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.infra import parallel


class CoherenceCurve:
  """Conditional coherence at the points of a learning curve."""

  def __init__(self, config):
    if not config.evals.classifier_dir:
      raise ValueError(
          'train.curve_start_examples > 0 asks for a learning curve, which'
          ' scores coherence with fixed classifiers: set'
          ' evals.classifier_dir (train them with python -m'
          ' mmvaeplus_jax.tools.classifiers ... --out DIR), or set'
          ' train.curve_start_examples=0 for no curve')
    self._dir = config.evals.classifier_dir
    self._num = int(config.train.curve_test_examples)
    self._batch = int(config.evals.batch_size)
    self._clf = None  # (names, params) once loaded
    # Fail before training when the set is missing (no params loaded yet:
    # the model's modality names are known only to the loop).
    classifiers.load_classifiers(self._dir, None)

  def __call__(self, model, params, eval_src, key, mesh) -> dict[str, float]:
    names = tuple(model.names)
    if self._clf is None or self._clf[0] != names:
      clf_params, _ = classifiers.load_classifiers(self._dir, names)
      self._clf = (names, parallel.replicate(mesh, jax.device_get(
          clf_params)))
    n = len(eval_src) if self._num <= 0 else min(self._num, len(eval_src))
    test = eval_src.read(np.arange(n))
    result = coherence.conditional_coherence(
        parallel.replicate_key(mesh, key), model, params,
        classifiers.classify, self._clf[1], test, batch_size=self._batch,
        mesh=mesh)
    out = result.metrics('coherence/cond')
    out['coherence/self/mean'] = float(np.mean(np.diag(result.matrix)))
    return out
