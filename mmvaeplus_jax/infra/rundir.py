"""A run directory describes itself: `<workdir>/config.json`.

`train.py` writes the resolved config when it starts (`save_config`);
`eval.py` and `experiments.runs.load_run` read it (`load_config`), so a run
is evaluated with the config that trained it.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

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
