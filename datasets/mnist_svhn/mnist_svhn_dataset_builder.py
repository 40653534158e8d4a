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
  test 300,000 with the real files.
* `dm1`: one permutation per class (the first of `dm30`'s draws per side:
  the same pairs as `dm30`'s first block of each class), 56,068 / 10,000
  pairs: 1/30 of the size, for quick work; not the published dataset.

Storage: the images are stored with every pair (array_record, raw bytes,
3,856 image bytes per pair), so that the dataset has the features above
and reads through `builders.load_split` / `as_data_source` like PolyMNIST.
The 30x multiplicity makes `dm30` big: about 6.5 GB of image bytes for
train and 1.2 GB for test (vs 0.27 GB for the distinct MNIST + SVHN
items). Read it by random access (`config.data.in_memory = False`, as the
MNIST-SVHN configs set), not into RAM. Storing only index pairs plus the two
source arrays would be ~30x smaller but needs a custom source beside TFDS;
not done (yet).

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

  python -m mmvaeplus_jax.input.builders mnist_svhn/dm30 \
      --data_dir ~/tensorflow_datasets --manual_dir /path/with/mnist+svhn
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmvaeplus_jax.input import mnist_svhn_data
from mmvaeplus_jax.input import polymnist_data

SEED = 0
SPLIT_INDEX = {'train': 0, 'test': 1}
MULTIPLIERS = {'dm30': 30, 'dm1': 1}

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
      {polymnist_data.MNIST_HINT}
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
      for name in polymnist_data.MNIST_FILES[split]:
        polymnist_data.find_mnist_file(manual_dir, name)
    multiplier = MULTIPLIERS[self.builder_config.name]
    return {
        split: self._generate_examples(manual_dir, split, multiplier)
        for split in mnist_svhn_data.SPLITS
    }

  def _generate_examples(self, manual_dir, split, multiplier):
    mnist, mnist_labels = mnist_svhn_data.load_mnist(manual_dir, split)
    svhn, svhn_labels = mnist_svhn_data.load_svhn(manual_dir, split)
    idx1, idx2 = mnist_svhn_data.pair_indices(
        mnist_labels, svhn_labels, seed=(SEED, SPLIT_INDEX[split]),
        multiplier=multiplier)
    for k, (i, j) in enumerate(zip(idx1, idx2)):
      yield k, {
          'mnist': mnist[i], 'svhn': svhn[j], 'label': int(mnist_labels[i]),
          'mnist_index': int(i), 'svhn_index': int(j),
      }


def _manual_dir(dl_manager):
  """The manual directory, or one InputFileError saying how to fill it."""
  try:
    return dl_manager.manual_dir
  except AssertionError as err:  # TFDS: missing or empty manual directory
    raise mnist_svhn_data.InputFileError(
        f'{err} {mnist_svhn_data.svhn_hint()}') from None
