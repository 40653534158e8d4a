"""The PolyMNIST study's classifier sets (`studies/classifiers/
rebuilt_wide_seed0`, and `rebuilt_wide_seed1` with which every run is
re-scored): their metadata is in the repository (what the recorded runs
were scored with); their weights are built at run time (PROVENANCE.md).
Where built, they load and, with ../shared/data, score their recorded
accuracies."""

import json
import pathlib

import numpy as np
import pytest

from mmvaeplus_jax.evaluation import classifiers

REPO = pathlib.Path(__file__).resolve().parents[1]
SET = REPO / 'studies' / 'classifiers' / 'rebuilt_wide_seed0'
OTHER = REPO / 'studies' / 'classifiers' / 'rebuilt_wide_seed1'
SHARED_DATA = REPO.parent / 'shared' / 'data'
NAMES = [f'm{i}' for i in range(5)]


def _built(kept):
  return all((kept / n).is_dir() for n in NAMES)


def test_the_study_uses_the_kept_sets():
  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.experiments import records
  from mmvaeplus_jax.experiments import study
  # pylint: enable=g-import-not-at-top
  fig1 = records.load_study(str(REPO / 'studies' / 'polymnist_cpu.py')
                            + ':fig1')
  assert {c.config.evals.classifier_dir for c in fig1.cells} == {str(SET)}
  assert fig1.rescore == (('clf_seed1', str(OTHER)),)
  metas = [json.loads((k / classifiers.METADATA_FILE).read_text())
           for k in (SET, OTHER)]
  for meta in metas:
    assert meta['modalities'] == NAMES
    assert set(meta['archs'].values()) == {'wide'}
    assert all(a >= 0.98 for a in meta['test_accuracy'].values())
  assert [m['config']['seed'] for m in metas] == [0, 1]  # independent
  for kept in (SET, OTHER):
    if _built(kept):
      params, _ = classifiers.load_classifiers(kept, NAMES)
      assert sorted(params) == NAMES
    else:  # the study stops before training, naming the build command
      with pytest.raises(FileNotFoundError, match=f'--out {kept}'):
        study.check_classifier_dir(str(kept))


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / 'mnist').is_dir(),
    reason=f'real MNIST / backgrounds not available at {SHARED_DATA}')
def test_kept_set_scores_its_recorded_accuracy(tmp_path):
  """The 10,000 `rebuilt` test images per modality: the recorded accuracy,
  up to 2 predictions per modality that another CPU's rounding may flip
  (an image within rounding distance of a decision boundary)."""
  from mmvaeplus_jax.input import builders  # pylint: disable=g-import-not-at-top
  if not (_built(SET) and _built(OTHER)):
    pytest.skip('the kept classifier sets are not built (PROVENANCE.md)')
  test = builders.load_split('rebuilt', 'test', tmp_path / 'tfds',
                             manual_dir=SHARED_DATA)
  for kept in (SET, OTHER):
    params, meta = classifiers.load_classifiers(kept, NAMES)
    recorded = json.loads((kept / classifiers.METADATA_FILE).read_text())
    assert meta['test_accuracy'] == recorded['test_accuracy']
    for name in NAMES:
      acc = classifiers.accuracy(params[name], test[name], test['label'])
      np.testing.assert_allclose(acc, meta['test_accuracy'][name],
                                 atol=2 / len(test['label']) + 1e-12,
                                 err_msg=f'{kept.name} {name}')


def test_the_cub_study_uses_its_kept_species_set():
  """studies/cub.py: every variant's cells are valid CUB configs scored
  with the kept species classifiers (cub23: 23 classes, vocabulary 509)."""
  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax import models
  from mmvaeplus_jax.experiments import records
  from mmvaeplus_jax.experiments import study
  # pylint: enable=g-import-not-at-top
  kept = REPO / 'studies' / 'classifiers' / 'cub23_species_seed0'
  path = str(REPO / 'studies' / 'cub.py')
  for variant in ('cub23', 'paper', 'tiny'):
    s = records.load_study(f'{path}:{variant}')
    assert {c.config.evals.classifier_dir for c in s.cells} == {str(kept)}
    for cell in s.cells:
      assert cell.config.data.config == 'cub23'
      assert models.get_model(cell.config.model).names == ('image',
                                                           'caption')
  cub23 = records.load_study(f'{path}:cub23')
  assert [c.name for c in cub23.cells] == ['mmvaeplus', 'mmvae']
  assert cub23.seeds == (0, 1)
  assert cub23.cells[0].config.train.num_steps == 9000
  paper = records.load_study(f'{path}:paper').cells[0].config
  assert (paper.objective.num_samples, paper.objective.estimator,
          paper.model.width) == (10, 'dreg', 1.0)
  meta = json.loads((kept / classifiers.METADATA_FILE).read_text())
  assert meta['modalities'] == ['image', 'caption']
  assert meta['num_classes'] == {'image': 23, 'caption': 23}
  assert meta['vocab_sizes'] == {'caption': 509}
  if not all((kept / n).is_dir() for n in meta['modalities']):
    with pytest.raises(FileNotFoundError, match=f'--out {kept}'):
      study.check_classifier_dir(str(kept))
