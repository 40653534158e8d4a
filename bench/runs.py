"""S runs in one vmapped program vs S separate runs: training examples/s.

    python bench/runs.py [--sizes=1,3,8] [--rounds=5] [--steps=10] [--cell=0]

The `studies/polymnist_cpu.py:pilot` cell CELL (default 0: MMVAE+, dim_w 4,
width 1/8, M = 5, K = 1, B = 8) on `parallel.make_mesh()`. For each S:

* vmapped: the S-run step of `train.num_runs = S` (`training/step.py:
  jit_train_steps`: `train_step` vmapped over the run axis of a stacked
  state, batch [S, B, ...], S base keys), one call per step;
* separate: S states, each stepped by the plain trainer's step
  (`jit_train_step`) one after the other (what S runs in one process
  would do; S processes on the same cores share them the same way).

Both see synthetic batches (uniform floats, 4 batches cycled) already on
the devices, so the time is the step's, not the input pipeline's. After 3
untimed steps per round, `--rounds` interleaved rounds of `--steps` steps
each (every step ends with `block_until_ready` on the last round's state);
prints per S and mode the median examples/s (S x B x steps / seconds) with
the rounds' range, and the vmapped / separate ratio. Run it on a quiet
machine: numbers from a busy one are not comparable.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'studies'))
import polymnist_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax.infra import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='1,3,8')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--cell', type=int, default=0)
  p.add_argument('--out', default='', help='append one JSON row per S')
  return p.parse_args(argv)


def _setup(config, num_runs, mesh):
  """(vmapped step, stacked state, S stacked batches, keys), and the plain
  (step, S states, batches, keys)."""
  config.train.num_runs = num_runs
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  b = config.train.batch_size
  rng = np.random.default_rng(0)
  xs = [{n: rng.uniform(size=(b, 28, 28, 3)).astype(np.float32)
         for n in model.names} for _ in range(4)]
  init = jax.jit(lambda k, x: train_state.init_state(k, x, model=model, tx=tx))
  states = [init(jax.random.key(s), xs[0]) for s in range(num_runs)]
  keys = [jax.random.key(100 + s) for s in range(num_runs)]
  plain = step_lib.jit_train_step(config, model, tx, mesh)
  plain_batches = [parallel.global_batch(mesh, x) for x in xs]
  vm = step_lib.jit_train_steps(config, model, tx, mesh)
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  vm_batches = [parallel.global_run_batch(
      mesh, {n: np.stack([v] * num_runs) for n, v in x.items()}) for x in xs]
  vm_keys = jnp.stack(keys)
  return ((vm, stacked, vm_batches, vm_keys),
          (plain, states, plain_batches, keys))


def main(argv=None):
  args = _parse(argv)
  parallel.configure_jax()  # the training shell's settings (threefry)
  mesh = parallel.make_mesh()
  cell = polymnist_cpu.get_study('pilot').cells[args.cell]
  b = cell.config.train.batch_size
  print(f'cell {cell.name}: batch {b}, {mesh.devices.size} device(s)'
        f' {mesh.devices.flat[0].platform}, jax {jax.__version__}')
  for s in (int(x) for x in args.sizes.split(',')):
    (vm, stacked, vbs, vkeys), (plain, states, pbs, keys) = _setup(
        cell.config.copy_and_resolve_references(), s, mesh)

    def vm_steps(n):
      nonlocal stacked
      for i in range(n):
        stacked, _ = vm(stacked, vbs[i % 4], vkeys)
      jax.block_until_ready(stacked)

    def plain_steps(n):
      for i in range(n):
        for r in range(s):
          states[r], _ = plain(states[r], pbs[i % 4], keys[r])
      jax.block_until_ready(states)

    rates = {'vmapped': [], 'separate': []}
    for _ in range(args.rounds):
      for mode, fn in (('vmapped', vm_steps), ('separate', plain_steps)):
        fn(3)
        t = time.perf_counter()
        fn(args.steps)
        rates[mode].append(s * b * args.steps / (time.perf_counter() - t))
    row = {'S': s, 'batch': b, 'cell': cell.name,
           'devices': mesh.devices.size,
           'platform': mesh.devices.flat[0].platform}
    for mode, r in rates.items():
      row[mode] = {'median': float(np.median(r)), 'min': float(min(r)),
                   'max': float(max(r))}
    ratio = row['vmapped']['median'] / row['separate']['median']
    print(f'S={s}: vmapped {row["vmapped"]["median"]:.0f} examples/s'
          f' ({row["vmapped"]["min"]:.0f}-{row["vmapped"]["max"]:.0f}),'
          f' separate {row["separate"]["median"]:.0f}'
          f' ({row["separate"]["min"]:.0f}-{row["separate"]["max"]:.0f}),'
          f' ratio {ratio:.2f}', flush=True)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(json.dumps(row, sort_keys=True) + '\n')


if __name__ == '__main__':
  main()
