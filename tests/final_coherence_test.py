"""`train.final_coherence`: the training shell's end-of-run cross-modal
coherence (the Quickstart demo prints it and writes it to metrics.json)."""

import json

import jax
import numpy as np
import pytest

from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import final_coherence
from mmvaeplus_jax.experiments import train as train_lib
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import loop

NAMES = ('m0', 'm1')
NUM_TEST = 24


def _config(data_dir):
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2  # m0, m1: the programs of train_test's tiny runs
  c.data.data_dir = data_dir
  c.train.update(num_steps=2, eval_every_steps=100, checkpoint_every_steps=2,
                 final_coherence=True, final_coherence_examples=NUM_TEST,
                 final_coherence_clf_epochs=1)
  return c


def _check_metrics(metrics):
  for src in NAMES:
    for tgt in NAMES:
      value = metrics[f'coherence/cond/{src}->{tgt}']
      assert 0.0 <= value <= 1.0
      # A count over the test examples.
      assert value * NUM_TEST == pytest.approx(round(value * NUM_TEST))
  assert 0.0 <= metrics['coherence/cond/mean'] <= 1.0
  for n in NAMES:
    assert 0.0 <= metrics[f'coherence/classifier_test_accuracy/{n}'] <= 1.0


def test_demo_config_asks_for_final_coherence():
  assert polymnist_configs.get_config('demo').train.final_coherence
  assert not polymnist_configs.get_config('smoke').train.final_coherence


@pytest.mark.not_in_rerun  # no rounding-dependent check
def test_final_coherence_trains_saves_and_reloads_classifiers(
    data_dir, tmp_path, capsys):
  """`final_coherence.final_coherence` on an untrained model (no training step): the
  pairs in [0, 1], the printed table, the classifiers saved for eval.py, and
  the same numbers when they are loaded from `evals.classifier_dir`."""
  config = _config(data_dir)
  model = models.get_model(config.model)
  keys = tuple(model.names) + ('label',)
  train_src, eval_src = (pipeline.Select(s, keys)
                         for s in sources.load_sources(config.data))
  mesh = parallel.make_mesh()  # 8 fake devices
  example = eval_src.read(np.arange(8))
  params = parallel.replicate(mesh, jax.device_get(model.init(
      jax.random.key(0), {n: example[n] for n in model.names})))
  args = (model, params, train_src, eval_src, jax.random.key(1), mesh)

  first = final_coherence.final_coherence(config, str(tmp_path / 'run'), *args)
  _check_metrics(first)
  assert (f'Cross-modal coherence on {NUM_TEST} test examples'
          in capsys.readouterr().out)
  clf_dir = tmp_path / 'run' / 'classifiers'
  _, meta = classifiers.load_classifiers(clf_dir)
  assert sorted(meta['modalities']) == list(NAMES)
  for n in NAMES:
    assert meta['test_accuracy'][n] == pytest.approx(
        first[f'coherence/classifier_test_accuracy/{n}'])

  config.evals.classifier_dir = str(clf_dir)
  again = final_coherence.final_coherence(config, str(tmp_path / 'unused'), *args)
  assert again == pytest.approx(first)
  assert not (tmp_path / 'unused').exists()  # loaded, not trained again


@pytest.mark.slow
def test_final_coherence_in_metrics_json(data_dir, tmp_path):
  """The training shell with the option on writes every source -> target
  pair to metrics.json (in [0, 1]) and saves the classifiers."""
  summary = train_lib.train(_config(data_dir), str(tmp_path / 'run'))
  metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
  assert metrics == pytest.approx(summary)
  assert metrics['step'] == 2
  _check_metrics(metrics)
  params, _ = classifiers.load_classifiers(tmp_path / 'run' / 'classifiers')
  assert sorted(params) == list(NAMES)


def test_the_loop_refuses_final_coherence_without_its_evaluator(tmp_path):
  """`training/` does not import `evaluation/`: a config asking for the
  end-of-run coherence must be trained through `experiments.train.train`
  (or be handed the evaluator), never silently without it."""
  config = polymnist_configs.get_config('smoke')
  config.train.final_coherence = True
  with pytest.raises(ValueError, match='experiments.train.train'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # refused before any work
