"""MNIST's IDX files, read and validated in NumPy.

The canonical files (LeCun, Cortes & Burges; `MNIST_FILES`), gzipped or not,
in a directory or its `mnist/` subfolder: `read_idx` reads any unsigned-byte
IDX file, `read_mnist_images` / `read_mnist_labels` check MNIST's shapes and
labels, `find_mnist_file` finds a file and `load_mnist` loads a split (a file
whose sha256 is not the canonical one is only logged). PolyMNIST
(`polymnist_data`) and MNIST-SVHN (`mnist_svhn_data`) are both made from these
digits. Every missing or corrupt file raises `InputFileError` naming the file
and how to obtain it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pathlib
import zlib

import numpy as np

from mmvaeplus_jax.input import errors

InputFileError = errors.InputFileError
_error = errors.file_error

NUM_CLASSES = 10
IMAGE_SIZE = 28  # an MNIST image is [28, 28]

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

MNIST_HINT = (
    'Obtain the four canonical MNIST files (train-images-idx3-ubyte.gz, '
    'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, '
    't10k-labels-idx1-ubyte.gz; LeCun, Cortes & Burges), e.g. from the '
    'mirror TFDS uses, https://storage.googleapis.com/cvdf-datasets/mnist/, '
    f'and put them in the manual directory or its {MNIST_SUBDIR}/ subfolder.'
)

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b'\x1f\x8b'
_log = logging.getLogger(__name__)


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
