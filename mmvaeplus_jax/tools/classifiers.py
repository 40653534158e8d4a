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

CUB Image-Captions (`cub23`, or a full name `cub_image_captions/<config>`):
one species classifier per modality, 'species_image' on each distinct
image once (`image_index`) with random shifts and flips, 'species_caption'
on every caption; class count and vocabulary from the data
(`evaluation/species_nets.py`, docs/cub.md "Species classifiers"):

  python -m mmvaeplus_jax.tools.classifiers --dataset cub23 \
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR

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
from mmvaeplus_jax.input import captions

CUB = 'cub_image_captions'
CUB_MODALITIES = ('image', 'caption')


def dataset_name(dataset: str) -> str:
  """The builder name of `--dataset`: 'cub23' is CUB's cub23 config; other
  names as `builders.load_split` reads them."""
  return f'{CUB}/cub23' if dataset == 'cub23' else dataset


def _cub_sizes(name: str, data_dir: str, manual_dir, train) -> dict:
  """`{'num_classes', 'vocab_size'}` of a prepared CUB config (ClassLabel
  count, vocabulary words), checked against the loaded labels."""
  info = builders.prepare(name, data_dir, manual_dir=manual_dir).info
  num_classes = int(info.features['label'].num_classes)
  if int(np.max(train['label'])) >= num_classes:
    raise ValueError(f'{name}: label {int(np.max(train["label"]))} >='
                     f' the {num_classes} classes of its label feature')
  return {'num_classes': num_classes,
          'vocab_size': len(captions.vocabulary_from_info(info).words)}


def main(argv: Sequence[str] | None = None) -> None:
  """Trains and stores the coherence classifiers of a dataset."""
  parser = argparse.ArgumentParser(
      description='Train one digit classifier per image modality (PolyMNIST '
      'ClfImgWide or ClfImg, MNIST / SVHN DigitClf), or CUB\'s species '
      'classifiers (--dataset cub23: image and caption), on the train '
      'split; store them with their test accuracies.')
  parser.add_argument('--dataset', default='mini',
                      help='PolyMNIST config (mini, rebuilt, official),'
                      ' cub23, or a full name such as mnist_svhn/dm1')
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
  dataset = dataset_name(args.dataset)
  train = builders.load_split(dataset, 'train', args.data_dir,
                              manual_dir=args.manual_dir)
  test = builders.load_split(dataset, 'test', args.data_dir,
                             manual_dir=args.manual_dir)
  if dataset.startswith(CUB + '/'):
    return _main_cub(args, dataset, train, test, start)
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
          'num_train_items': _num_items(train, names),
      },
  }
  classifiers.save_classifiers(args.out, clf_params, metadata=metadata)
  print(f'Mean test accuracy {metadata["mean_test_accuracy"]:.4f}; saved to'
        f' {pathlib.Path(args.out).absolute()} ({time.time() - start:.1f} s)')


def _num_items(split, names) -> dict[str, int]:
  """Distinct items each classifier of `names` saw in `split` (fewer than the
  pairs where pairs repeat items: MNIST-SVHN, CUB's 10 captions per image;
  `classifier_training.distinct_items`)."""
  return {n: int(len(classifier_training.distinct_items(split, n)[1]))
          for n in names}


def _main_cub(args, dataset, train, test, start) -> None:
  """Trains and stores CUB's species classifiers (image and caption)."""
  if args.arch is not None:
    raise ValueError('--arch is fixed for CUB (species_image for images,'
                     ' species_caption for captions): leave it out')
  sizes = _cub_sizes(dataset, args.data_dir, args.manual_dir, train)
  print(f'Loaded {dataset}: train {len(train["label"])}, test'
        f' {len(test["label"])}, {sizes["num_classes"]} classes, vocabulary'
        f' {sizes["vocab_size"]} ({time.time() - start:.1f} s)')
  opts = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              lr_schedule=args.lr_schedule, max_shift=args.max_shift)
  clf_params, accs, recipes, seconds = {}, {}, {}, {}
  for i, name in enumerate(CUB_MODALITIES):
    arch = classifier_nets.check_arch(None, np.shape(train[name])[1:])
    recipes[name] = classifier_training.recipe(arch, **opts)
    t = time.time()
    # One modality at a time, keyed fold_in(seed, i) as train_and_evaluate.
    params, acc = classifier_training.train_and_evaluate(
        {name: train[name], 'label': train['label'],
         **({f'{name}_index': train[f'{name}_index']}
            if f'{name}_index' in train else {})},
        {name: test[name], 'label': test['label'],
         **({f'{name}_index': test[f'{name}_index']}
            if f'{name}_index' in test else {})},
        [name], seed=args.seed, **opts, **sizes, key_offset=i)
    seconds[name] = round(time.time() - t, 1)
    clf_params.update(params)
    accs.update(acc)
  metadata = {
      'test_accuracy': accs,
      'mean_test_accuracy': float(np.mean(list(accs.values()))),
      'config': {
          'dataset': dataset, 'seed': args.seed, 'optimizer': 'adam',
          'recipes': recipes, 'train_seconds': seconds,
          'num_classes': sizes['num_classes'],
          'vocab_size': sizes['vocab_size'],
          'num_train': int(len(train['label'])),
          'num_test': int(len(test['label'])),
          'num_train_items': _num_items(train, CUB_MODALITIES),
          'num_test_items': _num_items(test, CUB_MODALITIES),
      },
  }
  classifiers.save_classifiers(args.out, clf_params, metadata=metadata)
  print(f'Test accuracy {accs}; saved to {pathlib.Path(args.out).absolute()}'
        f' ({time.time() - start:.1f} s)')


if __name__ == '__main__':
  main()
