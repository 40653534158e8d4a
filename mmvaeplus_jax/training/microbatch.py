"""The train step as CPU microbatches (`train.microbatch_size`).

`MicrobatchedTrainStep(config, model, tx, mesh, size)` is `step.train_step`
as a few device calls: `(state, batch, base_key) -> (state, metrics)`, the
same noise, loss and gradient (up to float32 reassociation) and the same
update (`update.apply_gradients`). `resolve_microbatch` chooses the
microbatch size (0: one call), `noise_batch_axes` finds the batch axis of
each noise leaf, `microbatch_gradient` is one microbatch's share of the loss
and gradient. `step.jit_train_step` picks this or one `jax.jit` call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmvaeplus_jax import models
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.training import update


def _images(model, batch):  # as step.py's
  return {n: batch[n] for n in model.names}


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
  mask = batch.get(pipeline.MASK_KEY)  # [B, M] observed modalities or None
  mask = None if mask is None else rows(mask, 0)

  def loss_fn(p):
    bound = model.objective_on_noise(p, mb, mn, beta=beta,
                                     estimator=estimator, mask=mask,
                                     **dict(options))
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
    if model.has_batch_stats:
      raise ValueError(
          'microbatched steps do not support BatchNorm (batch statistics'
          ' would be per microbatch): set train.microbatch_size=0')
    o = config.objective
    self.size = int(size)
    self.num_devices = mesh.devices.size
    estimator = model.check_estimator(o.estimator or None)
    options = tuple(models.objective_options(o, model).items())
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
        functools.partial(update.apply_gradients, tx=tx),
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
