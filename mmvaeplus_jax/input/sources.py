"""Data sources of a `config.data` section, for training and evaluation.

`load_sources(config.data)` prepares the dataset (process 0 builds, the
others wait) and returns the (train, eval) splits as `pipeline.Source`s.
The trainer (`training/loop.py`) and the evaluators (`evaluation/runner.py`)
both read their data through this module; evaluation never imports the
training shell.

`config.data.name` picks the TFDS dataset (`builders.BUILDER_FILES`);
`config.data.config` its builder config (e.g. PolyMNIST 'mini', 'rebuilt').

`check_model_data(config.data, config.model)` checks what the model takes
from the data: a config with `model.vocab_size` (CUB) must name the
prepared dataset's `vocabulary_size` (its metadata); the trainer and the
evaluators call it after preparing the data.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import captions
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


def check_model_data(data, model) -> None:
  """Raises ValueError when `model.vocab_size` is not the prepared dataset's
  vocabulary size (metadata `vocabulary_size`, e.g. CUB's 509 for cub23).

  A no-op for a model config without `vocab_size` (PolyMNIST, MNIST-SVHN)
  or a dataset without a vocabulary. The config must state the number (no
  filling from the data): the run's config.json then describes its model,
  and `load_run` rebuilds it without the data.
  """
  want = model.get('vocab_size')
  if want is None:
    return
  builder = builders.prepare(dataset_name(data), data.data_dir,
                             manual_dir=data.manual_dir or None)
  metadata = builder.info.metadata or {}
  have = metadata.get('vocabulary_size')
  if have is None:
    raise ValueError(
        f'model.vocab_size={want} but dataset {dataset_name(data)!r} has no'
        ' vocabulary (no `vocabulary_size` in its metadata)')
  if int(want) != int(have):
    raise ValueError(
        f'model.vocab_size={want} but the prepared dataset'
        f' {dataset_name(data)!r} has a vocabulary of {have} words: set'
        f' vocab_size={have} (e.g. --config=mmvaeplus_jax/configs/cub.py:'
        f'<variant>,vocab_size={have}, or --config.model.vocab_size={have})')


def vocabulary(data):
  """The prepared dataset's caption vocabulary (`captions.Vocabulary`).

  Raises:
    ValueError: the dataset has no vocabulary (not a captions dataset).
  """
  builder = builders.prepare(dataset_name(data), data.data_dir,
                             manual_dir=data.manual_dir or None)
  if captions.METADATA_KEY not in (builder.info.metadata or {}):
    raise ValueError(
        f'dataset {dataset_name(data)!r} has no caption vocabulary (no'
        f' {captions.METADATA_KEY!r} in its metadata): text evaluators need a'
        ' captions dataset such as cub_image_captions')
  return captions.vocabulary_from_info(builder.info)


def with_missing(data, source: pipeline.Source, names) -> pipeline.Source:
  """`source` with modalities missing at random when `data.missing_rate`
  > 0 (`pipeline.MissingSource`; mask `pipeline.missing_mask` from
  `data.missing_seed`), else `source` itself. The trainer applies it to the
  train split only: evaluation sees complete data."""
  rate = float(data.get('missing_rate', 0.0))
  if rate == 0.0:
    return source
  mask = pipeline.missing_mask(len(source), len(names), rate=rate,
                               seed=int(data.get('missing_seed', 0)))
  return pipeline.MissingSource(source, names, mask)


def load_sources(data):
  """(train, eval) `pipeline.Source`s for `config.data`."""
  prepare_data(data)
  return split_source(data, data.train_split), split_source(
      data, data.eval_split)
