"""Pure training and evaluation steps, and the trainer's compiled step.

`train_step(state, batch, base_key)` is a pure function: the K-sample noise
comes from `fold_in(base_key, state.step)`, so a resumed run draws exactly the
numbers an uninterrupted one would. A non-finite loss or gradient never
reaches the parameters: the update is skipped (params and optimiser state
kept), and counted in `nonfinite_consecutive` / `nonfinite_total`
(`update.apply_gradients`, shared with the microbatched step of
`microbatch.py`).
`jit_train_step` compiles one call or the microbatches; `jit_train_steps`
the step of S runs at once (`train.num_runs`), vmapped over a run axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmvaeplus_jax import models
from mmvaeplus_jax import train_state
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.training import microbatch
from mmvaeplus_jax.training import update



def _images(model, batch):
  return {n: batch[n] for n in model.names}


def _mask(batch):
  """The batch's observed-modality mask `[B, M]`, or None (all observed)."""
  return batch.get(pipeline.MASK_KEY)


def train_step(state: train_state.TrainState, batch, base_key, *, model, tx,
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
  if model.has_batch_stats:
    return _train_step_batch_stats(
        state, batch, key, model=model, tx=tx, num_samples=num_samples,
        beta=beta, estimator=estimator, options=options)

  def loss_fn(params):
    bound = model.objective(
        key, params, _images(model, batch), num_samples=num_samples,
        beta=beta, estimator=estimator, mask=_mask(batch), **dict(options))
    return -jnp.mean(bound)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return update.apply_gradients(state, loss, grads, tx=tx)


def _train_step_batch_stats(state, batch, key, *, model, tx,
                            num_samples, beta, estimator, options):
  """`train_step` of a model with BatchNorm: the objective in train mode
  (batch statistics; `model.train_mode()`), the gradient of the trainable
  params only, and the running averages moved once by
  `model.update_batch_stats` (their own noise, `fold_in(key, 1)`)."""
  images = _images(model, batch)
  trained = model.train_mode()

  def loss_fn(trainable):
    bound = trained.objective(
        key, model.with_trainable(state.params, trainable), images,
        num_samples=num_samples, beta=beta, estimator=estimator,
        mask=_mask(batch), **dict(options))
    return -jnp.mean(bound)

  loss, grads = jax.value_and_grad(loss_fn)(
      model.trainable_params(state.params))
  new_params = model.update_batch_stats(
      jax.random.fold_in(key, 1), state.params, images)
  return update.apply_gradients(state, loss, grads, tx=tx, model=model,
                                new_params=new_params)


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
      options=tuple(models.objective_options(o, model).items()))


def _microbatch_size(config, model, mesh) -> int:
  return microbatch.resolve_microbatch(
      config.train.get('microbatch_size', -1),
      config.train.batch_size // mesh.devices.size,
      num_samples=config.objective.num_samples,
      num_modalities=model.num_modalities,
      platform=mesh.devices.flat[0].platform,
      limits=models.cpu_microbatch_limits(config.model))


def jit_train_step(config, model, tx, mesh):
  """The trainer's compiled step: state replicated and donated, batch sharded.

  `(state, batch, base_key) -> (state, metrics)`; the training shell and
  `bench/step.py` both use this, so the benchmark times the trainer's program.
  With microbatches (`train.microbatch_size`, `microbatch.resolve_microbatch`:
  automatic on CPU for full-width PolyMNIST batches above 16 examples) it is
  a `microbatch.MicrobatchedTrainStep`, else one `jax.jit` of `train_step`.
  """
  size = _microbatch_size(config, model, mesh)
  if size:
    return microbatch.MicrobatchedTrainStep(config, model, tx, mesh, size)
  repl = parallel.replicated(mesh)
  return jax.jit(
      make_train_step(config, model, tx),
      in_shardings=(repl, parallel.data_sharding(mesh), repl),
      out_shardings=(repl, repl), donate_argnums=0)


def jit_train_steps(config, model, tx, mesh, *, per_run_beta: bool = False,
                    per_run_lr: bool = False):
  """S = `train.num_runs` independent train steps as one compiled program.

  `(states, batches, base_keys) -> (states, metrics)`: `train_step` vmapped
  over a leading run axis of every leaf of the state [S, ...], of the batch
  [S, B, ...] and of the base keys [S]; every metric comes out as [S]. The
  state (run axis included) is replicated and donated, the batch sharded on
  its B axis over 'data' as `jit_train_step`'s (`parallel.
  run_data_sharding`). With `per_run_beta` the step takes a fourth argument,
  the runs' betas [S] (float32, traced; `train.run_betas`), in place of the
  static `objective.beta`; with `per_run_lr` a next one, the runs' learning
  rates [S] (float32, traced; `train.run_lrs`): each run's step uses
  `make_optimizer(config.optim, lr)`, whose state is that of `tx`.

  Raises:
    ValueError: the config asks for microbatches (`train.microbatch_size`,
      automatic on CPU for full-width PolyMNIST): not vmapped.
  """
  size = _microbatch_size(config, model, mesh)
  if size:
    raise ValueError(
        f'train.num_runs={config.train.num_runs} runs one vmapped program and'
        f' does not support microbatches (train.microbatch_size resolves to'
        f' {size} examples per call here): set --config.train.'
        'microbatch_size=0, or train the runs separately')
  repl = parallel.replicated(mesh)
  shardings = (repl, parallel.run_data_sharding(mesh), repl)
  shardings += (repl,) * (int(per_run_beta) + int(per_run_lr))

  def fn(state, batch, base_key, *run_args):
    run_args = list(run_args)
    beta = run_args.pop(0) if per_run_beta else config.objective.beta
    run_tx = (train_state.make_optimizer(config.optim, lr=run_args.pop(0))
              if per_run_lr else tx)
    return make_train_step(config, model, run_tx)(state, batch, base_key,
                                                  beta=beta)

  return jax.jit(jax.vmap(fn), in_shardings=shardings,
                 out_shardings=(repl, repl), donate_argnums=0)
