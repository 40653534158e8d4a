"""Registers the project's TFDS builders and reads prepared splits.

The builders live in the top-level `datasets/` folder, which is NOT a Python
package (a package named `datasets` would collide with Hugging Face's). This
module imports each builder module by file path, which registers it with
TFDS, so after

  import mmvaeplus_jax.input.builders

`tfds.builder('polymnist/mini', data_dir=...)` and
`tfds.data_source('polymnist/mini', ...)` work. This needs a source
checkout (e.g. `pip install -e .`): `datasets/` is beside the package.

Command line (the `tfds build` CLI of TFDS 4.9.10 imports TensorFlow; this
one does not):

  python -m mmvaeplus_jax.input.builders polymnist/mini --data_dir DIR
  python -m mmvaeplus_jax.input.builders polymnist/rebuilt --data_dir DIR \
      --manual_dir ../shared/data
  python -m mmvaeplus_jax.input.builders mnist_svhn/dm30 --data_dir DIR \
      --manual_dir DIR_WITH_MNIST_AND_SVHN
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds


DATASETS_DIR = pathlib.Path(__file__).resolve().parents[2] / 'datasets'
# TFDS name -> builder module file, relative to DATASETS_DIR.
BUILDER_FILES = {
    'polymnist': 'polymnist/polymnist_dataset_builder.py',
    'mnist_svhn': 'mnist_svhn/mnist_svhn_dataset_builder.py',
}
_READ_CHUNK = 1024  # examples decoded per data-source call in `load_split`


def _register(name: str, relative_path: str):
  """Imports a builder module by path (once); returns its module."""
  module_name = f'mmvaeplus_jax.input.{pathlib.Path(relative_path).stem}'
  if module_name in sys.modules:
    return sys.modules[module_name]
  if name in tfds.core.registered.list_imported_builders():
    # Registered another way, e.g. by `tfds build datasets/<name>`.
    return sys.modules[tfds.builder_cls(name).__module__]
  path = DATASETS_DIR / relative_path
  if not path.is_file():
    raise ImportError(
        f'TFDS builder file {path} not found: mmvaeplus_jax.input.builders '
        'needs the datasets/ folder of a source checkout beside the package '
        '(install with `pip install -e .`).')
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


def main(argv: list[str] | None = None) -> None:
  """Prepares one dataset config from the command line."""
  parser = argparse.ArgumentParser(
      description='Prepare a TFDS dataset of mmvaeplus_jax (array_record, '
      'no TensorFlow needed).')
  parser.add_argument(
      'name', help='polymnist/mini (offline demo), polymnist/rebuilt, '
      'polymnist/official, mnist_svhn/dm30 or mnist_svhn/dm1')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory')
  parser.add_argument(
      '--manual_dir', default=None,
      help='inputs of rebuilt / official (see the builder docstring)')
  args = parser.parse_args(argv)
  builder = prepare(args.name, args.data_dir, manual_dir=args.manual_dir)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f'Prepared {builder.info.full_name} in {builder.data_dir}: {splits}')


if __name__ == '__main__':
  main()
