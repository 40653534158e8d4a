"""A run directory describes itself: config.json, load_run, eval.py's default."""

import pathlib

import jax
import numpy as np
import pytest

import mmvaeplus_jax
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.configs import run as run_config
import toy_models
from mmvaeplus_jax.infra import rundir
from mmvaeplus_jax import train_state

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config():
  config = polymnist_configs.get_config('smoke')
  config.model.num_modalities = 2
  return config


def test_config_round_trip_and_model_guard(tmp_path):
  config = _config()
  path = rundir.save_config(config, str(tmp_path))
  assert pathlib.Path(path) == tmp_path / 'config.json'
  loaded = rundir.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()  # tuples restored too
  assert isinstance(loaded.evals.alpha_sweep, tuple)
  assert run_config.get_config(str(tmp_path)).to_dict() == config.to_dict()
  # Resuming with other training settings is fine ...
  config.train.num_steps = 99
  rundir.save_config(config, str(tmp_path))
  assert rundir.load_config(str(tmp_path)).train.num_steps == 99
  # ... with another model is not: the checkpoint would not fit it.
  config.model.dim_w = 7
  with pytest.raises(ValueError, match=r"another model config.*dim_w"):
    rundir.save_config(config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='config.json'):
    rundir.load_config(str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match='run.py:<workdir>'):
    run_config.get_config('')


def test_load_run_restores_the_checkpoint(tmp_path):
  config = _config()
  model = train_state.model_of(config)
  tx = train_state.make_optimizer(config.optim)
  state = toy_models.save_random_checkpoint(model, tx,
                                           tmp_path / 'checkpoints', 5)
  params = state.params
  rundir.save_config(config, str(tmp_path))

  run = mmvaeplus_jax.load_run(str(tmp_path))
  assert run.step == 5
  assert run.model.names == ('m0', 'm1') and run.model.dim_w == 4
  assert run.config.to_dict() == config.to_dict()
  got, want = jax.tree.leaves(run.params), jax.tree.leaves(params)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_eval_py_defaults_to_the_runs_config():
  source = (REPO / 'mmvaeplus_jax/tools/evaluate.py').read_text()
  assert 'configs/run.py' in source and 'workdir_from_argv' in source
  parse = rundir.workdir_from_argv
  assert parse(['eval.py', '--workdir=runs/a']) == 'runs/a'
  assert parse(['eval.py', '--workdir', 'runs/b', '--step=3']) == 'runs/b'
  assert parse(['eval.py', '--config=x.py']) is None
