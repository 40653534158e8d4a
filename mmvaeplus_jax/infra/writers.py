"""Metric writers: console logging plus TensorBoard files, no TensorFlow.

The interface is CLU's `MetricWriter` subset the loop uses (`write_scalars`,
`write_images`, `write_hparams`, `flush`, `close`) plus `write_texts`. CLU itself is not used:
`clu.metric_writers` (0.0.12, the latest release) imports TensorFlow when the
package is imported, and TensorFlow stays optional here. TensorBoard event
files are written by tensorboardX, whose event writer runs in its own thread.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from absl import logging
import numpy as np
import tensorboardX


class LoggingWriter:
  """Scalars to the absl log (the console)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    text = ', '.join(f'{k}={float(v):.6g}' for k, v in sorted(scalars.items()))
    logging.info('[%d] %s', step, text)

  def write_images(self, step: int, images: Mapping[str, Any]):
    shapes = ', '.join(f'{k}{np.shape(v)}' for k, v in images.items())
    logging.info('[%d] images: %s', step, shapes)

  def write_hparams(self, hparams: Mapping[str, Any]):
    logging.info('hparams: %s', dict(hparams))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    logging.info('[%d] texts: %s', step, ', '.join(sorted(texts)))

  def flush(self):
    pass

  def close(self):
    pass


def tensorboard_tag(name: str) -> str:
  """A metric name as a legal TensorBoard tag (`[A-Za-z0-9_./-]`): `->` (a
  source -> target pair) becomes `_to_`, any other illegal character `_`.
  metrics.json keeps the original names."""
  return re.sub(r'[^A-Za-z0-9_./-]', '_', name.replace('->', '_to_'))


class TensorboardWriter:
  """TensorBoard event files in `logdir` (tensorboardX); tags made legal by
  `tensorboard_tag`."""

  def __init__(self, logdir: str):
    self._writer = tensorboardX.SummaryWriter(logdir=logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for key, value in scalars.items():
      self._writer.add_scalar(tensorboard_tag(key), float(value),
                              global_step=step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    """`{name: uint8 [H, W, C]}` images."""
    for key, value in images.items():
      self._writer.add_image(tensorboard_tag(key), np.asarray(value), step,
                             dataformats='HWC')

  def write_texts(self, step: int, texts: Mapping[str, str]):
    """`{name: markdown}` as TensorBoard text summaries."""
    for key, value in texts.items():
      self._writer.add_text(tensorboard_tag(key), value, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._writer.add_text(
        'hparams', '  \n'.join(f'{k}: {v}' for k, v in sorted(hparams.items())))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class JsonlWriter:
  """Scalars appended to `path` as JSON lines {"step": s, name: value, ...}."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(row, sort_keys=True) + '\n')

  def write_images(self, step, images):
    pass

  def write_texts(self, step, texts):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class MultiWriter:
  """Fans every call out to several writers."""

  def __init__(self, writers):
    self._writers = list(writers)

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def create_writer(logdir: str, *, just_logging: bool = False):
  """Console, TensorBoard files and `metrics.jsonl` in `logdir` (console
  only on hosts other than process 0)."""
  if just_logging:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), TensorboardWriter(logdir),
                      JsonlWriter(os.path.join(logdir, 'metrics.jsonl'))])
