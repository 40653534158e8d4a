"""A finished run as objects: its config, model and trained params.

    run = mmvaeplus_jax.load_run('runs/demo-20261203-120000')
    run.model, run.params, run.config, run.step

returns the model and the restored params of a checkpoint (default: the
latest) for a notebook or a script, with no config retyped by hand.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from mmvaeplus_jax import train_state
from mmvaeplus_jax.configs import run as run_config


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
    config: the run's config (default: `<workdir>/config.json`, keys added
      to the code since at their defaults: `configs/run.py`).
  """
  config = run_config.get_config(workdir) if config is None else config
  model = train_state.model_of(config)
  params, step = train_state.restore_params(config, model, workdir, step)
  return Run(os.path.abspath(os.path.expanduser(workdir)), config, model,
             params, step)

