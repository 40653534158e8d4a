"""What the one-call and the microbatched train steps share.

`apply_gradients(state, loss, grads, *, tx)` is the update of every train
step: skipped (params and optimiser state kept) when the loss or the
gradient is non-finite, and counted in `nonfinite_consecutive` /
`nonfinite_total`. Below both steps (`step.py`, `microbatch.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mmvaeplus_jax import train_state


def apply_gradients(state: train_state.TrainState, loss, grads, *, tx,
                    model=None, new_params=None):
  """The update of `train_step` from the loss and its gradient: skipped
  (params and optimiser state kept) when either is non-finite.

  Args:
    model, new_params: for a model with BatchNorm running averages
      (`model.has_batch_stats`): `grads` are those of
      `model.trainable_params`, and `new_params` holds the updated running
      averages (`model.update_batch_stats`). None: `grads` cover all params.

  Returns:
    (new state, metrics dict of scalars).
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if model is None:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  else:
    trainable = model.trainable_params(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    params = model.with_trainable(new_params,
                                  optax.apply_updates(trainable, updates))
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  consecutive = jnp.where(finite, 0, state.nonfinite_consecutive + 1)
  new_state = train_state.TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_consecutive=consecutive.astype(jnp.int32),
      nonfinite_total=(state.nonfinite_total + (~finite)).astype(jnp.int32),
  )
  metrics = {
      'train/loss': loss,
      'train/bound': -loss,
      'train/grad_norm': grad_norm,
      'train/nonfinite_steps': new_state.nonfinite_total,
      'train/nonfinite_consecutive': new_state.nonfinite_consecutive,
  }
  return new_state, metrics
