"""The config a training run was trained with: `run.py:<workdir>`.

Reads `<workdir>/config.json` (written by `train.py`; `infra/rundir.py`).
`eval.py --workdir=DIR` uses it by default, so overrides such as
`--config.evals.classifier_dir=...` apply to the run's own config. Keys
added to the code after the run was trained (absent from its config.json)
take their defaults from `configs/common.py:base_config()`, named in the
log: a run trained before an option existed is read as trained with the
option's default.
"""

from absl import logging
import ml_collections

from mmvaeplus_jax.configs import common
from mmvaeplus_jax.infra import rundir


def with_new_defaults(saved: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """`saved` with the keys of `base_config()` it lacks added at their
  defaults (in sections it has, and whole sections it lacks)."""
  base = common.base_config().to_dict()
  out = saved.to_dict()
  added = []
  for section, node in base.items():
    if section not in out:
      out[section] = node
      added.append(section)
    elif isinstance(node, dict) and isinstance(out[section], dict):
      for k, v in node.items():
        if k not in out[section]:
          out[section][k] = v
          added.append(f'{section}.{k}')
  if added:
    logging.info('config keys absent from the run\'s config.json, at their'
                 ' defaults: %s', ', '.join(added))
  return ml_collections.ConfigDict(out)


def get_config(arg=None):
  if not arg:
    raise ValueError(
        'configs/run.py needs the run directory: run.py:<workdir> (eval.py'
        ' passes its --workdir)')
  return with_new_defaults(rundir.load_config(arg))
