"""`train_state.make_optimizer`: the learning-rate schedule (`optim.schedule`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax import train_state
from mmvaeplus_jax.configs import polymnist as polymnist_configs

EPS = float(np.finfo(np.float32).eps)


def _updates(optim, grads, params, lr=None):
  tx = train_state.make_optimizer(optim, lr=lr)
  state, out = tx.init(params), []
  for g in grads:
    u, state = jax.jit(tx.update)(g, state)
    out.append(u)
  return out, state


def test_cosine_schedule_scales_the_constant_rate_updates():
  """Each update of `schedule='cosine'` is the constant-rate update times
  alpha + (1 - alpha) (1 + cos(pi t / T)) / 2 at step t (numpy reference),
  then alpha past T. Bound: optax's float32 factor (a cosine, a multiply
  and an add: <= 3 eps relative for factors >= alpha = 0.1) and the
  product's rounding (1 eps), doubled: 8 eps of the update's norm."""
  optim = polymnist_configs.get_config('smoke').optim
  params = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.ones(4)}
  grads = [jax.tree.map(lambda x, i=i: jnp.sin(x + i) + 0.1 * i, params)
           for i in range(7)]
  decay, alpha = 4, 0.1
  for amsgrad in (True, False):
    optim.amsgrad, optim.lr = amsgrad, 0.003
    optim.schedule = 'constant'
    plain, _ = _updates(optim, grads, params)
    optim.update(schedule='cosine', decay_steps=decay, final_lr_fraction=alpha)
    cos, state = _updates(optim, grads, params)
    for t, (u, v) in enumerate(zip(plain, cos)):
      f = alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, decay)
                                                    / decay))
      want = np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]) * f
      got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)])
      assert np.linalg.norm(got - want) <= 8 * EPS * np.linalg.norm(want)
    # A traced rate (the per-run rates' path) keeps the state structure.
    assert jax.tree.structure(state) == jax.tree.structure(
        train_state.make_optimizer(optim, lr=jnp.float32(0.5)).init(params))


def test_schedule_errors_name_the_fix():
  optim = polymnist_configs.get_config('smoke').optim
  assert optim.schedule == 'constant'  # the official recipe by default
  optim.schedule = 'cosine'
  with pytest.raises(ValueError, match='decay_steps > 0'):
    train_state.make_optimizer(optim)
  optim.update(decay_steps=10, final_lr_fraction=1.5)
  with pytest.raises(ValueError, match='final_lr_fraction'):
    train_state.make_optimizer(optim)
  optim.schedule = 'linear'
  with pytest.raises(ValueError, match='use constant or cosine'):
    train_state.make_optimizer(optim)
