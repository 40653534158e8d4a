"""The sample grids written during training and by the `grids` evaluator.

`write_sample_grids` draws unconditional and cross-modal samples
(`generation.py`) and writes them as two PNG grids.
"""

from __future__ import annotations

import functools
import os

from absl import logging
import jax
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.input import pipeline


def write_sample_grids(out_dir, step, model, params, eval_src, key, num,
                       mesh, subdir='samples'):
  """Unconditional and cross-modal sample grids -> PNG; returns the images.

  Writes `out_dir/subdir/{unconditional,cross_modal}_<step>.png`. The cross
  grid has one block per source: its inputs (top row), then its decodings by
  every target (w ~ p(w)); the unconditional grid has one row per modality.

  Only image modalities (event shape (H, W, 1 or 3)) are drawn: a model
  with others (CUB's `caption`, token ids) gets grids of its image
  modalities alone, as sources and targets; the other modalities still
  encode and decode (the same keys and generations), their outputs are not
  drawn (logged once per call). Modalities of different image shapes share
  one RGB canvas (`plotting.to_canvas`).
  """
  drawn = [m.name for m in model.modalities
           if plotting.is_image_shape(m.event_shape)]
  if len(drawn) < model.num_modalities:
    logging.info('Sample grids: drawing the image modalities %s only; %s'
                 ' cannot be drawn as images (skipped).', drawn,
                 [n for n in model.names if n not in drawn])
  if not drawn:
    return {}
  canvas = plotting.canvas_shape(
      [model.modalities[model.names.index(k)].event_shape for k in drawn])
  n = min(num, len(eval_src))
  examples = pipeline.to_model_inputs(eval_src.read(np.arange(n)))
  batch = parallel.replicate(mesh, {k: examples[k] for k in model.names})
  k_u, k_c = jax.random.split(key)
  uncond = _generate_uncond(model, params, k_u, n)
  by_target = _generate_cross_by_target(model, params, batch, k_c)
  src = [model.names.index(k) for k in drawn]
  uncond = np.stack([plotting.to_canvas(np.asarray(uncond[k]), canvas)
                     for k in drawn])  # [M', N, ...]
  cross = np.stack([plotting.to_canvas(
      np.asarray(by_target[model.names.index(k)])[src], canvas)
                    for k in drawn], axis=1)  # [M'_s, M'_t, N, ...]
  # Cross grid: one block per source: its inputs, then its generations.
  inputs = np.stack([plotting.to_canvas(np.asarray(examples[k], np.float32),
                                        canvas) for k in drawn])
  blocks = np.concatenate([inputs[:, None], cross], axis=1)  # [M', 1+M', N]
  rows = blocks.transpose(1, 0, 2, 3, 4, 5).reshape(
      (1 + len(drawn), -1) + blocks.shape[3:])
  images = {'samples/unconditional': plotting.grid(uncond),
            'samples/cross_modal': plotting.grid(rows)}
  if jax.process_index() == 0:
    for name, img in images.items():
      plotting.save_png(
          os.path.join(out_dir, subdir,
                       f'{name.split("/")[1]}_{step:08d}.png'), img)
  return images


@functools.partial(jax.jit, static_argnums=0)
def _generate_cross_by_target(model, params, batch, key):
  return generation.cross_modal_by_target(key, model, params, batch)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate_uncond(model, params, key, num):
  return generation.unconditional(key, model, params, num)
