"""The study driver: resumable run by run, finished runs never retrained."""

import json
import math
import os

import numpy as np
import pytest

from mmvaeplus_jax.experiments import records as records_lib
from mmvaeplus_jax.experiments import study as study_lib
from mmvaeplus_jax.experiments import study_report
from mmvaeplus_jax.tools import study as study_tool
from mmvaeplus_jax.configs import polymnist as polymnist_configs


class Killed(Exception):
  pass


def _study(classifier_dir='x'):
  cells = []
  for name, beta in (('a', 1.0), ('b', 2.0)):
    c = polymnist_configs.get_config('smoke')
    c.objective.beta = beta
    c.evals.classifier_dir = classifier_dir  # no classifier training here
    cells.append(records_lib.Cell(name, c))
  return records_lib.Study('tiny', tuple(cells), seeds=(0, 1),
                         metrics=('m', 'train_only'))


def _fakes(calls, kill_at=None):
  def train(config, workdir):
    calls.append(('train', os.path.basename(os.path.dirname(workdir)),
                  config.seed))
    if kill_at is not None and len(
        [c for c in calls if c[0] == 'train']) == kill_at:
      raise Killed()
    os.makedirs(workdir, exist_ok=True)
    return {'train_only': 10.0 * config.seed, 'not_a_number': 'x'}

  def evaluate(config, workdir):
    calls.append(('eval', os.path.basename(os.path.dirname(workdir)),
                  config.seed))
    return {'m': config.objective.beta + config.seed, 'skipped': {}}

  return train, evaluate


def test_resumes_after_a_kill_and_skips_finished_runs(tmp_path):
  study = _study()
  calls = []
  train, evaluate = _fakes(calls, kill_at=3)
  with pytest.raises(Killed):  # killed while training the third run
    study_lib.run_study(study, str(tmp_path), train=train, evaluate=evaluate,
                        log=lambda m: None)
  # Seed-major: every cell's seed 0 first.
  assert [c for c in calls if c[0] == 'eval'] == [
      ('eval', 'a', 0), ('eval', 'b', 0)]
  partial = json.loads((tmp_path / 'results.json').read_text())
  assert len(partial['runs']) == 2  # the table is written after every run

  calls.clear()
  lines = []
  train, evaluate = _fakes(calls)
  table = study_lib.run_study(study, str(tmp_path), train=train,
                              evaluate=evaluate, log=lines.append)
  # Only the unfinished runs were trained (the killed one again).
  assert [c for c in calls if c[0] == 'train'] == [
      ('train', 'a', 1), ('train', 'b', 1)]
  assert lines[0].startswith('[1/4] a seed 0: finished earlier, skipped')
  assert lines[2].startswith('[3/4] a seed 1: trained')
  # mean +- std (ddof 1) over seeds, per cell; train metrics too.
  assert table['a']['m'] == (1.5, pytest.approx(math.sqrt(0.5)), 2)
  assert table['b']['m'][:1] == (2.5,)
  assert table['b']['train_only'] == (5.0, pytest.approx(math.sqrt(50)), 2)
  md = (tmp_path / 'results.md').read_text()
  assert '4 of 4 runs finished' in md
  assert '| a | 1.500 ± 0.707 (n=2) | 5.000 ± 7.071 (n=2) |' in md
  record = json.loads((tmp_path / 'a' / 'seed1' / 'study_run.json')
                      .read_text())
  assert record['seed'] == 1 and record['eval'] == {'m': 2.0}
  assert 'not_a_number' not in record['train']

  # A third call trains nothing.
  calls.clear()
  study_lib.run_study(study, str(tmp_path), train=train, evaluate=evaluate,
                      log=lambda m: None)
  assert calls == []


def test_a_cell_with_its_own_seeds_trains_only_those(tmp_path):
  """`Cell.seeds`: a side cell with one seed beside main cells with all of
  them; the driver trains, counts and tables only the cell's own seeds."""
  a, b = _study().cells
  study = records_lib.Study(
      'side', (a, records_lib.Cell('b', b.config, seeds=(0,))), seeds=(0, 1),
      metrics=('m',))
  assert [(c.name, s) for c, s in study.runs()] == [
      ('a', 0), ('b', 0), ('a', 1)]
  assert study.num_runs() == 3
  calls = []
  train, evaluate = _fakes(calls)
  table = study_lib.run_study(study, str(tmp_path), train=train,
                              evaluate=evaluate, log=lambda m: None)
  assert [c for c in calls if c[0] == 'train'] == [
      ('train', 'a', 0), ('train', 'b', 0), ('train', 'a', 1)]
  assert table['a']['m'][2] == 2 and table['b']['m'][2] == 1
  assert '3 of 3 runs finished' in (tmp_path / 'results.md').read_text()
  for bad in ((), (2,)):
    with pytest.raises(ValueError, match='non-empty subset'):
      records_lib.Study('s', (records_lib.Cell('c', a.config, seeds=bad),),
                        (0, 1), ())


def test_load_study_and_overrides(tmp_path):
  path = tmp_path / 'my_study.py'
  path.write_text(
      'from mmvaeplus_jax.experiments import records\n'
      'from mmvaeplus_jax.configs import polymnist\n'
      'def get_study(arg):\n'
      '  c = polymnist.get_config("smoke")\n'
      '  return records.Study(arg or "s", (records.Cell("c", c),), (0,),\n'
      '                       ("m",))\n')
  s = records_lib.load_study(f'{path}:named', ['data.manual_dir=/d',
                                            'train.num_steps=3'])
  assert s.name == 'named'
  assert s.cells[0].config.data.manual_dir == '/d'
  assert s.cells[0].config.train.num_steps == 3
  with pytest.raises(ValueError, match='unknown config key'):
    records_lib.load_study(str(path), ['data.nope=1'])
  with pytest.raises(ValueError, match='unique'):
    records_lib.Study('s', (_study().cells[0],) * 2, (0,), ())
  with pytest.raises(FileNotFoundError):
    records_lib.load_study(str(tmp_path / 'absent.py'))
  assert np.isnan(records_lib.summarise(
      _study(), [{'cell': 'a', 'eval': {'m': 1.0}, 'train': {}}])['a']['m'][1])


@pytest.mark.slow
def test_tiny_study_end_to_end_resumes(data_dir, tmp_path):
  """studies/polymnist_cpu.py:tiny (MMVAE+ and MMVAE, 2 seeds, 4 steps on
  `mini`) with real training and evaluation, killed after its second run
  and resumed: finished runs are not retrained, the table has every cell."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import loop  # pylint: disable=g-import-not-at-top
  spec = str(pathlib.Path(__file__).resolve().parents[1]
             / 'studies' / 'polymnist_cpu.py') + ':tiny'
  study = records_lib.load_study(spec, [f'data.data_dir={data_dir}'])
  assert [c.name for c in study.cells] == ['mmvaeplus', 'mmvae']
  trained = []

  def train(config, workdir):
    trained.append(workdir)
    if len(trained) == 3:
      raise Killed()
    return loop.train_and_evaluate(config, workdir)

  with pytest.raises(Killed):
    study_lib.run_study(study, str(tmp_path), train=train,
                        evaluate=runner.evaluate, log=lambda m: None)
  trained.clear()
  table = study_lib.run_study(study, str(tmp_path), train=train,
                              evaluate=runner.evaluate, log=lambda m: None)
  assert [os.path.relpath(w, tmp_path) for w in trained] == [
      os.path.join('mmvaeplus', 'seed1'), os.path.join('mmvae', 'seed1')]
  for cell in ('mmvaeplus', 'mmvae'):
    mean, _, n = table[cell]['coherence/cond/mean']
    assert n == 2 and 0.0 <= mean <= 1.0
    assert math.isfinite(table[cell]['eval/bound'][0])
  assert (tmp_path / 'classifiers').is_dir()  # trained once for the study
  record = json.loads((tmp_path / 'mmvae' / 'seed1' / records_lib.DONE_FILE)
                      .read_text())
  assert set(record['evaluator_seconds']) == {'bound', 'coherence', 'grids'}
  assert all(s >= 0 for s in record['evaluator_seconds'].values())
  assert 'mmvaeplus' in (tmp_path / 'results.md').read_text()

  # The report's figures (real grids copied) and a re-score with the same
  # classifiers: the same coherence, in eval/<step>-<tag>/, the main
  # evaluation untouched.
  files = study_report.write_figures(study, str(tmp_path),
                                     str(tmp_path / 'figs'))
  assert {'grid_mmvaeplus.png', 'grid_mmvae.png', 'scatter.png'} <= set(files)
  main_metrics = tmp_path / 'mmvae' / 'seed0' / 'eval' / '4' / 'metrics.json'
  before = main_metrics.read_bytes()
  text = study_report.rescore(study, str(tmp_path),
                              str(tmp_path / 'classifiers'), 'same',
                              log=lambda m: None)
  assert main_metrics.read_bytes() == before
  assert (main_metrics.parent.parent / '4-same' / 'metrics.json').is_file()
  assert '| mmvae | coherence/cond/mean |' in text and '+0.000 ± 0.000' in text

  # Reproduction (docs/results.md): one run retrained from scratch in a
  # fresh root with --cells/--seeds gives its record's numbers bit for bit.
  again = records_lib.load_study(spec, [
      f'data.data_dir={data_dir}',
      f'evals.classifier_dir={tmp_path / "classifiers"}'])
  trained.clear()
  study_lib.run_study(again, str(tmp_path / 'again'), train=train,
                      evaluate=runner.evaluate, log=lambda m: None,
                      cells=['mmvae'], seeds=[1])
  assert len(trained) == 1
  rerun = json.loads((tmp_path / 'again' / 'mmvae' / 'seed1' /
                      records_lib.DONE_FILE).read_text())
  assert rerun['eval'] == record['eval'] and len(record['eval']) > 10


def test_classifiers_of_an_earlier_start_are_reused(tmp_path, monkeypatch):
  """A restarted study must score every run with the same classifiers: it
  reuses root/classifiers instead of training (and overwriting) them."""
  from mmvaeplus_jax.evaluation import classifiers
  study = _study(classifier_dir='')
  out = tmp_path / 'classifiers'
  out.mkdir()
  (out / classifiers.METADATA_FILE).write_text('{}')

  def no_training(*args, **kwargs):
    raise AssertionError('classifiers retrained on a restart')

  monkeypatch.setattr(classifiers, 'train_and_evaluate', no_training)
  assert study_lib.ensure_classifiers(study, str(tmp_path)) == str(out)
  config = records_lib.run_config(study.cells[0], 1, str(out))
  assert config.evals.classifier_dir == str(out) and config.seed == 1


def test_an_interrupted_run_is_neither_evaluated_nor_finished(tmp_path):
  """Training stopped by SIGTERM (summary 'interrupted') ends the study
  without evaluating or marking the run; the next call trains it again
  (from its checkpoint) and goes on."""
  study = _study()
  calls = []
  train, evaluate = _fakes(calls)

  def sigterm_once(config, workdir):
    if not any(c[0] == 'stopped' for c in calls):
      calls.append(('stopped',))
      os.makedirs(workdir, exist_ok=True)
      return {'step': 5, 'interrupted': True}
    return train(config, workdir)

  lines = []
  study_lib.run_study(study, str(tmp_path), train=sigterm_once,
                      evaluate=evaluate, log=lines.append)
  assert calls == [('stopped',)] and 'SIGTERM' in lines[-1]
  assert not (tmp_path / 'a' / 'seed0' / records_lib.DONE_FILE).exists()
  study_lib.run_study(study, str(tmp_path), train=sigterm_once,
                      evaluate=evaluate, log=lambda m: None)
  assert [c for c in calls if c[0] == 'eval'] == [
      ('eval', 'a', 0), ('eval', 'b', 0), ('eval', 'a', 1), ('eval', 'b', 1)]


def test_missing_classifiers_fail_before_training(tmp_path):
  study = _study(classifier_dir=str(tmp_path / 'no_classifiers'))
  with pytest.raises(FileNotFoundError, match='no classifiers.json'):
    study_lib.run_study(study, str(tmp_path / 'root'),
                        train=lambda c, w: pytest.fail('trained'),
                        log=lambda m: None)
  # Metadata without the weights (a kept set whose checkpoints are built
  # at run time): the error names the modalities and the build command.
  kept = tmp_path / 'kept'
  kept.mkdir()
  (kept / 'classifiers.json').write_text(json.dumps(
      {'modalities': ['m0', 'm1'], 'config': {'dataset': 'rebuilt',
                                              'seed': 1}}))
  (kept / 'm0').mkdir()
  study = _study(classifier_dir=str(kept))
  with pytest.raises(FileNotFoundError,
                     match=r'no checkpoints for m1\..*--dataset rebuilt'
                     r'.*--seed 1'):
    study_lib.run_study(study, str(tmp_path / 'root'),
                        train=lambda c, w: pytest.fail('trained'),
                        log=lambda m: None)


def test_records_outlive_the_study_directory(tmp_path):
  """With `records`, a new machine (empty root) retrains nothing that is
  recorded, and the table counts the recorded runs."""
  study = _study()
  records = tmp_path / 'records'
  calls = []
  train, evaluate = _fakes(calls, kill_at=3)
  with pytest.raises(Killed):  # two runs finished, the third killed
    study_lib.run_study(study, str(tmp_path / 'old'), train=train,
                        evaluate=evaluate, log=lambda m: None,
                        records=str(records))
  assert sorted(p.name for p in records.glob('*/*.json')) == [
      'seed0.json', 'seed0.json']
  # A new machine: the old root is gone, the records folder is kept.
  calls.clear()
  train, evaluate = _fakes(calls)
  table = study_lib.run_study(study, str(tmp_path / 'new'), train=train,
                              evaluate=evaluate, log=lambda m: None,
                              records=str(records))
  assert [c for c in calls if c[0] == 'train'] == [
      ('train', 'a', 1), ('train', 'b', 1)]
  assert table['a']['m'][2] == 2 and table['b']['m'][2] == 2
  assert table['a']['m'][0] == pytest.approx(1.5)  # betas 1 + seeds 0, 1
  runs = json.loads((tmp_path / 'new' / 'results.json').read_text())['runs']
  assert len(runs) == 4
  # Everything recorded: nothing trained, no classifiers needed.
  calls.clear()
  study_lib.run_study(study, str(tmp_path / 'newer'), train=train,
                      evaluate=evaluate, log=lambda m: None,
                      records=str(records))
  assert not calls
  # Runs finished in root (here seeds 1) are copied to a new records
  # folder, not retrained; the others (seeds 0, recorded elsewhere) are.
  other = tmp_path / 'other_records'
  study_lib.run_study(study, str(tmp_path / 'new'), train=train,
                      evaluate=evaluate, log=lambda m: None,
                      records=str(other))
  assert [c for c in calls if c[0] == 'train'] == [
      ('train', 'a', 0), ('train', 'b', 0)]
  assert len(list(other.glob('*/*.json'))) == 4
  # A kept record made with another recipe is an error, not a silent reuse.
  study.cells[0].config.objective.beta = 3.0
  with pytest.raises(ValueError, match=r'objective\.beta differ.*delete it'):
    study_lib.run_study(study, str(tmp_path / 'newest'), train=train,
                        evaluate=evaluate, log=lambda m: None,
                        records=str(records))
  # Machine paths do not count.
  study.cells[0].config.objective.beta = 1.0
  study.cells[0].config.data.manual_dir = '/elsewhere'
  calls.clear()
  study_lib.run_study(study, str(tmp_path / 'newest'), train=train,
                      evaluate=evaluate, log=lambda m: None,
                      records=str(records))
  assert not calls
  # A config key added to the code after a record was made (absent from
  # the record): at its default it changes nothing, at another value it
  # is another recipe.
  path = records / 'a' / 'seed0.json'
  rec = json.loads(path.read_text())
  del rec['recipe']['train']['max_train_seconds']
  path.write_text(json.dumps(rec))
  study_lib.run_study(study, str(tmp_path / 'newest'), train=train,
                      evaluate=evaluate, log=lambda m: None,
                      records=str(records))
  assert not calls
  study.cells[0].config.train.max_train_seconds = 60.0
  with pytest.raises(ValueError, match=r'train\.max_train_seconds differ'):
    study_lib.run_study(study, str(tmp_path / 'newest'), train=train,
                        evaluate=evaluate, log=lambda m: None,
                        records=str(records))


def test_drivers_sharing_a_root_train_different_runs(tmp_path):
  """A run another driver is training (its lock held) is skipped; when that
  driver dies, killed, its lock goes with it and the run is trained."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  study = _study()
  lock = tmp_path / 'b' / 'seed0' / records_lib.LOCK_FILE
  lock.parent.mkdir(parents=True)
  other = subprocess.Popen(
      [sys.executable, '-c',
       'import fcntl, sys\n'
       f'f = open({str(lock)!r}, "a")\n'
       'fcntl.flock(f, fcntl.LOCK_EX)\n'
       'print("locked", flush=True)\n'
       'sys.stdin.read()\n'],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert other.stdout.readline().strip() == 'locked'
    calls, lines = [], []
    train, evaluate = _fakes(calls)
    study_lib.run_study(study, str(tmp_path), train=train,
                        evaluate=evaluate, log=lines.append)
    assert ('train', 'b', 0) not in calls
    assert [c for c in calls if c[0] == 'train'] == [
        ('train', 'a', 0), ('train', 'a', 1), ('train', 'b', 1)]
    assert lines[1] == ('[2/4] b seed 0: being trained by another driver,'
                        ' skipped')
    assert '3 of 4 runs finished' in (tmp_path / 'results.md').read_text()
  finally:
    other.kill()
    other.wait()
  calls.clear()
  study_lib.run_study(study, str(tmp_path), train=train, evaluate=evaluate,
                      log=lambda m: None)
  assert [c for c in calls if c[0] == 'train'] == [('train', 'b', 0)]
  assert '4 of 4 runs finished' in (tmp_path / 'results.md').read_text()


def test_cells_restricts_training_not_the_table(tmp_path):
  study = _study()
  calls = []
  train, evaluate = _fakes(calls)
  study_lib.run_study(study, str(tmp_path), train=train, evaluate=evaluate,
                      log=lambda m: None, cells=['a'])
  table = study_lib.run_study(study, str(tmp_path), train=train,
                              evaluate=evaluate, log=lambda m: None,
                              cells=['b'])
  assert [c for c in calls if c[0] == 'train'] == [
      ('train', 'a', 0), ('train', 'a', 1), ('train', 'b', 0),
      ('train', 'b', 1)]
  assert table['a']['m'][2] == table['b']['m'][2] == 2
  with pytest.raises(ValueError, match='unknown cell.*c.*has a, b'):
    study_lib.run_study(study, str(tmp_path), train=train,
                        evaluate=evaluate, cells=['a', 'c'])


def test_seeds_restricts_training(tmp_path):
  study = _study()
  calls = []
  train, evaluate = _fakes(calls)
  study_lib.run_study(study, str(tmp_path), train=train, evaluate=evaluate,
                      log=lambda m: None, cells=['b'], seeds=[1])
  assert [c for c in calls if c[0] == 'train'] == [('train', 'b', 1)]
  with pytest.raises(ValueError, match='unknown seed.*7.*has seeds 0, 1'):
    study_lib.run_study(study, str(tmp_path), train=train,
                        evaluate=evaluate, seeds=[0, 7])


def test_cli_passes_cells_seeds_and_grid_file(tmp_path, monkeypatch):
  """The command line reaches run_study and the report unchanged."""
  import pathlib  # pylint: disable=g-import-not-at-top
  spec = str(pathlib.Path(__file__).parents[1] / 'studies' /
             'polymnist_cpu.py') + ':fig1'
  seen = {}

  def fake_run(study, root, **kw):
    seen['run'] = (study.name, kw['cells'], kw['seeds'])
    (pathlib.Path(root) / 'results.md').write_text('table')
    return {}

  def fake_figures(study, root, out, **kw):
    seen['figures'] = kw
    return []

  monkeypatch.setattr(study_lib, 'run_study', fake_run)
  monkeypatch.setattr(study_report, 'write_figures', fake_figures)
  monkeypatch.setattr(study_report, 'write_tables',
                      lambda *a, **kw: 'tables.md')
  root = str(tmp_path / 'root')
  os.makedirs(root)
  study_tool.main(['--study', spec, '--root', root,
                  '--cells=mvae_beta1,mmvae_beta1', '--seeds=2'])
  assert seen['run'] == ('polymnist_cpu:fig1',
                         ['mvae_beta1', 'mmvae_beta1'], [2])
  study_tool.main(['--study', spec, '--root', root,
                  '--report', str(tmp_path / 'r'),
                  '--grid_file=cross_modal_m3.png'])
  assert seen['figures']['grid_file'] == 'cross_modal_m3.png'
  with pytest.raises(SystemExit):
    study_tool.main(['--study', spec, '--root', root, '--seeds=two'])


def test_gpu_study_definition():
  """studies/polymnist_gpu.py: the 2024 recipe at full width for MMVAE+ and
  MMVAE, sized by wall time, scored with the CPU study's kept classifiers."""
  import pathlib  # pylint: disable=g-import-not-at-top
  studies = pathlib.Path(__file__).resolve().parents[1] / 'studies'
  gpu = records_lib.load_study(str(studies / 'polymnist_gpu.py') + ':2024')
  cpu = records_lib.load_study(str(studies / 'polymnist_cpu.py') + ':fig1')
  assert [c.name for c in gpu.cells] == ['mmvaeplus', 'mmvae']
  assert gpu.metrics == cpu.metrics and gpu.seeds == (0,)
  for cell in gpu.cells:
    c = cell.config
    assert c.model.width == 1.0 and c.train.batch_size == 128
    assert c.train.max_train_seconds == 180.0
    assert (c.objective.num_samples, c.objective.estimator,
            c.objective.beta) == (1, 'iwae', 2.5)
    assert c.evals.classifier_dir == cpu.cells[0].config.evals.classifier_dir
    assert c.evals.num_examples == 10000
  assert gpu.cells[0].config.model.dim_w == 32
  assert gpu.cells[1].config.model.dim_w == 0
  short = records_lib.load_study(str(studies / 'polymnist_gpu.py')
                               + ':2024,train_s=60,models=mmvaeplus')
  assert [c.config.train.max_train_seconds for c in short.cells] == [60.0]


@pytest.mark.slow
def test_gpu_study_script_smoke(data_dir, tmp_path):
  """`STUDY_SMOKE=1 bash studies/gpu_study.sh`: the device script end to end
  on a CPU (a 1/16-width model for 20 s per cell on `mini`): the files it
  brings back from the device machine."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / 'out'
  env = dict(os.environ, STUDY_SMOKE='1', PYTHON=sys.executable,
             OUT=str(out), STUDY_TFDS=str(data_dir),
             STUDY_ROOT=str(tmp_path / 'runs'))
  proc = subprocess.run(['bash', str(repo / 'studies' / 'gpu_study.sh')],
                        env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  files = sorted(str(p.relative_to(out)) for p in out.rglob('*')
                 if p.is_file())
  assert files == [
      'gpu_study_log.txt', 'grid_mmvae.png', 'grid_mmvaeplus.png',
      os.path.join('records', 'mmvae', 'seed0.json'),
      os.path.join('records', 'mmvaeplus', 'seed0.json'),
      'results.md', 'scatter.png']  # at most 8 files come back
  rec = json.loads((out / 'records' / 'mmvaeplus' / 'seed0.json')
                   .read_text())
  assert rec['train']['step'] > 0 and 'coherence/cond/mean' in rec['eval']
  assert rec['recipe']['train']['max_train_seconds'] == 20.0
  assert '2 of 2 runs finished' in (out / 'results.md').read_text()


def test_a_run_s_learning_curve_goes_into_its_record(tmp_path):
  """The rows of the run's curve.jsonl (train.curve_start_examples) are kept
  in its record, in order, and in the records folder's copy."""
  rows = [{'step': s, 'examples': 8 * s, 'wall_seconds': float(s),
           'train_seconds': s / 2, 'eval_seconds': 0.1,
           'metrics': {'coherence/cond/mean': 0.1 * s}} for s in (1, 2, 4)]

  def train(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    if config.objective.beta == 1.0:  # cell 'a' has a curve, 'b' none
      with open(os.path.join(workdir, 'curve.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    return {}

  _, evaluate = _fakes([])
  study_lib.run_study(_study(), str(tmp_path / 'root'), train=train,
                      evaluate=evaluate, log=lambda m: None, seeds=(0,),
                      records=str(tmp_path / 'records'))
  for where in (tmp_path / 'root' / 'a' / 'seed0' / 'study_run.json',
                tmp_path / 'records' / 'a' / 'seed0.json'):
    assert json.loads(where.read_text())['curve'] == rows
  assert 'curve' not in json.loads(
      (tmp_path / 'records' / 'b' / 'seed0.json').read_text())


def test_pilot_study_definition():
  """studies/polymnist_cpu.py:pilot: every model at the same learning rates,
  MMVAE+ also at three private sizes, one seed, the same budget and curve
  for all, scored with the study's kept classifiers."""
  import pathlib  # pylint: disable=g-import-not-at-top
  studies = pathlib.Path(__file__).resolve().parents[1] / 'studies'
  pilot = records_lib.load_study(str(studies / 'polymnist_cpu.py') + ':pilot')
  fig1 = records_lib.load_study(str(studies / 'polymnist_cpu.py') + ':fig1')
  assert pilot.seeds == (0,) and pilot.rescore == ()
  lrs = {}
  for cell in pilot.cells:
    c = cell.config
    lrs.setdefault(c.model.name.removeprefix('polymnist_'), set()).add(
        c.optim.lr)
    assert (c.train.num_steps, c.train.batch_size, c.model.width) == (
        8000, 8, 0.125)
    assert c.train.curve_start_examples == 8000
    assert c.objective.num_samples == 1 and c.objective.beta == 1.0
    assert c.evals.evaluators == 'coherence'
    assert c.evals.classifier_dir == fig1.cells[0].config.evals.classifier_dir
  assert set(lrs) == {'mmvaeplus', 'mmvae', 'mopoe', 'mvae', 'mmjsd'}
  assert all(v == {1e-3, 3e-3} for v in lrs.values())
  plus = [c.config for c in pilot.cells
          if c.config.model.name == 'polymnist_mmvaeplus']
  assert sorted({c.model.dim_w for c in plus}) == [4, 8, 32]
  assert len(plus) == 6 and pilot.cells[0].config is plus[0]
  short = records_lib.load_study(str(studies / 'polymnist_cpu.py')
                                 + ':pilot,steps=100')
  assert {c.config.train.num_steps for c in short.cells} == {100}


def test_missing_study_is_the_pilot_with_modalities_missing():
  """studies/polymnist_cpu.py:missing: each cell's config is the pilot's
  fully observed comparison cell with `data.missing_rate` set, nothing else
  changed (the documented comparison reads those pilot records)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  studies = pathlib.Path(__file__).resolve().parents[1] / 'studies'
  pilot = {c.name: c.config for c in records_lib.load_study(
      str(studies / 'polymnist_cpu.py') + ':pilot').cells}
  study = records_lib.load_study(str(studies / 'polymnist_cpu.py')
                                 + ':missing')
  assert study.seeds == (0,) and study.rescore == ()
  pairs = {'mmvaeplus_w4_missing0.5': 'mmvaeplus_w4_lr0.003',
           'mopoe_missing0.5': 'mopoe_lr0.003'}
  assert [c.name for c in study.cells] == list(pairs)
  for cell in study.cells:
    c = cell.config
    assert c.data.missing_rate == 0.5
    want = pilot[pairs[cell.name]].to_dict()
    want['data']['missing_rate'] = 0.5
    assert c.to_dict() == want
  with pytest.raises(ValueError, match='rate must be in'):
    records_lib.load_study(str(studies / 'polymnist_cpu.py')
                           + ':missing,rate=0')


def test_headline_study_definition():
  """studies/polymnist_cpu.py:headline: one MMVAE+ run sized by wall time,
  with a learning curve, scored with the study's kept classifiers."""
  import pathlib  # pylint: disable=g-import-not-at-top
  studies = pathlib.Path(__file__).resolve().parents[1] / 'studies'
  study = records_lib.load_study(
      str(studies / 'polymnist_cpu.py') + ':headline,dim_w=8,train_s=1800')
  fig1 = records_lib.load_study(str(studies / 'polymnist_cpu.py') + ':fig1')
  assert [c.name for c in study.cells] == ['mmvaeplus_w8']
  c = study.cells[0].config
  assert study.seeds == (0,) and c.model.dim_w == 8
  assert c.train.max_train_seconds == 1800.0
  assert c.train.curve_start_examples == 8000 and c.train.curve_factor > 1
  assert c.model.num_modalities == 5 and c.data.config == 'rebuilt'
  assert c.evals.evaluators == fig1.cells[0].config.evals.evaluators
  assert c.evals.classifier_dir == fig1.cells[0].config.evals.classifier_dir


def test_compare_study_definition():
  """studies/polymnist_cpu.py:compare: the fig1 and fig2 analogues in one
  study at one budget for every cell, the pilot's recipe, 3 seeds for the
  beta-1 cells and 1 for the others, curves and samples.npz."""
  import pathlib  # pylint: disable=g-import-not-at-top
  studies = pathlib.Path(__file__).resolve().parents[1] / 'studies'
  study = records_lib.load_study(str(studies / 'polymnist_cpu.py')
                                 + ':compare')
  pilot = {c.name: c.config for c in records_lib.load_study(
      str(studies / 'polymnist_cpu.py') + ':pilot').cells}
  fig1 = records_lib.load_study(str(studies / 'polymnist_cpu.py') + ':fig1')
  names = [c.name for c in study.cells]
  assert names == [
      'mvae_beta1', 'mvae_beta0.3', 'mopoe_beta1', 'mopoe_beta0.3',
      'mmvae_beta1', 'mmvae_beta2.5', 'mmvaeplus_w4_beta1',
      'mmvaeplus_w4_beta2.5', 'mmjsd_w4', 'mmjsd_w16', 'mmjsd_w32',
      'mmvaeplus_w32_beta1']
  assert study.seeds == (0, 1, 2) and study.rescore == ()
  assert fig1.rescore
  steps = set()
  for cell in study.cells:
    c = cell.config
    assert cell.seeds == ((0, 1, 2) if c.objective.beta == 1.0 else (0,))
    steps.add(c.train.num_steps)
    assert (c.train.batch_size, c.model.width, c.optim.lr) == (
        8, 0.125, 3e-3)
    assert c.train.curve_start_examples == 8000
    assert c.evals.evaluators == (fig1.cells[0].config.evals.evaluators
                                  + ',samples')
    assert c.evals.classifier_dir == fig1.cells[0].config.evals.classifier_dir
  assert steps == {polymnist_cpu_compare_steps(studies)}
  assert study.num_runs() == 8 * 3 + 4
  # MMVAE+ beta 1 is the pilot's winning cell, trained longer.
  want = pilot['mmvaeplus_w4_lr0.003'].to_dict()
  got = study.cells[6].config.to_dict()
  for d in (want, got):
    for k in ('num_steps', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps'):
      d['train'].pop(k)
    d.pop('evals')
  assert got == want
  short = records_lib.load_study(str(studies / 'polymnist_cpu.py')
                                 + ':compare,steps=50,seeds=1')
  assert short.num_runs() == 12
  assert {c.config.train.num_steps for c in short.cells} == {50}


def polymnist_cpu_compare_steps(studies):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      '_cpu_study', studies / 'polymnist_cpu.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.COMPARE_STEPS


def test_a_schedule_applies_to_every_cell_and_names_it():
  """`,schedule=cosine`: every cell decays its rate over its own steps (or
  `decay_steps`), under a new name; the wall-time headline needs
  `decay_steps`."""
  import pathlib  # pylint: disable=g-import-not-at-top
  spec = str(pathlib.Path(__file__).resolve().parents[1] / 'studies'
             / 'polymnist_cpu.py')
  plain = records_lib.load_study(spec + ':compare,steps=50')
  cos = records_lib.load_study(spec + ':compare,steps=50,schedule=cosine,'
                               'final_lr=0.1')
  assert [c.name for c in cos.cells] == [f'{c.name}_cosine'
                                         for c in plain.cells]
  for p, c in zip(plain.cells, cos.cells):
    assert p.config.optim.schedule == 'constant'
    assert (c.config.optim.schedule, c.config.optim.decay_steps,
            c.config.optim.final_lr_fraction) == ('cosine', 50, 0.1)
    assert c.seeds == p.seeds
  assert [(f'{n}_cosine', t) for n, t in plain.published] == list(
      cos.published)
  assert len(plain.published) == 9
  head = records_lib.load_study(spec + ':headline,schedule=cosine,'
                                'decay_steps=56000')
  assert [c.name for c in head.cells] == ['mmvaeplus_w4_cosine']
  assert head.cells[0].config.optim.decay_steps == 56000
  with pytest.raises(ValueError, match='give decay_steps'):
    records_lib.load_study(spec + ':headline,schedule=cosine')
