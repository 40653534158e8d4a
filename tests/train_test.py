"""Training system: sharded step, non-finite skips, resume after SIGKILL,
SIGTERM, multi-process training, the end-to-end run and its outputs."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from PIL import Image
import pytest

import numerics
from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.training import loop
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax import train_state

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny model (2 of the 5 modalities) keeps compile times short on CPU.
TINY = ['--config.model.num_modalities=2', '--config.train.num_steps=6',
        '--config.train.checkpoint_every_steps=3',
        '--config.train.eval_every_steps=3']


def _tiny_config(data_dir):
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2
  c.data.data_dir = data_dir
  return c


def _random_batches(n, b, seed=0):
  rng = np.random.default_rng(seed)
  return [{f'm{i}': rng.uniform(size=(b, 28, 28, 3)).astype(np.float32)
           for i in range(2)} for _ in range(n)]


def _setup_step(config, tx=None):
  model = models.get_model(config.model)
  tx = tx or train_state.make_optimizer(config.optim)
  fn = step_lib.make_train_step(config, model, tx)
  batches = _random_batches(3, config.train.batch_size)
  state = train_state.init_state(jax.random.key(0), batches[0], model=model,
                              tx=tx)
  return fn, jax.tree.map(np.asarray, state), batches


def _recording_tx():
  """An 'optimiser' whose state is the last gradient and whose update is
  zero: the step's gradient comes out exactly (Adam's first update would
  turn a rounding-level difference of a near-zero element into +-lr)."""
  return optax.GradientTransformation(
      init=lambda p: jax.tree.map(jnp.zeros_like, p),
      update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def test_sharded_step_matches_single_device_and_compiles_once(data_dir):
  config = _tiny_config(data_dir)
  fn, state0, batches = _setup_step(config, _recording_tx())
  key = jax.random.key(7)
  results = {}
  for n_dev in (1, 8):
    mesh = parallel.make_mesh(jax.devices()[:n_dev])
    repl = parallel.replicated(mesh)
    traces = []

    def counted(*args):
      traces.append(1)
      return fn(*args)

    step = jax.jit(counted, in_shardings=(repl, parallel.data_sharding(mesh),
                                          repl),
                   out_shardings=(repl, repl), donate_argnums=0)
    state = jax.device_put(state0, repl)
    losses, grads = [], []
    for b in batches:  # several steps, several batches
      state, metrics = step(state, parallel.global_batch(mesh, b), key)
      losses.append(float(metrics['train/loss']))
      grads.append(jax.device_get(state.opt_state))
    assert len(traces) == 1, f'{n_dev} devices: traced {len(traces)} times'
    assert len(state.params['decoders']['m0']['fc']['kernel'].sharding
               .device_set) == n_dev
    results[n_dev] = (losses, grads)
  # 8 shards only reorder float32 sums. Bounds (u = 2**-24): the loss is a
  # batch mean of per-example bounds, each a sum of n = 2 * 3 * 28 * 28 =
  # 4,704 same-sign pixel terms plus a few latent terms: (n - 1) u = 2.8e-4
  # relative. The gradient's longest reduction is a decoder kernel's, over
  # B * K * 28 * 28 positions (B = 8, K = 2): n u = 7.5e-4 of sum |t|, used
  # as the whole-tree relative L2 bound (the large leaves' terms do not
  # cancel). A missing all-reduce or a 1/8 scale moves either by O(1).
  b, k = config.train.batch_size, config.objective.num_samples
  np.testing.assert_allclose(results[8][0], results[1][0], rtol=3e-4)
  for g8, g1 in zip(results[8][1], results[1][1]):
    numerics.assert_rel_l2(g8, g1, b * k * 28 * 28 * numerics.U32,
                           '8 vs 1 device gradient')


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_nonfinite_batch_is_skipped_and_counted(data_dir):
  config = _tiny_config(data_dir)
  fn, state0, batches = _setup_step(config)
  step = jax.jit(fn)
  key = jax.random.key(0)
  bad = dict(batches[0], m0=np.full_like(batches[0]['m0'], np.nan))
  state, metrics = step(jax.tree.map(jnp.asarray, state0), bad, key)
  assert int(state.nonfinite_total) == 1
  assert int(state.nonfinite_consecutive) == 1
  assert not np.isfinite(float(metrics['train/loss']))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               state0.params)  # the update never reached the parameters
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state.opt_state), state0.opt_state)
  state, _ = step(state, batches[1], key)  # a good batch trains again
  assert int(state.nonfinite_total) == 1
  assert int(state.nonfinite_consecutive) == 0
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(
      jax.device_get(state.params)))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         jax.device_get(state.params), state0.params)
  assert all(jax.tree.leaves(changed))


@pytest.mark.slow  # a whole training loop (~90 s); the step-level skip is
# tested in the default suite (test_nonfinite_batch_is_skipped_and_counted)
def test_loop_skips_nan_batches_then_stops_on_a_streak(data_dir, tmp_path,
                                                       monkeypatch):
  """Injected NaN batches are skipped and counted in metrics.json; a streak
  of max_consecutive_nonfinite stops the run, the last checkpoint intact."""
  config = _tiny_config(data_dir)
  config.train.update(num_steps=8, checkpoint_every_steps=2,
                      eval_every_steps=100, max_consecutive_nonfinite=3)
  nan_steps = {2}
  real_iterate = loop.pipeline.iterate

  def iterate(*args, **kwargs):
    for step, batch in real_iterate(*args, **kwargs):
      if step in nan_steps:
        batch = dict(batch, m1=np.full_like(batch['m1'], np.nan))
      yield step, batch

  monkeypatch.setattr(loop.pipeline, 'iterate', iterate)
  summary = loop.train_and_evaluate(config, str(tmp_path / 'a'))
  assert summary['train/nonfinite_steps'] == 1
  metrics = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
  assert metrics['train/nonfinite_steps'] == 1 and metrics['step'] == 8
  params = _restore(tmp_path / 'a', 8)['params']
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))

  # eval.py's runner on this run: bound, coherence (with untrained
  # classifiers: the pipeline, not their accuracy), grids; deterministic.
  clf_dir = tmp_path / 'clf'
  classifiers.save_classifiers(clf_dir, {
      n: classifiers.init(jax.random.key(i)) for i, n in enumerate(['m0', 'm1'])
  }, metadata={'test_accuracy': {'m0': 0.5, 'm1': 0.5}})
  config.evals.update(classifier_dir=str(clf_dir), num_examples=40,
                      batch_size=16, num_unconditional=30, bound_num_samples=2)
  first = runner.evaluate(config, str(tmp_path / 'a'))
  second = runner.evaluate(config, str(tmp_path / 'a'))
  assert first == second
  out = tmp_path / 'a' / 'eval' / '8'
  assert json.loads((out / 'metrics.json').read_text())['step'] == 8
  assert np.isfinite(first['eval/bound'])
  for k in ('coherence/cond/m0->m1', 'coherence/cond/mean', 'coherence/uncond'):
    assert 0.0 <= first[k] <= 1.0
  assert first['coherence/classifier_test_accuracy/m1'] == 0.5
  assert 'fid' in first['skipped']
  assert (out / 'cross_modal_00000008.png').exists()

  config.model.dim_z = 6  # resuming with another model: one clear error
  with pytest.raises(ValueError, match='another model config.*dim_z'):
    loop.train_and_evaluate(config, str(tmp_path / 'a'))
  config.model.dim_z = 4

  nan_steps.update({5, 6, 7})  # steps 5, 6, 7: three in a row
  with pytest.raises(loop.NonFiniteError, match='3 consecutive steps'):
    loop.train_and_evaluate(config, str(tmp_path / 'b'))
  # Saves are every 2 steps; step indices 5, 6, 7 are steps 6, 7, 8. The
  # loop saves step 6, the streak's first bad step (a skipped step leaves
  # the parameters unchanged, so they are step 5's); the streak is detected
  # when step 8's metrics are read, before step 8 is saved, and the error
  # waits for the asynchronous save of step 6 to finish first.
  steps = _steps(tmp_path / 'b')
  assert steps == [2, 4, 6], steps
  state = _restore(tmp_path / 'b', 6)
  assert int(state['nonfinite_total']) == 2
  assert int(state['nonfinite_consecutive']) == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_max_train_seconds_ends_like_a_finished_run(data_dir, tmp_path):
  """Past train.max_train_seconds the run stops at the next log step,
  evaluated and checkpointed there, not 'interrupted'; started again
  (no limit) it continues to num_steps."""
  config = _tiny_config(data_dir)
  config.train.update(num_steps=6, log_every_steps=2, eval_every_steps=100,
                      checkpoint_every_steps=100, max_train_seconds=1e-6)
  workdir = tmp_path / 'timed'
  summary = loop.train_and_evaluate(config, str(workdir))
  assert summary['step'] == 2 and summary['stopped_at_time_limit']
  assert not summary['interrupted']
  assert _steps(workdir) == [2]
  assert np.isfinite(summary['eval/bound'])  # evaluated as at the end
  assert (workdir / 'samples' / 'cross_modal_00000002.png').exists()
  config.train.max_train_seconds = 0.0
  summary = loop.train_and_evaluate(config, str(workdir))
  assert summary['step'] == 6 and not summary['stopped_at_time_limit']
  assert _steps(workdir) == [2, 6]


# ------------------------------------------------------------- subprocesses

def _env(devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(REPO)
  return env


def _cmd(script, workdir, data_dir, *extra):
  return [sys.executable, str(script),
          '--config=' + str(REPO / 'mmvaeplus_jax/configs/polymnist.py:smoke'),
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          *TINY, *extra]


def _fault_cmd(mode, at, workdir, data_dir):
  driver = REPO / 'tests' / 'fault_driver.py'
  cmd = _cmd(driver, workdir, data_dir)
  return cmd[:2] + [mode, str(at)] + cmd[2:]


def _run(cmd, devices=1, check=True):
  proc = subprocess.run(cmd, env=_env(devices), cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n'
                         f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


def _restore(workdir, step):
  """A checkpoint as numpy arrays, whatever topology saved it."""
  mngr = ocp.CheckpointManager(pathlib.Path(workdir) / 'checkpoints',
                              item_handlers=ocp.StandardCheckpointHandler())
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      mngr.item_metadata(step))
  return jax.device_get(mngr.restore(
      step, args=ocp.args.StandardRestore(target)))


def _steps(workdir):
  return sorted(ocp.CheckpointManager(
      pathlib.Path(workdir) / 'checkpoints').all_steps())


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(data_dir, tmp_path):
  full, crashed = tmp_path / 'full', tmp_path / 'crashed'
  _run(_cmd(REPO / 'train.py', full, data_dir))
  proc = _run(_fault_cmd('kill', 3, crashed, data_dir), check=False)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert _steps(crashed) == [3]
  _run(_cmd(REPO / 'train.py', crashed, data_dir))  # same workdir = resume
  assert _steps(crashed) == [3, 6]
  a, b = _restore(full, 6), _restore(crashed, 6)
  assert int(a['step']) == int(b['step']) == 6
  jax.tree.map(np.testing.assert_array_equal, b['params'], a['params'])
  jax.tree.map(np.testing.assert_array_equal, b['opt_state'], a['opt_state'])
  # The uninterrupted run wrote its metrics, sample grids and event files.
  metrics = json.loads((full / 'metrics.json').read_text())
  assert metrics['step'] == 6 and np.isfinite(metrics['eval/bound'])
  for kind in ('unconditional', 'cross_modal'):
    for step in (3, 6):
      img = Image.open(full / 'samples' / f'{kind}_{step:08d}.png')
      assert img.mode == 'RGB' and min(img.size) > 28
  assert list(full.glob('events.out.tfevents.*'))


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(data_dir, tmp_path):
  workdir = tmp_path / 'term'
  proc = _run(_fault_cmd('term', 4, workdir, data_dir), check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'SIGTERM' in proc.stderr
  assert _steps(workdir) == [3, 5]  # stopped after step 5 of 6, saved
  # The summary says so (the study driver does not evaluate such a run).
  assert json.loads((workdir / 'metrics.json').read_text())['interrupted']
  state = _restore(workdir, 5)
  assert int(state['step']) == 5
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(data_dir, tmp_path):
  """2 processes x 2 CPU devices (jax.distributed, gloo) == 1 x 4 devices."""
  extra = ['--config.train.num_steps=3', '--config.train.eval_every_steps=3',
           '--config.train.checkpoint_every_steps=1']
  single = tmp_path / 'single'
  _run(_cmd(REPO / 'train.py', single, data_dir, *extra), devices=4)
  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [
      subprocess.Popen(
          _cmd(REPO / 'train.py', multi, data_dir, *extra,
               f'--coordinator_address=localhost:{port}', '--num_processes=2',
               f'--process_id={i}'),
          env=_env(2), cwd=REPO, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-5000:]
  # Compare the first step's gradient, not parameters after AMSGrad (whose
  # first update is about lr * sign(g): a rounding-level difference in a
  # near-zero element becomes a difference of 2 lr). After one step the
  # optimiser state holds mu = (1 - b1) g exactly up to one rounding.
  a, b = _restore(single, 1), _restore(multi, 1)
  mu_a, mu_b = _first_moment(a['opt_state']), _first_moment(b['opt_state'])
  assert numerics.flat(mu_a).size == numerics.flat(a['params']).size
  assert np.linalg.norm(numerics.flat(mu_a)) > 0
  # Bound as in test_sharded_step_matches_single_device_and_compiles_once:
  # the longest reduction (B * K * 28 * 28 terms), n u, relative L2.
  config = polymnist_configs.get_config('smoke')
  n = config.train.batch_size * config.objective.num_samples * 28 * 28
  numerics.assert_rel_l2(mu_b, mu_a, n * numerics.U32,
                         '2 processes vs 1: first-step gradient')
  assert _steps(multi) == _steps(single) == [1, 2, 3]
  for x in jax.tree.leaves(_restore(multi, 3)['params']):
    assert np.isfinite(x).all()


def _first_moment(opt_state):
  """The `mu` subtree of a restored AMSGrad/Adam state (nested containers)."""
  found = []

  def visit(node):
    if isinstance(node, dict):
      for k, v in node.items():
        if k == 'mu':
          found.append(v)
        else:
          visit(v)
    elif isinstance(node, (list, tuple)):
      for v in node:
        visit(v)

  visit(opt_state)
  assert len(found) == 1, f'{len(found)} mu subtrees in {opt_state!r:.300}'
  return found[0]


@pytest.mark.slow
def test_shortened_demo_learns_and_writes_outputs(data_dir, tmp_path):
  """The Quickstart's `python train.py` (demo config), shortened to 60 steps
  on one CPU device: the loss falls, metrics and sample grids are written,
  and the final cross-modal coherence is printed and stored."""
  proc = _run([sys.executable, str(REPO / 'train.py'),
               f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
               '--config.train.num_steps=60', '--config.train.log_every_steps=10',
               '--config.train.eval_every_steps=60',
               '--config.train.checkpoint_every_steps=60',
               '--config.train.final_coherence_clf_epochs=2',
               '--config.train.final_coherence_examples=200'])
  assert str(tmp_path) in proc.stdout  # the work directory is printed
  assert 'Cross-modal coherence on 200 test examples' in proc.stdout
  rows = [json.loads(line) for line in
          (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) == 6
  # Batch 8: single 10-step means are noisy, so compare the last three.
  assert np.mean(losses[3:]) < 0.92 * losses[0], losses
  summary = json.loads((tmp_path / 'metrics.json').read_text())
  assert summary['step'] == 60 and np.isfinite(summary['eval/bound'])
  for pair in ('m3->m4', 'm4->m3'):
    assert 0.0 <= summary[f'coherence/cond/{pair}'] <= 1.0
  for kind in ('unconditional', 'cross_modal'):
    assert (tmp_path / 'samples' / f'{kind}_00000060.png').exists()
  assert _steps(tmp_path) == [60]
