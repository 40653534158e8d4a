"""Coherence classifiers, the public face: storage, `classify`, the API.

One digit classifier per modality (architectures: `classifier_nets`;
training: `classifier_training`; the command line that trains and stores a
dataset's set: `tools/classifiers.py`):

  python -m mmvaeplus_jax.tools.classifiers --dataset rebuilt \\
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR [--seed S]

CUB Image-Captions (species classifiers, `species_nets`):

  python -m mmvaeplus_jax.tools.classifiers --dataset cub23 \\
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR

* `classify(clf_params, name, x)`: log-probs `[N, C]` of modality `name`'s
  classifier, the contract of `evaluation.coherence`; `clf_params` is
  `{modality name: params}` (`load_classifiers`).
* `save_classifiers` / `load_classifiers`: `CLF_DIR/<modality>/` (one orbax
  checkpoint each) and `CLF_DIR/classifiers.json` (modalities, image shapes,
  architectures, and the caller's metadata: test accuracies, training config
  and time). `classifiers.json` records each modality's image shape
  (`image_shapes`), architecture name (`archs`) and class count
  (`num_classes`; caption classifiers also `vocab_sizes`); files without
  `image_shapes` (written before) are PolyMNIST `ClfImg`s, files without
  `archs` hold the first architecture of their shape
  (`classifier_nets.ARCHITECTURES`: 'official' for PolyMNIST). An unknown
  name raises one ValueError that lists the names. Files without
  `num_classes` hold 10-class digit classifiers.
* Re-exported for callers: `init`, `log_probs`, `features`, `arch_of`,
  `image_shape_of`, `check_arch` (`classifier_nets`); `recipe`,
  `train_classifier`, `accuracy`, `train_and_evaluate`, `distinct_items`,
  `image_names` (`classifier_training`).

Coherence is capped by the classifiers' accuracy: always report it beside
it. Image inputs are `[N, *image_shape]`, uint8 (divided by 255) or
float (used as they are, e.g. unclamped decoder means); caption inputs are
int ids `[N, 32]` or float logits `[N, 32, V]` (argmax-decoded).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import orbax.checkpoint as ocp

from mmvaeplus_jax.evaluation import classifier_nets as nets
from mmvaeplus_jax.evaluation.classifier_nets import arch_of
from mmvaeplus_jax.evaluation.classifier_nets import check_arch
from mmvaeplus_jax.evaluation.classifier_nets import features
from mmvaeplus_jax.evaluation.classifier_nets import image_shape_of
from mmvaeplus_jax.evaluation.classifier_nets import init
from mmvaeplus_jax.evaluation.classifier_nets import log_probs
from mmvaeplus_jax.evaluation.classifier_nets import num_classes_of
from mmvaeplus_jax.evaluation.classifier_nets import vocab_size_of
from mmvaeplus_jax.evaluation.classifier_training import accuracy
from mmvaeplus_jax.evaluation.classifier_training import distinct_items
from mmvaeplus_jax.evaluation.classifier_training import image_names
from mmvaeplus_jax.evaluation.classifier_training import recipe
from mmvaeplus_jax.evaluation.classifier_training import train_and_evaluate
from mmvaeplus_jax.evaluation.classifier_training import train_classifier

__all__ = [
    'METADATA_FILE', 'TRAIN_COMMAND', 'classify', 'load_classifiers',
    'save_classifiers',
    # classifier_nets
    'arch_of', 'check_arch', 'features', 'image_shape_of', 'init',
    'log_probs', 'num_classes_of', 'vocab_size_of',
    # classifier_training
    'accuracy', 'distinct_items', 'image_names', 'recipe',
    'train_and_evaluate', 'train_classifier',
]

Array = jax.Array
Params = Any

METADATA_FILE = 'classifiers.json'
TRAIN_COMMAND = (
    'python -m mmvaeplus_jax.tools.classifiers --dataset rebuilt'
    ' --data_dir DATA_DIR --manual_dir ../shared/data --out {out}'
)


def classify(clf_params: Mapping[str, Params], name: str, images) -> Array:
  """Log-probs `[N, C]` of modality `name`'s classifier (C = 10 for the
  digit classifiers, the number of species for CUB's).

  The `classify(clf_params, name, x)` contract of `evaluation.coherence`:
  `clf_params` is `{modality name: params}` (see `load_classifiers`); the
  architecture follows from each modality's parameter shapes.
  """
  return log_probs(clf_params[name], images)


def save_classifiers(
    directory: os.PathLike | str,
    clf_params: Mapping[str, Params],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes one orbax checkpoint per modality and `classifiers.json`.

  Args:
    directory: output folder (created; existing checkpoints are replaced).
    clf_params: `{modality name: classifier params}`.
    metadata: JSON-serialisable extras (test accuracies, training config),
      stored beside the modality list and each modality's image shape and
      architecture name (`archs`).
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    for name, params in clf_params.items():
      ckptr.save(directory / name, params, force=True)
    ckptr.wait_until_finished()
  meta = {'modalities': list(clf_params),
          'image_shapes': {n: list(image_shape_of(p))
                           for n, p in clf_params.items()},
          'archs': {n: arch_of(p) for n, p in clf_params.items()},
          'num_classes': {n: num_classes_of(p) for n, p in clf_params.items()}}
  vocab = {n: vocab_size_of(p) for n, p in clf_params.items()
           if vocab_size_of(p) is not None}
  if vocab:
    meta['vocab_sizes'] = vocab
  meta.update(dict(metadata or {}))
  (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + '\n')


def load_classifiers(
    directory: os.PathLike | str,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Params], dict[str, Any]]:
  """Reads classifiers written by `save_classifiers` (`tools/classifiers.py`).

  Args:
    directory: the folder given as `--out` when training.
    names: modalities to load (default: all listed in `classifiers.json`).

  Returns:
    (`{name: params}`, metadata dict from `classifiers.json`).

  Raises:
    FileNotFoundError: the folder, its `classifiers.json` or a requested
      modality's checkpoint is missing; the message names the folder and the
      command that trains the classifiers.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  meta_path = directory / METADATA_FILE
  hint = ('Train them with:\n  ' + TRAIN_COMMAND.format(out=directory))
  if not meta_path.is_file():
    raise FileNotFoundError(
        f'No coherence classifiers in {directory} ({METADATA_FILE} not'
        f' found). {hint}')
  meta = json.loads(meta_path.read_text())
  names = list(meta['modalities'] if names is None else names)
  missing = [n for n in names if not (directory / n).is_dir()]
  if missing:
    raise FileNotFoundError(
        f'No coherence classifier checkpoint for modalities {missing} in'
        f' {directory} (it holds {meta["modalities"]}). {hint}')
  # Files without image_shapes predate them: PolyMNIST ClfImgs; files
  # without archs predate them: the first architecture of the shape.
  shapes = meta.get('image_shapes', {})
  archs = meta.get('archs', {})
  num_classes = meta.get('num_classes', {})
  vocab = meta.get('vocab_sizes', {})
  targets = {}
  for n in names:
    shape = tuple(shapes.get(n, nets.IMAGE_SHAPE))
    arch = archs.get(n)
    arch = check_arch(arch, shape) if arch is not None else None
    species = arch in nets.SPECIES_ARCHS
    targets[n] = nets._abstract_params(  # pylint: disable=protected-access
        shape, arch, num_classes.get(n) if species else None,
        vocab.get(n) if species else None)
  with ocp.StandardCheckpointer() as ckptr:
    params = {n: ckptr.restore(directory / n, targets[n]) for n in names}
  return params, meta
