"""Evaluation throughput on the current device: Inception features, coherence.

  python bench/eval_throughput.py [--inception_batch 32 --inception_batches 3]
      [--config demo --coherence_batch 64 --coherence_batches 5]

Prints images/s of

* the FID Inception feature pass (`fid.inception_features` on 28 x 28 x 3
  inputs: resize to 299, pool3), with the official weights when the file is
  found (`--weights`, default `fid.default_weights_path()`), otherwise with
  RANDOM weights (the same network and cost; the output says so: fine for
  throughput, never for FID values);
* coherence, per generated and classified image: the paper's conditional
  coherence (`coherence.conditional_counts`: M x M decodings per example, the
  self-reconstruction diagonal included) and unconditional coherence (M per
  sample), with the PolyMNIST model of `--config` (randomly initialised: the
  cost does not depend on the weights) and random `ClfImg` classifiers.

Compilation is excluded (one warm-up call each) and reported separately;
every timed call ends with `block_until_ready`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import fid
from mmvaeplus_jax.evaluation import inception


def _timed(fn, *args, repeats: int):
  """(compile + first call seconds, mean seconds of `repeats` later calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return first, (time.perf_counter() - start) / repeats


def bench_inception(batch: int, repeats: int, weights: str) -> dict:
  try:
    variables = fid.load_inception_variables(weights)
    source = f'official weights {weights}'
  except fid.InceptionWeightsError:
    variables = jax.jit(inception.FIDInceptionV3().init)(
        jax.random.key(0), jnp.zeros((1, 28, 28, 3), jnp.float32))
    source = ('RANDOM weights (official file not found at '
              f'{weights}; same network and cost)')
  variables = jax.device_put(variables)
  images = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 3))
  fn = jax.jit(fid.inception_features)
  first, per_call = _timed(fn, variables, images, repeats=repeats)
  return {'images/s': batch / per_call, 'first call s': first,
          'batch': batch, 'calls': repeats, 'weights': source}


def random_params(model, example, seed: int = 3):
  """Params of the right shapes, U(+-1/sqrt(fan_in)) from numpy: no Flax
  init to compile (minutes on a busy CPU); cost does not depend on values."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), example)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    bound = 1.0 / np.sqrt(fan_in) if len(leaf.shape) > 1 else 0.01
    return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), leaf.dtype)

  return jax.tree.map(fill, abstract)


def bench_coherence(config_name: str, batch: int, repeats: int) -> dict:
  config = polymnist_configs.get_config(config_name)
  model = models.get_model(config.model)
  m = model.num_modalities
  x = jax.random.uniform(jax.random.key(2), (batch, 28, 28, 3))
  params = random_params(model, {n: x[:1] for n in model.names})
  clf = {n: classifiers.init(jax.random.key(10 + i))
         for i, n in enumerate(model.names)}
  batch_in = {n: x for n in model.names}
  labels = jnp.zeros((batch,), jnp.int32)
  index = jnp.arange(batch, dtype=jnp.int32)
  key = jax.random.key(4)
  cond = lambda: coherence._conditional_counts(  # pylint: disable=protected-access
      key, model, params, classifiers.classify, clf, batch_in, labels, index,
      1.0)
  uncond = lambda: coherence._unconditional_counts(  # pylint: disable=protected-access
      key, model, params, classifiers.classify, clf, index, 1.0)
  c_first, c_call = _timed(cond, repeats=repeats)
  u_first, u_call = _timed(uncond, repeats=repeats)
  return {
      'conditional images/s': m * m * batch / c_call,
      'unconditional images/s': m * batch / u_call,
      'first call s (cond, uncond)': (c_first, u_first),
      'model': (f'{config_name}: M={m}, width={config.model.width}, '
                f'Dw={model.dim_w}, Dz={model.dim_z}, random weights'),
      'batch': batch, 'calls': repeats,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Images/s of the FID Inception feature pass and of '
      'coherence (per generated + classified image) on the current device.')
  parser.add_argument('--inception_batch', type=int, default=32)
  parser.add_argument('--inception_batches', type=int, default=3,
                      help='timed calls after the warm-up call')
  parser.add_argument('--weights', default=str(fid.default_weights_path()),
                      help='pt_inception-2015-12-05-6726825d.pth (random '
                      'weights when absent)')
  parser.add_argument('--config', default='demo',
                      help='polymnist config variant of the coherence model')
  parser.add_argument('--coherence_batch', type=int, default=64)
  parser.add_argument('--coherence_batches', type=int, default=5)
  parser.add_argument('--skip_inception', action='store_true')
  args = parser.parse_args(argv)

  dev = jax.devices()[0]
  print(f'{datetime.date.today()}  jax {jax.__version__}  device: '
        f'{dev.platform} {dev.device_kind} (x{jax.device_count()}), '
        f'{os.cpu_count()} CPU cores visible')
  if not args.skip_inception:
    r = bench_inception(args.inception_batch, args.inception_batches,
                        args.weights)
    print(f'Inception feature pass: {r["images/s"]:.2f} images/s '
          f'(batch {r["batch"]}, {r["calls"]} calls; first call incl. '
          f'compile {r["first call s"]:.1f} s; {r["weights"]})')
  r = bench_coherence(args.config, args.coherence_batch,
                      args.coherence_batches)
  print(f'Coherence ({r["model"]}, batch {r["batch"]}, {r["calls"]} calls): '
        f'conditional {r["conditional images/s"]:.1f} images/s, '
        f'unconditional {r["unconditional images/s"]:.1f} images/s '
        f'(generated + classified; first calls incl. compile '
        f'{r["first call s (cond, uncond)"][0]:.1f} / '
        f'{r["first call s (cond, uncond)"][1]:.1f} s)')


if __name__ == '__main__':
  main()
