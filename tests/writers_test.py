"""Metric writers: TensorBoard tags are legal, metrics.json keeps the names."""

import pathlib
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from mmvaeplus_jax.infra import writers

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun


def _events(logdir: pathlib.Path):
  """Every Event of the TFRecord files in `logdir` (length, crc, data, crc)."""
  out = []
  for path in sorted(logdir.glob('events.out.tfevents.*')):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      out.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return out


def test_tensorboard_tag():
  assert writers.tensorboard_tag('coherence/cond/m3->m4') == (
      'coherence/cond/m3_to_m4')
  assert writers.tensorboard_tag('eval/fid/m0 (cond)') == 'eval/fid/m0__cond_'
  assert writers.tensorboard_tag('train/loss') == 'train/loss'


def test_pair_metrics_reach_tensorboard_under_legal_tags(tmp_path):
  w = writers.TensorboardWriter(str(tmp_path))
  w.write_scalars(7, {'coherence/cond/m3->m4': 0.5, 'train/loss': 1.25})
  w.write_images(7, {'samples/cross_modal': np.zeros((4, 4, 3), np.uint8)})
  w.close()
  tags = {v.tag: (e.step, v.simple_value) for e in _events(tmp_path)
          for v in e.summary.value}
  assert tags['coherence/cond/m3_to_m4'] == (7, 0.5)
  assert tags['train/loss'] == (7, 1.25)
  assert 'samples/cross_modal' in tags
