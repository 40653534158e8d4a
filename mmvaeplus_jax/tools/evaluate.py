"""Evaluate a training run: `mmvaeplus-eval --workdir=DIR [--config=FILE[:ARG]]`

(in a source checkout also `python eval.py ...`, the same program).

Restores the latest (or `--step`) checkpoint of DIR read-only, replicated
over the available devices, runs the evaluators named in
`--config.evals.evaluators` (default: bound, coherence, fid, fd_clf,
latent_classification, likelihood, figures; see `evaluation/runner.py`) and
writes DIR/eval/<step>/metrics.json (a `skipped` entry gives the reason for
everything that could not run), TensorBoard scalars under DIR/eval/ and the
figures (PNG) beside the metrics. The config is the run's own
(<workdir>/config.json, written by mmvaeplus-train / train.py) unless
`--config` is given; `--config.evals.x=...` overrides either.

* coherence and FD_clf need digit classifiers: the run's own
  (`<workdir>/classifiers`, saved by `train.final_coherence`) or
  `--config.evals.classifier_dir=CLASSIFIERS` (trained with
  `python -m mmvaeplus_jax.tools.classifiers`);
* FID needs pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
  (`--config.evals.inception_weights=PATH`, default
  ~/.cache/mmvaeplus_jax/<that name>); without it FID is skipped with the
  download address. Real-set statistics are cached in
  ~/.cache/mmvaeplus_jax/fid_stats/ (`evals.fid_stats_dir`);
* the number of images, samples and examples of every metric are
  `evals.*` settings (`mmvaeplus_jax/configs/common.py`).
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from mmvaeplus_jax import configs
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax import tools
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import rundir

# The installed config files (a checkout's mmvaeplus_jax/configs/ when run
# from one), whatever the working directory.
CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))

# Default config: the run's own (<workdir>/config.json, written by train.py),
# through configs/run.py:<workdir>, so `--config.evals.x=...` overrides still
# apply. The flag's default is parsed when it is defined, so the workdir is
# read from the command line first (`rundir.workdir_from_argv`); without a
# --workdir there is no default (and absl reports the missing --workdir).
_WORKDIR_IN_ARGV = rundir.workdir_from_argv(sys.argv)
config_flags.DEFINE_config_file(
    'config',
    os.path.join(CONFIGS_DIR, 'run.py') + f':{_WORKDIR_IN_ARGV}'
    if _WORKDIR_IN_ARGV else None,
    'Config (default: the one the run was trained with, from'
    ' <workdir>/config.json).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Training run directory.', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_string('tag', '', 'Write to DIR/eval/<step>-<tag>/ instead of'
                    ' DIR/eval/<step>/ (e.g. another classifier set), no'
                    ' TensorBoard scalars.')
FLAGS = flags.FLAGS

tools.own_key_flags(__name__)


def main(argv):
  del argv
  parallel.configure_jax()
  metrics = runner.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.step,
                            tag=FLAGS.tag)
  shown = {k: v for k, v in metrics.items()
           if not isinstance(v, (dict, list)) and '->' not in k}
  for k in sorted(shown):
    print(f'{k}: {shown[k]}')
  for name, reason in sorted(metrics.get('skipped', {}).items()):
    print(f'skipped {name}: {reason}')
  out_dir = os.path.join(FLAGS.workdir, 'eval', str(metrics['step']) + (
      f'-{FLAGS.tag}' if FLAGS.tag else ''))
  print(f'written to {out_dir}')


def run():
  """The `mmvaeplus-eval` console script."""
  tools.run(main, __doc__)


if __name__ == '__main__':
  run()
