"""A thin wrapper over orbax's CheckpointManager (one place to switch APIs).

Checkpoints hold the whole `TrainState` (params, optimiser state, step and
non-finite counters); restoring into an abstract state carrying shardings
places every array directly on its devices. Saves are asynchronous; a
checkpoint becomes visible only once finalised, so a process killed during a
save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, max_to_keep: int = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
  directory = os.path.abspath(os.path.expanduser(directory))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> bool:
  return manager.save(int(step), args=ocp.args.StandardSave(state),
                      force=True)


def abstract_with_shardings(abstract_tree, sharding):
  """Attach one sharding to every leaf of an eval_shape tree."""
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      abstract_tree)


def restore(manager: ocp.CheckpointManager, abstract_state, step=None):
  """Restores `step` (default: the latest) into `abstract_state`'s structure."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f'no checkpoint in {manager.directory}: train first (train.py'
        ' --workdir=...) or point --workdir at a training run')
  try:
    return manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError as e:
    raise ValueError(
        f'the checkpoint at step {step} in {manager.directory} does not match'
        ' the model and optimiser of this config (was the workdir trained'
        ' with another model, width, number of modalities or optimiser?).'
        ' Use a new --workdir, or the config that trained it.'
        f' Orbax said: {str(e)[:300]}') from None


class _DropOrbaxInfo:
  """absl log filter: orbax's INFO chatter (several lines per save) hidden."""

  def filter(self, record):
    return record.levelno >= 30 or '/orbax/' not in record.pathname


def quiet_orbax():
  """Hides orbax's INFO log lines (several per save) from absl's handler."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())
