"""Train and store the coherence classifiers of a dataset.

PolyMNIST (`--arch official` for `ClfImg`; `--epochs`, `--lr`,
`--lr_schedule`, `--max_shift`, `--batch_size` override the recipe,
`classifier_training.RECIPES`):

  python -m mmvaeplus_jax.tools.classifiers --dataset rebuilt \\
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR [--seed S]

MNIST-SVHN (`mnist_svhn` builder): train on `mnist_svhn/dm1` (or dm30; with
an `<name>_index` feature each distinct source item is used once, see
`classifier_training.distinct_items`):

  python -m mmvaeplus_jax.tools.classifiers --dataset mnist_svhn/dm1 \\
      --data_dir DIR --manual_dir DIR_WITH_MNIST_AND_SVHN --out CLF_DIR

writes `CLF_DIR/<modality>/` (one orbax checkpoint each) and
`CLF_DIR/classifiers.json` (modalities, image shapes, architectures, test
accuracies, training config and time; `evaluation/classifiers.py`).
Coherence is capped by the classifiers' accuracy: always report it beside
it. An unknown `--arch` raises one ValueError that lists the names.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Sequence

import numpy as np

from mmvaeplus_jax.evaluation import classifier_nets
from mmvaeplus_jax.evaluation import classifier_training
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.input import builders


def main(argv: Sequence[str] | None = None) -> None:
  """Trains and stores the coherence classifiers of a dataset."""
  parser = argparse.ArgumentParser(
      description='Train one digit classifier per image modality (PolyMNIST '
      'ClfImgWide or ClfImg, MNIST / SVHN DigitClf) on the train split; '
      'store them with their test accuracies.')
  parser.add_argument('--dataset', default='mini',
                      help='PolyMNIST config (mini, rebuilt, official) or a'
                      ' full name such as mnist_svhn/dm1')
  parser.add_argument('--data_dir', required=True,
                      help='TFDS data directory')
  parser.add_argument('--manual_dir', default=None,
                      help='inputs of rebuilt / official (../shared/data)')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--arch', default=None,
                      help="PolyMNIST: 'wide' (default) or 'official'"
                      " (ClfImg); MNIST / SVHN: 'digit'")
  parser.add_argument('--epochs', type=int, default=None,
                      help='default: the recipe of the architecture'
                      ' (RECIPES; official 15, wide %d)'
                      % classifier_training.WIDE_EPOCHS)
  parser.add_argument('--batch_size', type=int, default=None)
  parser.add_argument('--lr', type=float, default=None)
  parser.add_argument('--lr_schedule', default=None,
                      choices=classifier_training.LR_SCHEDULES)
  parser.add_argument('--max_shift', type=int, default=None,
                      help='random translation in pixels (augmentation)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  start = time.time()
  train = builders.load_split(args.dataset, 'train', args.data_dir,
                              manual_dir=args.manual_dir)
  test = builders.load_split(args.dataset, 'test', args.data_dir,
                             manual_dir=args.manual_dir)
  names = classifier_training.image_names(train)
  # The recipe of the first modality's architecture (the same for all: one
  # dataset's image modalities share a shape family); unknown names fail
  # here, before any training.
  arch = classifier_nets.check_arch(args.arch, np.shape(train[names[0]])[1:])
  for name in names[1:]:
    classifier_nets.check_arch(args.arch, np.shape(train[name])[1:])
  r = classifier_training.recipe(
      arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
      lr_schedule=args.lr_schedule, max_shift=args.max_shift)
  print(f'Loaded {args.dataset}: train {len(train["label"])}, test'
        f' {len(test["label"])} ({time.time() - start:.1f} s)')
  train_start = time.time()
  clf_params, accs = classifier_training.train_and_evaluate(
      train, test, names, seed=args.seed, epochs=args.epochs,
      batch_size=args.batch_size, lr=args.lr, arch=args.arch,
      lr_schedule=args.lr_schedule, max_shift=args.max_shift)
  train_seconds = time.time() - train_start
  metadata = {
      'test_accuracy': accs,
      'mean_test_accuracy': float(np.mean(list(accs.values()))),
      'config': {
          'dataset': args.dataset, 'arch': arch, 'epochs': r['epochs'],
          'batch_size': r['batch_size'], 'lr': r['lr'],
          'lr_schedule': r['lr_schedule'], 'max_shift': r['max_shift'],
          'seed': args.seed, 'optimizer': 'adam',
          'train_seconds': round(train_seconds, 1),
          'num_train': int(len(train['label'])),
          'num_test': int(len(test['label'])),
          # Distinct items each classifier saw (< num_train for MNIST-SVHN,
          # whose pairs repeat items; see distinct_items).
          'num_train_items': {
              n: int(len(classifier_training.distinct_items(train, n)[1]))
              for n in names},
      },
  }
  classifiers.save_classifiers(args.out, clf_params, metadata=metadata)
  print(f'Mean test accuracy {metadata["mean_test_accuracy"]:.4f}; saved to'
        f' {pathlib.Path(args.out).absolute()} ({time.time() - start:.1f} s)')


if __name__ == '__main__':
  main()
