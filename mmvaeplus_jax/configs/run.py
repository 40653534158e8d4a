"""The config a training run was trained with: `run.py:<workdir>`.

Reads `<workdir>/config.json` (written by `train.py`; `mmvaeplus_jax.runs`).
`eval.py --workdir=DIR` uses it by default, so overrides such as
`--config.evals.classifier_dir=...` apply to the run's own config.
"""

from mmvaeplus_jax import runs


def get_config(arg=None):
  if not arg:
    raise ValueError(
        'configs/run.py needs the run directory: run.py:<workdir> (eval.py'
        ' passes its --workdir)')
  return runs.load_config(arg)
