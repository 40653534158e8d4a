"""A study's definition, its run directories and its records.

* `Study` / `Cell`: a grid of configs (cells) times seeds; a study file
  (Python, `get_study(arg)`) builds one, `load_study('file.py:arg',
  overrides)` loads it with `key=value` overrides on every cell.
* Layout: run (cell, seed) lives in `root/<cell>/seed<seed>/`
  (`run_dir`); its record `study_run.json` (`DONE_FILE`: metrics, wall
  times, commit, `recipe`) is written last and marks it finished. A copy
  may be kept in a records folder, `records/<cell>/seed<seed>.json`
  (`record_path`), checked against the run's `recipe` (its config without
  machine paths) by `kept_record`.
* `collect` reads the finished runs' records (run directory, else the
  records folder); `write_table` writes `root/results.json` and
  `root/results.md` (`summarise`: mean +- std over seeds per cell).

Reading and writing only: training and evaluating the runs is
`experiments/study.py`, the report `experiments/study_report.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from mmvaeplus_jax.configs import common

DONE_FILE = 'study_run.json'
LOCK_FILE = 'study_run.lock'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of a study (trained once per seed)."""

  name: str  # a directory name: letters, digits, '_', '-', '.'
  config: Any  # ml_collections.ConfigDict; its seed is set per run
  # The study's seeds this cell is trained with (None: all of them), e.g.
  # 3 seeds for a comparison's main cells and 1 for its side cells.
  seeds: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Study:
  """Cells x seeds, and the metrics its table shows."""

  name: str
  cells: tuple[Cell, ...]
  seeds: tuple[int, ...]
  metrics: tuple[str, ...]  # metric keys of eval.py / train.py summaries
  # Epochs of the study's classifiers (None: their architecture's recipe,
  # `classifier_training.RECIPES`: 14 for the default 'wide').
  classifier_epochs: int | None = None
  # (tag, classifier_dir) pairs: every run is also scored with these other
  # classifier sets (its coherence; `eval/<step>-<tag>/`), kept in its
  # record under `rescored/<tag>`: how much the study's coherence moves
  # with the classifiers.
  rescore: tuple[tuple[str, str], ...] = ()
  # (cell name, text) pairs: the published values of the paper's matching
  # setting, under the same protocol, shown beside the cell's measured
  # values in the report's table (`study_report.write_tables`).
  published: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    names = [c.name for c in self.cells]
    if len(set(names)) != len(names):
      raise ValueError(f'cell names must be unique, got {names}')
    for n in names:
      if not n or not all(ch.isalnum() or ch in '_-.' for ch in n):
        raise ValueError(f'cell name {n!r}: use letters, digits, _ - .')
    if not self.seeds:
      raise ValueError('a study needs at least one seed')
    for c in self.cells:
      if c.seeds is not None and (not c.seeds
                                  or not set(c.seeds) <= set(self.seeds)):
        raise ValueError(
            f'cell {c.name}: seeds {c.seeds} must be a non-empty subset of'
            f' the study\'s seeds {self.seeds}')
    unknown = sorted({n for n, _ in self.published} - set(names))
    if unknown:
      raise ValueError(f'published values for unknown cells {unknown}')

  def runs(self) -> list[tuple[Cell, int]]:
    """Seed-major: the first seed of every cell, then the next seed, so a
    study stopped part-way has a table with every cell. A cell with its
    own `seeds` runs only those."""
    return [(c, s) for s in self.seeds for c in self.cells
            if c.seeds is None or s in c.seeds]

  def num_runs(self) -> int:
    return len(self.runs())


def load_study(spec: str, overrides: Sequence[str] = ()) -> Study:
  """`path/to/file.py[:arg]` -> its `get_study(arg)`, with `key=value`
  overrides applied to every cell's config (e.g. data.manual_dir=...)."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'study file {path} not found')
  mod_spec = importlib.util.spec_from_file_location('_study_def', path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  study = module.get_study(arg or None)
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--set expects key=value, got {item!r}')
    for cell in study.cells:
      section, _, name = key.rpartition('.')
      node = cell.config
      for part in filter(None, section.split('.')):
        node = node[part]
      if name not in node:
        raise ValueError(f'unknown config key {key!r} in --set {item!r}')
      old = node[name]
      node[name] = (value.lower() in ('1', 'true', 'yes')
                    if isinstance(old, bool) else type(old)(value))
  return study


def run_dir(root: str, cell: Cell, seed: int) -> str:
  return os.path.join(root, cell.name, f'seed{seed}')


def record_path(records: str, cell: Cell, seed: int) -> str:
  return os.path.join(records, cell.name, f'seed{seed}.json')


def run_config(cell: Cell, seed: int, classifier_dir: str):
  """The cell's config for one seed (and the study's classifiers, unless
  the cell names its own)."""
  config = cell.config.copy_and_resolve_references()
  config.seed = int(seed)
  if classifier_dir and not config.evals.classifier_dir:
    config.evals.classifier_dir = classifier_dir
  return config


def recipe(cell: Cell, seed: int) -> dict:
  """The run's config without machine-specific paths (keys ending in
  `_dir` or `_path`, and `workdir`): what a kept record must match."""
  def strip(node):
    if isinstance(node, dict):
      return {k: strip(v) for k, v in sorted(node.items())
              if not (k.endswith(('_dir', '_path')) or k == 'workdir')}
    if isinstance(node, (list, tuple)):
      return [strip(v) for v in node]
    return node
  return strip(json.loads(run_config(cell, seed, '').to_json()))


def kept_record(records: str, cell: Cell, seed: int):
  """The record kept in `records` for this run, or None.

  Raises:
    ValueError: it was made with another recipe (a changed study file).
  """
  path = record_path(records, cell, seed)
  if not os.path.exists(path):
    return None
  record = read_json(path)
  kept, now = record.get('recipe') or {}, recipe(cell, seed)
  kept = _with_new_defaults(kept, now)
  if kept != now:
    diff = sorted(f'{section}.{k}' for section in set(kept) | set(now)
                  for k in set(_as_dict(kept.get(section)))
                  | set(_as_dict(now.get(section)))
                  if _as_dict(kept.get(section)).get(k)
                  != _as_dict(now.get(section)).get(k))
    raise ValueError(
        f'{path} was made with another config than this study\'s'
        f' {cell.name} seed {seed} ({", ".join(diff) or "no recipe"}'
        ' differ; the study definition or --set changed): delete it to'
        ' retrain the run, or pass another --records folder')
  return record


def _with_new_defaults(kept: dict, now: dict) -> dict:
  """`kept` with the config keys added to the code after it was recorded
  (absent from it, present in `now`) set to their defaults
  (`configs.common.base_config()`): a new option left at its default
  changes no recipe, another value of it does."""
  base = json.loads(common.base_config().to_json())
  out = dict(kept)
  for section, node in now.items():
    if section not in kept:
      if section in base:
        out[section] = base[section]
      continue
    if isinstance(node, dict) and isinstance(kept[section], dict):
      merged = dict(kept[section])
      for k in node:
        if k not in merged and k in _as_dict(base.get(section)):
          merged[k] = base[section][k]
      out[section] = merged
  return out


def _as_dict(node) -> dict:
  return node if isinstance(node, dict) else {'': node}


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  """Atomically (a killed writer leaves the old file or none)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def update_record(root: str, records: str | None, cell: Cell,
                  record: dict) -> None:
  """Rewrites a finished run's record where it is kept: its run
  directory (if there) and the `records` folder (if given)."""
  done = os.path.join(run_dir(root, cell, record['seed']), DONE_FILE)
  if os.path.exists(done):
    write_json(done, record)
  if records:
    write_json(record_path(records, cell, record['seed']), record)


def is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not (
      isinstance(v, bool))


def collect(study: Study, root: str,
            records: str | None = None) -> list[dict]:
  """The finished runs' records, in study order: `root`'s run directory,
  else the copy in `records`."""
  out = []
  for cell, seed in study.runs():
    for path in (os.path.join(run_dir(root, cell, seed), DONE_FILE),
                 record_path(records, cell, seed) if records else None):
      if path and os.path.exists(path):
        out.append(read_json(path))
        break
  return out


def summarise(study: Study, records: Sequence[dict]) -> dict:
  """`{cell: {metric: (mean, std, n)}}` over the finished seeds (std with
  ddof = 1; NaN for one seed)."""
  table = {}
  for cell in study.cells:
    rows = [r for r in records if r['cell'] == cell.name]
    table[cell.name] = {}
    for k in study.metrics:
      vals = [float(r['eval'].get(k, r['train'].get(k, math.nan)))
              for r in rows]
      vals = [v for v in vals if math.isfinite(v)]
      if vals:
        table[cell.name][k] = (
            float(np.mean(vals)),
            float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
            len(vals))
  return table


def markdown(study: Study, table: dict) -> str:
  head = '| cell | ' + ' | '.join(study.metrics) + ' |'
  lines = [head, '|' + '---|' * (len(study.metrics) + 1)]
  for cell in study.cells:
    cells = []
    for k in study.metrics:
      if k not in table[cell.name]:
        cells.append('–')
        continue
      mean, std, n = table[cell.name][k]
      cells.append(f'{mean:.3f} ± {std:.3f} (n={n})' if n > 1 else
                   f'{mean:.3f} (n=1)')
    lines.append(f'| {cell.name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_table(study: Study, root: str, records: str | None = None) -> dict:
  """Writes `root/results.json` and `root/results.md` (from `root`'s runs
  and the copies in `records`); returns the table."""
  records = collect(study, root, records)
  table = summarise(study, records)
  with open(os.path.join(root, 'results.json'), 'w') as f:
    json.dump({'study': study.name, 'runs': records, 'table': table}, f,
              indent=2, sort_keys=True)
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write(f'# Study {study.name}\n\n{len(records)} of {len(study.runs())}'
            ' runs finished; mean ± std over seeds.\n\n')
    f.write(markdown(study, table))
  return table
