"""Data sources of a `config.data` section, for training and evaluation.

`load_sources(config.data)` prepares the dataset (process 0 builds, the
others wait) and returns the (train, eval) splits as `pipeline.Source`s.
The trainer (`training/loop.py`) and the evaluators (`evaluation/runner.py`)
both read their data through this module; evaluation never imports the
training shell.

`config.data.name` picks the TFDS dataset (`builders.BUILDER_FILES`);
`config.data.config` its builder config (e.g. PolyMNIST 'mini', 'rebuilt').
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import pipeline


def dataset_name(data) -> str:
  """'<name>/<config>' of `config.data`, checked against the known builders."""
  if data.name not in builders.BUILDER_FILES:
    raise ValueError(
        f'unknown data.name {data.name!r}; known:'
        f' {sorted(builders.BUILDER_FILES)}')
  return f'{data.name}/{data.config}'


def prepare_data(data) -> None:
  """Builds `config.data`'s dataset if needed: process 0 builds, the others
  wait for it."""
  name = dataset_name(data)
  if jax.process_index() == 0:
    builders.prepare(name, data.data_dir, manual_dir=data.manual_dir or None)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mmvaeplus_jax:data_prepared')


def split_source(data, split: str) -> pipeline.Source:
  """One split of the (prepared) dataset as a `pipeline.Source`: in memory
  (`data.in_memory`) or read on demand from the TFDS data source.

  In memory, a builder module's `compact_source` (when it has one, e.g.
  MNIST-SVHN's, whose pairs repeat each item 30 times) replaces reading the
  whole split (`builders.compact_source`)."""
  name = dataset_name(data)
  manual_dir = data.manual_dir or None
  if data.in_memory:
    compact = builders.compact_source(name, split, manual_dir=manual_dir)
    if compact is not None:
      return compact
    return pipeline.ArraySource(builders.load_split(
        name, split, data.data_dir, manual_dir=manual_dir))
  builder = builders.prepare(name, data.data_dir, manual_dir=manual_dir)
  return pipeline.DataSource(builder.as_data_source(split=split))


def load_sources(data):
  """(train, eval) `pipeline.Source`s for `config.data`."""
  prepare_data(data)
  return split_source(data, data.train_split), split_source(
      data, data.eval_split)
