"""Registers the project's TFDS builders and reads prepared splits.

The builders live in the top-level `datasets/` folder, which is NOT a Python
package (a package named `datasets` would collide with Hugging Face's). This
module imports each builder module by file path, which registers it with
TFDS, so after

  import mmvaeplus_jax.input.builders

`tfds.builder('polymnist/mini', data_dir=...)` and
`tfds.data_source('polymnist/mini', ...)` work.

Where the builder files are found (`DATASETS_DIR`, one rule; the same files
either way):

* `mmvaeplus_jax/datasets/` inside the package, when it exists: an installed
  wheel (pyproject.toml ships the top-level `datasets/` folder there, as
  package data);
* else the top-level `datasets/` beside the package: a source checkout, on
  sys.path or installed with `pip install -e .`.

A missing builder file raises ImportError naming the path and the fix.

Command line: `python -m mmvaeplus_jax.tools.prepare_data polymnist/mini
--data_dir DIR` (tools/prepare_data.py).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds


_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # mmvaeplus_jax/
# An installed wheel: the top-level datasets/ folder, shipped inside the
# package (pyproject.toml: [tool.setuptools.package-dir]).
INSTALLED_DATASETS_DIR = _PACKAGE_DIR / 'datasets'
# A source checkout (plain, or `pip install -e .`): datasets/ beside the
# package. Never used in an installed wheel, where the folder beside the
# package is site-packages/datasets (e.g. Hugging Face's `datasets`).
CHECKOUT_DATASETS_DIR = _PACKAGE_DIR.parent / 'datasets'
DATASETS_DIR = (INSTALLED_DATASETS_DIR if INSTALLED_DATASETS_DIR.is_dir()
                else CHECKOUT_DATASETS_DIR)
# TFDS name -> builder module file, relative to DATASETS_DIR.
BUILDER_FILES = {
    'polymnist': 'polymnist/polymnist_dataset_builder.py',
    'mnist_svhn': 'mnist_svhn/mnist_svhn_dataset_builder.py',
    'cub_image_captions':
        'cub_image_captions/cub_image_captions_dataset_builder.py',
}
_READ_CHUNK = 1024  # examples decoded per data-source call in `load_split`


def builder_path(name: str) -> pathlib.Path:
  """The builder module file of TFDS dataset `name` (see the module docstring).

  Raises:
    ImportError: the file is missing (the message names it and the fix).
  """
  path = DATASETS_DIR / BUILDER_FILES[name]
  if path.is_file():
    return path
  if DATASETS_DIR == INSTALLED_DATASETS_DIR:
    problem = ('missing from the installed package (its wheel was built'
               ' without the top-level datasets/ folder)')
    fix = ('rebuild the wheel from a checkout (`pip wheel --no-deps .`: '
           'pyproject.toml ships datasets/ as mmvaeplus_jax/datasets/) and'
           ' reinstall it')
  else:
    problem = ('missing from the source checkout (no installed'
               f' {INSTALLED_DATASETS_DIR} either)')
    fix = (f'restore datasets/{BUILDER_FILES[name]} in the checkout (e.g.'
           ' `git checkout -- datasets`)')
  raise ImportError(f'TFDS builder file of {name!r}, {path}, is {problem};'
                    f' fix: {fix}.')


def _register(name: str, relative_path: str):
  """Imports a builder module by path (once); returns its module."""
  module_name = f'mmvaeplus_jax.input.{pathlib.Path(relative_path).stem}'
  if module_name in sys.modules:
    return sys.modules[module_name]
  if name in tfds.core.registered.list_imported_builders():
    # Registered another way, e.g. by `tfds build datasets/<name>`.
    return sys.modules[tfds.builder_cls(name).__module__]
  path = builder_path(name)
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise
  return module


polymnist_dataset_builder = _register('polymnist', BUILDER_FILES['polymnist'])
mnist_svhn_dataset_builder = _register('mnist_svhn',
                                       BUILDER_FILES['mnist_svhn'])
cub_image_captions_dataset_builder = _register(
    'cub_image_captions', BUILDER_FILES['cub_image_captions'])


def _expand(path: os.PathLike | str) -> str:
  return os.path.expanduser(os.fspath(path))


def full_name(name_or_config: str) -> str:
  """'<dataset>/<config>' from a full name, or 'polymnist/<config>' from a
  bare PolyMNIST config name."""
  if '/' in name_or_config:
    name = name_or_config.split('/', 1)[0]
    if name not in BUILDER_FILES:
      raise ValueError(
          f'unknown dataset {name!r} in {name_or_config!r}; known:'
          f' {sorted(BUILDER_FILES)}')
    _register(name, BUILDER_FILES[name])
    return name_or_config
  return f'polymnist/{name_or_config}'


def prepare(
    name_or_config: str,
    data_dir: os.PathLike | str,
    *,
    manual_dir: os.PathLike | str | None = None,
) -> tfds.core.DatasetBuilder:
  """Returns the builder, prepared (built once) in `data_dir`.

  Args:
    name_or_config: e.g. 'polymnist/mini' or 'mini' (see `full_name`).
    data_dir: TFDS data directory.
    manual_dir: manual directory for configs that need one (default:
      `data_dir/downloads/manual`); unused when already prepared.

  Raises:
    InputFileError: an input needed to prepare the data is missing or
      corrupt.
  """
  builder = tfds.builder(
      full_name(name_or_config), data_dir=_expand(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else _expand(manual_dir)))
  return builder


def load_split(
    name_or_config: str,
    split: str,
    data_dir: os.PathLike | str,
    *,
    manual_dir: os.PathLike | str | None = None,
) -> dict[str, np.ndarray]:
  """Reads one split of a prepared dataset into NumPy, preparing it if needed.

  Args:
    name_or_config: 'polymnist/<config>' or just the config name: 'mini'
      (offline DEMO), 'rebuilt' or 'official'.
    split: 'train' or 'test' (any TFDS split string, e.g. 'train[:10%]').
    data_dir: TFDS data directory (prepared data lives in
      `data_dir/polymnist/<config>/<version>`).
    manual_dir: manual directory for 'rebuilt' / 'official' (default:
      `data_dir/downloads/manual`); unused when already prepared.

  Returns:
    `{feature: [N, *shape]}` in the features' dtypes, e.g. for PolyMNIST
    {'m0'..'m4': uint8 [N, 28, 28, 3], 'label': int64 [N]}, in the stored
    order (TFDS's key-hash order).

  Raises:
    InputFileError: an input needed to prepare the split is missing or
      corrupt.
  """
  builder = prepare(name_or_config, data_dir, manual_dir=manual_dir)
  source = builder.as_data_source(split=split)
  n = len(source)
  features = builder.info.features
  out = {k: np.empty((n, *features[k].shape), features[k].np_dtype)
         for k in features.keys()}
  for start in range(0, n, _READ_CHUNK):
    stop = min(start + _READ_CHUNK, n)
    examples = source.__getitems__(range(start, stop))
    for key, array in out.items():
      array[start:stop] = np.stack([e[key] for e in examples])
  return out


def compact_source(
    name_or_config: str,
    split: str,
    *,
    manual_dir: os.PathLike | str | None = None,
):
  """The builder module's compact in-memory source of a split, or None.

  A builder module may define `compact_source(config, split, manual_dir)`
  returning a `pipeline.Source` that holds the same examples as the
  prepared split without reading it example by example (e.g. MNIST-SVHN:
  the distinct items once plus the index pairs, rebuilt from the manual
  directory's files by the same seeded pairing).
  """
  full = full_name(name_or_config)
  dataset, config = full.split('/', 1)
  module = _register(dataset, BUILDER_FILES[dataset])
  make = getattr(module, 'compact_source', None)
  if make is None:
    return None
  return make(config, split, None if manual_dir is None else _expand(
      manual_dir))
