"""The evaluator plug-in contract: `EvalContext`, `Evaluator`, the registry.

An evaluator is a function `fn(ctx: EvalContext) -> dict` registered under a
name:

    from mmvaeplus_jax.evaluation import api

    @api.register('my_metric')
    def my_metric(ctx: api.EvalContext) -> dict:
      if ctx.classifiers is None:
        return api.skip('my_metric', 'needs coherence classifiers')
      ...
      return {'my_metric/value': 0.5}

It returns flat metrics `{name: float | int | list | dict}`; it may include
the key 'skipped': `{name: reason}` for whatever it could not compute (no
classifiers, no Inception weights, ...) instead of raising. The runner
(`evaluation.runner.evaluate`) runs the evaluators named in
`config.evals.evaluators` (comma-separated) in that order, each with its own
key, merges their metrics into `metrics.json` (the `skipped` dicts merged)
and writes the scalar ones to TensorBoard.

Determinism: `ctx.key` is `evaluator_key(root, name)`, a function of the
config's seed and the evaluator's NAME only (not of its position in the list
or of which other evaluators run), so adding an evaluator never changes
another one's numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.models import base

Params = Any
MultimodalVAE = base.MultimodalVAE


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """Everything an evaluator may read (nothing it may change).

  Attributes:
    config: the full training config (`config.evals` holds the knobs).
    model: the model.
    params: restored params, replicated over `mesh`.
    data: test examples `{modality name: uint8 [n, 28, 28, 3], 'label': int
      [n]}` (the first `config.evals.num_examples` of the test split).
    train_source: the train split, read lazily: `len(src)`,
      `src.read(indices) -> {name: [len(indices), ...], 'label': ...}`.
    mesh: the 1-D device mesh (axis `parallel.DATA_AXIS`).
    key: this evaluator's own key (`evaluator_key(root, name)`).
    out_dir: `workdir/eval/<step>/`; figures go here as PNG.
    step: the evaluated checkpoint's step.
    classifiers: `(clf_params replicated, meta dict)` from
      `classifiers.load_classifiers`, or None when
      `config.evals.classifier_dir` is empty.
  """

  config: ml_collections.ConfigDict
  model: MultimodalVAE
  params: Params
  data: dict
  train_source: Any
  mesh: jax.sharding.Mesh
  key: jax.Array
  out_dir: str
  step: int
  classifiers: tuple | None


Evaluator = Callable[[EvalContext], dict]

_REGISTRY: dict[str, Evaluator] = {}



def to_float(x):
  """uint8 images -> float32 in [0, 1] (divided by 255); other arrays
  unchanged. Under jit (the evaluators' batches)."""
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x

def register(name: str) -> Callable[[Evaluator], Evaluator]:
  """Decorator: registers `fn` as evaluator `name` (returns `fn` unchanged).

  Registering another function under a taken name raises ValueError; the same
  function again (a module reloaded) replaces the entry.
  """
  if not name or ',' in name or name != name.strip():
    raise ValueError(f'bad evaluator name {name!r}')

  def deco(fn: Evaluator) -> Evaluator:
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (
        fn.__module__, fn.__qualname__):
      raise ValueError(
          f'evaluator {name!r} is already registered by'
          f' {old.__module__}.{old.__qualname__}')
    _REGISTRY[name] = fn
    return fn

  return deco


def names() -> tuple[str, ...]:
  """The registered evaluator names, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Evaluator:
  """The evaluator registered as `name`; KeyError listing the known ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(
        f'unknown evaluator {name!r}; known: {", ".join(names())}') from None


def parse_names(spec: str) -> list[str]:
  """'bound, coherence,,fid' -> ['bound', 'coherence', 'fid'] (no repeats)."""
  out = []
  for part in str(spec).split(','):
    part = part.strip()
    if part and part not in out:
      out.append(part)
  return out


def skip(name: str, reason: str) -> dict:
  """What an evaluator that cannot run returns: `{'skipped': {name: reason}}`.
  """
  return {'skipped': {name: reason}}


def skip_unless_images(ctx: EvalContext, name: str,
                       instead: str = '') -> dict | None:
  """`skip(name, ...)` when a modality of `ctx.model` is not an image (event
  shape (H, W, 1 or 3), e.g. CUB's caption token ids), else None.

  For evaluators that draw or compare every modality as pixels: they refuse
  such a model whole (one reason in `skipped`) rather than drop modalities
  silently. `instead` names the evaluators to use for it.
  """
  others = [m.name for m in ctx.model.modalities
            if not plotting.is_image_shape(m.event_shape)]
  if not others:
    return None
  return skip(name, f'modalities {others} are not images; {name!r} needs'
              ' every modality to be an image' + (
                  f' (for image-caption models use {instead})'
                  if instead else ''))


def stable_hash(name: str) -> int:
  """A 31-bit hash of `name`, the same in every process (unlike `hash`)."""
  digest = hashlib.sha256(name.encode()).digest()
  return int.from_bytes(digest[:4], 'little') & 0x7FFFFFFF


def evaluator_key(root: jax.Array, name: str) -> jax.Array:
  """The key of evaluator `name`: `fold_in(root, stable_hash(name))`."""
  return jax.random.fold_in(root, stable_hash(name))


# ------------------------------------------------- helpers for evaluators


def global_batch_size(mesh: jax.sharding.Mesh, batch_size: int,
                      num: int | None = None) -> int:
  """`batch_size` (capped at `num`) rounded up to a multiple of the devices
  and processes, so every call has one shape sharded evenly on the mesh."""
  unit = int(np.lcm(mesh.devices.size, jax.process_count()))
  b = max(1, int(batch_size) if num is None else min(int(batch_size), num))
  return -(-b // unit) * unit


def map_batches(fn: Callable[..., Any], mesh: jax.sharding.Mesh, num: int, *,
                batch_size: int, inputs: Mapping[str, np.ndarray] | None = None,
                args: tuple = (), microbatch: int | None = None,
                static: Mapping[str, Any] | None = None) -> Any:
  """Runs a per-example function over `num` examples in sharded batches.

  Every call gets a fixed-size global batch (`global_batch_size`), split over
  the mesh's 'data' axis: `fn(*args, index, batch)` with `index` int32 [B]
  the example indices (-1 marks padding of the last batch) and `batch`
  `{k: inputs[k][index]}` (the last example repeated as padding; `{}` when
  `inputs` is None). `fn` must return a pytree of per-example arrays
  `[B, ...]` (e.g. a jitted function drawing example i's noise from
  `fold_in(key, index[i])`); `args` (params, keys) should already be
  replicated on `mesh`. On several hosts, each host reads only its share of
  every batch and the outputs are all-gathered.

  With `microbatch=c`, `fn` is NOT jitted by the caller: it is the body
  `fn(*args, index, batch, **static)` for `c` examples, and every device runs
  it in a loop (`lax.map`) over its share of the batch in chunks of `c`
  (`shard_map`; `static` holds hashable non-array arguments such as the
  model). Each device's share is padded to at least two chunks. Then conv
  features came out bit-identical for any device count of the mesh and any
  batch size (`tests/eval_test.py`; between processes, XLA:CPU's Eigen
  convolutions still depend on the size of its thread pool, max(#cores,
  #devices), README "Evaluation"): XLA:CPU's
  convolutions and matmuls round differently for different batch shapes
  (1 vs 8 fake devices: features differed by up to 1.5e-7), and a loop of a
  single trip is inlined and compiled differently from a loop body (a fixed
  chunk still differed in 245 of 16,384 features), whereas a fixed chunk in a
  loop of >= 2 trips gave 0 differences. Use it for continuous outputs
  (features for Fréchet distances); integer outputs (argmax counts) rarely
  need it. Without `microbatch`, per-example randomness from the index
  still makes the outputs equal up to that rounding.

  Returns:
    The outputs concatenated over batches as numpy, `[num, ...]` (padding
    dropped).
  """
  if num < 1:
    raise ValueError(f'map_batches needs num >= 1, got {num}')
  b = global_batch_size(mesh, batch_size, num)
  if microbatch is not None:
    c = int(microbatch)
    if c < 1:
      raise ValueError(f'microbatch must be >= 1, got {microbatch}')
    n_dev = mesh.devices.size
    per_device = -(-b // n_dev)  # ceil
    per_device = max(2 * c, -(-per_device // c) * c)  # >= 2 whole chunks
    b = per_device * n_dev
    static_items = tuple(sorted((static or {}).items()))
    body = fn
    fn = lambda *a: _microbatched(  # pylint: disable=g-long-lambda
        a[:-2], a[-2], a[-1], fn=body, static=static_items, mesh=mesh,
        microbatch=c)
  elif static:
    raise ValueError('map_batches: `static` needs `microbatch`')
  sharding = parallel.data_sharding(mesh)
  pi, pc = jax.process_index(), jax.process_count()
  outs = []
  for start in range(0, num, b):
    index = np.arange(start, start + b)
    index = np.where(index < num, index, -1).astype(np.int32)
    local = index.reshape(pc, -1)[pi]
    take = np.where(local >= 0, local, num - 1)
    batch = {k: np.asarray(v)[take] for k, v in (inputs or {}).items()}
    glob = {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in {'index': local, **batch}.items()}
    idx = glob.pop('index')
    out = fn(*args, idx, glob)
    if pc > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    outs.append(jax.tree.map(np.asarray, out))
  n_last = num - (len(outs) - 1) * b
  outs[-1] = jax.tree.map(lambda x: x[:n_last], outs[-1])
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)


@functools.partial(jax.jit,
                   static_argnames=('fn', 'static', 'mesh', 'microbatch'))
def _microbatched(args, index, batch, *, fn, static, mesh, microbatch):
  """`fn` over each device's share of (index, batch) in chunks of
  `microbatch` (see `map_batches`)."""
  kwargs = dict(static)

  def local(args, index, batch):
    n = index.shape[0]
    split = lambda x: x.reshape((n // microbatch, microbatch) + x.shape[1:])
    out = jax.lax.map(lambda ib: fn(*args, ib[0], ib[1], **kwargs),
                      (split(index), jax.tree.map(split, batch)))
    return jax.tree.map(lambda y: y.reshape((n,) + y.shape[2:]), out)

  spec = jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  return jax.shard_map(
      local, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), spec, spec),
      out_specs=spec)(args, index, batch)
