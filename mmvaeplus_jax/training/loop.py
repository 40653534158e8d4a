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
* after the last step runs the final evaluators it is handed
  (`final_evals`; e.g. the end-of-run coherence of `train.final_coherence`,
  `evaluation/final_coherence.py`, which `experiments.train.train` hands
  over) and adds their metrics to `metrics.json`; the loop itself imports
  nothing of `evaluation/`;
* with `train.curve_start_examples > 0`, evaluates a learning curve: at
  the steps of `curve_steps` (a geometric schedule of examples seen, and
  the last step) it calls the curve evaluators it is handed
  (`curve_evals`; `evaluation/curve.py`) with their own key and appends a
  row per point to `workdir/curve.jsonl` (`CURVE_FILE`): step, examples
  seen, wall seconds since the start of training (compilation included),
  training seconds (the same, less the time spent evaluating: curve
  points, test bound, grids) and the metrics;
* on SIGTERM saves a checkpoint and returns normally (exit status 0);
* with `train.max_train_seconds > 0`, stops at the first log step past that
  much training time (from the start of this call), saves a checkpoint and
  ends as a finished run with `stopped_at_time_limit` in its metrics;
* stops with `NonFiniteError` after `max_consecutive_nonfinite` skipped
  updates, without saving, so the last good checkpoint stays the latest.

With `train.num_runs = S > 1` it hands over to `train_runs`: S independent
runs in one compiled program (run r = the separate run of `run_config(config,
r)`, seed `seed + r`), each with its own run directory `run_workdir(workdir,
r)`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import threading
import time
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mmvaeplus_jax import models
from mmvaeplus_jax import sample_grids
from mmvaeplus_jax import train_state
from mmvaeplus_jax.infra import checkpointing
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import rundir
from mmvaeplus_jax.infra import writers
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import step as step_lib

# A final evaluator: (config, workdir, model, params, train_src, eval_src,
# key, mesh) -> {metric: float}.
FinalEval = Callable[..., dict]
# A curve evaluator: (model, params, eval_src, key, mesh) -> {metric: float}.
CurveEval = Callable[..., dict]

CURVE_FILE = 'curve.jsonl'
# Folded into the eval key for the curve's points (the test bound and the
# grids use fold_in(eval_key, step)): the curve draws its own numbers.
_CURVE_TAG = 0x63757276  # 'curv'


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


def curve_steps(train_cfg, num_steps: int) -> list[int]:
  """The steps of a run's learning curve, ascending.

  The first step at which at least `curve_start_examples * curve_factor**i`
  examples have been seen (i = 0, 1, ...; examples = step x global batch),
  below `num_steps`, then `num_steps` itself. Empty when
  `curve_start_examples <= 0`.
  """
  start = float(train_cfg.curve_start_examples)
  if start <= 0:
    return []
  factor = float(train_cfg.curve_factor)
  if factor <= 1:
    raise ValueError(
        f'train.curve_factor={factor} must be > 1 (each point of the'
        ' learning curve at curve_factor x the examples of the previous)')
  batch = int(train_cfg.batch_size)
  steps, target = set(), start
  while True:
    step = max(1, -(-int(round(target)) // batch))
    if step >= num_steps:
      break
    steps.add(step)
    target *= factor
  steps.add(int(num_steps))
  return sorted(steps)


def _read_curve(path: str, upto: int) -> list[dict]:
  """The curve rows of `path` with step <= `upto` (a resumed run drops the
  points evaluated after its last checkpoint; they are evaluated again)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r['step'] <= upto]


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


def train_and_evaluate(config, workdir: str, *,
                       final_evals: Sequence[FinalEval] = (),
                       curve_evals: Sequence[CurveEval] = ()):
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Args:
    config: the run's config.
    workdir: its directory.
    final_evals: evaluators run once after the last step (not after a
      SIGTERM), each `fn(config, workdir, model, params, train_src, eval_src,
      key, mesh) -> {metric: float}` with the final params, both data
      sources, the key `fold_in(eval_key, num_steps)` and the mesh; their
      metrics go to TensorBoard and metrics.json. `train.final_coherence`
      asks for `evaluation.final_coherence.final_coherence`:
      `experiments.train.train(config, workdir)` (what train.py calls) hands
      it over.
    curve_evals: evaluators run at every step of `curve_steps`, each
      `fn(model, params, eval_src, key, mesh) -> {metric: float}` with the
      current params and the key `fold_in(fold_in(eval_key, _CURVE_TAG),
      step)`; their metrics are rows of `workdir/curve.jsonl` and
      TensorBoard scalars under `curve/`. `train.curve_start_examples > 0`
      asks for `evaluation.curve.CoherenceCurve`, which
      `experiments.train.train` hands over.

  Returns:
    The final metrics dict (also written to `workdir/metrics.json`).

  Raises:
    ValueError: `train.final_coherence` (or `train.curve_start_examples`)
      is set but no final (curve) evaluator was handed over.
  """
  if int(config.train.get('num_runs', 1)) != 1:
    return train_runs(config, workdir, final_evals=final_evals,
                      curve_evals=curve_evals)
  t_begin = time.time()
  run_betas(config)  # none with num_runs = 1 (ValueError)
  run_lrs(config)
  _require_final_evals(config, final_evals, 'train_and_evaluate')
  if config.train.curve_start_examples > 0 and not curve_evals:
    raise ValueError(
        'config.train.curve_start_examples > 0 asks for a learning curve but'
        ' train_and_evaluate was handed no curve evaluator: call'
        ' mmvaeplus_jax.experiments.train.train(config, workdir) (what'
        ' train.py does), or pass curve_evals=[evaluation.curve.'
        'CoherenceCurve(config)]')
  checkpointing.quiet_orbax()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  rundir.save_config(config, workdir)  # the run describes itself
  tc = config.train
  model, tx, train_src, eval_src, mesh = _setup(config)
  num_steps = total_steps(tc, len(train_src))
  repl = parallel.replicated(mesh)

  root = jax.random.key(config.seed)
  init_key, train_key, eval_key = jax.random.split(root, 3)
  del root

  # Shapes first: the abstract state, then init or restore into it.
  example = pipeline.host_batch(train_src, 0, seed=config.seed,
                                global_batch=tc.batch_size)
  init_fn = functools.partial(train_state.init_state, model=model, tx=tx)
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
  eval_fn = _jit_eval_step(model, config.objective)

  is_main = jax.process_index() == 0
  writer = writers.create_writer(workdir, just_logging=not is_main)
  if start == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  logging.info('Training %d -> %d steps on %d devices (%d processes), '
               'global batch %d, workdir %s', start, num_steps,
               mesh.devices.size, jax.process_count(), tc.batch_size, workdir)

  curve_at = set(curve_steps(tc, num_steps)) if curve_evals else set()
  curve_path = os.path.join(workdir, CURVE_FILE)
  curve = _read_curve(curve_path, start) if curve_at else []
  if is_main and curve_at:  # drop points past the restored checkpoint
    with open(curve_path, 'w') as f:
      f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in curve)
  # Seconds of earlier calls (a resumed run continues its clocks from its
  # last curve point), and seconds spent evaluating in this call.
  wall_offset = curve[-1]['wall_seconds'] if curve else 0.0
  train_offset = curve[-1]['train_seconds'] if curve else 0.0
  eval_time = 0.0
  curve_key = jax.random.fold_in(eval_key, _CURVE_TAG)

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
      raise _nonfinite_error(metrics['train/nonfinite_consecutive'],
                             step_done, '', str(manager.directory))
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
        scalars = _window_scalars(history, lambda v: v,
                                  len(history) / (time.time() - t_log))
        writer.write_scalars(done, scalars)
        summary.update(scalars)
        history, t_log = [], time.time()
        if tc.max_train_seconds > 0 and done < num_steps:
          out_of_time = _agree(t_log - t_start > tc.max_train_seconds)
      if out_of_time:
        # As at num_steps: evaluated (test bound, grids) and checkpointed.
        num_steps = done
      if done in curve_at or (out_of_time and curve_at):
        if pending is not None:  # the step's time ends when it is done
          drain(pending)
          pending = None
        t_eval = time.time()
        wall = wall_offset + t_eval - t_begin
        row = {'step': done, 'examples': done * tc.batch_size,
               'wall_seconds': wall,
               'train_seconds': train_offset + t_eval - t_begin - eval_time}
        point = {}
        for curve_eval in curve_evals:
          point.update(curve_eval(model, state.params, eval_src,
                                  jax.random.fold_in(curve_key, done), mesh))
        row['eval_seconds'] = time.time() - t_eval
        row['metrics'] = point
        eval_time += row['eval_seconds']
        writer.write_scalars(done, {f'curve/{k}': v for k, v in point.items()})
        if is_main:
          with open(curve_path, 'a') as f:
            f.write(json.dumps(row, sort_keys=True) + '\n')
        logging.info('Curve point at step %d (%d examples, %.0f s training):'
                     ' mean cross-modal coherence %.3f', done, row['examples'],
                     row['train_seconds'],
                     point.get('coherence/cond/mean', float('nan')))
      if done % tc.eval_every_steps == 0 or done == num_steps:
        t_eval = time.time()
        summary.update(_evaluate(config, workdir, done, model, state.params,
                                 eval_fn, eval_src, eval_key, mesh, writer))
        eval_time += time.time() - t_eval
      if (done % tc.checkpoint_every_steps == 0 or done == num_steps
          or sigterm.received):
        checkpointing.save(manager, done, state)
      if _stopped(sigterm.received, out_of_time, done, t_start, tc,
                  [manager]):
        break
    if pending is not None:
      drain(pending)
  bar.close()
  manager.wait_until_finished()
  for final_eval in final_evals if not sigterm.received else ():
    out = final_eval(config, workdir, model, state.params, train_src,
                     eval_src, jax.random.fold_in(eval_key, num_steps), mesh)
    writer.write_scalars(int(state.step), out)
    summary.update(out)
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


def _require_final_evals(config, final_evals, who: str):
  if config.train.final_coherence and not final_evals:
    raise ValueError(
        f'config.train.final_coherence is set but {who} was handed no final'
        ' evaluator: call mmvaeplus_jax.experiments.train.train(config,'
        ' workdir) (what train.py does), or pass final_evals='
        '[evaluation.final_coherence.final_coherence]')


def _setup(config):
  """The model, optimizer, data sources and mesh of a job (plain or S
  runs): the sources keep only what the model reads, the train split with
  `data.missing_rate`'s mask; the batch size and conv path are checked
  against the mesh."""
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  train_src, eval_src = sources.load_sources(config.data)
  sources.check_model_data(config.data, config.model)
  keys = tuple(model.names) + ('label',)  # only what the model reads
  train_src, eval_src = (pipeline.Select(s, keys)
                         for s in (train_src, eval_src))
  # Missing modalities (data.missing_rate > 0): the train split only.
  train_src = sources.with_missing(config.data, train_src, model.names)
  if isinstance(train_src, pipeline.MissingSource):
    logging.info('Training with missing modalities: %.4f of the train'
                 ' split\'s modality entries missing (data.missing_rate=%g,'
                 ' seed %d)', 1.0 - train_src.mask.mean(),
                 config.data.missing_rate, config.data.missing_seed)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_conv_impl(config.model.get('conv_impl', 'xla'),
                           mesh.devices.size)
  return model, tx, train_src, eval_src, mesh


def _jit_eval_step(model, objective):
  """The jitted test-bound step of `objective` (its beta is static)."""
  return jax.jit(functools.partial(
      step_lib.eval_step, model=model, num_samples=objective.num_samples,
      beta=objective.beta,
      options=tuple(models.objective_options(objective, model).items())))


def _nonfinite_error(streak, step: int, where: str, checkpoints: str):
  return NonFiniteError(
      f'{int(streak)} consecutive steps with a non-finite loss or gradient'
      f'{where} (last at step {step}): their updates were skipped, so the'
      f' checkpoints in {checkpoints} hold the last good parameters. Lower'
      ' optim.lr or check the data.')


def _window_scalars(history, pick, steps_per_sec: float) -> dict:
  """The logged scalars of a window of steps' metrics: means, the
  non-finite total at its end, the rate; `pick` selects a run's value."""
  scalars = {k: float(np.mean([pick(h[k]) for h in history]))
             for k in history[-1] if 'nonfinite' not in k}
  scalars['train/nonfinite_steps'] = int(
      pick(history[-1]['train/nonfinite_steps']))
  scalars['train/steps_per_sec'] = steps_per_sec
  return scalars


def _stopped(sigterm: bool, out_of_time: bool, done: int, t_start: float,
             tc, managers) -> bool:
  """True (after logging why) when the loop stops early at step `done`:
  SIGTERM (the checkpoint saves finish first) or `max_train_seconds`."""
  if sigterm:
    for m in managers:
      m.wait_until_finished()
    logging.warning('Stopped by SIGTERM after step %d; checkpoint saved.',
                    done)
    return True
  if out_of_time:
    logging.warning('Stopped after step %d: %.0f s of training reached'
                    ' train.max_train_seconds=%g; checkpoint saved.',
                    done, time.time() - t_start, tc.max_train_seconds)
    return True
  return False


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
  images = sample_grids.write_sample_grids(
      workdir, step, model, params, eval_src, k_grid,
      config.train.grid_examples, mesh)
  writer.write_scalars(step, {'eval/bound': bound})
  writer.write_images(step, images)
  return {'eval/bound': bound}


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# ------------------------------------------------------ S runs in one program


def _run_floats(config, key: str, what: str, single: str):
  """The per-run floats of `train.<key>` (None when '')."""
  text = str(config.train.get(key, '') or '').strip()
  if not text:
    return None
  num_runs = int(config.train.num_runs)
  try:
    values = [float(x) for x in text.split(',')]
  except ValueError:
    raise ValueError(
        f'train.{key}={text!r} must be comma-separated floats, one per'
        ' run') from None
  if num_runs == 1 or len(values) != num_runs:
    raise ValueError(
        f'train.{key}={text!r} gives {len(values)} {what} for'
        f' train.num_runs={num_runs} runs: give one per run (with'
        f' num_runs = 1 set {single} instead), or \'\' for'
        f' {single} in every run')
  return values


def run_betas(config) -> list[float] | None:
  """The runs' betas of `train.run_betas` (None: '' = `objective.beta`).

  Raises:
    ValueError: not one float per run (`train.num_runs`), or set with
      num_runs = 1.
  """
  return _run_floats(config, 'run_betas', 'betas', 'objective.beta')


def run_lrs(config) -> list[float] | None:
  """The runs' learning rates of `train.run_lrs` (None: '' = `optim.lr`).

  Raises:
    ValueError: not one positive float per run (`train.num_runs`), or set
      with num_runs = 1.
  """
  lrs = _run_floats(config, 'run_lrs', 'learning rates', 'optim.lr')
  if lrs is not None and min(lrs) <= 0:
    raise ValueError(
        f'train.run_lrs={config.train.run_lrs!r}: every learning rate must'
        ' be > 0')
  return lrs


def run_config(config, r: int):
  """Run r's own config in a job of `train.num_runs` runs: seed `seed + r`,
  `objective.beta` its entry of `train.run_betas` and `optim.lr` its entry
  of `train.run_lrs` (if set), `num_runs` 1, `run_betas` and `run_lrs` '',
  the rest as `config`: the config of the separate run that run r equals
  (what its `config.json` holds, so `load_run` and `eval.py` treat it as a
  plain run)."""
  betas, lrs = run_betas(config), run_lrs(config)
  c = copy.deepcopy(config)
  c.seed = int(config.seed) + int(r)
  if betas is not None:
    c.objective.beta = betas[r]
  if lrs is not None:
    c.optim.lr = lrs[r]
  c.train.num_runs = 1
  c.train.run_betas = ''
  if 'run_lrs' in c.train:
    c.train.run_lrs = ''
  return c


def run_workdir(workdir: str, r: int) -> str:
  """Run r's directory in a job of `train.num_runs` runs."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), f'run{r}')


def _check_runs(config) -> int:
  tc = config.train
  num_runs = int(tc.num_runs)
  if num_runs < 1:
    raise ValueError(
        f'train.num_runs={num_runs} must be >= 1 (the number of runs, seeds'
        ' seed .. seed + num_runs - 1, trained at once)')
  if tc.curve_start_examples > 0:
    raise ValueError(
        f'train.num_runs={num_runs} does not evaluate learning curves'
        ' (train.curve_start_examples > 0): set --config.train.'
        'curve_start_examples=0, or train the runs separately')
  return num_runs


def _across_runs(per_run: list[dict]) -> dict:
  """{'mean': {k: mean}, 'std': {k: std (ddof 1)}} over the runs of the
  numeric metrics every run has."""
  keys = [k for k in per_run[0]
          if all(isinstance(m.get(k), (int, float))
                 and not isinstance(m.get(k), bool) for m in per_run)]
  values = {k: np.asarray([m[k] for m in per_run], np.float64) for k in keys}
  ddof = 1 if len(per_run) > 1 else 0
  return {'mean': {k: float(v.mean()) for k, v in values.items()},
          'std': {k: float(v.std(ddof=ddof)) for k, v in values.items()}}


def train_runs(config, workdir: str, *,
               final_evals: Sequence[FinalEval] = (),
               curve_evals: Sequence[CurveEval] = ()):
  """Trains S = `train.num_runs` independent runs at once in `workdir`.

  Run r is the separate run of `run_config(config, r)` (seed `seed + r`,
  beta its entry of `train.run_betas` and the learning rate its entry of
  `train.run_lrs` if set: then traced [S] inputs of the step in place of
  the static `objective.beta` / `optim.lr`):
  its init key, its step noise (`train_step`'s `fold_in(base_key, step)`
  from its own base key) and its data order (`pipeline.iterate` with its
  seed) are that run's, so its parameters are the separate run's up to
  float32 reassociation (the vmapped program may order sums differently;
  tests/num_runs_test.py). One compiled step (`step.jit_train_steps`)
  trains all S on a state with a leading run axis and a batch [S, B, ...];
  on several devices the state (run axis included) is replicated and each
  run's batch sharded over 'data', as in a plain run.

  Outputs: run r's directory `run_workdir(workdir, r)` holds what a plain
  run's does (config.json of `run_config(config, r)`, checkpoints/ of its
  slice of the state as a plain state, metrics.json, TensorBoard events,
  sample grids), so `load_run` and `eval.py` read one run alone.
  `workdir/metrics.json` holds every run's final metrics (`runs`) and their
  `mean` and `std` (ddof 1) across runs. Restarting the job resumes all S
  from their checkpoints (they must be at the same step).

  As `train_and_evaluate` for a plain run: eval bound and grids every
  `eval_every_steps`, checkpoints, SIGTERM, `max_train_seconds`, non-finite
  streaks (any run's stops the job), `final_evals` per run (with its
  config, directory and eval key). Not supported: learning curves
  (`train.curve_start_examples > 0`) and microbatches (ValueError).

  Returns:
    The summary dict (also written to `workdir/metrics.json`).
  """
  t_begin = time.time()
  num_runs = _check_runs(config)
  _require_final_evals(config, final_evals, 'train_runs')
  del curve_evals  # refused above (no curve with num_runs > 1)
  checkpointing.quiet_orbax()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  rundir.save_config(config, workdir)
  configs = [run_config(config, r) for r in range(num_runs)]
  dirs = [run_workdir(workdir, r) for r in range(num_runs)]
  for c, d in zip(configs, dirs):
    os.makedirs(d, exist_ok=True)
    rundir.save_config(c, d)
  seeds = [int(c.seed) for c in configs]
  tc = config.train
  # Missing modalities: the same train mask for every run (data.missing_seed
  # is the data's, as in S separate runs).
  model, tx, train_src, eval_src, mesh = _setup(config)
  num_steps = total_steps(tc, len(train_src))
  repl = parallel.replicated(mesh)
  betas, lrs = run_betas(config), run_lrs(config)
  train_fn = step_lib.jit_train_steps(config, model, tx, mesh,
                                      per_run_beta=betas is not None,
                                      per_run_lr=lrs is not None)
  # The traced per-run inputs after (state, batch, keys): betas, then lrs.
  run_args = tuple(parallel.replicate(mesh, np.asarray(v, np.float32))
                   for v in (betas, lrs) if v is not None)

  run_keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]
  init_keys = [k[0] for k in run_keys]
  eval_keys = [k[2] for k in run_keys]
  train_keys = parallel.replicate_key(
      mesh, jax.random.wrap_key_data(
          np.stack([np.asarray(jax.random.key_data(k[1])) for k in run_keys]),
          impl=jax.random.key_impl(run_keys[0][0])))

  examples = [pipeline.host_batch(train_src, 0, seed=s,
                                  global_batch=tc.batch_size) for s in seeds]
  init_fn = functools.partial(train_state.init_state, model=model, tx=tx)
  abstract = checkpointing.abstract_with_shardings(
      jax.eval_shape(init_fn, init_keys[0], examples[0]), repl)
  managers = [checkpointing.make_manager(
      os.path.join(d, 'checkpoints'), max_to_keep=tc.keep_checkpoints)
              for d in dirs]
  latest = [m.latest_step() for m in managers]
  if all(s is None for s in latest):
    init = jax.jit(init_fn, out_shardings=repl)
    states = [init(k, jax.tree.map(jnp.asarray, e))
              for k, e in zip(init_keys, examples)]
  elif len(set(latest)) == 1:
    states = [checkpointing.restore(m, abstract) for m in managers]
    logging.info('Resumed %d runs from step %d in %s', num_runs, latest[0],
                 workdir)
  else:
    raise ValueError(
        f'the runs of {workdir} have their latest checkpoints at different'
        f' steps {latest} (a job of train.num_runs={num_runs} saves all runs'
        ' at the same steps): restore their checkpoints, or use a new'
        ' --workdir')
  del examples
  stack = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
                  out_shardings=repl)
  take = jax.jit(lambda s, r: jax.tree.map(lambda x: x[r], s),
                 out_shardings=repl)
  state = stack(*states)
  del states
  start = int(state.step[0])
  summary_path = os.path.join(workdir, 'metrics.json')
  if start >= num_steps:
    logging.warning('%s already holds finished runs (step %d of %d); '
                    'nothing to train.', workdir, start, num_steps)
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        return json.load(f)
    return {'step': start}

  eval_fns = {}  # one per distinct beta (static in eval_step)
  for c in configs:
    if c.objective.beta not in eval_fns:
      eval_fns[c.objective.beta] = _jit_eval_step(model, c.objective)
  is_main = jax.process_index() == 0
  run_writers = [writers.create_writer(d, just_logging=not is_main)
                 for d in dirs]
  if start == 0:
    for c, w in zip(configs, run_writers):
      w.write_hparams(_flatten(c.to_dict()))
  logging.info('Training %d runs (seeds %d..%d) %d -> %d steps on %d devices'
               ' (%d processes), global batch %d per run, workdir %s',
               num_runs, seeds[0], seeds[-1], start, num_steps,
               mesh.devices.size, jax.process_count(), tc.batch_size, workdir)

  history, summaries = [], [{} for _ in range(num_runs)]
  pending = None
  bar = tqdm.tqdm(total=num_steps, initial=start, disable=not is_main,
                  unit='step', dynamic_ncols=True)
  t_log = t_start = time.time()
  out_of_time = False

  def drain(pending):
    step_done, metrics = pending
    metrics = jax.device_get(metrics)  # every value [S]
    history.append(metrics)
    streak = metrics['train/nonfinite_consecutive']
    bad = [r for r in range(num_runs)
           if streak[r] >= tc.max_consecutive_nonfinite]
    if bad:
      for m in managers:
        m.wait_until_finished()
      raise _nonfinite_error(
          streak[bad[0]], step_done,
          f' in run(s) {bad} (seeds {[seeds[r] for r in bad]})',
          f'{workdir}/run*/checkpoints')
    return metrics

  def save(done):
    for r, m in enumerate(managers):
      checkpointing.save(m, done, take(state, jnp.int32(r)))

  with _Sigterm() as sigterm:
    streams = [pipeline.iterate(
        train_src, start, num_steps, seed=s, global_batch=tc.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(), prefetch=config.data.prefetch)
               for s in seeds]
    for items in zip(*streams):
      step = items[0][0]
      local = {k: np.stack([b[k] for _, b in items]) for k in items[0][1]}
      batch = parallel.global_run_batch(mesh, local)
      state, metrics = train_fn(state, batch, train_keys, *run_args)
      if pending is not None:
        last = drain(pending)
        bar.set_postfix(loss=f'{float(np.mean(last["train/loss"])):.1f}',
                        refresh=False)
      pending = (step + 1, metrics)
      bar.update(1)
      done = step + 1
      if done % tc.log_every_steps == 0 or done == num_steps:
        drain(pending)
        pending = None
        rate = len(history) / (time.time() - t_log)
        for r in range(num_runs):
          scalars = _window_scalars(history, lambda v, r=r: v[r], rate)
          run_writers[r].write_scalars(done, scalars)
          summaries[r].update(scalars)
        history, t_log = [], time.time()
        if tc.max_train_seconds > 0 and done < num_steps:
          out_of_time = _agree(t_log - t_start > tc.max_train_seconds)
      if out_of_time:
        num_steps = done
      if done % tc.eval_every_steps == 0 or done == num_steps:
        for r in range(num_runs):
          summaries[r].update(_evaluate(
              configs[r], dirs[r], done, model,
              take(state, jnp.int32(r)).params,
              eval_fns[configs[r].objective.beta], eval_src,
              eval_keys[r], mesh, run_writers[r]))
      if (done % tc.checkpoint_every_steps == 0 or done == num_steps
          or sigterm.received):
        save(done)
      if _stopped(sigterm.received, out_of_time, done, t_start, tc,
                  managers):
        break
    if pending is not None:
      drain(pending)
  bar.close()
  for m in managers:
    m.wait_until_finished()
  final_step = int(state.step[0])
  for r in range(num_runs):
    run_state = take(state, jnp.int32(r))
    for final_eval in final_evals if not sigterm.received else ():
      out = final_eval(configs[r], dirs[r], model, run_state.params,
                       train_src, eval_src,
                       jax.random.fold_in(eval_keys[r], num_steps), mesh)
      run_writers[r].write_scalars(final_step, out)
      summaries[r].update(out)
    run_writers[r].flush()
    summaries[r]['step'] = final_step
    summaries[r]['train/nonfinite_steps'] = int(run_state.nonfinite_total)
    summaries[r]['interrupted'] = (bool(sigterm.received)
                                   and final_step < num_steps)
    summaries[r]['stopped_at_time_limit'] = out_of_time
    summaries[r]['seed'] = seeds[r]
    if is_main:
      with open(os.path.join(dirs[r], 'metrics.json'), 'w') as f:
        json.dump(summaries[r], f, indent=2, sort_keys=True)
  summary = _across_runs(
      [{k: v for k, v in m.items() if k not in ('step', 'seed')}
       for m in summaries])
  summary.update(
      step=final_step, num_runs=num_runs, seeds=seeds,
      runs={os.path.basename(d): m for d, m in zip(dirs, summaries)},
      interrupted=summaries[0]['interrupted'],
      stopped_at_time_limit=out_of_time,
      train_seconds=time.time() - t_begin)
  if is_main:
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  return summary
