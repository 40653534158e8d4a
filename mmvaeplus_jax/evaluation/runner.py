"""The evaluation shell: `evaluate(config, workdir, step)`.

Restores a training checkpoint read-only (abstract-state restore, replicated
over the available devices), runs the evaluators named in
`config.evals.evaluators` (plug-ins, `evaluation.api`) and writes
`workdir/eval/<step>/metrics.json` (every evaluator's metrics merged; a
`skipped` dict `{name: reason}` for whatever could not run), each
evaluator's wall time in `seconds.json` beside it, TensorBoard scalars under
`workdir/eval/` and PNG figures beside the metrics.

Evaluators (default: all of them, in this order):

* `bound`: the test bound L (IWAE, `evals.bound_num_samples` samples) over
  the test examples, `eval/bound`;
* `coherence`: the paper's conditional coherence (full M x M matrix),
  unconditional coherence, optionally the all-subsets protocol, and the
  classifiers' test accuracies (`evaluation.coherence`; needs
  `evals.classifier_dir`);
* `fid`: FID per modality and per (source, target) (`evaluation.frechet`;
  needs the Inception weights, `evals.inception_weights`);
* `fd_clf`: the same protocol in the coherence classifiers' feature space
  (`evaluation.fd_clf`; needs classifiers);
* `latent_classification`: linear probes on u, w, z
  (`evaluation.latent_classification`);
* `diversity`: the spread of repeated cross-modal samples of one input
  against the real within-class spread (`evaluation.diversity`);
* `likelihood`: importance-sampled log p(x_1:M) (`evaluation.likelihood`);
* `figures`: the paper's figures (`evaluation.figures`).

Also available: `grids` (the training loop's two sample grids, cheap),
`samples` (`samples.npz`: uint8 conditional and unconditional samples for
scoring elsewhere, `evaluation.samples`), `alpha_sweep`
(`evaluation.alpha_sweep`) and, for image-caption models (CUB), `colour`
(colour coherence, weight-free, `evaluation.colour`) and `captions` (the
caption <-> image figures and tables, `evaluation.caption_figures`).

Every number is deterministic for `config.seed`: evaluator `name` gets the
key `api.evaluator_key(root, name)`, and per-example keys come from the
example index, not from the batch position or the device count.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

from absl import logging
import jax
import numpy as np

from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax import sample_grids
from mmvaeplus_jax.evaluation import alpha_sweep  # registers 'alpha_sweep'
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import caption_figures  # registers 'captions'
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import colour  # registers 'colour'
from mmvaeplus_jax.evaluation import diversity  # registers 'diversity'
from mmvaeplus_jax.evaluation import fd_clf  # registers 'fd_clf'
from mmvaeplus_jax.evaluation import figures  # registers 'figures'
from mmvaeplus_jax.evaluation import frechet  # registers 'fid'
from mmvaeplus_jax.evaluation import latent_classification  # registers it
from mmvaeplus_jax.evaluation import likelihood  # registers 'likelihood'
from mmvaeplus_jax.evaluation import samples  # registers 'samples'
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.infra import checkpointing
from mmvaeplus_jax.infra import writers
from mmvaeplus_jax import train_state

del alpha_sweep, caption_figures, colour, diversity, fd_clf, figures, frechet
del latent_classification, likelihood, samples

ROOT_KEY_SALT = 1_000_003
SECONDS_FILE = 'seconds.json'  # beside metrics.json: wall time per evaluator


# ---------------------------------------------------------------- evaluators



def _per_example_bound(params, key, index, batch, *, model, num_samples,
                       beta, options):
  """`[B]` test bound per example (the value of `model.objective` with its
  default estimator); example i is evaluated alone with key fold_in(key, i)
  (vmapped), so its value does not depend on the batch it sits in."""
  batch = {n: api.to_float(batch[n]) for n in model.names}

  def one(i, x):
    x1 = {n: v[None] for n, v in x.items()}
    return model.objective(jax.random.fold_in(key, i), params, x1,
                           num_samples=num_samples, beta=beta, estimator=None,
                           **dict(options))[0]

  return jax.vmap(one)(index, batch)


_bound_jit = jax.jit(
    _per_example_bound,
    static_argnames=('model', 'num_samples', 'beta', 'options'))


@api.register('bound')
def bound_evaluator(ctx: api.EvalContext) -> dict:
  """`eval/bound`: the mean test bound (the model's bound with K =
  `evals.bound_num_samples`, the config's beta), over all of `ctx.data`.

  Example i's noise comes from `fold_in(key, i)` whatever the batch size or
  device count; the per-example values are averaged on the host in float64
  in example order.
  """
  ec, o = ctx.config.evals, ctx.config.objective
  fn = functools.partial(
      _bound_jit, model=ctx.model, num_samples=int(ec.bound_num_samples),
      beta=float(o.beta),
      options=tuple(models.objective_options(o, ctx.model).items()))
  n = len(ctx.data['label'])
  key = parallel.replicate_key(ctx.mesh, ctx.key)
  per_example = api.map_batches(
      fn, ctx.mesh, n, batch_size=ec.batch_size,
      inputs={m: ctx.data[m] for m in ctx.model.names},
      args=(ctx.params, key))
  return {'eval/bound': float(np.mean(np.asarray(per_example, np.float64)))}


@api.register('coherence')
def coherence_evaluator(ctx: api.EvalContext) -> dict:
  """Conditional / unconditional (/ all-subsets) coherence and the
  classifiers' test accuracies (`evaluation.coherence`)."""
  if ctx.classifiers is None:
    return api.skip('coherence', (
        'no classifiers: set --config.evals.classifier_dir to a folder made'
        ' by `python -m mmvaeplus_jax.tools.classifiers`'))
  ec = ctx.config.evals
  clf_params, meta = ctx.classifiers
  key = parallel.replicate_key(ctx.mesh, ctx.key)
  evaluator = coherence.CoherenceEvaluator(
      ctx.model, classifiers.classify, clf_params, ctx.data, key=key,
      batch_size=ec.batch_size, num_unconditional=ec.num_unconditional,
      alpha=ec.alpha, all_subsets=ec.all_subsets, mesh=ctx.mesh)
  out = evaluator.run(ctx.params)
  for name in ctx.model.names:
    acc = meta.get('test_accuracy', {}).get(name)
    if acc is not None:
      out[f'coherence/classifier_test_accuracy/{name}'] = acc
  return out


@api.register('grids')
def grids_evaluator(ctx: api.EvalContext) -> dict:
  """The training loop's two sample grids (`sample_grids.write_sample_grids`),
  cheap: `unconditional_<step>.png` and `cross_modal_<step>.png` in
  `ctx.out_dir`."""
  sample_grids.write_sample_grids(ctx.out_dir, ctx.step, ctx.model, ctx.params,
                              pipeline.ArraySource(ctx.data), ctx.key,
                              ctx.config.evals.grid_examples, ctx.mesh,
                              subdir='')
  return {}


def resolve(spec: str) -> list[tuple[str, api.Evaluator]]:
  """Evaluator names (comma-separated) -> [(name, fn)], checked up front.

  Raises:
    KeyError: an unknown name (the message lists the known ones).
  """
  out = []
  for name in api.parse_names(spec):
    try:
      out.append((name, api.get(name)))
    except KeyError:
      known = api.names()
      raise KeyError(
          f'unknown evaluator {name!r} in config.evals.evaluators={spec!r};'
          f' known: {", ".join(known)}') from None
  return out


# ------------------------------------------------------------------- sources


class LazySource:
  """A split read only when first used (`len` / `read`)."""

  def __init__(self, load):
    self._load, self._src = load, None

  def _get(self):
    if self._src is None:
      self._src = self._load()
    return self._src

  def __len__(self) -> int:
    return len(self._get())

  def read(self, indices):
    return self._get().read(indices)


def _train_source(data_cfg):
  """The train split, opened on first use (most evaluators never read it)."""
  return LazySource(lambda: sources.split_source(data_cfg, data_cfg.train_split))


def _eval_source(data_cfg):
  """The test split (prepares the dataset if needed), as `loop` reads it."""
  sources.prepare_data(data_cfg)
  return sources.split_source(data_cfg, data_cfg.eval_split)


# -------------------------------------------------------------------- runner


def _merge(metrics: dict, skipped: dict, name: str, result: dict) -> None:
  if not isinstance(result, dict):
    raise TypeError(f'evaluator {name!r} returned {type(result).__name__},'
                    ' expected a dict of metrics')
  for k, v in result.items():
    if k == 'skipped':
      skipped.update(v)
    elif k in metrics:
      raise ValueError(f'evaluator {name!r} returned metric {k!r}, already'
                       ' set by an earlier evaluator')
    else:
      metrics[k] = v


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items()
          if isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, bool) and math.isfinite(float(v))}


def run_classifier_dir(classifier_dir: str, workdir: str) -> str:
  """The coherence classifiers of an evaluation: `evals.classifier_dir` if
  set, else the run's own (`<workdir>/classifiers`, saved by the end-of-run
  coherence of `train.final_coherence`) if it has them, else '' (the
  evaluators that need classifiers are skipped, naming the fix). The
  folder used is recorded in metrics.json as `classifier_dir`."""
  if classifier_dir:
    return classifier_dir
  own = os.path.join(workdir, 'classifiers')
  return own if os.path.isdir(own) else ''


def evaluate(config, workdir: str, step: int | None = None, *,
             devices=None, tag: str = '') -> dict:
  """Evaluates checkpoint `step` (default: the latest) of `workdir`.

  Args:
    config: the run's config (`config.evals` names the evaluators).
    workdir: the training run's folder.
    step: the checkpoint step (None: the latest).
    devices: the devices of the evaluation mesh (default: all, every host's).
      The numbers do not depend on this choice (`api.map_batches`).
    tag: '' writes `workdir/eval/<step>/` and TensorBoard scalars; a tag
      writes `workdir/eval/<step>-<tag>/` only (another classifier set, an
      extra sweep: the step's main evaluation is left as it is).

  Returns:
    The metrics written to `workdir/eval/<step>[-<tag>]/metrics.json`.

  Raises:
    KeyError: `config.evals.evaluators` names an unknown evaluator (before
      anything runs).
  """
  checkpointing.quiet_orbax()
  if tag and not all(ch.isalnum() or ch in '_.' for ch in tag):
    raise ValueError(f'evaluation tag {tag!r}: use letters, digits, _ .')
  evaluators = resolve(config.evals.evaluators)
  mesh = parallel.make_mesh(devices)
  parallel.check_conv_impl(config.model.get('conv_impl', 'xla'),
                           mesh.devices.size)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ec = config.evals
  model = train_state.model_of(config)
  eval_src = _eval_source(config.data)
  sources.check_model_data(config.data, config.model)
  n = len(eval_src) if ec.num_examples <= 0 else min(ec.num_examples,
                                                      len(eval_src))
  data = eval_src.read(np.arange(n))  # {name: uint8 [n, ...], 'label': [n]}

  repl = parallel.replicated(mesh)
  params, step = train_state.restore_params(config, model, workdir, step,
                                     sharding=repl)
  out_dir = os.path.join(workdir, 'eval', f'{step}-{tag}' if tag else str(step))
  os.makedirs(out_dir, exist_ok=True)
  root = jax.random.fold_in(jax.random.key(config.seed), ROOT_KEY_SALT)

  clfs, clf_dir = None, run_classifier_dir(ec.classifier_dir, workdir)
  if clf_dir:
    logging.info('coherence classifiers: %s', clf_dir)
    clf_params, meta = classifiers.load_classifiers(clf_dir, model.names)
    clfs = (parallel.replicate(mesh, clf_params), meta)

  metrics: dict = {'step': step, 'num_examples': n,
                   'classifier_dir': clf_dir}
  skipped: dict[str, str] = {}
  seconds: dict[str, float] = {}  # wall time per evaluator (not a metric)
  train_source = _train_source(config.data)
  for name, fn in evaluators:
    ctx = api.EvalContext(
        config=config, model=model, params=params, data=data,
        train_source=train_source, mesh=mesh,
        key=api.evaluator_key(root, name), out_dir=out_dir, step=step,
        classifiers=clfs)
    start = time.time()
    _merge(metrics, skipped, name, fn(ctx))
    seconds[name] = round(time.time() - start, 1)
    logging.info('evaluator %s: %.1f s%s', name, time.time() - start,
                 f' (skipped: {skipped[name]})' if name in skipped else '')
  metrics['skipped'] = skipped
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, SECONDS_FILE), 'w') as f:
      json.dump(seconds, f, indent=2)
    if not tag:
      writer = writers.create_writer(os.path.join(workdir, 'eval'))
      writer.write_scalars(step, _scalars(metrics))
      writer.flush()
  logging.info('Evaluation of step %d written to %s', step, out_dir)
  return metrics
