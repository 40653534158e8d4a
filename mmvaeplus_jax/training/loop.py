"""The training shell: every side effect of a training run lives here.

`train_and_evaluate(config, workdir)`:

* builds the mesh (all devices of all hosts), the model, the optimiser and the
  abstract train state (`jax.eval_shape`), replicated on the mesh;
* restores the latest checkpoint of `workdir/checkpoints` if there is one
  (same workdir = resume), else initialises;
* runs the jitted, donated `train_step` on globally sharded batches, with
  one-step-lagged metric reads so the device queue stays full;
* logs scalars (console + TensorBoard), shows a progress bar with steps/s and
  ETA, evaluates the test bound and writes unconditional and cross-modal
  sample grids (PNG) every `eval_every_steps`, checkpoints every
  `checkpoint_every_steps` and at the end;
* with `train.final_coherence`, measures the final cross-modal coherence
  (`evaluation.coherence`) with digit classifiers trained in the run on the
  train split (or loaded from `evals.classifier_dir`), prints it and adds
  it to `metrics.json`;
* on SIGTERM saves a checkpoint and returns normally (exit status 0);
* with `train.max_train_seconds > 0`, stops at the first log step past that
  much training time (from the start of this call), saves a checkpoint and
  ends as a finished run with `stopped_at_time_limit` in its metrics;
* stops with `NonFiniteError` after `max_consecutive_nonfinite` skipped
  updates, without saving, so the last good checkpoint stays the latest.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mmvaeplus_jax import models
from mmvaeplus_jax import parallel
from mmvaeplus_jax import plotting
from mmvaeplus_jax import runs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import checkpointing
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax.training import writers


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


def total_steps(train_cfg, num_examples: int) -> int:
  if train_cfg.num_steps > 0:
    return int(train_cfg.num_steps)
  per_epoch = pipeline.steps_per_epoch(num_examples, train_cfg.batch_size)
  return int(train_cfg.num_epochs * per_epoch)


class _Sigterm:
  """Sets a flag on SIGTERM (main thread only); restores the old handler."""

  def __init__(self):
    self.received = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: checkpointing and stopping.')
    self.received = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def evaluate_bound(eval_fn, params, eval_src, key, *, num_examples,
                   global_batch, mesh):
  """Mean test bound over the first `num_examples` (whole batches)."""
  n_batches = max(1, min(num_examples, len(eval_src)) // global_batch)
  total = 0.0
  for i in range(n_batches):
    idx = np.arange(i * global_batch, (i + 1) * global_batch)
    idx = pipeline.host_indices(idx, jax.process_index(), jax.process_count())
    batch = parallel.global_batch(
        mesh, pipeline.to_model_inputs(eval_src.read(idx)))
    total += float(eval_fn(params, batch, jax.random.fold_in(key, i)))
  return total / (n_batches * global_batch)


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Returns:
    The final metrics dict (also written to `workdir/metrics.json`).
  """
  checkpointing.quiet_orbax()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  runs.save_config(config, workdir)  # the run describes itself
  tc = config.train
  model = models.get_model(config.model)
  tx = step_lib.make_optimizer(config.optim)
  train_src, eval_src = sources.load_sources(config.data)
  keys = tuple(model.names) + ('label',)  # only what the model reads
  train_src, eval_src = (pipeline.Select(s, keys) for s in (train_src, eval_src))
  num_steps = total_steps(tc, len(train_src))

  mesh = parallel.make_mesh()
  parallel.check_batch_size(tc.batch_size, mesh)
  parallel.check_conv_impl(config.model.get('conv_impl', 'xla'),
                           mesh.devices.size)
  repl = parallel.replicated(mesh)

  root = jax.random.key(config.seed)
  init_key, train_key, eval_key = jax.random.split(root, 3)
  del root

  # Shapes first: the abstract state, then init or restore into it.
  example = pipeline.host_batch(train_src, 0, seed=config.seed,
                                global_batch=tc.batch_size)
  init_fn = functools.partial(step_lib.init_state, model=model, tx=tx)
  abstract = jax.eval_shape(init_fn, init_key, example)
  abstract = checkpointing.abstract_with_shardings(abstract, repl)
  manager = checkpointing.make_manager(
      os.path.join(workdir, 'checkpoints'), max_to_keep=tc.keep_checkpoints)
  if manager.latest_step() is not None:
    state = checkpointing.restore(manager, abstract)
    logging.info('Resumed from step %d in %s', int(state.step), workdir)
  else:
    state = jax.jit(init_fn, out_shardings=repl)(
        init_key, jax.tree.map(jnp.asarray, example))
  start = int(state.step)
  summary_path = os.path.join(workdir, 'metrics.json')
  if start >= num_steps:
    logging.warning('%s already holds a finished run (step %d of %d); '
                    'nothing to train.', workdir, start, num_steps)
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        return json.load(f)
    return {'step': start}

  train_fn = step_lib.jit_train_step(config, model, tx, mesh)
  o = config.objective
  eval_fn = jax.jit(functools.partial(
      step_lib.eval_step, model=model, num_samples=o.num_samples,
      beta=o.beta,
      options=tuple(step_lib.objective_options(o, model).items())))

  is_main = jax.process_index() == 0
  writer = writers.create_writer(workdir, just_logging=not is_main)
  if start == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  logging.info('Training %d -> %d steps on %d devices (%d processes), '
               'global batch %d, workdir %s', start, num_steps,
               mesh.devices.size, jax.process_count(), tc.batch_size, workdir)

  history, summary = [], {}
  pending = None
  bar = tqdm.tqdm(total=num_steps, initial=start, disable=not is_main,
                  unit='step', dynamic_ncols=True)
  t_log = t_start = time.time()
  out_of_time = False

  def drain(pending):
    """Reads one step's metrics (lagged), checks non-finite streaks."""
    step_done, metrics = pending
    metrics = jax.device_get(metrics)
    history.append(metrics)
    if metrics['train/nonfinite_consecutive'] >= tc.max_consecutive_nonfinite:
      # Let an asynchronous save in flight finish: never a half-written
      # checkpoint. Skipped updates keep the parameters, so every checkpoint
      # holds the last good parameters.
      manager.wait_until_finished()
      raise NonFiniteError(
          f'{int(metrics["train/nonfinite_consecutive"])} consecutive steps'
          f' with a non-finite loss or gradient (last at step {step_done});'
          ' their updates were skipped, so the checkpoints in'
          f' {manager.directory} hold the last good parameters. Lower'
          ' optim.lr or check the data.')
    return metrics

  with _Sigterm() as sigterm:
    data = pipeline.iterate(
        train_src, start, num_steps, seed=config.seed,
        global_batch=tc.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), prefetch=config.data.prefetch)
    step = start
    for step, local in data:
      batch = parallel.global_batch(mesh, local)
      state, metrics = train_fn(state, batch, train_key)
      if pending is not None:
        last = drain(pending)
        bar.set_postfix(loss=f'{last["train/loss"]:.1f}', refresh=False)
      pending = (step + 1, metrics)
      bar.update(1)
      done = step + 1
      if done % tc.log_every_steps == 0 or done == num_steps:
        drain(pending)
        pending = None
        scalars = {k: float(np.mean([h[k] for h in history]))
                   for k in history[-1] if 'nonfinite' not in k}
        scalars['train/nonfinite_steps'] = int(
            history[-1]['train/nonfinite_steps'])
        scalars['train/steps_per_sec'] = len(history) / (time.time() - t_log)
        writer.write_scalars(done, scalars)
        summary.update(scalars)
        history, t_log = [], time.time()
        if tc.max_train_seconds > 0 and done < num_steps:
          out_of_time = _agree(t_log - t_start > tc.max_train_seconds)
      if out_of_time:
        # As at num_steps: evaluated (test bound, grids) and checkpointed.
        num_steps = done
      if done % tc.eval_every_steps == 0 or done == num_steps:
        summary.update(_evaluate(config, workdir, done, model, state.params,
                                 eval_fn, eval_src, eval_key, mesh, writer))
      if (done % tc.checkpoint_every_steps == 0 or done == num_steps
          or sigterm.received):
        checkpointing.save(manager, done, state)
      if sigterm.received:
        manager.wait_until_finished()
        logging.warning('Stopped by SIGTERM after step %d; checkpoint saved.',
                        done)
        break
      if out_of_time:
        logging.warning('Stopped after step %d: %.0f s of training reached'
                        ' train.max_train_seconds=%g; checkpoint saved.',
                        done, time.time() - t_start, tc.max_train_seconds)
        break
    if pending is not None:
      drain(pending)
  bar.close()
  manager.wait_until_finished()
  if tc.final_coherence and not sigterm.received:
    coh = final_coherence(config, workdir, model, state.params, train_src,
                          eval_src, jax.random.fold_in(eval_key, num_steps),
                          mesh)
    writer.write_scalars(int(state.step), coh)
    summary.update(coh)
  writer.flush()
  summary['step'] = int(state.step)
  summary['train/nonfinite_steps'] = int(state.nonfinite_total)
  # Stopped by SIGTERM before num_steps: the run is not finished (callers
  # such as the study driver must not evaluate it as if it were).
  summary['interrupted'] = bool(sigterm.received) and int(
      state.step) < num_steps
  summary['stopped_at_time_limit'] = out_of_time
  if is_main:
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  return summary


def _agree(flag: bool) -> bool:
  """Process 0's `flag` on every process (hosts' clocks differ; all must
  stop at the same step)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _evaluate(config, workdir, step, model, params, eval_fn, eval_src, key,
              mesh, writer):
  key = jax.random.fold_in(key, step)
  k_bound, k_grid = jax.random.split(key)
  bound = evaluate_bound(
      eval_fn, params, eval_src, k_bound,
      num_examples=config.train.eval_examples,
      global_batch=config.train.batch_size, mesh=mesh)
  images = plotting.write_sample_grids(workdir, step, model, params, eval_src,
                                       k_grid, config.train.grid_examples,
                                       mesh)
  writer.write_scalars(step, {'eval/bound': bound})
  writer.write_images(step, images)
  return {'eval/bound': bound}


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


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
