"""Prepare a TFDS dataset of mmvaeplus_jax (array_record, no TensorFlow).

    python -m mmvaeplus_jax.tools.prepare_data polymnist/mini --data_dir DIR
    python -m mmvaeplus_jax.tools.prepare_data polymnist/rebuilt \
        --data_dir DIR --manual_dir ../shared/data
    python -m mmvaeplus_jax.tools.prepare_data mnist_svhn/dm30 \
        --data_dir DIR --manual_dir DIR_WITH_MNIST_AND_SVHN
    python -m mmvaeplus_jax.tools.prepare_data cub_image_captions/cub23 \
        --data_dir DIR --manual_dir ../shared/data

(the `tfds build` CLI of TFDS 4.9.10 imports TensorFlow; this one does
not). The builders: `input/builders.py`.
"""

from __future__ import annotations

import argparse
import sys

from mmvaeplus_jax.input import builders


def main(argv: list[str] | None = None) -> None:
  """Prepares one dataset config from the command line."""
  parser = argparse.ArgumentParser(
      description='Prepare a TFDS dataset of mmvaeplus_jax (array_record, '
      'no TensorFlow needed).')
  parser.add_argument(
      'name', help='polymnist/mini (offline demo), polymnist/rebuilt, '
      'polymnist/official, mnist_svhn/dm30, mnist_svhn/dm1, '
      'cub_image_captions/cub23 or cub_image_captions/official')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory')
  parser.add_argument(
      '--manual_dir', default=None,
      help='inputs of rebuilt / official (see the builder docstring)')
  args = parser.parse_args(argv)
  builder = builders.prepare(args.name, args.data_dir,
                             manual_dir=args.manual_dir)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f'Prepared {builder.info.full_name} in {builder.data_dir}: {splits}')


if __name__ == '__main__':
  main(sys.argv[1:])
