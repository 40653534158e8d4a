"""Studies: a grid of training runs, each trained and evaluated, resumably.

A study (`records.Study`) is a list of cells (one config each: model,
beta, ...) times a list of seeds. `run_study(study, root)` visits the runs
seed by seed (every cell's first seed, then the second, ...); run (cell,
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
* otherwise it is trained (`experiments.train.train`, which
  resumes from the run's latest checkpoint: a study killed mid-run loses at
  most `checkpoint_every_steps` steps) and evaluated
  (`evaluation.runner.evaluate`), and `study_run.json` (its metrics, wall
  times, commit, and its learning curve, the rows of `curve.jsonl`, when
  the cell asks for one: `train.curve_start_examples`) is written last;
* the coherence classifiers are trained once per study, in
  `root/classifiers`, unless the cells' configs name a
  `evals.classifier_dir`;
* drivers may share a root (e.g. on two machines with a shared disk, or
  by mistake): a run is claimed with an `flock` on its
  `study_run.lock` while it trains and evaluates, another driver skips it,
  and the lock goes with the process that held it (killed or not).

One progress line per run, then the table: `root/results.json` (every
run's metrics) and `root/results.md` (mean +- std over seeds of the study's
metrics, per cell, with the number of seeds), rewritten after every run
(`records.write_table`).

Command line: `python -m mmvaeplus_jax.tools.study` (tools/study.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from typing import Callable, Sequence

import numpy as np

from mmvaeplus_jax import models
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.experiments import records as records_lib
from mmvaeplus_jax.experiments import train as train_lib
from mmvaeplus_jax.input import sources
from mmvaeplus_jax.training import loop

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # not POSIX: no locks (one driver per root)
  fcntl = None


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
  with open(os.path.join(workdir, records_lib.LOCK_FILE), 'a') as f:
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


def check_classifier_dir(d: str) -> None:
  """Fails when folder `d` does not hold a whole classifier set (its
  `classifiers.json` and one checkpoint per modality), naming the command
  that builds it (from its classifiers.json, if that is there)."""
  meta_path = os.path.join(d, classifiers.METADATA_FILE)
  meta = records_lib.read_json(meta_path) if os.path.isfile(meta_path) else {}
  missing = [m for m in meta.get('modalities', ())
             if not os.path.isdir(os.path.join(d, m))]
  if meta and not missing:
    return
  cfg = meta.get('config', {})
  build = ('python -m mmvaeplus_jax.tools.classifiers --dataset'
           f' {cfg.get("dataset", "DATASET")} --data_dir DIR --manual_dir'
           f' ../shared/data --out {d} --seed {cfg.get("seed", 0)}')
  what = (f'no checkpoints for {", ".join(missing)}' if meta
          else f'no {classifiers.METADATA_FILE}')
  raise FileNotFoundError(
      f'classifier folder {d}: {what}. Build it first ({build}; about 25'
      ' min on a 2-core CPU), or leave evals.classifier_dir empty to let'
      ' the study train its own')


def _check_classifiers(config,
                       study: records_lib.Study | None = None) -> None:
  """Fails before training when the run's classifiers (and the study's
  re-scoring sets) are missing: the run's evaluation would fail only
  after its training."""
  if config.evals.classifier_dir:
    check_classifier_dir(config.evals.classifier_dir)
  for _, d in (study.rescore if study else ()):
    check_classifier_dir(d)


def ensure_classifiers(study: records_lib.Study, root: str, *,
                       log=print) -> str:
  """The study's coherence classifiers (`root/classifiers`), trained once
  on the first cell's data unless every cell names its own."""
  if all(c.config.evals.classifier_dir for c in study.cells):
    return ''
  out = os.path.join(root, 'classifiers')
  with open(os.path.join(root, 'classifiers.lock'), 'a') as lock:
    # Drivers sharing a root: the first trains, the others wait for it.
    if fcntl is not None:
      fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(out, classifiers.METADATA_FILE)):
      return out  # trained by an earlier start of this study
    return _train_classifiers(study, out, log)


def _train_classifiers(study: records_lib.Study, out: str, log) -> str:
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


def run_study(study: records_lib.Study, root: str, *,
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
      `experiments.train.train`).
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
    train = train_lib.train
  check = evaluate is None  # the real evaluation reads the classifiers
  if evaluate is None:
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
  if records and all(records_lib.kept_record(records, c, s) for c, s in runs):
    log(f'every run has a record in {records}: nothing to train')
    return records_lib.write_table(study, root, records)
  clf_dir = ensure_classifiers(study, root, log=log)
  for i, (cell, seed) in enumerate(runs):
    workdir = records_lib.run_dir(root, cell, seed)
    head = f'[{i + 1}/{len(runs)}] {cell.name} seed {seed}'
    done = os.path.join(workdir, records_lib.DONE_FILE)
    if os.path.exists(done):
      log(f'{head}: finished earlier, skipped')
      if records:
        records_lib.write_json(records_lib.record_path(records, cell, seed),
                               records_lib.read_json(done))
      continue
    if records and records_lib.kept_record(records, cell, seed):
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
        return records_lib.write_table(study, root, records)
  return records_lib.write_table(study, root, records)


def _train_one(study, root, records, cell, seed, workdir, clf_dir, head, *,
               train, evaluate, check, log) -> bool:
  """Trains and evaluates one run; False when it was interrupted."""
  config = records_lib.run_config(cell, seed, clf_dir)
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
  is_number = records_lib.is_number
  record = {
      'cell': cell.name, 'seed': seed, 'train_seconds': trained,
      'eval_seconds': evaluated, 'commit': _commit(),
      'evaluator_seconds': _evaluator_seconds(workdir, metrics),
      'train': {k: v for k, v in summary.items() if is_number(v)},
      'eval': {k: v for k, v in metrics.items() if is_number(v)},
      'recipe': records_lib.recipe(cell, seed),
  }
  if rescored:
    record['rescored'] = rescored
  curve_path = os.path.join(workdir, loop.CURVE_FILE)
  if os.path.exists(curve_path):  # train.curve_start_examples > 0
    with open(curve_path) as f:
      record['curve'] = [json.loads(line) for line in f if line.strip()]
  # Written last: the run counts as finished.
  records_lib.write_json(os.path.join(workdir, records_lib.DONE_FILE), record)
  if records:
    records_lib.write_json(records_lib.record_path(records, cell, seed),
                           record)
  shown = ', '.join(f'{k} {record["eval"][k]:.4g}' for k in study.metrics
                    if k in record['eval'])
  log(f'{head}: trained {trained:.0f} s, evaluated {evaluated:.0f} s'
      + (f'; {shown}' if shown else ''))
  records_lib.write_table(study, root, records)
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
  return {k: v for k, v in other.items() if records_lib.is_number(v)}


def _evaluator_seconds(workdir: str, metrics: dict) -> dict:
  """Wall time per evaluator (`eval.py`'s seconds.json), {} if none."""
  path = os.path.join(workdir, 'eval', str(metrics.get('step')),
                      'seconds.json')
  return records_lib.read_json(path) if os.path.exists(path) else {}
