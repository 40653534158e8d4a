"""Image grids as PNG files (Pillow), for samples written during training.

`write_sample_grids` writes the trainer's two grids (unconditional and
cross-modal samples); the `grids` evaluator writes the same ones.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def canvas_shape(event_shapes) -> tuple[int, int, int] | None:
  """The smallest `(H, W, 3)` holding every image event shape `(H, W, C)`
  (C = 1 or 3): modalities of different sizes share one grid. Equal event
  shapes (of any rank) need no canvas: None."""
  shapes = [tuple(s) for s in event_shapes]
  if len(set(shapes)) == 1:
    return None  # all equal: no canvas needed (any event shape)
  for s in shapes:
    if len(s) != 3 or s[-1] not in (1, 3):
      raise ValueError(
          f'image modalities must have event shape (H, W, 1 or 3), got {s}')
  return (max(s[0] for s in shapes), max(s[1] for s in shapes), 3)


def to_canvas(images, canvas: tuple[int, int, int] | None):
  """`[..., H, W, C]` -> `[..., H', W', 3]`: grey repeated to RGB, centred
  on a black canvas of `canvas` (identity when `canvas` is None or the
  shapes agree)."""
  if canvas is None or tuple(images.shape[-3:]) == tuple(canvas):
    return images
  h, w, c = images.shape[-3:]
  xp = jnp if not isinstance(images, np.ndarray) else np
  if c == 1:
    images = xp.repeat(images, 3, axis=-1)
  top, left = (canvas[0] - h) // 2, (canvas[1] - w) // 2
  pad = [(0, 0)] * (images.ndim - 3) + [
      (top, canvas[0] - h - top), (left, canvas[1] - w - left), (0, 0)]
  return xp.pad(images, pad)


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] (clamped) -> uint8."""
  return np.round(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(
      np.uint8)


def grid(images, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """`[R, C, H, W, 3]` images -> one uint8 `[R*(H+pad)+pad, C*(W+pad)+pad, 3]`."""
  images = to_uint8(images)
  r, c, h, w, ch = images.shape
  out = np.full((r * (h + pad) + pad, c * (w + pad) + pad, ch), pad_value,
                np.uint8)
  for i in range(r):
    for j in range(c):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y:y + h, x:x + w] = images[i, j]
  return out


def save_png(path: str, image: np.ndarray) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image).save(path)
  return path


def write_sample_grids(out_dir, step, model, params, eval_src, key, num,
                       mesh, subdir='samples'):
  """Unconditional and cross-modal sample grids -> PNG; returns the images.

  Writes `out_dir/subdir/{unconditional,cross_modal}_<step>.png`. The cross
  grid has one block per source: its inputs (top row), then its decodings by
  every target (w ~ p(w)); the unconditional grid has one row per modality.
  """
  canvas = canvas_shape([mod.event_shape for mod in model.modalities])
  n = min(num, len(eval_src))
  from mmvaeplus_jax import parallel  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  examples = pipeline.to_model_inputs(eval_src.read(np.arange(n)))
  batch = parallel.replicate(mesh, {k: examples[k] for k in model.names})
  k_u, k_c = jax.random.split(key)
  uncond = _generate_uncond(model, params, k_u, n)
  cross = _generate_cross(model, params, batch, k_c)
  uncond = np.stack([to_canvas(np.asarray(uncond[k]), canvas)
                     for k in model.names])  # [M, N, ...]
  cross = np.asarray(cross)  # [M_s, M_t, N, ...]
  # Cross grid: one block per source: its inputs, then its M generations.
  inputs = np.stack([to_canvas(np.asarray(examples[k], np.float32), canvas)
                     for k in model.names])
  blocks = np.concatenate([inputs[:, None], cross], axis=1)  # [M_s, 1+M_t, N]
  rows = blocks.transpose(1, 0, 2, 3, 4, 5).reshape(
      (1 + model.num_modalities, -1) + blocks.shape[3:])
  images = {'samples/unconditional': grid(uncond),
            'samples/cross_modal': grid(rows)}
  if jax.process_index() == 0:
    for name, img in images.items():
      save_png(
          os.path.join(out_dir, subdir,
                       f'{name.split("/")[1]}_{step:08d}.png'), img)
  return images


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate_uncond(model, params, key, num):
  from mmvaeplus_jax import generation  # pylint: disable=g-import-not-at-top
  return generation.unconditional(key, model, params, num)


@functools.partial(jax.jit, static_argnums=0)
def _generate_cross(model, params, batch, key):
  from mmvaeplus_jax import generation  # pylint: disable=g-import-not-at-top
  return generation.cross_modal(key, model, params, batch)
