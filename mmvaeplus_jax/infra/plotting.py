"""Images as arrays and PNG files (Pillow): a common canvas for modalities of
different shapes, uint8 conversion, grids and PNG writing. No model here:
`sample_grids.py` draws the samples these functions lay out."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from PIL import Image


def is_image_shape(event_shape) -> bool:
  """Whether an event shape can be drawn as an image: (H, W, 1 or 3)."""
  s = tuple(event_shape)
  return len(s) == 3 and s[-1] in (1, 3)


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
