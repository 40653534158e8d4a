"""The study's figures and re-scoring, on fake finished runs."""

import json
import os

import pytest

from mmvaeplus_jax.experiments import records as records_lib
from mmvaeplus_jax.experiments import study as study_lib
from mmvaeplus_jax.experiments import study_report
from mmvaeplus_jax.configs import polymnist as polymnist_configs


def _finished_study(root, rescore=(), records=None):
  """Cells 'a' (seeds 0, 1) and 'b' (seed 0), evaluated with fake metrics
  and a fake conditional grid (the other classifier sets of `rescore`: the
  conditional coherence 0.1 lower)."""
  cells = []
  for name in ('a', 'b'):
    c = polymnist_configs.get_config('smoke')
    c.evals.classifier_dir = 'clf_a'
    cells.append(records_lib.Cell(name, c))
  study = records_lib.Study('t', tuple(cells), seeds=(0, 1),
                            metrics=('coherence/cond/mean',),
                            rescore=rescore)

  cell_of = lambda workdir: os.path.basename(os.path.dirname(workdir))

  def train(config, workdir):
    if cell_of(workdir) == 'b' and config.seed == 1:
      raise KeyboardInterrupt  # b/seed1 never finishes
    return {}

  def evaluate(config, workdir, step=None, *, tag=''):
    s, b = config.seed, cell_of(workdir) == 'b'
    if tag:
      assert step == 7 and config.evals.evaluators == 'coherence'
      return {'step': 7, 'coherence/cond/mean': 0.4 + 0.1 * s + 0.2 * b,
              'coherence/uncond': 0.1, 'clf': config.evals.classifier_dir}
    out = os.path.join(workdir, 'eval', '7')
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'cross_modal_m0.png'), 'wb') as f:
      f.write(b'png')
    return {'step': 7, 'coherence/cond/mean': 0.5 + 0.1 * s + 0.2 * b,
            'coherence/uncond': 0.1, 'fd_clf/cond/mean/with_self': 3.0 - s,
            'coherence/cond/m0->m0': 0.9, 'coherence/cond/m1->m1': 0.7 - s,
            'coherence/cond/m0->m1': 0.0,
            'fd_clf/uncond/mean': 4.0, 'latent/mean/z': 0.9,
            'diversity/cond/mean': 0.05, 'diversity/real/mean': 0.2}

  with pytest.raises(KeyboardInterrupt):
    study_lib.run_study(study, str(root), train=train, evaluate=evaluate,
                        log=lambda m: None, records=records)
  return study


def test_figures_from_finished_runs(tmp_path):
  study = _finished_study(tmp_path)
  files = study_report.write_figures(study, str(tmp_path), str(tmp_path / 'f'))
  assert files == ['scatter.png', 'latent.png', 'diversity.png',
                   'grid_a.png', 'grid_b.png']
  for f in files[:3]:
    assert (tmp_path / 'f' / f).read_bytes()[:4] == b'\x89PNG'
  assert (tmp_path / 'f' / 'grid_a.png').read_bytes() == b'png'
  with pytest.raises(FileNotFoundError, match='no finished run'):
    study_report.write_figures(study, str(tmp_path / 'empty'), str(tmp_path))
  # Runs that kept a learning curve add its figure.
  done = tmp_path / 'a' / 'seed0' / records_lib.DONE_FILE
  record = json.loads(done.read_text())
  record['curve'] = [{'step': 1, 'examples': 8, 'train_seconds': 1.0,
                      'wall_seconds': 2.0, 'eval_seconds': 0.5,
                      'metrics': {'coherence/cond/mean': 0.3}}]
  done.write_text(json.dumps(record))
  files = study_report.write_figures(study, str(tmp_path), str(tmp_path / 'f'))
  assert 'curves.png' in files
  assert (tmp_path / 'f' / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_rescore_writes_both_sets_and_skips_rescored_runs(tmp_path):
  study = _finished_study(tmp_path)
  (tmp_path / 'clf_b').mkdir()
  calls = []

  def evaluate(config, workdir, step, *, tag):
    calls.append((os.path.relpath(workdir, tmp_path), step, tag,
                  config.evals.classifier_dir, config.evals.evaluators))
    out = os.path.join(workdir, 'eval', f'{step}-{tag}')
    os.makedirs(out)
    metrics = {'step': step, 'coherence/cond/mean': 0.4 + 0.1 * config.seed,
               'coherence/uncond': 0.1}
    with open(os.path.join(out, 'metrics.json'), 'w') as f:
      json.dump(metrics, f)
    return metrics

  text = study_report.rescore(study, str(tmp_path), str(tmp_path / 'clf_b'),
                              's1', evaluate=evaluate, log=lambda m: None)
  assert calls == [
      (os.path.join('a', 'seed0'), 7, 's1', str(tmp_path / 'clf_b'),
       'coherence'),
      (os.path.join('b', 'seed0'), 7, 's1', str(tmp_path / 'clf_b'),
       'coherence'),
      (os.path.join('a', 'seed1'), 7, 's1', str(tmp_path / 'clf_b'),
       'coherence')]
  # a: study 0.5, 0.6; other set 0.4, 0.5 -> difference -0.1 +- 0.
  assert ('| a | coherence/cond/mean | 0.550 ± 0.071 | 0.450 ± 0.071 |'
          ' -0.100 ± 0.000 (n=2) |') in text
  assert '| b | coherence/cond/mean | 0.700 ± 0.000 | 0.400 ± 0.000 |' in text
  assert (tmp_path / 'rescore_s1.md').read_text() == text
  calls.clear()  # a second call reads the re-scored metrics
  assert study_report.rescore(study, str(tmp_path), str(tmp_path / 'clf_b'),
                              's1', evaluate=evaluate,
                              log=lambda m: None) == text
  assert not calls
  with pytest.raises(FileNotFoundError, match='classifier directory'):
    study_report.rescore(study, str(tmp_path), str(tmp_path / 'nope'), 'x')


def test_runs_scored_with_other_sets_at_training_time(tmp_path):
  """`Study.rescore`: each run's record holds its coherence with the other
  set; the re-score table then comes from the records alone (run
  directories gone, nothing evaluated), figures too (without grids)."""
  import shutil  # pylint: disable=g-import-not-at-top
  (tmp_path / 'clf_b').mkdir()
  records = tmp_path / 'records'
  study = _finished_study(tmp_path / 'root',
                          rescore=(('s1', str(tmp_path / 'clf_b')),),
                          records=str(records))
  rec = json.loads((records / 'a' / 'seed1.json').read_text())
  assert rec['rescored'] == {'s1': {
      'step': 7, 'coherence/cond/mean': pytest.approx(0.5),
      'coherence/uncond': 0.1}}
  shutil.rmtree(tmp_path / 'root')

  def no_evaluation(*args, **kwargs):
    raise AssertionError('evaluated again')

  lines = []
  text = study_report.rescore(study, str(tmp_path / 'root'),
                              str(tmp_path / 'clf_b'), 's1',
                              evaluate=no_evaluation, log=lines.append,
                              records=str(records))
  assert ('| a | coherence/cond/mean | 0.550 ± 0.071 | 0.450 ± 0.071 |'
          ' -0.100 ± 0.000 (n=2) |') in text and not lines
  # Another tag: no run directory to score, so the runs are left out, said.
  text = study_report.rescore(study, str(tmp_path / 'root'),
                              str(tmp_path / 'clf_b'), 's2',
                              evaluate=no_evaluation, log=lines.append,
                              records=str(records))
  assert '| a |' not in text and len(lines) == 3
  assert 'no run directory' in lines[0]
  files = study_report.write_figures(study, str(tmp_path / 'root'),
                                     str(tmp_path / 'f'),
                                     records=str(records))
  assert files == ['scatter.png', 'latent.png', 'diversity.png']


def test_rescore_writes_back_into_the_records(tmp_path):
  """A run re-scored after the fact keeps the score in its record, in the
  run directory and in the records folder."""
  (tmp_path / 'clf_b').mkdir()
  records = tmp_path / 'records'
  study = _finished_study(tmp_path / 'root', records=str(records))
  calls = []

  def evaluate(config, workdir, step, *, tag):
    calls.append(tag)
    return {'step': step, 'coherence/cond/mean': 0.25, 'skipped': {}}

  study_report.rescore(study, str(tmp_path / 'root'),
                       str(tmp_path / 'clf_b'), 's1', evaluate=evaluate,
                       log=lambda m: None, records=str(records))
  assert calls == ['s1'] * 3
  for path in (records / 'b' / 'seed0.json',
               tmp_path / 'root' / 'b' / 'seed0' / records_lib.DONE_FILE):
    rec = json.loads(path.read_text())
    assert rec['rescored'] == {'s1': {'step': 7,
                                      'coherence/cond/mean': 0.25}}


def test_tables_per_cell_and_per_run(tmp_path):
  """`tables.md`: per cell mean +- std (ddof 1) over the finished seeds,
  the other classifier set's coherence, the published value; per run one
  row in cell order."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  (tmp_path / 'clf_b').mkdir()
  study = _finished_study(tmp_path / 'root',
                          rescore=(('s1', str(tmp_path / 'clf_b')),))
  study = dataclasses.replace(study, published=(('a', 'coherence 0.85'),))
  assert study_report.write_tables(
      study, str(tmp_path / 'root'), str(tmp_path / 'f')) == 'tables.md'
  text = (tmp_path / 'f' / 'tables.md').read_text()
  assert text.startswith('# t: 3 of 4 runs')
  # a: coherence 0.5, 0.6 (0.55 +- 0.071), FD_clf 3, 2; the other set
  # 0.4, 0.5; b: seed 0 only.
  # Self-reconstruction: the diagonal's mean, (0.9 + 0.7 - s) / 2.
  assert ('| `a` | 0, 1 | 0.550 ± 0.071 / 0.100 ± 0.000 | 0.550 ± 0.354 |'
          ' 2.5 ± 0.7 / 4.0 ± 0.0 |') in text
  assert '| 0.450 ± 0.071 / 0.100 ± 0.000 | coherence 0.85 |' in text
  assert '| `b` | 0 | 0.700 / 0.100 | 0.800 | 3.0 / 4.0 |' in text
  runs = [l for l in text.splitlines() if ', seed ' in l]
  assert [l.split('|')[1].strip() for l in runs] == [
      '`a`, seed 0', '`a`, seed 1', '`b`, seed 0']
  assert '0.600 / 0.100 | 0.300 | 2.0 / 4.0 |' in runs[1]
  with pytest.raises(FileNotFoundError, match='no finished run'):
    study_report.write_tables(study, str(tmp_path / 'empty'), str(tmp_path))
  with pytest.raises(ValueError, match='unknown cells'):
    dataclasses.replace(study, published=(('c', 'x'),))
