"""Training a run with the end-of-run evaluators its config asks for.

`train.py` (and the study driver, the notebook) call `train(config,
workdir)`: the training shell (`training.loop`) with the final evaluators
handed to it, so that `training/` never imports `evaluation/`.
"""

from __future__ import annotations

from mmvaeplus_jax.evaluation import curve
from mmvaeplus_jax.evaluation import final_coherence
from mmvaeplus_jax.training import loop


def train(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (`training.loop.train_and_evaluate`),
  handing it the evaluators the config asks for: the final
  `evaluation.final_coherence` (`train.final_coherence`) and the learning
  curve's `evaluation.curve.CoherenceCurve` (`train.curve_start_examples`).

  Returns:
    The run's final metrics (also in `workdir/metrics.json`).
  """
  final_evals = ((final_coherence.final_coherence,)
                 if config.train.final_coherence else ())
  curve_evals = ((curve.CoherenceCurve(config),)
                 if config.train.curve_start_examples > 0 else ())
  return loop.train_and_evaluate(config, workdir, final_evals=final_evals,
                                 curve_evals=curve_evals)
