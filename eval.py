"""Evaluate a training run: `python eval.py --config=FILE[:ARG] --workdir=DIR`.

Restores the latest (or `--step`) checkpoint of DIR read-only and writes
DIR/eval/<step>/metrics.json, TensorBoard scalars and figures. Use the config
the run was trained with; coherence needs
`--config.evals.classifier_dir=CLASSIFIERS` (trained with
`python -m mmvaeplus_jax.evaluation.classifiers`).
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from mmvaeplus_jax import parallel
from mmvaeplus_jax.evaluation import runner

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'mmvaeplus_jax/configs/polymnist.py:demo'),
    'The config the run was trained with.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training run directory.', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  parallel.configure_jax()
  metrics = runner.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.step)
  shown = {k: v for k, v in metrics.items()
           if not isinstance(v, dict) and '->' not in k}
  for k in sorted(shown):
    print(f'{k}: {shown[k]}')
  print(f'written to {os.path.join(FLAGS.workdir, "eval", str(metrics["step"]))}')


if __name__ == '__main__':
  app.run(main)
