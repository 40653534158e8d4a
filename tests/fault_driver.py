"""Runs train.py with an injected fault (used by train_test.py, not a test).

Usage: python tests/fault_driver.py kill|term STEP [train.py flags...]

* kill: SIGKILL this process right after the checkpoint of step STEP is
  finalised (a hard crash: no handler, no final save);
* term: SIGTERM this process just before global step STEP runs (the
  training loop must save a checkpoint and exit with status 0).
"""

import os
import signal
import sys

MODE, AT = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
import train  # pylint: disable=g-import-not-at-top
from mmvaeplus_jax.infra import checkpointing  # pylint: disable=g-import-not-at-top
from mmvaeplus_jax.training import loop  # pylint: disable=g-import-not-at-top

_save = checkpointing.save
_iterate = loop.pipeline.iterate


def save(manager, step, state):
  out = _save(manager, step, state)
  if MODE == 'kill' and step == AT:
    manager.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
  return out


def iterate(*args, **kwargs):
  for step, batch in _iterate(*args, **kwargs):
    if MODE == 'term' and step == AT:
      os.kill(os.getpid(), signal.SIGTERM)
    yield step, batch


checkpointing.save = save
loop.pipeline.iterate = iterate

if __name__ == '__main__':
  app.run(train.main)
