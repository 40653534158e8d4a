"""Learning curves (`train.curve_start_examples`): the schedule, the rows of
curve.jsonl, the run's parameters unchanged by the curve, resume, errors."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmvaeplus_jax import models
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifier_nets
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import curve as curve_lib
from mmvaeplus_jax.experiments import train as train_lib
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import loop

NAMES = ('m0', 'm1')
NUM_TEST = 16


def _schedule(start, factor, batch, num_steps):
  cfg = polymnist_configs.get_config('smoke').train
  cfg.update(curve_start_examples=start, curve_factor=factor,
             batch_size=batch)
  return loop.curve_steps(cfg, num_steps)


def test_curve_steps_are_geometric_in_examples_and_end_at_the_last_step():
  # 16k, 32k, 64k, ... examples at batch 8: steps 2000, 4000, 8000, ...
  assert _schedule(16_000, 2.0, 8, 20_000) == [2000, 4000, 8000, 16000,
                                               20000]
  # A point is the first step with at least that many examples.
  assert _schedule(10, 2.0, 8, 10) == [2, 3, 5, 10]
  assert _schedule(10, 3.0, 4, 1000) == [3, 8, 23, 68, 203, 608, 1000]
  assert _schedule(0, 2.0, 8, 100) == []  # off
  with pytest.raises(ValueError, match='curve_factor'):
    _schedule(8, 1.0, 8, 100)


@pytest.fixture(scope='module')
def clf_dir(tmp_path_factory):
  """Untrained classifiers: the curve only needs a fixed set to score with."""
  d = tmp_path_factory.mktemp('clf')
  params = {n: classifier_nets.init(jax.random.key(i), arch='official')
            for i, n in enumerate(NAMES)}
  classifiers.save_classifiers(d, jax.device_get(params))
  return str(d)


def _config(data_dir, clf_dir, curve=True):
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2
  c.data.data_dir = data_dir
  c.train.update(num_steps=6, log_every_steps=2, eval_every_steps=100,
                 checkpoint_every_steps=3, curve_test_examples=NUM_TEST,
                 curve_start_examples=c.train.batch_size if curve else 0)
  c.evals.classifier_dir = clf_dir
  return c


def _params(workdir, step):
  with ocp.CheckpointManager(workdir / 'checkpoints') as m:
    return m.restore(step)['params']


def _rows(workdir):
  with open(workdir / loop.CURVE_FILE) as f:
    return [json.loads(line) for line in f]


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_curve_rows_and_the_run_unchanged(data_dir, clf_dir, tmp_path):
  """Points at steps 1, 2, 4 and 6 (8, 16, 32 examples ... the end), each the
  conditional coherence of that step's params under the curve's own key;
  the run's parameters are bit-identical to the same run without a curve."""
  config = _config(data_dir, clf_dir)
  with_curve = tmp_path / 'curve'
  train_lib.train(config, str(with_curve))
  without = tmp_path / 'plain'
  train_lib.train(_config(data_dir, clf_dir, curve=False), str(without))
  assert not (without / loop.CURVE_FILE).exists()
  for step in (3, 6):
    a, b = _params(with_curve, step), _params(without, step)
    assert all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves(b)))

  rows = _rows(with_curve)
  batch = config.train.batch_size
  assert [r['step'] for r in rows] == [1, 2, 4, 6]
  assert [r['examples'] for r in rows] == [batch, 2 * batch, 4 * batch,
                                           6 * batch]
  wall = [r['wall_seconds'] for r in rows]
  trained = [r['train_seconds'] for r in rows]
  assert wall == sorted(wall) and trained == sorted(trained)
  for r in rows:
    assert 0 < r['train_seconds'] <= r['wall_seconds']
    assert r['eval_seconds'] > 0
    m = r['metrics']
    off = [m[f'coherence/cond/{s}->{t}'] for s in NAMES for t in NAMES
           if s != t]
    assert m['coherence/cond/mean'] == pytest.approx(np.mean(off))
    assert m['coherence/self/mean'] == pytest.approx(np.mean(
        [m[f'coherence/cond/{n}->{n}'] for n in NAMES]))
    for v in m.values():
      assert 0.0 <= v <= 1.0 and v * NUM_TEST == pytest.approx(
          round(v * NUM_TEST))
  # Points after the first are training seconds, less the evaluations.
  assert trained[-1] <= wall[-1] - sum(r['eval_seconds'] for r in rows[:-1])

  # The last point is the coherence of the final params, with the key
  # fold_in(fold_in(eval_key, tag), step) on the first NUM_TEST examples.
  model = models.get_model(config.model)
  _, eval_src = sources.load_sources(config.data)
  test = pipeline.Select(eval_src, NAMES + ('label',)).read(
      np.arange(NUM_TEST))
  eval_key = jax.random.split(jax.random.key(config.seed), 3)[2]
  key = jax.random.fold_in(jax.random.fold_in(eval_key, loop._CURVE_TAG), 6)
  clf, _ = classifiers.load_classifiers(clf_dir, NAMES)
  mesh = parallel.make_mesh()
  want = coherence.conditional_coherence(
      parallel.replicate_key(mesh, key), model,
      parallel.replicate(mesh, _params(with_curve, 6)), classifiers.classify,
      parallel.replicate(mesh, clf), test,
      batch_size=config.evals.batch_size, mesh=mesh)
  assert rows[-1]['metrics']['coherence/cond/mean'] == want.mean
  np.testing.assert_array_equal(
      [[rows[-1]['metrics'][f'coherence/cond/{s}->{t}'] for t in NAMES]
       for s in NAMES], want.matrix)


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_resume_drops_points_past_the_checkpoint_and_continues_the_clock(
    data_dir, clf_dir, tmp_path):
  config = _config(data_dir, clf_dir)
  config.train.num_steps = 3  # points 1, 2, 3; checkpoint at 3
  workdir = tmp_path / 'run'
  train_lib.train(config, str(workdir))
  first = _rows(workdir)
  assert [r['step'] for r in first] == [1, 2, 3]
  # A point written after the last checkpoint by a run that then died.
  with open(workdir / loop.CURVE_FILE, 'a') as f:
    f.write(json.dumps(dict(first[-1], step=5)) + '\n')
  config.train.num_steps = 6  # schedule 1, 2, 4, 6: resumes at 3
  train_lib.train(config, str(workdir))
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 6]
  assert rows[:3] == first
  assert rows[3]['wall_seconds'] > first[-1]['wall_seconds']
  assert rows[3]['train_seconds'] > first[-1]['train_seconds']


def test_a_curve_without_classifiers_fails_before_training(data_dir,
                                                           tmp_path):
  config = _config(data_dir, '')
  with pytest.raises(ValueError, match='evals.classifier_dir'):
    train_lib.train(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  config.evals.classifier_dir = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='No coherence classifiers'):
    curve_lib.CoherenceCurve(config)
  # The shell alone, without the evaluator, names the fix.
  with pytest.raises(ValueError, match='curve evaluator'):
    loop.train_and_evaluate(config, str(tmp_path / 'run2'))
