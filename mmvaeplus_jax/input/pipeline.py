"""Input pipeline: deterministic, per-host, prefetched batches.

The batch of global step s is a pure function of (seed, s): epoch e = s // S
(S = steps per epoch, the last partial batch dropped), a permutation of the
example indices drawn from `np.random.default_rng([seed, e])`, and the s-th
slice of it. A resumed run therefore reads exactly the batches an
uninterrupted run would, without saving iterator state. Each host (JAX
process) takes only its contiguous share of every global batch, so
`jax.make_array_from_process_local_data` reassembles the global batch in
global order whatever the number of hosts.

Images come out as float32 in [0, 1], NHWC; labels as int32.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Mapping, Protocol

import numpy as np


class Source(Protocol):
  """Random-access examples: `len(source)`, `source.read(indices)`."""

  def __len__(self) -> int:
    ...

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


class ArraySource:
  """An in-memory split `{name: [N, ...]}` (e.g. from `builders.load_split`)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f'all arrays of a source need the same length, got {sizes}')
    self.arrays = dict(arrays)
    self._n = next(iter(sizes.values()))

  def __len__(self) -> int:
    return self._n

  def read(self, indices):
    return {k: v[indices] for k, v in self.arrays.items()}


class PairedSource:
  """Examples that pair items stored once (MNIST-SVHN uses each item 30
  times): field k of example i is `items[k][index[k][i]]` for the keys of
  `items`, `fields[k][i]` for the others.

  Args:
    items: `{name: [N_name, ...]}` the distinct items of each paired field.
    index: `{name: [P]}` integer positions into `items[name]`.
    fields: `{key: [P, ...]}` per-example fields (labels, indices).
  """

  def __init__(self, items: Mapping[str, np.ndarray],
               index: Mapping[str, np.ndarray],
               fields: Mapping[str, np.ndarray]):
    if set(items) != set(index):
      raise ValueError(
          f'items and index need the same keys, got {sorted(items)} and'
          f' {sorted(index)}')
    sizes = {k: len(v) for k, v in {**index, **fields}.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(
          f'all index and field arrays need the same length, got {sizes}')
    for k, i in index.items():
      if len(i) and (np.min(i) < 0 or np.max(i) >= len(items[k])):
        raise ValueError(
            f'index[{k!r}] must lie in [0, {len(items[k])}), got'
            f' [{np.min(i)}, {np.max(i)}]')
    self.items, self.index = dict(items), dict(index)
    self.fields = dict(fields)
    self._n = next(iter(sizes.values()))

  def __len__(self) -> int:
    return self._n

  def read(self, indices):
    out = {k: v[self.index[k][indices]] for k, v in self.items.items()}
    out.update({k: v[indices] for k, v in self.fields.items()})
    return out


class DataSource:
  """A TFDS random-access data source (`builder.as_data_source(split)`)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices):
    examples = self.source.__getitems__([int(i) for i in indices])
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class Select:
  """A view of a source that reads only the named fields."""

  def __init__(self, source: Source, keys):
    self.source, self.keys = source, tuple(keys)

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices):
    if isinstance(self.source, ArraySource):
      return {k: self.source.arrays[k][indices] for k in self.keys}
    examples = self.source.read(indices)
    return {k: examples[k] for k in self.keys}


MASK_KEY = 'mask'
_MISSING_TAG = 0x6d697373  # 'miss': the missing-modality draws' own stream


def missing_mask(num_examples: int, num_modalities: int, *, rate: float,
                 seed: int) -> np.ndarray:
  """Which modalities each example observes, missing completely at random.

  Each modality of each example is missing independently with probability
  `rate`; an example left with none keeps one modality drawn uniformly (so
  the realised missing fraction is a little below `rate`:
  rate - rate^M / M in expectation). A pure function of
  (seed, N, M, rate), from its own NumPy stream.

  Returns:
    `[N, M]` bool, True = observed.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(
        f'data.missing_rate must be in [0, 1) (the probability that a'
        f' modality is missing), got {rate}')
  rng = np.random.default_rng([int(seed), _MISSING_TAG])
  keep = rng.random((num_examples, num_modalities)) >= rate
  none = np.flatnonzero(~keep.any(axis=1))
  keep[none, rng.integers(0, num_modalities, none.size)] = True
  return keep


class MissingSource:
  """A source whose examples miss modalities: `read` adds `mask` `[n, M]`
  (bool, True = observed, `missing_mask`) and sets every missing entry of
  the modality arrays to zeros, so no model can read what is missing.

  Args:
    source: the complete source.
    names: the M modality keys, in the model's order.
    mask: `[len(source), M]` bool.
  """

  def __init__(self, source: Source, names, mask: np.ndarray):
    mask = np.asarray(mask, bool)
    if mask.shape != (len(source), len(names)):
      raise ValueError(
          f'mask must be [N, M] = [{len(source)}, {len(names)}], got'
          f' {list(mask.shape)}')
    self.source, self.names, self.mask = source, tuple(names), mask

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices):
    out = dict(self.source.read(indices))
    mask = self.mask[np.asarray(indices)]
    for m, name in enumerate(self.names):
      x = out[name]
      gone = ~mask[:, m].reshape((-1,) + (1,) * (x.ndim - 1))
      out[name] = np.where(gone, np.zeros_like(x), x)
    out[MASK_KEY] = mask
    return out


def to_model_inputs(examples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """uint8 images -> float32 [0, 1]; integer labels -> int32."""
  out = {}
  for k, v in examples.items():
    if v.dtype == np.uint8:
      out[k] = v.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(v.dtype, np.integer):
      out[k] = v.astype(np.int32)
    else:
      out[k] = v
  return out


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  if global_batch < 1 or global_batch > num_examples:
    raise ValueError(
        f'train.batch_size must be in [1, {num_examples}] (the split size),'
        f' got {global_batch}')
  return num_examples // global_batch


def global_indices(step: int, *, seed: int, num_examples: int,
                   global_batch: int) -> np.ndarray:
  """`[global_batch]` example indices of global step `step`."""
  per_epoch = steps_per_epoch(num_examples, global_batch)
  epoch, i = divmod(int(step), per_epoch)
  perm = np.random.default_rng([int(seed), epoch]).permutation(num_examples)
  return perm[i * global_batch:(i + 1) * global_batch]


def host_indices(indices: np.ndarray, process_index: int,
                 process_count: int) -> np.ndarray:
  """This host's contiguous share of a global batch's indices."""
  if len(indices) % process_count:
    raise ValueError(
        f'global batch {len(indices)} must be divisible by the number of'
        f' processes {process_count}')
  n = len(indices) // process_count
  return indices[process_index * n:(process_index + 1) * n]


def host_batch(source: Source, step: int, *, seed: int, global_batch: int,
               process_index: int = 0, process_count: int = 1):
  """This host's share of the batch of global step `step`, model-ready."""
  idx = global_indices(step, seed=seed, num_examples=len(source),
                       global_batch=global_batch)
  idx = host_indices(idx, process_index, process_count)
  return to_model_inputs(source.read(idx))


def iterate(source: Source, start_step: int, num_steps: int, *, seed: int,
            global_batch: int, process_index: int = 0, process_count: int = 1,
            prefetch: int = 2) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Yields (step, host batch) for steps [start_step, num_steps).

  A background thread prepares up to `prefetch` batches ahead. Exceptions in
  the thread are re-raised in the consumer.
  """
  def make(step):
    return host_batch(source, step, seed=seed, global_batch=global_batch,
                      process_index=process_index, process_count=process_count)

  if prefetch <= 0:
    for step in range(start_step, num_steps):
      yield step, make(step)
    return

  q: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  done = object()

  def producer():
    try:
      for step in range(start_step, num_steps):
        item = (step, make(step))
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # surfaced in the consumer
      q.put(e)

  thread = threading.Thread(target=producer, daemon=True, name='prefetch')
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
