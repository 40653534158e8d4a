"""The train state: what a checkpoint holds, written by training, read by
evaluation.

`TrainState` (params, optimiser state, step, non-finite counters) is the one
pytree orbax saves; `restore_params` rebuilds its abstract shape from a
config (model and optimiser) and restores a checkpoint's params, so
`training/` and `evaluation/` share the layout without importing each other.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmvaeplus_jax import models
from mmvaeplus_jax.infra import checkpointing
from mmvaeplus_jax.infra import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: completed steps (skipped ones included)
  # The model's params; for a model with BatchNorm also its running
  # averages (`networks.NetworkVAE`: a BatchNorm network's entry is
  # {'params', 'batch_stats'}), so checkpoints and evaluation carry them.
  params: Any
  opt_state: Any
  nonfinite_consecutive: jax.Array  # [] int32
  nonfinite_total: jax.Array  # [] int32


def make_optimizer(optim, lr=None) -> optax.GradientTransformation:
  """Adam (AMSGrad by default, as the official recipe) from `config.optim`.

  `lr` (a float or a traced scalar) replaces `optim.lr`: the optimiser
  state does not depend on the rate (a constant rate has an empty state),
  so S runs with their own rates share one state structure (`train.run_lrs`).

  `optim.schedule='cosine'` multiplies each update by a cosine decay from 1
  to `optim.final_lr_fraction` over `optim.decay_steps` steps (an
  `optax.scale_by_schedule` after Adam: its state is a step count, the same
  for every rate).

  Raises:
    ValueError: an unknown schedule, or a cosine without `decay_steps`.
  """
  lr = optim.lr if lr is None else lr
  if optim.amsgrad:
    tx = optax.amsgrad(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  else:
    tx = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  schedule = optim.get('schedule', 'constant')
  if schedule == 'constant':
    return tx
  if schedule != 'cosine':
    raise ValueError(f'optim.schedule={schedule!r}: use constant or cosine')
  if int(optim.decay_steps) <= 0 or not 0.0 <= optim.final_lr_fraction <= 1:
    raise ValueError(
        'optim.schedule=cosine needs optim.decay_steps > 0 (e.g. the run\'s'
        f' train.num_steps; got {optim.decay_steps}) and'
        f' 0 <= optim.final_lr_fraction <= 1 (got {optim.final_lr_fraction})')
  return optax.chain(tx, optax.scale_by_schedule(optax.cosine_decay_schedule(
      1.0, int(optim.decay_steps), alpha=float(optim.final_lr_fraction))))


def init_state(key, example_batch, *, model, tx) -> TrainState:
  params = model.init(key, {n: example_batch[n] for n in model.names})
  zero = jnp.zeros((), jnp.int32)
  # The optimiser sees the trainable params only (all of them unless the
  # model has BatchNorm running averages, which live in `params` too).
  return TrainState(step=zero, params=params,
                    opt_state=tx.init(model.trainable_params(params)),
                    nonfinite_consecutive=zero, nonfinite_total=zero)


@functools.lru_cache(maxsize=8)
def _model(model_json: str):
  """One model object per model config, so that repeated evaluations in a
  process reuse the compiled functions (the model is a static jit argument,
  hashed by identity)."""
  return models.get_model(ml_collections.ConfigDict(json.loads(model_json)))


def model_of(config):
  """The model of `config.model` (cached per model config)."""
  return _model(json.dumps(config.model.to_dict(), sort_keys=True))


def restore_params(config, model, workdir: str, step: int | None = None, *,
                   sharding=None) -> tuple[Any, int]:
  """(params, step) of checkpoint `step` (default: the latest) of `workdir`.

  Args:
    sharding: where the params go (default: replicated over all devices).

  Raises:
    ValueError: `config` is that of a job of `train.num_runs` > 1 runs,
      whose checkpoints are per run, in `<workdir>/run{r}`.
  """
  num_runs = int(config.get('train', {}).get('num_runs', 1))
  if num_runs != 1:
    raise ValueError(
        f'{workdir} is a job of train.num_runs={num_runs} runs: each run has'
        f' its own directory and checkpoints, {workdir}/run0 ..'
        f' {workdir}/run{num_runs - 1}; evaluate or load one of those')
  checkpointing.quiet_orbax()
  if sharding is None:
    sharding = parallel.replicated(parallel.make_mesh())
  tx = make_optimizer(config.optim)
  example = {m.name: np.zeros((1,) + tuple(m.event_shape), np.float32)
             for m in model.modalities}
  abstract = jax.eval_shape(
      functools.partial(init_state, model=model, tx=tx),
      jax.random.key(0), example)
  manager = checkpointing.make_manager(
      os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                   'checkpoints'), read_only=True)
  state = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract, sharding), step)
  return state.params, int(state.step)
