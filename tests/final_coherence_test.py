"""`train.final_coherence`: the training shell's end-of-run cross-modal
coherence (the Quickstart demo prints it and writes it to metrics.json)."""

import json

import numpy as np
import pytest

from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.training import loop


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds')
  builders.prepare('mini', d)  # offline demo data, ~5 s
  return str(d)


def _config(data_dir):
  c = polymnist_configs.get_config('smoke')
  c.model.num_modalities = 2  # m0, m1: the programs of train_test's tiny runs
  c.data.data_dir = data_dir
  c.train.update(num_steps=2, eval_every_steps=100, checkpoint_every_steps=2,
                 final_coherence=True, final_coherence_examples=24,
                 final_coherence_clf_epochs=1)
  return c


def test_demo_config_asks_for_final_coherence():
  assert polymnist_configs.get_config('demo').train.final_coherence
  assert not polymnist_configs.get_config('smoke').train.final_coherence


def test_final_coherence_in_metrics_json(data_dir, tmp_path, capsys):
  """Every source -> target pair lands in metrics.json in [0, 1], the table
  is printed, and the in-run classifiers are saved for eval.py."""
  config = _config(data_dir)
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
  assert metrics == pytest.approx(summary)
  names = ('m0', 'm1')
  for src in names:
    for tgt in names:
      value = metrics[f'coherence/cond/{src}->{tgt}']
      assert 0.0 <= value <= 1.0
      # Counts over 24 test examples.
      assert value * 24 == pytest.approx(round(value * 24))
  assert 0.0 <= metrics['coherence/cond/mean'] <= 1.0
  assert 'Cross-modal coherence on 24 test examples' in capsys.readouterr().out
  # The classifiers trained in the run are stored; eval.py can load them.
  params, meta = classifiers.load_classifiers(tmp_path / 'run' / 'classifiers')
  assert sorted(params) == list(names)
  for n in names:
    acc = metrics[f'coherence/classifier_test_accuracy/{n}']
    assert meta['test_accuracy'][n] == pytest.approx(acc)
    assert 0.0 <= acc <= 1.0

