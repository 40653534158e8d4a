"""Times one training epoch of a recipe: the training loop's hot path.

    python bench/epoch.py                         # 2024 recipe, synthetic data
    python bench/epoch.py --num_examples=512 --width=0.0625   # a quick check

What runs is what `training/loop.py:train_and_evaluate` runs per step: the
prefetching input pipeline (`input/pipeline.py:iterate`: per-step example
permutation, uint8 -> float32 conversion, a background thread
`config.data.prefetch` batches ahead), `parallel.global_batch`, the donated
sharded `step.jit_train_step`, and one-step-lagged metric reads; evaluation,
sample grids, checkpoints and writers are left out (the 2024 recipe
evaluates every 1000 steps, i.e. about every 2 epochs).

Data: by default synthetic uint8 images of PolyMNIST's shapes (60,000
training examples, uniform 0..255, fixed seed), so it runs with no dataset
(the device machines have none); `--data=rebuilt|official` reads the real
split through TFDS instead (`--data_dir`, `--manual_dir`).

Prints and (with `--out`) appends one JSON row: the first step (compilation
included), the steady-state time of the remaining steps, and the full
recipe's extrapolated time `num_epochs * steps_per_epoch / steps_per_s +
first step` (no evaluation included).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--recipe', default='official2024',
                 help='config variant of configs/polymnist.py')
  p.add_argument('--width', type=float, default=None, help='override width')
  p.add_argument('--batch_size', type=int, default=None,
                 help='override the global batch')
  p.add_argument('--num_examples', type=int, default=60_000,
                 help='synthetic training-set size (PolyMNIST: 60,000)')
  p.add_argument('--steps', type=int, default=None,
                 help='steps to run (default: one epoch)')
  p.add_argument('--compute_dtype', default='float32',
                 choices=('float32', 'bfloat16'))
  p.add_argument('--remat', action='store_true')
  p.add_argument('--data', default='synthetic',
                 help="'synthetic', or a TFDS config ('rebuilt', 'official')")
  p.add_argument('--data_dir', default='~/tensorflow_datasets')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--compilation_cache', default=None,
                 help='persistent compilation cache directory (default: off;'
                      ' bench/gpu.sh shares one with bench/step.py, so the '
                      'first step may load the program instead of compiling)')
  p.add_argument('--out', default=None, help='append the row to this .jsonl')
  p.add_argument('--note', default='')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.infra import parallel  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.configs import polymnist  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax import train_state  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import step as step_bench  # pylint: disable=g-import-not-at-top
  step_bench.configure(jax, args.compilation_cache)
  cache_hits = step_bench.cache_hit_counter(jax)

  config = polymnist.get_config(args.recipe)
  if args.width is not None:
    config.model.width = args.width
  if args.batch_size is not None:
    config.train.batch_size = args.batch_size
  config.model.update(compute_dtype=args.compute_dtype, remat=args.remat)
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  tc = config.train

  t0 = time.perf_counter()
  if args.data == 'synthetic':
    rng = np.random.default_rng(0)
    n = args.num_examples
    source = pipeline.ArraySource({
        name: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        for name in model.names})
    data_desc = f'synthetic uint8, {n} examples'
  else:
    from mmvaeplus_jax.input import builders  # pylint: disable=g-import-not-at-top
    builders.prepare(args.data, args.data_dir,
                     manual_dir=args.manual_dir or None)
    source = pipeline.Select(pipeline.ArraySource(builders.load_split(
        args.data, 'train', args.data_dir,
        manual_dir=args.manual_dir or None)), model.names)
    data_desc = f'PolyMNIST {args.data}, {len(source)} examples'
  data_s = time.perf_counter() - t0
  per_epoch = pipeline.steps_per_epoch(len(source), tc.batch_size)
  num_steps = args.steps or per_epoch

  mesh = parallel.make_mesh()
  parallel.check_batch_size(tc.batch_size, mesh)
  repl = parallel.replicated(mesh)
  root = jax.random.key(config.seed)
  init_key, train_key, _ = jax.random.split(root, 3)
  example = pipeline.host_batch(source, 0, seed=config.seed,
                                global_batch=tc.batch_size)
  state = jax.jit(lambda k, x: train_state.init_state(k, x, model=model, tx=tx),
                  out_shardings=repl)(
                      init_key, {n: x[:1] for n, x in example.items()})
  train_fn = step_lib.jit_train_step(config, model, tx, mesh)
  print(f'# epoch: {args.recipe}, width {config.model.width}, '
        f'M={config.model.num_modalities}, K={config.objective.num_samples}, '
        f'B={tc.batch_size}, {config.objective.estimator}, '
        f'{args.compute_dtype}, {num_steps} steps ({per_epoch}/epoch), '
        f'{mesh.devices.size} x {jax.devices()[0].device_kind}, '
        f'data: {data_desc}', flush=True)

  jax.block_until_ready(state)
  hits_before = len(cache_hits)
  pending, losses = None, []
  t_start = time.perf_counter()
  t_first = None
  data = pipeline.iterate(source, 0, num_steps, seed=config.seed,
                          global_batch=tc.batch_size,
                          prefetch=config.data.prefetch)
  for step, local in data:
    batch = parallel.global_batch(mesh, local)
    state, metrics = train_fn(state, batch, train_key)
    if pending is not None:  # one-step-lagged read, as the training loop
      losses.append(float(jax.device_get(pending['train/loss'])))
    pending = metrics
    if step == 0:
      jax.block_until_ready(state)
      t_first = time.perf_counter()
  losses.append(float(jax.device_get(pending['train/loss'])))
  jax.block_until_ready(state)
  t_end = time.perf_counter()

  first_s = t_first - t_start
  rest = num_steps - 1
  rest_s = t_end - t_first
  steps_per_s = rest / rest_s if rest else None
  row = dict(
      case=f'epoch_{args.recipe}', recipe=args.recipe,
      date=datetime.datetime.now().isoformat(timespec='seconds'),
      host=platform.node(), platform=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      num_devices=mesh.devices.size, jax_version=jax.__version__,
      width=config.model.width, num_modalities=config.model.num_modalities,
      num_samples=config.objective.num_samples,
      estimator=config.objective.estimator,
      compute_dtype=args.compute_dtype, remat=args.remat,
      batch_size=tc.batch_size, data=data_desc, data_prep_s=data_s,
      steps=num_steps, steps_per_epoch=per_epoch,
      first_step_s=first_s, rest_s=rest_s, total_s=t_end - t_start,
      steps_per_s=steps_per_s,
      samples_per_s=steps_per_s * tc.batch_size if steps_per_s else None,
      loss_first=losses[0], loss_last=losses[-1],
      loss_finite=bool(np.all(np.isfinite(losses))),
      num_epochs=config.train.num_epochs, note=args.note,
      compilation_cache=bool(args.compilation_cache),
      first_step_cache_hit=len(cache_hits) > hits_before,
      command=' '.join(['python', 'bench/epoch.py'] + list(
          sys.argv[1:] if argv is None else argv)),
  )
  if steps_per_s:
    epoch_s = per_epoch / steps_per_s
    row['epoch_s_steady'] = epoch_s
    row['recipe_hours_extrapolated'] = (
        config.train.num_epochs * epoch_s + first_s) / 3600
  compiled_how = ('program loaded from the compilation cache'
                  if row['first_step_cache_hit'] else 'compilation included')
  print(f'epoch: {num_steps} steps in {t_end - t_start:.1f} s (first step, '
        f'{compiled_how}, {first_s:.1f} s; then '
        f'{steps_per_s or float("nan"):.2f} steps/s, '
        f'{row["samples_per_s"] or float("nan"):.0f} samples/s); loss '
        f'{losses[0]:.1f} -> {losses[-1]:.1f}', flush=True)
  if 'recipe_hours_extrapolated' in row:
    print(f'extrapolated: one epoch ({per_epoch} steps) '
          f'{row["epoch_s_steady"]:.1f} s, {config.train.num_epochs} epochs '
          f'{row["recipe_hours_extrapolated"]:.2f} h (no evaluation)',
          flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'a') as f:
      f.write(json.dumps(row) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
