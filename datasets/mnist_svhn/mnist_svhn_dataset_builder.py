"""TFDS builder `mnist_svhn`: MNIST-SVHN pairs matched by label (MMVAE).

Each example is one pair:

  'mnist': uint8 Tensor [28, 28, 1]  (0..255; divide by 255 for [0, 1]);
  'svhn':  uint8 Tensor [32, 32, 3];
  'label': ClassLabel(10), the digit both show;
  'mnist_index', 'svhn_index': int64, the item's index in its source split
      (MNIST train / t10k, SVHN train / test), for tracing pairs back.

The pairing is iffsid/mmvae `bin/make-mnist-svhn-idx.py` (SVHN labels mod
10; per class n = min(#MNIST, #SVHN, 10,000) items of each side, the first
n in file order; dm random permutations of each side, paired position by
position); `mmvaeplus_jax/input/mnist_svhn_data.py` documents it and the
two deviations (stable sort, seeded NumPy generators). Example key k is the
position of the pair in that class-major list; the stored order is TFDS's
key-hash shuffle.

Configs:

* `dm30` (default): the published recipe, dm = 30. Train 1,682,040 pairs,
  test 300,000 (computed from the real MNIST labels and SVHN's published
  class counts; tests/mnist_svhn_test.py).
* `dm1`: one permutation per class (the first of `dm30`'s draws per side:
  the same pairs as `dm30`'s first block of each class), 56,068 / 10,000
  pairs: 1/30 of the size, for quick work; not the published dataset.

Storage: the images are stored with every pair (array_record, raw bytes,
~3.9 KB per pair), so that the dataset has the features above and reads
through `builders.load_split` / `as_data_source` like PolyMNIST. The 30x
multiplicity makes `dm30` big: ~6.5 GB for train and ~1.2 GB for test
(measured: 33,000 synthetic pairs took 127 MB and 7.3 s to build, ~4,500
pairs/s on the shared 2-core CPU, so `dm30` takes ~7 min), and reading it
is slow: 0.7 ms per example on that CPU while other jobs ran, by random
access or in order, so one `dm30` train epoch would spend ~20 min reading.
Training therefore
reads it in memory through `compact_source` below (the module hook
`builders.compact_source`; `config.data.in_memory = True`, the MNIST-SVHN
configs' setting): the same pairs rebuilt from the manual directory, each
item stored once (~0.27 GB for train), batches gathered by index. The
prepared TFDS split stays the reference copy (classifier CLI, inspection,
`in_memory = False`).

Seeds: split s in ('train', 'test') pairs with
`mnist_svhn_data.pair_indices(..., seed=(SEED, s_index))`, SEED = 0, s_index
0 / 1 (class l then uses `np.random.default_rng([SEED, s_index, l])`).

Manual directory (`--manual_dir`): the four MNIST IDX files (directly or in
mnist/, e.g. ../shared/data) and SVHN's `train_32x32.mat`, `test_32x32.mat`
(directly or in svhn/) from http://ufldl.stanford.edu/housenumbers/. SVHN
is NOT in ../shared/data: without it the build stops with one
`InputFileError` naming the files, the URL and the directory.

Build command (repository root, project installed with `pip install -e .`,
no TensorFlow needed):

  python -m mmvaeplus_jax.tools.prepare_data mnist_svhn/dm30 \
      --data_dir ~/tensorflow_datasets --manual_dir /path/with/mnist+svhn
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from mmvaeplus_jax.input import mnist_files
from mmvaeplus_jax.input import mnist_svhn_data
from mmvaeplus_jax.input import pipeline

SEED = 0
SPLIT_INDEX = {'train': 0, 'test': 1}
MULTIPLIERS = {'dm30': 30, 'dm1': 1}
ORDER_STREAM = 2  # seed stream of `compact_source`'s example order

_CITATION = r"""
@inproceedings{shi2019variational,
  title={Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
         Generative Models},
  author={Shi, Yuge and Siddharth, N. and Paige, Brooks and Torr, Philip},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
@inproceedings{netzer2011reading,
  title={Reading Digits in Natural Images with Unsupervised Feature
         Learning},
  author={Netzer, Yuval and Wang, Tao and Coates, Adam and Bissacco,
          Alessandro and Wu, Bo and Ng, Andrew Y.},
  booktitle={NIPS Workshop on Deep Learning and Unsupervised Feature
             Learning},
  year={2011}
}
"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """MNIST-SVHN (configs dm30, dm1), stored as array_record."""

  name = 'mnist_svhn'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'MMVAE pairing; configs dm30 and dm1.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='dm30',
          description=(
              'MMVAE pairing (iffsid/mmvae make-mnist-svhn-idx.py): per '
              'class min(#MNIST, #SVHN, 10,000) items, 30 random '
              'permutations; seeded (SEED = 0).')),
      tfds.core.BuilderConfig(
          name='dm1',
          description=(
              'As dm30 with one permutation per class (1/30 of the size); '
              'not the published dataset.')),
  ]
  DEFAULT_CONFIG_NAME = 'dm30'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  The manual directory holds
    * the four MNIST files (train-images-idx3-ubyte.gz,
      train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
      t10k-labels-idx1-ubyte.gz), directly or in mnist/;
      {mnist_files.MNIST_HINT}
    * SVHN's {', '.join(mnist_svhn_data.SVHN_FILES.values())}, directly or in
      svhn/. {mnist_svhn_data.svhn_hint()}
  """

  def __init__(self, *, file_format='array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    def image(shape):
      return tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                  encoding=tfds.features.Encoding.BYTES)
    index = tfds.features.Tensor(shape=(), dtype=np.int64)
    return self.dataset_info_from_configs(
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            'mnist': image(mnist_svhn_data.MNIST_SHAPE),
            'svhn': image(mnist_svhn_data.SVHN_SHAPE),
            'label': tfds.features.ClassLabel(
                num_classes=mnist_svhn_data.NUM_CLASSES),
            'mnist_index': index,
            'svhn_index': index,
        }),
        supervised_keys=None,
        homepage='https://github.com/iffsid/mmvae',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = _manual_dir(dl_manager)
    # Validate every input before writing anything: SVHN (not offline)
    # first, so its one error names all missing files.
    mnist_svhn_data.find_svhn_files(manual_dir)
    for split in mnist_svhn_data.SPLITS:
      for name in mnist_files.MNIST_FILES[split]:
        mnist_files.find_mnist_file(manual_dir, name)
    multiplier = MULTIPLIERS[self.builder_config.name]
    return {
        split: self._generate_examples(manual_dir, split, multiplier)
        for split in mnist_svhn_data.SPLITS
    }

  def _generate_examples(self, manual_dir, split, multiplier):
    pairs = mnist_svhn_data.load_pairs(
        manual_dir, split, seed=(SEED, SPLIT_INDEX[split]),
        multiplier=multiplier)
    for k, (i, j, label) in enumerate(zip(
        pairs['mnist_index'], pairs['svhn_index'], pairs['label'])):
      yield k, {
          'mnist': pairs['mnist'][i], 'svhn': pairs['svhn'][j],
          'label': int(label), 'mnist_index': int(i), 'svhn_index': int(j),
      }


def compact_source(config: str, split: str, manual_dir):
  """The examples of `config`'s `split`, compactly in memory (or None).

  The same pairs as the prepared split (same files, seed and pairing), with
  each MNIST / SVHN item stored once (~0.27 GB for train instead of ~6.5 GB)
  and gathered per batch: `builders.compact_source`, used by
  `input.sources` when `config.data.in_memory`. The pairs are in a fixed
  random order (`np.random.default_rng([SEED, s_index, ORDER_STREAM])`), not
  TFDS's stored order, so a first-N subset of this source differs from the
  random-access one; whole splits hold the same pairs. None (the caller
  falls back to reading the prepared split) without a manual directory or
  for split strings other than 'train' / 'test'.
  """
  if manual_dir is None or split not in SPLIT_INDEX:
    logging.warning(
        'mnist_svhn/%s %s: no compact source (%s); reading the whole '
        'prepared split into memory (dm30 train: ~6.5 GB).', config, split,
        'no manual directory: set config.data.manual_dir'
        if manual_dir is None else 'split is not train or test')
    return None
  seed = (SEED, SPLIT_INDEX[split])
  pairs = mnist_svhn_data.load_pairs(
      manual_dir, split, seed=seed, multiplier=MULTIPLIERS[config])
  order = np.random.default_rng([*seed, ORDER_STREAM]).permutation(
      len(pairs['label']))
  index = {'mnist': pairs['mnist_index'][order],
           'svhn': pairs['svhn_index'][order]}
  return pipeline.PairedSource(
      items={'mnist': pairs['mnist'], 'svhn': pairs['svhn']}, index=index,
      fields={'label': pairs['label'][order],
              'mnist_index': index['mnist'], 'svhn_index': index['svhn']})


def _manual_dir(dl_manager):
  """The manual directory, or one InputFileError saying how to fill it."""
  try:
    return dl_manager.manual_dir
  except AssertionError as err:  # TFDS: missing or empty manual directory
    raise mnist_svhn_data.InputFileError(
        f'{err} {mnist_svhn_data.svhn_hint()}') from None
