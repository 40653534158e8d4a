"""Image grids as PNG files (Pillow), for samples written during training."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] (clamped) -> uint8."""
  return np.round(np.clip(np.asarray(images, np.float32), 0, 1) * 255).astype(
      np.uint8)


def display_shape(shapes) -> tuple[int, int, int]:
  """The common `(H, W, 3)` that `to_display` maps images of `shapes` to."""
  shapes = [tuple(s) for s in shapes]
  return (max(s[0] for s in shapes), max(s[1] for s in shapes), 3)


def to_display(images, shape) -> np.ndarray:
  """`[..., H, W, C]` images (C = 1 or 3) -> `[..., *shape]`: grey repeated
  to RGB and zero-padded around the centre to `shape` (as MMVAE shows MNIST
  beside SVHN: pad 28 -> 32, expand to 3 channels); unchanged when they
  already have that shape."""
  images = np.asarray(images)
  h, w, c = images.shape[-3:]
  if (h, w, c) == tuple(shape):
    return images
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  dh, dw = shape[0] - h, shape[1] - w
  pad = [(0, 0)] * (images.ndim - 3) + [(dh // 2, dh - dh // 2),
                                        (dw // 2, dw - dw // 2), (0, 0)]
  return np.pad(images, pad)


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
