"""The published PolyMNIST archive, read and validated in NumPy.

The archive of Sutter et al. (https://zenodo.org/record/4899160) holds, per
split and modality, one 28x28 RGB PNG per sample named `{i}.{d}.png` (index i
within class d): `PolyMNIST/{train,test}/m{0..4}/{i}.{d}.png`.
`find_official_root` finds the extracted folder, `list_official_split` lists
a split's samples sorted by (i, d) (rather than by the unsorted glob of the
official loaders) and checks that every modality has each of them,
`read_official_example` reads one sample. Every missing or corrupt file
raises `InputFileError` naming the file and how to obtain it.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from mmvaeplus_jax.input import errors
from mmvaeplus_jax.input import polymnist_data

InputFileError = errors.InputFileError
_error = errors.file_error

OFFICIAL_SUBDIR = 'PolyMNIST'
OFFICIAL_HINT = (
    'Download the published PolyMNIST archive, '
    'https://zenodo.org/record/4899160/files/PolyMNIST.zip, and extract it '
    'into the manual directory so that it holds '
    f'{OFFICIAL_SUBDIR}/{{train,test}}/m{{0..4}}/{{i}}.{{d}}.png.'
)


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
  if i < 0 or not 0 <= d < polymnist_data.NUM_CLASSES:
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
  for modality in polymnist_data.MODALITIES:
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
  for modality, keys in zip(polymnist_data.MODALITIES, per_modality):
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
  if mode != 'RGB' or size != polymnist_data.IMAGE_SHAPE[:2]:
    raise _error(
        path, f'expected a 28x28 RGB PNG, got mode {mode} size {size}',
        OFFICIAL_HINT)
  return array


def read_official_example(
    split_dir: os.PathLike | str, i: int, d: int
) -> dict[str, np.ndarray]:
  """All modalities of sample `{i}.{d}`: 'm0'..'m4' uint8 [28, 28, 3]."""
  split_dir = pathlib.Path(split_dir)
  example = {m: read_png(split_dir / m / f'{i}.{d}.png')
             for m in polymnist_data.MODALITIES}
  example['label'] = np.int64(d)
  return example
