"""One data-parallel mesh: batch sharded on 'data', state replicated.

The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod: after
`jax.distributed.initialize()` `jax.devices()` lists every host's devices,
each host feeds its share of the global batch, and
`jax.make_array_from_process_local_data` assembles the global array. No
collectives are written by hand: a mean over the global batch inside `jit`
makes XLA insert the all-reduce.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from mmvaeplus_jax.infra import xla_cpu

DATA_AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over all (global) devices, axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def run_data_sharding(mesh) -> NamedSharding:
  """A batch of S runs [S, B, ...]: the run axis whole on every device,
  B sharded on 'data' (as `data_sharding`'s)."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh) -> None:
  n = mesh.devices.size
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(
        f'train.batch_size={global_batch} must be divisible by the number of'
        f' devices ({n}) and of processes ({jax.process_count()}); set'
        f' --config.train.batch_size to a multiple of {n}')


def check_conv_impl(conv_impl: str, num_devices: int) -> None:
  """Refuses oneDNN convolutions (`model.conv_impl`) on more than one device.

  Their custom calls have no sharding rule: every device would compute the
  whole batch.
  """
  if conv_impl != 'xla' and num_devices > 1:
    raise ValueError(
        f'model.conv_impl={conv_impl!r} runs on one CPU device (its custom'
        ' calls have no sharding rule: every device would compute the whole'
        f' batch), this run has {num_devices} devices: use'
        " model.conv_impl='xla', or one device")


def global_batch(mesh, local_batch):
  """Host-local numpy batch -> global jax.Arrays sharded on 'data'."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def global_run_batch(mesh, local_batch):
  """Host-local numpy batches of S runs [S, B_local, ...] -> global
  jax.Arrays [S, B, ...] sharded on B (`run_data_sharding`)."""
  sharding = run_data_sharding(mesh)
  p = jax.process_count()
  return {k: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0], v.shape[1] * p) + v.shape[2:])
          for k, v in local_batch.items()}


def replicate(mesh, tree):
  """The same host values on every device (each host passes all of them)."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)),
      tree)


def replicate_key(mesh, key):
  """A typed PRNG key as a replicated global array: `jax.device_put` cannot
  place a host value on a multi-process mesh's non-addressable devices, so
  the key data goes through `replicate` (every process passes the same
  key)."""
  return jax.random.wrap_key_data(
      replicate(mesh, np.asarray(jax.random.key_data(key))),
      impl=jax.random.key_impl(key))


def configure_jax(cache_dir: str | None = None) -> None:
  """Process-wide JAX settings used by the training and evaluation shells.

  * the opt-in XLA:CPU convolution setting (`xla_cpu.configure`, off unless
    MMVAEPLUS_CPU_CONVOLUTIONS=eigen): call this before the first JAX
    computation of the process;
  * `jax_threefry_partitionable=False`: XLA:CPU compiled the partitionable
    threefry about 8x slower here (28 s vs 3.6 s for 8 `uniform` draws in one
    jit); random values stay a pure function of key and shape, so results are
    still identical across device counts. Only the noise arrays (M*K*B*D
    floats) are affected, never the model's activations.
  * a persistent compilation cache (`cache_dir`, default
    `~/.cache/mmvaeplus_jax/xla`, or $JAX_COMPILATION_CACHE_DIR), so a resumed
    or repeated run skips recompiling the same step.
  """
  xla_cpu.configure()
  jax.config.update('jax_threefry_partitionable', False)
  if jax.config.jax_compilation_cache_dir is None:
    cache_dir = cache_dir or os.path.join(
        os.path.expanduser('~'), '.cache', 'mmvaeplus_jax', 'xla')
    jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
