"""A run directory describes itself: its config, and its trained params.

`train.py` writes the resolved config to `<workdir>/config.json` when it
starts (`save_config`); `eval.py` reads it when no `--config` is given, and

    run = mmvaeplus_jax.load_run('runs/demo-20261203-120000')
    run.model, run.params, run.config, run.step

returns the model and the restored params of a checkpoint (default: the
latest) for a notebook or a script, with no config retyped by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

CONFIG_FILE = 'config.json'


def workdir_from_argv(argv) -> str | None:
  """`--workdir` of a command line (`eval.py` reads it before its flags are
  parsed, so that its config defaults to the run's own)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--workdir='):
      return arg.split('=', 1)[1]
    if arg == '--workdir' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def config_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                      CONFIG_FILE)


def _plain(tree):
  """JSON-comparable form (tuples as lists)."""
  return json.loads(json.dumps(tree))


def save_config(config, workdir: str) -> str:
  """Writes `config` as `<workdir>/config.json` (process 0 only).

  A workdir holds one model: resuming with a different `config.model`
  would restore a checkpoint into another architecture, so it raises.

  Raises:
    ValueError: the workdir's config.json has another `model` section.
  """
  path = config_path(workdir)
  new = _plain(config.to_dict())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old.get('model') != new['model']:
      diff = sorted(k for k in set(old.get('model', {})) | set(new['model'])
                    if old.get('model', {}).get(k) != new['model'].get(k))
      raise ValueError(
          f'{workdir} was trained with another model config (keys {diff}'
          f' differ from {path}); use a new --workdir, or the run\'s own'
          ' config (eval.py and load_run read it from the workdir)')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (`<workdir>/config.json`).

  Raises:
    FileNotFoundError: no config.json (a run from before this file existed:
      pass its config explicitly, e.g. `eval.py --config=...`).
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a training run written by'
        ' train.py (or predates config.json); pass the config it was'
        ' trained with, e.g. eval.py --config=mmvaeplus_jax/configs/'
        'polymnist.py:demo')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _tuples(tree):
  """Lists back to tuples (configs hold tuples, e.g. evals.alpha_sweep)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


@functools.lru_cache(maxsize=8)
def _model(model_json: str):
  """One model object per model config, so that repeated evaluations in a
  process reuse the compiled functions (the model is a static jit argument,
  hashed by identity)."""
  from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top
  return models.get_model(ml_collections.ConfigDict(json.loads(model_json)))


def model_of(config):
  """The model of `config.model` (cached per model config)."""
  return _model(json.dumps(config.model.to_dict(), sort_keys=True))


def restore_params(config, model, workdir: str, step: int | None = None, *,
                   sharding=None) -> tuple[Any, int]:
  """(params, step) of checkpoint `step` (default: the latest) of `workdir`.

  Args:
    sharding: where the params go (default: replicated over all devices).
  """
  from mmvaeplus_jax import parallel  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  checkpointing.quiet_orbax()
  if sharding is None:
    sharding = parallel.replicated(parallel.make_mesh())
  tx = step_lib.make_optimizer(config.optim)
  example = {m.name: np.zeros((1,) + tuple(m.event_shape), np.float32)
             for m in model.modalities}
  abstract = jax.eval_shape(
      functools.partial(step_lib.init_state, model=model, tx=tx),
      jax.random.key(0), example)
  manager = checkpointing.make_manager(
      os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                   'checkpoints'), read_only=True)
  state = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract, sharding), step)
  return state.params, int(state.step)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its config, model, params (of checkpoint `step`)."""

  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int


def load_run(workdir: str, step: int | None = None, *, config=None) -> Run:
  """The model and restored params of a training run.

  Args:
    workdir: the run's directory (written by `train.py`).
    step: checkpoint step (default: the latest).
    config: the run's config (default: `<workdir>/config.json`).
  """
  config = load_config(workdir) if config is None else config
  model = model_of(config)
  params, step = restore_params(config, model, workdir, step)
  return Run(os.path.abspath(os.path.expanduser(workdir)), config, model,
             params, step)
