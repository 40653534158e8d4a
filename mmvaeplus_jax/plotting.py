"""Image grids as PNG files (Pillow), for samples written during training."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


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
