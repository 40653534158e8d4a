"""Training a run with the end-of-run evaluators its config asks for.

`train.py` (and the study driver, the notebook) call `train(config,
workdir)`: the training shell (`training.loop`) with the final evaluators
handed to it, so that `training/` never imports `evaluation/`.
"""

from __future__ import annotations

from mmvaeplus_jax.evaluation import final_coherence
from mmvaeplus_jax.training import loop


def train(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (`training.loop.train_and_evaluate`),
  handing it the final evaluators the config asks for
  (`train.final_coherence`: `evaluation.final_coherence`).

  Returns:
    The run's final metrics (also in `workdir/metrics.json`).
  """
  final_evals = ((final_coherence.final_coherence,)
                 if config.train.final_coherence else ())
  return loop.train_and_evaluate(config, workdir, final_evals=final_evals)
