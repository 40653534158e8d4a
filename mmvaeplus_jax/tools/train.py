"""Train a multimodal VAE: `mmvaeplus-train [--config=F[:ARG]] [--workdir=DIR]`

(in a source checkout also `python train.py ...`, the same program).

Without flags it trains the offline demo (reduced-width MMVAE+ on the `mini`
PolyMNIST-style demo data; a few minutes on a laptop CPU) into a new
directory under runs/ and prints it. Overrides: `--config.optim.lr=5e-4`.
Same workdir = resume. Multi-host: `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or nothing on a cluster JAX auto-detects).
"""

import datetime
import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mmvaeplus_jax import configs
from mmvaeplus_jax.experiments import train as train_lib
from mmvaeplus_jax import tools
from mmvaeplus_jax.infra import parallel

# The installed config files (a checkout's mmvaeplus_jax/configs/ when run
# from one), whatever the working directory.
CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))

config_flags.DEFINE_config_file(
    'config', os.path.join(CONFIGS_DIR, 'polymnist.py:demo'),
    'Config file (get_config(arg)); default: the offline demo.',
    lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Output directory (default: runs/<config>-<time>).')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-host: address of process 0 (HOST:PORT).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() with auto-detection.')
FLAGS = flags.FLAGS

tools.own_key_flags(__name__)


def main(argv):
  del argv
  parallel.configure_jax()
  if FLAGS.coordinator_address or FLAGS.distributed:
    if jax.config.jax_platforms in (None, '', 'cpu'):
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  workdir = FLAGS.workdir or os.path.join(
      'runs', 'demo-' + datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
  logging.info('JAX process %d / %d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  print(f'workdir: {os.path.abspath(workdir)}', flush=True)
  train_lib.train(FLAGS.config, workdir)
  print(f'done; checkpoints, metrics.json, samples/ and TensorBoard files in '
        f'{os.path.abspath(workdir)}', flush=True)


def run():
  """The `mmvaeplus-train` console script."""
  tools.run(main, __doc__)


if __name__ == '__main__':
  run()
