"""MNIST-SVHN in NumPy: SVHN `.mat` reader and MMVAE's pairing by label.

MNIST-SVHN (Shi et al., NeurIPS 2019) pairs an MNIST digit `[28, 28, 1]`
with an SVHN house number `[32, 32, 3]` of the same label. The pairing is
the one of iffsid/mmvae `bin/make-mnist-svhn-idx.py`
(`rand_match_on_idx`; data.md section 3), per split:

1. SVHN labels are taken mod 10 (the `.mat` files store digit 0 as 10).
2. Both datasets are sorted by label; for each class l (the classes present
   in MNIST, in increasing order) keep the first
   n_l = min(#MNIST_l, #SVHN_l, max_per_class = 10,000) indices of each side.
3. Append dm = 30 random permutations of each side's n_l kept indices
   (one permutation of the MNIST side, then one of the SVHN side, dm
   times); pair the two sides position by position. (The MMVAE README says
   20; the script uses 30.)

So class l contributes exactly dm * n_l pairs and every kept item is used
exactly dm times; the pairs are class-major (class 0's dm * n_0 pairs
first). Train pairs MNIST train with SVHN train, test MNIST t10k with SVHN
test (SVHN's `extra` split is not used).

Deviations from the script, both forced by reproducibility:

* "the first n_l" of a class is taken in the original file order (a stable
  sort). The script uses `torch.Tensor.sort()`, which does not promise a
  stable order, so where n_l < #MNIST_l (MNIST train 0, 6, 7, 8, 9 are
  truncated to SVHN's counts) its kept subset may differ from ours.
* the permutations come from `np.random.default_rng([*seed, l])` for class
  l (permutation of the MNIST side, then of the SVHN side, dm times), not
  from torch's global RNG (the script sets no seed, so the published index
  files cannot be reproduced bit for bit anyway).

Sizes with the real data (SVHN format 2 class counts, train: 0: 4,948,
1: 13,861, 2: 10,585, 3: 8,497, 4: 7,458, 5: 6,882, 6: 5,727, 7: 5,595,
8: 5,045, 9: 4,659; MNIST counts in data.md): train sum_l n_l = 56,068
items, 30 x = 1,682,040 pairs; test n_l = the MNIST t10k counts (every SVHN
test class is larger), 10,000 items, 300,000 pairs.

SVHN inputs (`read_svhn_mat`, `load_svhn`): `train_32x32.mat` and
`test_32x32.mat` of http://ufldl.stanford.edu/housenumbers/ (format 2,
cropped digits), read with `scipy.io.loadmat`: `X` uint8 `[32, 32, 3, N]`,
`y` `[N, 1]` in 1..10 (10 means digit 0). SVHN is not available offline in
this project; every missing or corrupt file raises `InputFileError` naming
it, where to get it and the manual directory to put it in. MNIST is read
with the validated IDX reader of `mnist_files` (`load_mnist`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from mmvaeplus_jax.input import errors
from mmvaeplus_jax.input import mnist_files

InputFileError = errors.InputFileError

NUM_CLASSES = 10
SPLITS = ('train', 'test')
MNIST_SHAPE = (28, 28, 1)
SVHN_SHAPE = (32, 32, 3)
MODALITIES = ('mnist', 'svhn')
MAX_PER_CLASS = 10_000  # script's max_d
DATA_MULTIPLIER = 30  # script's dm
SVHN_FILES = {'train': 'train_32x32.mat', 'test': 'test_32x32.mat'}
SVHN_SUBDIR = 'svhn'
SVHN_URL = 'http://ufldl.stanford.edu/housenumbers/'


def svhn_hint(manual_dir: os.PathLike | str | None = None) -> str:
  where = '<manual_dir>' if manual_dir is None else str(manual_dir)
  return (
      f'Download {" and ".join(SVHN_FILES.values())} (SVHN format 2, cropped '
      f'digits, Netzer et al. 2011) from {SVHN_URL} and put them in {where} '
      f'or {where}/{SVHN_SUBDIR}/ (the manual directory given as '
      '--manual_dir / config.data.manual_dir).')


def find_svhn_files(directory: os.PathLike | str,
                    splits: Sequence[str] = SPLITS) -> dict[str, pathlib.Path]:
  """Finds the SVHN `.mat` files of `splits` in `directory` or `directory/svhn`.

  Raises:
    InputFileError: one error naming every missing file, where to download
      them and the manual directory to put them in.
  """
  directory = pathlib.Path(directory)
  found, missing = {}, []
  for split in splits:
    name = SVHN_FILES[split]
    for candidate in (directory / name, directory / SVHN_SUBDIR / name):
      if candidate.is_file():
        found[split] = candidate
        break
    else:
      missing.append(name)
  if missing:
    raise InputFileError(
        f'SVHN file(s) {", ".join(missing)} not found in {directory} or '
        f'{directory / SVHN_SUBDIR}; SVHN is not part of ../shared/data. '
        + svhn_hint(directory))
  return found


def read_svhn_mat(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
  """Reads an SVHN format-2 `.mat` file, validating it.

  Args:
    path: e.g. `train_32x32.mat`.

  Returns:
    images uint8 `[N, 32, 32, 3]` and labels int64 `[N]` in 0..9 (the
    stored 10 becomes 0: labels mod 10, as MMVAE).

  Raises:
    InputFileError: unreadable file, missing `X` / `y`, or wrong shapes,
      dtypes or label values.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  hint = svhn_hint(path.parent)
  try:
    mat = scipy.io.loadmat(path)
  except (OSError, ValueError, TypeError) as err:
    raise InputFileError(
        f'{path}: cannot read it as a MATLAB file ({err}). {hint}') from err
  if 'X' not in mat or 'y' not in mat:
    raise InputFileError(
        f'{path}: expected variables X and y, got '
        f'{sorted(k for k in mat if not k.startswith("__"))}. {hint}')
  x, y = mat['X'], np.asarray(mat['y'])
  if x.ndim != 4 or x.shape[:3] != SVHN_SHAPE or x.dtype != np.uint8:
    raise InputFileError(
        f'{path}: X must be uint8 [32, 32, 3, N], got {x.dtype} '
        f'{list(x.shape)}. {hint}')
  n = x.shape[3]
  if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
    raise InputFileError(
        f'{path}: y must be [N, 1] with N = {n} (the images in X), got '
        f'{list(y.shape)}. {hint}')
  y = y.reshape(-1)
  if not np.issubdtype(y.dtype, np.number) or (
      y.size and (y.min() < 0 or y.max() > 10 or np.any(y != np.round(y)))):
    raise InputFileError(
        f'{path}: labels must be integers in 1..10 (10 = digit 0). {hint}')
  images = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)))
  return images, y.astype(np.int64) % NUM_CLASSES


def load_svhn(directory: os.PathLike | str,
              split: str) -> tuple[np.ndarray, np.ndarray]:
  """SVHN `split` ('train' or 'test') from `directory` (or its svhn/)."""
  return read_svhn_mat(find_svhn_files(directory, (split,))[split])


def load_mnist(directory: os.PathLike | str,
               split: str) -> tuple[np.ndarray, np.ndarray]:
  """MNIST `split` as uint8 `[N, 28, 28, 1]` and int64 labels `[N]`
  (`mnist_files.load_mnist`: IDX files in `directory` or its mnist/)."""
  images, labels = mnist_files.load_mnist(directory, split)
  return images[..., None], labels


def _seed_tuple(seed: int | Sequence[int]) -> tuple[int, ...]:
  return (int(seed),) if np.ndim(seed) == 0 else tuple(int(s) for s in seed)


def class_counts(labels1: np.ndarray, labels2: np.ndarray, *,
                 max_per_class: int = MAX_PER_CLASS) -> dict[int, int]:
  """n_l = min(#labels1 == l, #labels2 == l, max_per_class) for each class l
  present in `labels1`, in increasing order."""
  labels1, labels2 = np.asarray(labels1), np.asarray(labels2)
  return {int(l): int(min(np.sum(labels1 == l), np.sum(labels2 == l),
                          max_per_class))
          for l in np.unique(labels1)}


def pair_indices(
    labels1: np.ndarray,
    labels2: np.ndarray,
    *,
    seed: int | Sequence[int],
    max_per_class: int = MAX_PER_CLASS,
    multiplier: int = DATA_MULTIPLIER,
) -> tuple[np.ndarray, np.ndarray]:
  """MMVAE's label-matched index pairs (see the module docstring).

  Args:
    labels1: `[N1]` labels of the first dataset (MNIST).
    labels2: `[N2]` labels of the second (SVHN, already mod 10).
    seed: int or tuple; class l uses `np.random.default_rng([*seed, l])`.
    max_per_class: the script's max_d (10,000).
    multiplier: the script's dm (30): permutations per class.

  Returns:
    int64 `[P]` indices into dataset 1 and into dataset 2, with
    P = multiplier * sum_l n_l, class-major; labels1[i1] == labels2[i2].
  """
  if multiplier < 1 or max_per_class < 1:
    raise ValueError(
        f'need multiplier >= 1 and max_per_class >= 1, got {multiplier} and'
        f' {max_per_class}')
  labels1, labels2 = np.asarray(labels1), np.asarray(labels2)
  seed = _seed_tuple(seed)
  # Stable sort: "the first n" of a class are its first n in file order.
  order1 = np.argsort(labels1, kind='stable')
  order2 = np.argsort(labels2, kind='stable')
  out1, out2 = [], []
  for label, n in class_counts(labels1, labels2,
                               max_per_class=max_per_class).items():
    kept1 = order1[labels1[order1] == label][:n]
    kept2 = order2[labels2[order2] == label][:n]
    rng = np.random.default_rng([*seed, label])
    for _ in range(multiplier):
      out1.append(kept1[rng.permutation(n)])
      out2.append(kept2[rng.permutation(n)])
  if not out1:
    return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
  return (np.concatenate(out1).astype(np.int64),
          np.concatenate(out2).astype(np.int64))


def load_pairs(
    directory: os.PathLike | str,
    split: str,
    *,
    seed: int | Sequence[int],
    multiplier: int = DATA_MULTIPLIER,
) -> dict[str, np.ndarray]:
  """Reads MNIST and SVHN `split` from `directory` and pairs them.

  Returns:
    `{'mnist': uint8 [N1, 28, 28, 1], 'svhn': uint8 [N2, 32, 32, 3]` (all
    items of both source splits), `'mnist_index', 'svhn_index': int64 [P]`
    (`pair_indices`, class-major), `'label': int64 [P]}`.
  """
  mnist, mnist_labels = load_mnist(directory, split)
  svhn, svhn_labels = load_svhn(directory, split)
  idx1, idx2 = pair_indices(mnist_labels, svhn_labels, seed=seed,
                            multiplier=multiplier)
  return {'mnist': mnist, 'svhn': svhn, 'mnist_index': idx1,
          'svhn_index': idx2, 'label': mnist_labels[idx1]}
