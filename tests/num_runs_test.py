"""S runs in one compiled program (`train.num_runs`, `loop.train_runs`):
each run is the separate run of seed `seed + r`, its checkpoint restores
alone, S = 1 is the plain program, bad settings fail clearly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import numerics
from mmvaeplus_jax import models
from mmvaeplus_jax import train_state
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.experiments import runs
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import rundir
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import loop
from mmvaeplus_jax.training import step as step_lib


def _config(data_dir, num_runs=3):
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2
  c.data.data_dir = data_dir
  c.train.update(num_runs=num_runs, num_steps=3, log_every_steps=1,
                 eval_every_steps=100, checkpoint_every_steps=100)
  return c


def _recording_tx(lr=1.0):
  """Zero updates; the optimiser state is the last gradient times `lr` (as
  in train_test.py: the step's gradient comes out exactly; `lr` shows which
  learning rate a step was given)."""
  return optax.GradientTransformation(
      init=lambda p: jax.tree.map(jnp.zeros_like, p),
      update=lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g),
                                   jax.tree.map(lambda x: lr * x, g)))


def test_make_optimizer_with_a_traced_rate_is_the_configured_one():
  """`make_optimizer(optim, lr=traced)` (the per-run rates' path) takes the
  same steps from the same state structure as `optim.lr = lr`, exactly."""
  optim = polymnist_configs.get_config('smoke').optim
  params = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.ones(4)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x + i), params)
           for i in range(3)]
  for amsgrad in (True, False):
    optim.amsgrad, optim.lr = amsgrad, 0.003
    plain = train_state.make_optimizer(optim)

    @jax.jit
    def traced(lr, state, g):
      return train_state.make_optimizer(optim, lr=lr).update(g, state)

    s1 = s2 = plain.init(params)
    assert (jax.tree.structure(s1)
            == jax.tree.structure(train_state.make_optimizer(
                optim, lr=0.5).init(params)))
    for g in grads:
      u1, s1 = jax.jit(plain.update)(g, s1)
      u2, s2 = traced(jnp.float32(0.003), s2, g)
      for x, y in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('betas,lrs', [
    ('', '0.5,2,4'),  # traced per-run rates (default suite)
    pytest.param('0.5,1,2.5', '', marks=pytest.mark.slow),  # ~60 s each
    pytest.param('', '', marks=pytest.mark.slow)])
def test_vmapped_step_gives_each_runs_loss_and_gradient(data_dir, betas, lrs,
                                                        monkeypatch):
  """`jit_train_steps` on S = 3 stacked states, batches and keys (and with
  `train.run_betas` / `train.run_lrs`, the traced betas / rates [S]) vs
  the plain step of each run's own config (`run_config`: init, data order
  and noise of seed seed + r, its static beta, its optimiser of its own
  rate), over two steps on one device."""
  config = _config(data_dir)
  config.train.run_betas = betas
  config.train.run_lrs = lrs
  # The per-run rates' optimiser is `make_optimizer(optim, lr)` inside the
  # step: recording too, so each run's state is its rate times its gradient.
  monkeypatch.setattr(
      train_state, 'make_optimizer',
      lambda optim, lr=None: _recording_tx(optim.lr if lr is None else lr))
  model = models.get_model(config.model)
  tx = _recording_tx()
  train_src, _ = sources.load_sources(config.data)
  mesh = parallel.make_mesh(jax.devices()[:1])
  b = config.train.batch_size
  configs = [loop.run_config(config, r) for r in range(3)]
  seeds = [c.seed for c in configs]
  assert seeds == [config.seed, config.seed + 1, config.seed + 2]
  if betas:
    assert [c.objective.beta for c in configs] == [0.5, 1.0, 2.5]
  if lrs:
    assert [c.optim.lr for c in configs] == [0.5, 2.0, 4.0]
  assert all(c.train.run_lrs == c.train.run_betas == '' for c in configs)
  keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]
  batch = lambda s, i: {n: v for n, v in pipeline.host_batch(
      train_src, i, seed=s, global_batch=b).items() if n in model.names}
  states = [train_state.init_state(k[0], batch(s, 0), model=model, tx=tx)
            for k, s in zip(keys, seeds)]
  plain = [jax.jit(step_lib.make_train_step(
      c, model, _recording_tx(c.optim.lr) if lrs else tx)) for c in configs]
  vmapped = step_lib.jit_train_steps(config, model, tx, mesh,
                                     per_run_beta=bool(betas),
                                     per_run_lr=bool(lrs))
  extra = tuple(jnp.asarray(v, jnp.float32) for v in
                (loop.run_betas(config), loop.run_lrs(config)) if v)
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  base_keys = jnp.stack([k[1] for k in keys])
  for i in range(2):
    stacked, metrics = vmapped(
        stacked, {n: np.stack([batch(s, i)[n] for s in seeds])
                  for n in model.names}, base_keys, *extra)
    for r, s in enumerate(seeds):
      states[r], want = plain[r](states[r], batch(s, i), keys[r][1])
      # Reassociated float32 sums only (the vmapped program may order them
      # differently); bounds as train_test.py's sharded-step test: the loss
      # sums n = 2 * 3 * 28 * 28 same-sign pixel terms per example,
      # (n - 1) u = 2.8e-4 relative; the gradient's longest reduction is a
      # decoder kernel's over B * K * 28 * 28 positions, n u of its scale
      # as a whole-tree relative L2 bound. Another seed's data or noise
      # moves either by O(1).
      np.testing.assert_allclose(float(metrics['train/loss'][r]),
                                 float(want['train/loss']), rtol=3e-4)
      k = config.objective.num_samples
      numerics.assert_rel_l2(
          jax.tree.map(lambda x: x[r], stacked.opt_state),
          states[r].opt_state, b * k * 28 * 28 * numerics.U32,
          f'step {i} run {r} gradient')
  assert int(stacked.step[0]) == 2 and stacked.step.shape == (3,)


@pytest.mark.slow  # ~200 s beside the training runs (4 trainings, 8 devices)
def test_three_runs_match_separate_runs_and_restore_alone(data_dir,
                                                          tmp_path):
  """The loop with num_runs = 3: run r's directory is a plain run of seed
  seed + r (config.json, checkpoint restored alone by `load_run`, metrics),
  with the parameters of that run trained separately; the summary has the
  mean and std across runs; a finished job restarted trains nothing."""
  config = _config(data_dir)
  job = tmp_path / 'job'
  summary = loop.train_and_evaluate(config, str(job))
  assert summary['num_runs'] == 3 and summary['step'] == 3
  assert summary['seeds'] == [config.seed + r for r in range(3)]
  assert set(summary['runs']) == {'run0', 'run1', 'run2'}
  losses = [summary['runs'][f'run{r}']['eval/bound'] for r in range(3)]
  assert summary['mean']['eval/bound'] == pytest.approx(np.mean(losses))
  assert summary['std']['eval/bound'] == pytest.approx(np.std(losses, ddof=1))
  assert json.loads((job / 'metrics.json').read_text())['num_runs'] == 3
  assert (job / 'run1' / 'samples').is_dir()

  # Run 1 alone: a plain S = 1 state, its own config (seed + 1, num_runs 1).
  vm = runs.load_run(str(job / 'run1'))
  assert vm.step == 3 and vm.config.seed == config.seed + 1
  assert vm.config.train.num_runs == 1
  run1 = json.loads((job / 'run1' / 'metrics.json').read_text())
  assert run1['seed'] == config.seed + 1 and run1['step'] == 3

  # The separate run of seed + 1 (num_runs 1, the plain program).
  alone = loop.train_and_evaluate(loop.run_config(config, 1),
                                  str(tmp_path / 'alone'))
  sep = runs.load_run(str(tmp_path / 'alone'))
  # Both ran the same 3 Adam (AMSGrad) steps from the same init; their
  # gradients differ by reassociated float32 sums only (the test above), but
  # Adam turns a rounding-level difference of a near-zero gradient element
  # into up to +-lr per step, so the elementwise bound is 2 lr per step.
  # Observed here: ~1e-7 (rel L2 ~1e-8). The test bound's loss is compared
  # at the reduction bound's 3e-4 (see above).
  bound = 2 * config.optim.lr * config.train.num_steps
  err = np.abs(numerics.flat(vm.params) - numerics.flat(sep.params)).max()
  assert err <= bound, (err, bound)
  assert numerics.rel_l2(vm.params, sep.params) < 1e-4
  np.testing.assert_allclose(run1['train/loss'], alone['train/loss'],
                             rtol=3e-4)

  with pytest.raises(ValueError, match=r'run0 \.\. .*run2'):
    runs.load_run(str(job))  # the job's own directory: no checkpoints
  again = loop.train_and_evaluate(config, str(job))  # finished: no training
  assert again['step'] == 3 and again['num_runs'] == 3
  config.train.num_steps = 4  # resumed: all 3 runs from their step 3
  more = loop.train_and_evaluate(config, str(job))
  assert more['step'] == 4
  assert [runs.load_run(str(job / f'run{r}')).step for r in range(3)] == [4] * 3


def test_num_runs_one_is_the_plain_program(data_dir, tmp_path, monkeypatch):
  """num_runs = 1 (the default) never reaches `train_runs`: the plain
  shell, no run axis."""
  assert polymnist_configs.get_config('smoke').train.num_runs == 1

  def refuse(*args, **kwargs):
    raise AssertionError('train_runs called with num_runs = 1')

  class Reached(Exception):
    pass

  def stop(*args, **kwargs):
    raise Reached

  monkeypatch.setattr(loop, 'train_runs', refuse)
  monkeypatch.setattr(loop.sources, 'load_sources', stop)
  with pytest.raises(Reached):
    loop.train_and_evaluate(_config(data_dir, num_runs=1), str(tmp_path))


def test_job_directory_points_at_its_runs(tmp_path):
  """`load_run` / `eval.py` on the job's own directory (config.json with
  num_runs = 3, checkpoints only per run) name the run directories."""
  config = polymnist_configs.get_config('smoke')
  config.train.num_runs = 3
  rundir.save_config(config, str(tmp_path))
  with pytest.raises(ValueError, match=r'num_runs=3 runs.*run0 \.\. .*run2'):
    runs.load_run(str(tmp_path))


def test_bad_num_runs_settings_fail_clearly(data_dir, tmp_path):
  for n in (0, -2):
    with pytest.raises(ValueError, match='num_runs=.* must be >= 1'):
      loop.train_and_evaluate(_config(data_dir, n), str(tmp_path / 'a'))
  c = _config(data_dir)
  c.train.curve_start_examples = 16
  with pytest.raises(ValueError, match='curve_start_examples=0'):
    loop.train_and_evaluate(c, str(tmp_path / 'b'))
  for n, values in ((3, '1,2'), (1, '1'), (3, '1,x,2')):
    for key in ('run_betas', 'run_lrs'):
      c = _config(data_dir, n)
      c.train[key] = values
      with pytest.raises(ValueError, match=f'train.{key}=.*one per run'):
        loop.train_and_evaluate(c, str(tmp_path / 'c'))
  c = _config(data_dir)
  c.train.run_lrs = '1e-3,0,1e-3'
  with pytest.raises(ValueError, match='must be > 0'):
    loop.train_and_evaluate(c, str(tmp_path / 'd'))
  c = _config(data_dir)
  c.train.microbatch_size = 2
  model = models.get_model(c.model)
  with pytest.raises(ValueError, match='microbatch_size=0'):
    step_lib.jit_train_steps(c, model, train_state.make_optimizer(c.optim),
                             parallel.make_mesh(jax.devices()[:1]))
