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

from mmvaeplus_jax import models
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
  return apply_gradients(state, loss, grads, tx=tx)


def apply_gradients(state: TrainState, loss, grads, *, tx):
  """The update of `train_step` from the loss and its gradient: skipped
  (params and optimiser state kept) when either is non-finite.

  Returns:
    (new state, metrics dict of scalars).
  """
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


def resolve_microbatch(setting: int, per_device_batch: int, *,
                       num_samples: int, num_modalities: int,
                       platform: str, limits=None) -> int:
  """Examples per device in one microbatch of the train step; 0 = none.

  Args:
    setting: `train.microbatch_size`: 0 = off (one program on the whole
      batch); n > 0 = n examples per device per microbatch (must divide the
      per-device batch); -1 = automatic: on CPU with `limits` = (examples,
      decoder rows), the largest divisor n of the per-device batch with
      n <= examples and M K n <= rows (XLA:CPU's convolutions slow down
      per row once a call's activations outgrow the cache); without
      `limits`, and on GPU and TPU, one call (their program is unchanged).
    per_device_batch: global batch / number of devices.
    limits: `models.cpu_microbatch_limits(config.model)`.

  Returns:
    n, or 0 when the whole per-device batch runs in one call.

  Raises:
    ValueError: `setting` is not -1, 0 or a positive divisor of the
      per-device batch.
  """
  b = int(per_device_batch)
  if setting == 0:
    return 0
  if setting == -1:
    if platform != 'cpu' or limits is None:
      return 0
    examples, rows = limits
    per_example = max(1, int(num_samples) * int(num_modalities))
    limit = max(1, int(min(examples, rows // per_example)))
    n = max(d for d in range(1, min(b, limit) + 1) if b % d == 0)
    return 0 if n == b else n
  if setting < 0 or b % setting:
    raise ValueError(
        f'train.microbatch_size={setting} must be -1 (automatic), 0 (off) or'
        f' a positive divisor of the per-device batch ({b}); e.g. set'
        f' --config.train.microbatch_size=0')
  return 0 if setting == b else int(setting)


def noise_batch_axes(model, num_samples: int, batch_size: int, options=()):
  """Which axis of each leaf of `model.objective_noise` is the batch axis
  (-1: none, e.g. MVAE's random subsets, shared by the batch), found from
  the shapes at B and B + 1.

  Raises:
    ValueError: a leaf changes in more than one axis with B.
  """
  def shapes(b):
    return jax.eval_shape(
        lambda k: model.objective_noise(k, num_samples, b, **dict(options)),
        jax.random.key(0))

  def axis(x, y):
    diff = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
    if len(x.shape) != len(y.shape) or len(diff) > 1:
      raise ValueError(
          f'{type(model).__name__}.objective_noise: a leaf of shape'
          f' {x.shape} at B={batch_size} has shape {y.shape} at'
          f' B={batch_size + 1}; microbatches need at most one batch axis'
          ' (set train.microbatch_size=0)')
    return diff[0] if diff else -1

  return jax.tree.map(axis, shapes(batch_size), shapes(batch_size + 1))


def _device_rows(x, axis: int, num_devices: int, start, size: int, mesh):
  """Rows [start, start + size) of every device's block of `axis` (the
  batch is sharded in contiguous blocks over 'data'), still sharded."""
  x = jnp.moveaxis(x, axis, 0)
  per = x.shape[0] // num_devices
  x = x.reshape((num_devices, per) + x.shape[1:])
  x = jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
  x = x.reshape((num_devices * size,) + x.shape[2:])
  x = jax.lax.with_sharding_constraint(x, parallel.data_sharding(mesh))
  return jnp.moveaxis(x, 0, axis)


def microbatch_gradient(params, acc, batch, base_key, step, index, *, model,
                        num_samples: int, beta: float, estimator, options,
                        noise_axes, size: int, mesh):
  """Adds microbatch `index`'s share of `train_step`'s loss and gradient to
  `acc` = (loss, grads).

  The noise is `train_step`'s: drawn for the whole batch from
  `fold_in(base_key, step)`, then the microbatch's rows of the batch and of
  the noise are taken (per device: rows [index * size, (index + 1) * size)
  of its block). The loss share is -sum(bound) / B, so the sum over all
  microbatches is `train_step`'s -mean(bound) and its gradient, up to the
  order of float32 additions.
  """
  key = jax.random.fold_in(base_key, step)
  images = _images(model, batch)
  b = model.check_batch(images)
  n_dev = mesh.devices.size
  noise = model.objective_noise(key, num_samples, b, **dict(options))
  start = index * size
  rows = lambda x, a: _device_rows(x, a, n_dev, start, size, mesh)
  mb = {n: rows(x, 0) for n, x in images.items()}
  mn = jax.tree.map(lambda x, a: x if a < 0 else rows(x, a), noise,
                    noise_axes)

  def loss_fn(p):
    bound = model.objective_on_noise(p, mb, mn, beta=beta,
                                     estimator=estimator, **dict(options))
    return -jnp.sum(bound) / b

  loss, grads = jax.value_and_grad(loss_fn)(params)
  return acc[0] + loss, jax.tree.map(jnp.add, acc[1], grads)


class MicrobatchedTrainStep:
  """`train_step` as a few device calls: (state, batch, base_key) ->
  (state, metrics), the same noise, loss and gradient (up to float32
  reassociation) and the same update.

  Each per-device batch runs as n = B_dev / size microbatches of `size`
  examples: one compiled gradient program called n times (the microbatch
  index is an argument, so it compiles once), then one compiled update
  (`apply_gradients`). A Python loop of calls, not a `lax.scan`: XLA:CPU
  runs convolutions inside loops many times slower (bench/RESULTS.md).
  The state is donated to the update, as `jit_train_step`'s.
  """

  def __init__(self, config, model, tx, mesh, size: int):
    o = config.objective
    self.size = int(size)
    self.num_devices = mesh.devices.size
    estimator = model.check_estimator(o.estimator or None)
    options = tuple(objective_options(o, model).items())
    b = int(config.train.batch_size)
    self.batch_size = b
    axes = noise_batch_axes(model, o.num_samples, b, options)
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    self._zeros = jax.jit(
        lambda p: (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, p)),
        out_shardings=repl)
    self._grad = jax.jit(
        functools.partial(
            microbatch_gradient, model=model, num_samples=o.num_samples,
            beta=o.beta, estimator=estimator, options=options,
            noise_axes=axes, size=self.size, mesh=mesh),
        in_shardings=(repl, repl, data, repl, repl, repl),
        out_shardings=repl, donate_argnums=1)
    self._apply = jax.jit(
        functools.partial(apply_gradients, tx=tx),
        in_shardings=(repl, repl, repl), out_shardings=(repl, repl),
        donate_argnums=0)

  @property
  def num_microbatches(self) -> int:
    return self.batch_size // self.num_devices // self.size

  def loss_and_grad(self, params, batch, base_key, step):
    """`train_step`'s (loss, gradient) at `step`, summed over the
    microbatches."""
    b = next(iter(batch.values())).shape[0]
    if b != self.batch_size:
      raise ValueError(f'the step was built for batches of'
                       f' {self.batch_size} examples, got {b}')
    acc = self._zeros(params)
    for i in range(self.num_microbatches):
      acc = self._grad(params, acc, batch, base_key, step, jnp.int32(i))
    return acc

  def __call__(self, state, batch, base_key):
    return self._apply(
        state, *self.loss_and_grad(state.params, batch, base_key, state.step))

  def lower_programs(self, state, batch, base_key):
    """[(name, jax.stages.Lowered, calls per step)] of the step's compiled
    programs (`bench/step.py`: compile time, FLOPs, memory)."""
    acc = jax.eval_shape(self._zeros, state.params)
    return [
        ('zeros', self._zeros.lower(state.params), 1),
        ('microbatch_gradient', self._grad.lower(
            state.params, acc, batch, base_key, state.step, jnp.int32(0)),
         self.num_microbatches),
        ('apply_gradients', self._apply.lower(state, *acc), 1),
    ]

  def _cache_size(self) -> int:
    """The largest jit cache of its programs (1 = each compiled once)."""
    return max(f._cache_size() for f in (self._zeros, self._grad, self._apply))  # pylint: disable=protected-access


def jit_train_step(config, model, tx, mesh):
  """The trainer's compiled step: state replicated and donated, batch sharded.

  `(state, batch, base_key) -> (state, metrics)`; the training shell and
  `bench/step.py` both use this, so the benchmark times the trainer's program.
  With microbatches (`train.microbatch_size`, `resolve_microbatch`: automatic
  on CPU for full-width PolyMNIST batches above 16 examples) it is a
  `MicrobatchedTrainStep`, else one `jax.jit` of `train_step`.
  """
  size = resolve_microbatch(
      config.train.get('microbatch_size', -1),
      config.train.batch_size // mesh.devices.size,
      num_samples=config.objective.num_samples,
      num_modalities=model.num_modalities,
      platform=mesh.devices.flat[0].platform,
      limits=models.cpu_microbatch_limits(config.model))
  if size:
    return MicrobatchedTrainStep(config, model, tx, mesh, size)
  repl = parallel.replicated(mesh)
  return jax.jit(
      make_train_step(config, model, tx),
      in_shardings=(repl, parallel.data_sharding(mesh), repl),
      out_shardings=(repl, repl), donate_argnums=0)
