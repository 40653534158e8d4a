"""The evaluation shell: `evaluate(config, workdir, step)`.

Restores a training checkpoint read-only (abstract-state restore, replicated
over the available devices), runs the evaluators the config enables and
writes `workdir/eval/<step>/metrics.json` (plus TensorBoard scalars under
`workdir/eval/` and PNG figures beside the metrics):

* `eval/bound`: the test bound (IWAE, `config.evals.bound_num_samples`
  samples) over `config.evals.num_examples` test examples;
* coherence (`evaluation.coherence`: the paper's conditional coherence with
  the full M x M matrix, unconditional coherence, optionally the all-subsets
  protocol) when `config.evals.classifier_dir` names trained classifiers; an
  explicit `skipped` reason otherwise;
* unconditional and cross-modal sample grids.

Every number is deterministic for `config.seed`: per-example keys come from
the example index, not from the batch position or the device count.
"""

from __future__ import annotations

import functools
import json
import os

from absl import logging
import jax
import numpy as np

from mmvaeplus_jax import models
from mmvaeplus_jax import parallel
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.training import checkpointing
from mmvaeplus_jax.training import loop
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax.training import writers


def evaluate(config, workdir: str, step: int | None = None) -> dict:
  """Evaluates checkpoint `step` (default: the latest) of `workdir`."""
  loop.quiet_orbax()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ec = config.evals
  model = models.get_model(config.model)
  tx = step_lib.make_optimizer(config.optim)
  _, eval_src = loop.load_sources(config.data)
  n = len(eval_src) if ec.num_examples <= 0 else min(ec.num_examples,
                                                      len(eval_src))
  data = eval_src.read(np.arange(n))  # {name: uint8 [n, ...], 'label': [n]}

  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  example = pipeline.to_model_inputs(
      {k: data[k][:1] for k in model.names})
  abstract = jax.eval_shape(
      functools.partial(step_lib.init_state, model=model, tx=tx),
      jax.random.key(0), example)
  manager = checkpointing.make_manager(
      os.path.join(workdir, 'checkpoints'), read_only=True)
  state = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract, repl), step)
  step = int(state.step)
  params = state.params
  out_dir = os.path.join(workdir, 'eval', str(step))
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  k_bound, k_coh, k_grid = jax.random.split(key, 3)

  metrics: dict = {'step': step, 'num_examples': n}
  skipped: dict[str, str] = {}
  eval_fn = jax.jit(functools.partial(
      step_lib.eval_step, model=model, num_samples=ec.bound_num_samples,
      beta=config.objective.beta, cross_private=config.objective.cross_private))
  batch = min(ec.batch_size, n)
  batch -= batch % mesh.devices.size
  metrics['eval/bound'] = loop.evaluate_bound(
      eval_fn, params, pipeline.ArraySource(data), k_bound, num_examples=n,
      global_batch=batch, mesh=mesh)

  if ec.classifier_dir:
    clf_params, meta = classifiers.load_classifiers(
        ec.classifier_dir, model.names)
    # Everything a jitted evaluator reads lives where the params live.
    clf_params, k_coh = jax.device_put((clf_params, k_coh), repl)
    evaluator = coherence.CoherenceEvaluator(
        model, classifiers.classify, clf_params, data, key=k_coh,
        batch_size=ec.batch_size, num_unconditional=ec.num_unconditional,
        alpha=ec.alpha, all_subsets=ec.all_subsets)
    metrics.update(evaluator.run(params))
    for name in model.names:
      acc = meta.get('test_accuracy', {}).get(name)
      if acc is not None:
        metrics[f'coherence/classifier_test_accuracy/{name}'] = acc
  else:
    skipped['coherence'] = (
        'no classifiers: set --config.evals.classifier_dir to a folder made'
        ' by `python -m mmvaeplus_jax.evaluation.classifiers`')
  skipped['fid'] = ('not wired into eval.py yet (see '
                    'mmvaeplus_jax.evaluation.fid)')

  loop.write_grids(out_dir, step, model, params, pipeline.ArraySource(data),
                   k_grid, ec.grid_examples, mesh, subdir='')
  metrics['skipped'] = skipped
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=2, sort_keys=True)
    writer = writers.create_writer(os.path.join(workdir, 'eval'))
    writer.write_scalars(step, {k: v for k, v in metrics.items()
                                if isinstance(v, (int, float))})
    writer.flush()
  logging.info('Evaluation of step %d written to %s', step, out_dir)
  return metrics
