"""Studies: a grid of training runs, each trained and evaluated, resumably.

A study is a list of cells (one config each: model, beta, ...) times a list
of seeds. `run_study(study, root)` visits the runs seed by seed (every
cell's first seed, then the second, ...); run (cell,
seed) lives in `root/<cell>/seed<seed>/`, a normal run directory
(`train.py`'s checkpoints and config.json, `eval.py`'s eval/<step>/):

* a run with `study_run.json` is finished: it is skipped, never retrained;
  with `records=DIR` (`--records`), each finished run's record is also
  copied to `DIR/<cell>/seed<seed>.json`, and a run whose record is there
  counts as finished too. Point it at a folder that outlives the machine
  (e.g. `studies/records/<study>/` in a checkout, committed run by run): a
  study then continues on a new machine where `root` is empty, and its
  table is rebuilt from the records (figures and re-scoring need the run
  directories themselves);
* otherwise it is trained (`training.loop.train_and_evaluate`, which
  resumes from the run's latest checkpoint: a study killed mid-run loses at
  most `checkpoint_every_steps` steps) and evaluated
  (`evaluation.runner.evaluate`), and `study_run.json` (its metrics, wall
  times, commit) is written last;
* the coherence classifiers are trained once per study, in
  `root/classifiers`, unless the cells' configs name a
  `evals.classifier_dir`;
* drivers may share a root (e.g. on two machines with a shared disk, or
  by mistake): a run is claimed with an `flock` on its
  `study_run.lock` while it trains and evaluates, another driver skips it,
  and the lock goes with the process that held it (killed or not).

One progress line per run, then the table: `root/results.json` (every
run's metrics) and `root/results.md` (mean +- std over seeds of the study's
metrics, per cell, with the number of seeds), rewritten after every run.

Command line (study definitions are Python files with `get_study(arg)`):

    python -m mmvaeplus_jax.study --study=studies/polymnist_cpu.py:fig1 \
        --root=runs/study_fig1 [--set data.manual_dir=../shared/data ...]

The same command with `--report OUT_DIR` writes the finished runs' figures
and tables (`tables.md`: per cell mean +- std, per run) and with
`--rescore CLASSIFIER_DIR --tag NAME` re-scores their coherence with
another classifier set (`study_report`); neither trains anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # not POSIX: no locks (one driver per root)
  fcntl = None

DONE_FILE = 'study_run.json'
LOCK_FILE = 'study_run.lock'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of a study (trained once per seed)."""

  name: str  # a directory name: letters, digits, '_', '-', '.'
  config: Any  # ml_collections.ConfigDict; its seed is set per run


@dataclasses.dataclass(frozen=True)
class Study:
  """Cells x seeds, and the metrics its table shows."""

  name: str
  cells: tuple[Cell, ...]
  seeds: tuple[int, ...]
  metrics: tuple[str, ...]  # metric keys of eval.py / train.py summaries
  # Epochs of the study's classifiers (None: their architecture's recipe,
  # `classifiers.RECIPES`: 14 for the default 'wide').
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
    unknown = sorted({n for n, _ in self.published} - set(names))
    if unknown:
      raise ValueError(f'published values for unknown cells {unknown}')

  def runs(self) -> list[tuple[Cell, int]]:
    """Seed-major: the first seed of every cell, then the next seed, so a
    study stopped part-way has a table with every cell."""
    return [(c, s) for s in self.seeds for c in self.cells]


def run_dir(root: str, cell: Cell, seed: int) -> str:
  return os.path.join(root, cell.name, f'seed{seed}')


@contextlib.contextmanager
def _claim(workdir: str):
  """Yields True when this process holds the run's lock (`flock` on
  `workdir/study_run.lock`, released when the process ends, killed or
  not), False when another driver holds it: drivers sharing a root train
  different runs."""
  os.makedirs(workdir, exist_ok=True)
  if fcntl is None:
    yield True
    return
  with open(os.path.join(workdir, LOCK_FILE), 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _commit() -> str:
  try:
    return subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
        text=True, check=True,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def run_config(cell: Cell, seed: int, classifier_dir: str):
  config = cell.config.copy_and_resolve_references()
  config.seed = int(seed)
  if classifier_dir and not config.evals.classifier_dir:
    config.evals.classifier_dir = classifier_dir
  return config


def check_classifier_dir(d: str) -> None:
  """Fails when folder `d` does not hold a whole classifier set (its
  `classifiers.json` and one checkpoint per modality), naming the command
  that builds it (from its classifiers.json, if that is there)."""
  from mmvaeplus_jax.evaluation import classifiers  # pylint: disable=g-import-not-at-top
  meta_path = os.path.join(d, classifiers.METADATA_FILE)
  meta = _read_json(meta_path) if os.path.isfile(meta_path) else {}
  missing = [m for m in meta.get('modalities', ())
             if not os.path.isdir(os.path.join(d, m))]
  if meta and not missing:
    return
  cfg = meta.get('config', {})
  build = ('python -m mmvaeplus_jax.evaluation.classifiers --dataset'
           f' {cfg.get("dataset", "DATASET")} --data_dir DIR --manual_dir'
           f' ../shared/data --out {d} --seed {cfg.get("seed", 0)}')
  what = (f'no checkpoints for {", ".join(missing)}' if meta
          else f'no {classifiers.METADATA_FILE}')
  raise FileNotFoundError(
      f'classifier folder {d}: {what}. Build it first ({build}; about 25'
      ' min on a 2-core CPU), or leave evals.classifier_dir empty to let'
      ' the study train its own')


def _check_classifiers(config, study: Study | None = None) -> None:
  """Fails before training when the run's classifiers (and the study's
  re-scoring sets) are missing: the run's evaluation would fail only
  after its training."""
  if config.evals.classifier_dir:
    check_classifier_dir(config.evals.classifier_dir)
  for _, d in (study.rescore if study else ()):
    check_classifier_dir(d)


def ensure_classifiers(study: Study, root: str, *, log=print) -> str:
  """The study's coherence classifiers (`root/classifiers`), trained once
  on the first cell's data unless every cell names its own."""
  if all(c.config.evals.classifier_dir for c in study.cells):
    return ''
  from mmvaeplus_jax.evaluation import classifiers  # pylint: disable=g-import-not-at-top
  out = os.path.join(root, 'classifiers')
  with open(os.path.join(root, 'classifiers.lock'), 'a') as lock:
    # Drivers sharing a root: the first trains, the others wait for it.
    if fcntl is not None:
      fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(out, classifiers.METADATA_FILE)):
      return out  # trained by an earlier start of this study
    return _train_classifiers(study, out, log)


def _train_classifiers(study: Study, out: str, log) -> str:
  from mmvaeplus_jax.evaluation import classifiers  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.input import sources  # pylint: disable=g-import-not-at-top
  config = study.cells[0].config
  names = models.get_model(config.model).names
  train_src, test_src = sources.load_sources(config.data)
  train = train_src.read(np.arange(len(train_src)))
  test = test_src.read(np.arange(len(test_src)))
  start = time.time()
  params, accs = classifiers.train_and_evaluate(
      train, test, names, seed=0, epochs=study.classifier_epochs,
      log=lambda m: None)
  classifiers.save_classifiers(out, params, metadata={
      'test_accuracy': accs, 'trained_by': f'study {study.name}',
      'epochs': classifiers.recipe(
          classifiers.check_arch(None, np.shape(train[names[0]])[1:]),
          epochs=study.classifier_epochs)['epochs'],
      'num_train': int(len(train['label'])),
      'num_test': int(len(test['label']))})
  log('classifiers: test accuracy '
      + ', '.join(f'{n} {a:.4f}' for n, a in accs.items())
      + f' ({time.time() - start:.0f} s) -> {out}')
  return out


def record_path(records: str, cell: Cell, seed: int) -> str:
  return os.path.join(records, cell.name, f'seed{seed}.json')


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


def _kept_record(records: str, cell: Cell, seed: int):
  """The record kept in `records` for this run, or None.

  Raises:
    ValueError: it was made with another recipe (a changed study file).
  """
  path = record_path(records, cell, seed)
  if not os.path.exists(path):
    return None
  record = _read_json(path)
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
  from mmvaeplus_jax.configs import common  # pylint: disable=g-import-not-at-top
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


def run_study(study: Study, root: str, *,
              train: Callable | None = None,
              evaluate: Callable | None = None,
              log: Callable[[str], None] = print,
              records: str | None = None,
              cells: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> dict:
  """Trains and evaluates every unfinished run; returns the table dict.

  Args:
    study: the grid.
    root: the study's directory.
    train: `(config, workdir) -> summary` (default
      `training.loop.train_and_evaluate`).
    evaluate: `(config, workdir) -> metrics` (default
      `evaluation.runner.evaluate`).
    log: progress lines.
    records: a folder that keeps a copy of every finished run's record
      (module doc); None: only `root`.
    cells: train only these cells' runs (None: all); the table still
      shows every finished run of the study.
    seeds: train only these seeds' runs (None: all), e.g. to reproduce one
      recorded run in a fresh root.
  """
  names = [c.name for c in study.cells]
  unknown = sorted(set(cells or ()) - set(names))
  if unknown:
    raise ValueError(f'unknown cell(s) {", ".join(unknown)}: the study'
                     f' {study.name} has {", ".join(names)}')
  unknown = sorted(set(seeds or ()) - set(study.seeds))
  if unknown:
    raise ValueError(f'unknown seed(s) {", ".join(map(str, unknown))}: the'
                     f' study {study.name} has seeds'
                     f' {", ".join(map(str, study.seeds))}')
  if train is None:
    from mmvaeplus_jax.training import loop  # pylint: disable=g-import-not-at-top
    train = loop.train_and_evaluate
  check = evaluate is None  # the real evaluation reads the classifiers
  if evaluate is None:
    from mmvaeplus_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
    evaluate = runner.evaluate
  root = os.path.abspath(os.path.expanduser(root))
  os.makedirs(root, exist_ok=True)
  if records:
    records = os.path.abspath(os.path.expanduser(records))
  runs = study.runs()
  if cells:
    runs = [(c, s) for c, s in runs if c.name in cells]
  if seeds:
    runs = [(c, s) for c, s in runs if s in seeds]
  if records and all(_kept_record(records, c, s) for c, s in runs):
    log(f'every run has a record in {records}: nothing to train')
    return write_table(study, root, records)
  clf_dir = ensure_classifiers(study, root, log=log)
  for i, (cell, seed) in enumerate(runs):
    workdir = run_dir(root, cell, seed)
    head = f'[{i + 1}/{len(runs)}] {cell.name} seed {seed}'
    done = os.path.join(workdir, DONE_FILE)
    if os.path.exists(done):
      log(f'{head}: finished earlier, skipped')
      if records:
        _write_json(record_path(records, cell, seed), _read_json(done))
      continue
    if records and _kept_record(records, cell, seed):
      log(f'{head}: finished earlier (record in {records}), skipped')
      continue
    with _claim(workdir) as mine:
      if not mine:
        log(f'{head}: being trained by another driver, skipped')
        continue
      if os.path.exists(done):  # finished by another driver meanwhile
        log(f'{head}: finished earlier, skipped')
        continue
      if not _train_one(study, root, records, cell, seed, workdir, clf_dir,
                        head, train=train, evaluate=evaluate, check=check,
                        log=log):
        return write_table(study, root, records)
  return write_table(study, root, records)


def _train_one(study, root, records, cell, seed, workdir, clf_dir, head, *,
               train, evaluate, check, log) -> bool:
  """Trains and evaluates one run; False when it was interrupted."""
  config = run_config(cell, seed, clf_dir)
  if check:
    _check_classifiers(config, study)
  start = time.time()
  summary = train(config, workdir)
  trained = time.time() - start
  if summary.get('interrupted'):
    # SIGTERM: the checkpoint is saved; the run is not finished, so it is
    # neither evaluated nor marked done, and the study stops here.
    log(f'{head}: stopped at step {summary.get("step")} (SIGTERM); not'
        ' evaluated. Run the same command to continue.')
    return False
  start = time.time()
  metrics = evaluate(config, workdir)
  evaluated = time.time() - start
  rescored = {}
  for tag, other in study.rescore:
    rescored[tag] = rescore_run(config, workdir, metrics.get('step'), other,
                                tag, evaluate=evaluate)
  record = {
      'cell': cell.name, 'seed': seed, 'train_seconds': trained,
      'eval_seconds': evaluated, 'commit': _commit(),
      'evaluator_seconds': _evaluator_seconds(workdir, metrics),
      'train': {k: v for k, v in summary.items() if is_number(v)},
      'eval': {k: v for k, v in metrics.items() if is_number(v)},
      'recipe': recipe(cell, seed),
  }
  if rescored:
    record['rescored'] = rescored
  # Written last: the run counts as finished.
  _write_json(os.path.join(workdir, DONE_FILE), record)
  if records:
    _write_json(record_path(records, cell, seed), record)
  shown = ', '.join(f'{k} {record["eval"][k]:.4g}' for k in study.metrics
                    if k in record['eval'])
  log(f'{head}: trained {trained:.0f} s, evaluated {evaluated:.0f} s'
      + (f'; {shown}' if shown else ''))
  write_table(study, root, records)
  return True


RESCORE_EVALUATORS = 'coherence'


def rescore_run(config, workdir: str, step, classifier_dir: str, tag: str, *,
                evaluate: Callable, evaluators: str = RESCORE_EVALUATORS
                ) -> dict:
  """The run's classifier-based metrics with another classifier set, into
  `eval/<step>-<tag>/` (the main evaluation untouched); numbers only."""
  config = config.copy_and_resolve_references()
  config.evals.classifier_dir = classifier_dir
  config.evals.evaluators = evaluators
  other = evaluate(config, workdir, step, tag=tag)
  return {k: v for k, v in other.items() if is_number(v)}


def _evaluator_seconds(workdir: str, metrics: dict) -> dict:
  """Wall time per evaluator (`eval.py`'s seconds.json), {} if none."""
  path = os.path.join(workdir, 'eval', str(metrics.get('step')),
                      'seconds.json')
  return _read_json(path) if os.path.exists(path) else {}


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj) -> None:
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
    _write_json(done, record)
  if records:
    _write_json(record_path(records, cell, record['seed']), record)


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
        out.append(_read_json(path))
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


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--study', required=True,
                      help='study file and argument, e.g. '
                      'studies/polymnist_cpu.py:fig1')
  parser.add_argument('--root', required=True, help='the study directory')
  parser.add_argument('--set', action='append', default=[],
                      help='key=value applied to every cell config')
  parser.add_argument('--report', default='',
                      help='write the figures and tables.md of the finished'
                      ' runs into this folder (study_report.write_figures,'
                      ' write_tables); trains nothing')
  parser.add_argument('--grid_file', default='',
                      help='with --report: the conditional grid copied per'
                      ' cell (default: cross_modal_<first modality>.png;'
                      ' e.g. cross_modal_m3.png)')
  parser.add_argument('--rescore', default='',
                      help='re-score the finished runs with this classifier'
                      ' folder (study_report.rescore, needs --tag); trains'
                      ' nothing')
  parser.add_argument('--cells', default='',
                      help='comma-separated cell names: train only their'
                      ' runs (default: every cell); the table still shows'
                      ' every finished run')
  parser.add_argument('--seeds', default='',
                      help='comma-separated seeds: train only their runs'
                      ' (default: every seed), e.g. --cells=A --seeds=2'
                      ' reproduces one run')
  parser.add_argument('--tag', default='',
                      help='name of the --rescore evaluation')
  parser.add_argument('--records', default='',
                      help='also keep every finished run\'s record in this'
                      ' folder (e.g. studies/records/<study> in a checkout,'
                      ' committed): runs recorded there are not retrained'
                      ' and count in the table on any machine')
  args = parser.parse_args(argv)
  if args.rescore and not args.tag:
    parser.error('--rescore needs --tag NAME')
  try:
    seeds = [int(s) for s in args.seeds.split(',') if s] or None
  except ValueError:
    parser.error(f'--seeds takes comma-separated integers, got {args.seeds!r}')
  from mmvaeplus_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.configure_jax()
  study = load_study(args.study, args.set)
  print(f'study {study.name}: {len(study.cells)} cells x {len(study.seeds)}'
        f' seeds -> {os.path.abspath(args.root)}', flush=True)
  if args.report or args.rescore:
    from mmvaeplus_jax import study_report  # pylint: disable=g-import-not-at-top
    if args.rescore:
      print(study_report.rescore(study, args.root, args.rescore, args.tag,
                                 log=lambda m: print(m, flush=True),
                                 records=args.records or None))
    if args.report:
      files = study_report.write_figures(study, args.root, args.report,
                                         grid_file=args.grid_file or None,
                                         records=args.records or None)
      files.append(study_report.write_tables(
          study, args.root, args.report, records=args.records or None))
      print(f'wrote {", ".join(files)} to {args.report}')
    return
  run_study(study, args.root, log=lambda m: print(m, flush=True),
            records=args.records or None,
            cells=[c for c in args.cells.split(',') if c] or None,
            seeds=seeds)
  print(open(os.path.join(args.root, 'results.md')).read())


if __name__ == '__main__':
  main(sys.argv[1:])
