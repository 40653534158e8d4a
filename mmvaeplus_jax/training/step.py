"""Pure training and evaluation steps, the train state and the optimiser.

`train_step(state, batch, base_key)` is a pure function: the K-sample noise
comes from `fold_in(base_key, state.step)`, so a resumed run draws exactly the
numbers an uninterrupted one would. A non-finite loss or gradient never
reaches the parameters: the update is skipped (params and optimiser state
kept), and counted in `nonfinite_consecutive` / `nonfinite_total`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mmvaeplus_jax import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: completed steps (skipped ones included)
  params: Any
  opt_state: Any
  nonfinite_consecutive: jax.Array  # [] int32
  nonfinite_total: jax.Array  # [] int32


def make_optimizer(optim) -> optax.GradientTransformation:
  """Adam (AMSGrad by default, as the official recipe) from `config.optim`."""
  if optim.amsgrad:
    return optax.amsgrad(optim.lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  return optax.adam(optim.lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)


def init_state(key, example_batch, *, model, tx) -> TrainState:
  params = model.init(key, {n: example_batch[n] for n in model.names})
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=tx.init(params),
                    nonfinite_consecutive=zero, nonfinite_total=zero)


def _images(model, batch):
  return {n: batch[n] for n in model.names}


def objective_options(objective_cfg, model) -> dict:
  """The model's extra objective options (`model.objective_options`) read
  from `config.objective`.

  Raises:
    ValueError: the config lacks one of them.
  """
  missing = [k for k in model.objective_options if k not in objective_cfg]
  if missing:
    raise ValueError(
        f'{type(model).__name__} needs config.objective keys {missing}')
  return {k: objective_cfg[k] for k in model.objective_options}


def train_step(state: TrainState, batch, base_key, *, model, tx,
               num_samples: int, beta: float, estimator: str | None,
               options=()):
  """One optimisation step on the global batch.

  The loss is -mean_b L_b, with L_b the model's per-example surrogate
  (`model.objective`: value = its bound, gradient = `estimator`'s). The
  official code sums over the batch; Adam is nearly invariant to that
  scale, and per-example values log comparably across batch sizes.

  Args:
    options: the model's extra objective options, as (name, value) pairs
      (hashable, see `objective_options`).

  Returns:
    (new state, metrics dict of scalars).
  """
  key = jax.random.fold_in(base_key, state.step)

  def loss_fn(params):
    bound = model.objective(
        key, params, _images(model, batch), num_samples=num_samples,
        beta=beta, estimator=estimator, **dict(options))
    return -jnp.mean(bound)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  consecutive = jnp.where(finite, 0, state.nonfinite_consecutive + 1)
  new_state = TrainState(
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


def eval_step(params, batch, key, *, model, num_samples: int, beta: float,
              options=()):
  """Sum of the per-example bound over the batch (divide by N at the end);
  the bound is the value of the model's default estimator's surrogate."""
  bound = model.objective(
      key, params, _images(model, batch), num_samples=num_samples, beta=beta,
      estimator=None, **dict(options))
  return jnp.sum(bound)


def make_train_step(config, model, tx):
  """`train_step` with the objective's knobs bound from `config.objective`."""
  o = config.objective
  return functools.partial(
      train_step, model=model, tx=tx, num_samples=o.num_samples, beta=o.beta,
      estimator=model.check_estimator(o.estimator or None),
      options=tuple(objective_options(o, model).items()))


def jit_train_step(config, model, tx, mesh):
  """The trainer's compiled step: state replicated and donated, batch sharded.

  `(state, batch, base_key) -> (state, metrics)`; the training shell and
  `bench/step.py` both use this, so the benchmark times the trainer's program.
  """
  repl = parallel.replicated(mesh)
  return jax.jit(
      make_train_step(config, model, tx),
      in_shardings=(repl, parallel.data_sharding(mesh), repl),
      out_shardings=(repl, repl), donate_argnums=0)
