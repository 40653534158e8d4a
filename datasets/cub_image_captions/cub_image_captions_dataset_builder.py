"""TFDS builder `cub_image_captions`: CUB bird images paired with captions.

One example per image-caption pair, as MMVAE / MMVAE+ train on CUB: each
image has 10 captions and is paired with each of them (their
`resampler(dataset, idx) = idx // 10`), so a split holds 10 examples per
image and the pipeline batches pairs directly:

  'image': uint8 Tensor [64, 64, 3] (0..255; divide by 255 for [0, 1]):
      the image squashed to 64x64 like the official
      `transforms.Resize([64, 64])` (PIL bilinear, aspect ratio not kept);
  'caption': int32 Tensor [32], token ids (`input/captions.py`): the first
      31 tokens, `<eos>` (2), `<pad>` (1) to 32; `<exc>` (0) for a token
      not in the vocabulary;
  'caption_length': int32, tokens up to and including `<eos>` (1..32);
  'label': ClassLabel, the species: `official` CUB class id - 1 (0..199,
      from the folder name `NNN.Class_Name`, the same in both splits);
      `cub23` the index into `CUB23_CLASSES` (0..22);
  'file_name': Text, the image's original CUB path `NNN.Class_Name/
      <file>.jpg`, for tracing;
  'image_index': int64, the image's position in its split (ImageFolder
      order: class folder, then file name, sorted);
  'caption_line': int64, the caption's 0-based line in its caption file
      (also the example key).

The vocabulary (MMVAE's rules, `input/captions.py`) is built from the
train split's captions only and stored with the dataset, in
`builder.info.metadata` (metadata.json of the prepared version directory):
'vocabulary' (the word list, id = position), 'vocabulary_size', and the
tokeniser and rules used. Read it with
`captions.vocabulary_from_info(builder.info)` or
`captions.load_vocabulary(<prepared version directory>)`.

Configs:

* `cub23` (default; builds offline from ../shared/data): CUB-23, the 23
  Reed et al. test classes of which ../shared/data/cub holds real images
  (`cub_subset_227px_serizba.tar`, 227x227 JPEGs) with a per-image mapping
  to their original CUB files and caption lines
  (`cub_subset_serizba_mapping.csv`, see ../shared/data/PROVENANCE.md) into
  `text_testclasses.txt`: 1,358 images, each with its own 10 captions
  (13,580 pairs), split by CUB's official image split (train 690 images /
  6,900 pairs, test 668 / 6,680), vocabulary from the 6,900 train captions
  (509 tokens with the specials). Real CUB data, NOT the paper's split (150
  train / 50 disjoint test classes): every number on it says "CUB-23".
  The images were resized to 227x227 before the squash to 64x64 (the
  official images are CUB's originals).
* `official`: the MMVAE `cub.zip` release (iffsid/mmvae README) in the
  manual directory, `cub/` or the directory itself holding
  `text_trainvalclasses.txt`, `text_testclasses.txt`, `train/` and `test/`
  (ImageFolder trees); caption line i belongs to image i // 10 of its
  split in ImageFolder order; vocabulary from `text_trainvalclasses.txt`
  (1,590 tokens on the real files: the models hard-code that size; the
  size found is logged and stored). The cub.zip link
  (http://www.robots.ox.ac.uk/~yshi/mmdgm/datasets/cub.zip) is dead: the
  user must supply the files. A missing file or folder stops the build
  with one `InputFileError` naming all of them.

Build commands (repository root, `pip install -e .`; no TensorFlow):

  python -m mmvaeplus_jax.tools.prepare_data cub_image_captions/cub23 \
      --data_dir ~/tensorflow_datasets --manual_dir ../shared/data
  python -m mmvaeplus_jax.tools.prepare_data cub_image_captions/official \
      --data_dir ~/tensorflow_datasets --manual_dir /path/holding/cub

docs/cub.md describes both configs and the vocabulary rules.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import io
import logging
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mmvaeplus_jax.input import captions
from mmvaeplus_jax.input import errors

InputFileError = errors.InputFileError

SPLITS = ('train', 'test')
CAPTIONS_PER_IMAGE = 10
IMAGE_SHAPE = (64, 64, 3)
NUM_CUB_CLASSES = 200
CUB_SUBDIR = 'cub'  # cub.zip extracts to cub/

# --- official: the MMVAE cub.zip layout -----------------------------------
CAPTION_FILES = {'train': 'text_trainvalclasses.txt',
                 'test': 'text_testclasses.txt'}
OFFICIAL_VOCABULARY_SIZE = 1590  # hard-coded in the official text networks
# torchvision's ImageFolder extensions (`IMG_EXTENSIONS`, case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')
CUB_ZIP_URL = 'http://www.robots.ox.ac.uk/~yshi/mmdgm/datasets/cub.zip'
OFFICIAL_HINT = (
    "Config 'official' needs the MMVAE CUB release cub.zip (iffsid/mmvae "
    f'README), extracted so that the manual directory holds {CUB_SUBDIR}/ '
    '(or is itself the folder) with text_trainvalclasses.txt, '
    'text_testclasses.txt, train/<NNN.Class_Name>/*.jpg and '
    f'test/<NNN.Class_Name>/*.jpg. Its link, {CUB_ZIP_URL}, is dead '
    '(iffsid/mmvae issue 14, epalu/mmvaeplus issue 1) and no public copy '
    'is known: supply your own copy. Offline, the cub23 config builds from '
    '../shared/data (docs/cub.md)')

# --- cub23: CUB-23 from ../shared/data/cub --------------------------------
CUB23_FILES = {  # name -> md5 (../shared/data/PROVENANCE.md)
    'cub_subset_227px_serizba.tar': '04ae3cbbd1f8c2fa57438f3afb606e54',
    'cub_subset_serizba_mapping.csv': '5f3951744cd4bfaf2e62227eed6d76cb',
    'text_testclasses.txt': 'db7dbdaad489bac3df0abcc25b2441d7',
}
CUB23_TAR, CUB23_MAPPING, CUB23_CAPTIONS = CUB23_FILES
CUB23_TAR_PREFIX = 'bird_dataset/'  # the tar's paths = this + serizba_path
# The 23 classes (CUB folder names, ImageFolder order): the Reed et al. test
# classes among the 100 classes of the serizba subset.
CUB23_CLASSES = (
    '001.Black_footed_Albatross', '004.Groove_billed_Ani',
    '014.Indigo_Bunting', '034.Gray_crowned_Rosy_Finch', '035.Purple_Finch',
    '051.Horned_Grebe', '053.Western_Grebe', '079.Belted_Kingfisher',
    '083.White_breasted_Kingfisher', '086.Pacific_Loon',
    '095.Baltimore_Oriole', '096.Hooded_Oriole', '098.Scott_Oriole',
    '101.White_Pelican', '114.Black_throated_Sparrow', '138.Tree_Swallow',
    '163.Cape_May_Warbler', '165.Chestnut_sided_Warbler',
    '166.Golden_winged_Warbler', '180.Wilson_Warbler',
    '185.Bohemian_Waxwing', '186.Cedar_Waxwing',
    '187.American_Three_toed_Woodpecker',
)
CUB23_HINT = (
    "Config 'cub23' reads ../shared/data/cub (the project's shared data; "
    'pass --manual_dir ../shared/data, or the cub folder itself): '
    f'{", ".join(CUB23_FILES)}; ../shared/data/PROVENANCE.md gives their '
    'sources and md5s')

_CITATION = r"""
@inproceedings{shi2019variational,
  title={Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
         Generative Models},
  author={Shi, Yuge and Siddharth, N. and Paige, Brooks and Torr, Philip},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
@inproceedings{reed2016learning,
  title={Learning Deep Representations of Fine-Grained Visual Descriptions},
  author={Reed, Scott and Akata, Zeynep and Lee, Honglak and Schiele,
          Bernt},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition},
  year={2016}
}
@techreport{wah2011cub,
  title={The {Caltech-UCSD} Birds-200-2011 Dataset},
  author={Wah, C. and Branson, S. and Welinder, P. and Perona, P. and
          Belongie, S.},
  institution={California Institute of Technology},
  number={CNS-TR-2011-001},
  year={2011}
}
"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """CUB Image-Captions (configs cub23, official), stored as array_record."""

  name = 'cub_image_captions'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Configs cub23 (CUB-23, offline) and official.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='cub23',
          description=(
              'CUB-23: the 23 Reed et al. test classes with real images in '
              '../shared/data/cub, each image with its own 10 captions '
              '(1,358 images, 13,580 pairs), CUB official image split '
              '(690 / 668 images), vocabulary from its train captions. NOT '
              "the paper's class split: numbers on it say CUB-23."),
      ),
      tfds.core.BuilderConfig(
          name='official',
          description=(
              'The MMVAE cub.zip release from the manual directory (150 '
              'train / 50 test classes; caption i <-> image i // 10), '
              'vocabulary from the train captions.'),
      ),
  ]
  DEFAULT_CONFIG_NAME = 'cub23'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  {CUB23_HINT}.
  {OFFICIAL_HINT}.
  """

  def __init__(self, *, file_format='array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == 'cub23':
      label = tfds.features.ClassLabel(names=CUB23_CLASSES)
    else:
      label = tfds.features.ClassLabel(num_classes=NUM_CUB_CLASSES)
    scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)
    return self.dataset_info_from_configs(
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(
                shape=IMAGE_SHAPE, dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            'caption': tfds.features.Tensor(
                shape=(captions.MAX_LENGTH,), dtype=np.int32),
            'caption_length': scalar(np.int32),
            'label': label,
            'file_name': tfds.features.Text(),
            'image_index': scalar(np.int64),
            'caption_line': scalar(np.int64),
        }),
        supervised_keys=None,
        homepage='https://github.com/iffsid/mmvae',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config.name
    manual_dir = _manual_dir(dl_manager)
    # Read and validate every input before writing anything.
    if config == 'cub23':
      splits = load_cub23(manual_dir)
    else:
      splits = load_official(manual_dir)
    vocabulary = captions.build_vocabulary(
        splits['train']['tokens'][line]
        for line in sorted(splits['train']['tokens']))
    if config == 'official' and vocabulary.size != OFFICIAL_VOCABULARY_SIZE:
      logging.warning(
          'cub_image_captions/official: vocabulary of %d tokens, not the '
          "%d of MMVAE's release (its models hard-code that size).",
          vocabulary.size, OFFICIAL_VOCABULARY_SIZE)
    self.info.metadata.update(vocabulary_metadata(vocabulary))
    return {split: self._generate_examples(splits[split], vocabulary)
            for split in SPLITS}

  def _generate_examples(self, split, vocabulary):
    """Reads each image once and yields its 10 pairs."""
    with split['open_images']() as read:
      for image_index, (file_name, label, first_line) in enumerate(
          split['images']):
        image = read(image_index)
        for line in range(first_line, first_line + CAPTIONS_PER_IMAGE):
          ids = captions.encode(split['tokens'][line], vocabulary)
          yield line, {
              'image': image,
              'caption': ids,
              'caption_length': np.int32(captions.lengths(ids)),
              'label': label,
              'file_name': file_name,
              'image_index': image_index,
              'caption_line': line,
          }


def vocabulary_metadata(vocabulary: captions.Vocabulary) -> dict:
  """What `info.metadata` records about the vocabulary and its rules."""
  return {
      captions.METADATA_KEY: list(vocabulary.words),
      'vocabulary_size': vocabulary.size,
      'tokenizer': (f'nltk {importlib.metadata.version("nltk")} '
                    'word_tokenize(line, preserve_line=True), one caption '
                    'per line, case kept'),
      'min_occurrences': captions.MIN_OCCURRENCES,
      'max_length': captions.MAX_LENGTH,
      'vocabulary_from': 'train split captions',
  }


# --------------------------------------------------------------------------
# Reading and validating the inputs. Each `load_*` returns, per split,
# {'images': [(file_name, label, first caption line)] in ImageFolder order,
#  'tokens': {line: tokens} for the split's caption lines,
#  'open_images': a context manager factory yielding read_image(i) ->
#  uint8 [64, 64, 3]}.


def squash(image: Image.Image) -> np.ndarray:
  """uint8 [64, 64, 3]: the official `transforms.Resize([64, 64])` of an
  RGB PIL image (torchvision calls `PIL.Image.resize((64, 64), BILINEAR)`;
  the aspect ratio is not kept)."""
  h, w, _ = IMAGE_SHAPE
  return np.asarray(image.convert('RGB').resize(
      (w, h), Image.Resampling.BILINEAR), np.uint8)


def read_image(source, name, hint: str) -> np.ndarray:
  """Decodes an image file (path or file object) and squashes it."""
  try:
    with Image.open(source) as image:
      return squash(image)
  except (OSError, ValueError) as e:
    raise errors.file_error(name, f'not a readable image ({e})', hint) from e


def read_caption_lines(path: pathlib.Path, hint: str) -> list[str]:
  """The caption lines of a caption file (UTF-8, one caption per line)."""
  try:
    return captions.split_lines(path.read_text(encoding='utf-8'))
  except UnicodeDecodeError as e:
    raise errors.file_error(path, f'not UTF-8 text ({e})', hint) from e


def find_root(manual_dir: os.PathLike | str, names) -> pathlib.Path:
  """`manual_dir/cub` if it holds any of `names`, else `manual_dir`."""
  manual_dir = pathlib.Path(manual_dir)
  sub = manual_dir / CUB_SUBDIR
  if any((sub / n).exists() for n in names):
    return sub
  return manual_dir


def image_folder(split_dir: pathlib.Path, hint: str):
  """torchvision `ImageFolder`'s files of a split folder, in its order.

  Classes are the sorted subfolders; within each, `sorted(os.walk(...))`
  and sorted file names with an image extension. Returns
  [(relative path 'NNN.Class_Name/<file>', CUB class id - 1)].

  Raises:
    InputFileError: no class folder, a class folder without images, or a
      class folder not named `NNN.<name>` with 1 <= NNN <= 200.
  """
  classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
  if not classes:
    raise errors.file_error(split_dir, 'no class folders', hint)
  files = []
  for name in classes:
    prefix = name.split('.', 1)[0]
    if not (prefix.isdigit() and 1 <= int(prefix) <= NUM_CUB_CLASSES):
      raise errors.file_error(
          split_dir / name, 'class folder not named NNN.Class_Name (CUB '
          'class id 001..200)', hint)
    found = [
        pathlib.Path(root, f).relative_to(split_dir).as_posix()
        for root, _, names in sorted(os.walk(split_dir / name,
                                             followlinks=True))
        for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
      raise errors.file_error(split_dir / name, 'no image files', hint)
    files += [(f, int(prefix) - 1) for f in found]
  return files


def _tokens(lines, line_numbers):
  return {i: captions.tokenize(lines[i]) for i in line_numbers}


def load_official(manual_dir: os.PathLike | str) -> dict:
  """The `official` inputs, validated (see the section comment above).

  Raises:
    InputFileError: one error naming every missing file and folder, or a
      caption file whose line count is not 10 x its split's images.
  """
  names = [*CAPTION_FILES.values(), *SPLITS]
  root = find_root(manual_dir, names)
  missing = [root / n for n in CAPTION_FILES.values()
             if not (root / n).is_file()]
  missing += [root / s for s in SPLITS if not (root / s).is_dir()]
  if missing:
    raise InputFileError(
        f'missing from the manual directory: '
        f'{", ".join(str(p) for p in missing)}. {OFFICIAL_HINT}.')
  out = {}
  for split in SPLITS:
    images = image_folder(root / split, OFFICIAL_HINT)
    path = root / CAPTION_FILES[split]
    lines = read_caption_lines(path, OFFICIAL_HINT)
    if len(lines) != CAPTIONS_PER_IMAGE * len(images):
      raise errors.file_error(
          path, f'{len(lines)} caption lines for the {len(images)} images of'
          f' {root / split} (caption i belongs to image i // 10: expected'
          f' {CAPTIONS_PER_IMAGE * len(images)})', OFFICIAL_HINT)
    out[split] = {
        'images': [(f, label, CAPTIONS_PER_IMAGE * i)
                   for i, (f, label) in enumerate(images)],
        'tokens': _tokens(lines, range(len(lines))),
        'open_images': (lambda d=root / split, im=images: (
            contextlib.nullcontext(lambda i: read_image(
                d / im[i][0], d / im[i][0], OFFICIAL_HINT)))),
    }
  return out


def _md5(path: pathlib.Path) -> str:
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class _Tar:
  """read_image(i) for the CUB-23 images in the serizba tar."""

  def __init__(self, path, members):
    self.path, self.members = path, members

  def __enter__(self):
    self._tar = tarfile.open(self.path)
    def read(i):
      name = CUB23_TAR_PREFIX + self.members[i]
      try:
        data = self._tar.extractfile(name).read()
      except (KeyError, AttributeError) as e:
        raise errors.file_error(self.path, f'no file {name}', CUB23_HINT) from e
      return read_image(io.BytesIO(data), f'{self.path}:{name}', CUB23_HINT)
    return read

  def __exit__(self, *exc):
    self._tar.close()
    return False


def cub23_rows(mapping_path: pathlib.Path) -> list[dict]:
  """The mapping rows of the CUB-23 images (those with caption lines),
  sorted by CUB path (= ImageFolder order of the 23 class folders)."""
  with open(mapping_path, newline='', encoding='utf-8') as f:
    rows = [r for r in csv.DictReader(f) if r['caption_first_line']]
  return sorted(rows, key=lambda r: r['cub_path'])


def load_cub23(manual_dir: os.PathLike | str) -> dict:
  """The `cub23` inputs, validated (see the section comment above).

  Raises:
    InputFileError: a missing file or one whose md5 is not PROVENANCE.md's
      (one error naming all), or a mapping inconsistent with the captions.
  """
  root = find_root(manual_dir, CUB23_FILES)
  problems = []
  for name, md5 in CUB23_FILES.items():
    path = root / name
    if not path.is_file():
      problems.append(f'{path} (missing)')
    elif _md5(path) != md5:
      problems.append(f'{path} (md5 is not {md5})')
  if problems:
    raise InputFileError(f'CUB-23 inputs: {"; ".join(problems)}. '
                         f'{CUB23_HINT}.')
  lines = read_caption_lines(root / CUB23_CAPTIONS, CUB23_HINT)
  rows = cub23_rows(root / CUB23_MAPPING)
  classes = sorted({r['cub_path'].split('/', 1)[0] for r in rows})
  if tuple(classes) != CUB23_CLASSES:
    raise errors.file_error(root / CUB23_MAPPING, f'caption classes'
                            f' {classes} are not CUB-23\'s', CUB23_HINT)
  out = {}
  for split in SPLITS:
    split_rows = [r for r in rows if r['cub_official_split'] == split]
    images = []
    for r in split_rows:
      first = int(r['caption_first_line'])
      if first % CAPTIONS_PER_IMAGE or first + CAPTIONS_PER_IMAGE > len(lines):
        raise errors.file_error(
            root / CUB23_MAPPING, f'caption_first_line {first} of'
            f' {r["cub_path"]} is not a multiple of 10 below {len(lines)}',
            CUB23_HINT)
      label = CUB23_CLASSES.index(r['cub_path'].split('/', 1)[0])
      images.append((r['cub_path'], label, first))
    line_numbers = [first + c for _, _, first in images
                    for c in range(CAPTIONS_PER_IMAGE)]
    members = [r['serizba_path'] for r in split_rows]
    out[split] = {
        'images': images,
        'tokens': _tokens(lines, line_numbers),
        'open_images': (lambda m=members: _Tar(root / CUB23_TAR, m)),
    }
  return out


def _manual_dir(dl_manager) -> pathlib.Path:
  """The manual directory, or one InputFileError saying how to fill it."""
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError as err:  # TFDS: missing or empty manual directory
    # The message holds MANUAL_DOWNLOAD_INSTRUCTIONS (both configs' hints).
    raise InputFileError(str(err)) from None
