"""CUB Image-Captions end to end: the `smoke` config trained through
`experiments.train.train` on a tiny fixture of the `official` layout (the
fixture of tests/cub_data_test.py), the vocabulary check between config and
data, the loop's image-only sample grids, `load_run` with the BatchNorm
running averages, resuming (slow), and the evaluators' direct network calls
(`evaluation/frechet.py`) on BatchNorm networks. The same run on the real
CUB-23 data (../shared/data/cub) is slow and skipped without it.
"""

import os
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

import cub_data_test
from mmvaeplus_jax import models
from mmvaeplus_jax.configs import cub as cub_configs
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import caption_figures
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import frechet
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.experiments import runs
from mmvaeplus_jax.experiments import train
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import captions
from mmvaeplus_jax.input import sources

# The fixture's train vocabulary (tests/cub_data_test.py).
FIXTURE_V = len(cub_data_test.FIXTURE_VOCABULARY)
# 8 fake CPU devices (tests/conftest.py): a global batch of 8.
BATCH = 8


def _config(data_dir, manual_dir, *, data='official', vocab_size=FIXTURE_V,
            steps=3):
  c = cub_configs.get_config(f'smoke,data={data},vocab_size={vocab_size}')
  c.data.update(data_dir=str(data_dir), manual_dir=str(manual_dir))
  c.train.update(batch_size=BATCH, num_steps=steps, eval_examples=BATCH,
                 checkpoint_every_steps=3, eval_every_steps=3)
  c.evals.update(batch_size=BATCH, num_examples=BATCH)
  return c


@pytest.fixture(scope='module', name='fixture_dirs')
def _fixture_dirs(tmp_path_factory):
  """(data_dir, manual_dir) of the prepared `official` fixture."""
  root = tmp_path_factory.mktemp('cub_train')
  manual = cub_data_test._write_official(root / 'manual')  # pylint: disable=protected-access
  builders.prepare('cub_image_captions/official', root / 'data',
                   manual_dir=manual)
  return root / 'data', manual


def _stats(params):
  return params['encoders']['caption']['batch_stats']


def _check_run(workdir, config, steps):
  metrics = train.train(config, str(workdir))
  assert metrics['step'] == steps
  assert np.isfinite(metrics['train/loss'])
  assert np.isfinite(metrics['eval/bound'])
  assert metrics['train/nonfinite_steps'] == 0
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps)))
  # Image-only grids: the caption is neither a row nor a source block.
  n = min(config.train.grid_examples, BATCH)
  pad, side = 2, 64
  for name, rows in (('unconditional', 1), ('cross_modal', 2)):
    img = np.asarray(Image.open(
        os.path.join(workdir, 'samples', f'{name}_{steps:08d}.png')))
    assert img.shape == (rows * (side + pad) + pad, n * (side + pad) + pad,
                         3), name
  return metrics


@pytest.fixture(scope='module', name='trained')
def _trained(fixture_dirs, tmp_path_factory):
  """The workdir of the smoke config trained 3 steps on the fixture."""
  data_dir, manual = fixture_dirs
  workdir = tmp_path_factory.mktemp('cub_run') / 'run'
  _check_run(workdir, _config(data_dir, manual), 3)
  return workdir


@pytest.mark.slow
def test_smoke_trains_and_load_run_restores_batch_stats(trained):
  run = runs.load_run(str(trained))
  assert run.step == 3 and run.model.has_batch_stats
  assert run.config.model.vocab_size == FIXTURE_V
  # The running averages moved from their initial values (0 mean) and came
  # back with the params; the image networks have none.
  for group in ('encoders', 'decoders'):
    stats = run.params[group]['caption']['batch_stats']
    means = [np.asarray(x) for p, x in
             jax.tree_util.tree_leaves_with_path(stats) if 'mean' in str(p)]
    assert means and any(np.abs(m).max() > 0 for m in means), group
    assert 'batch_stats' not in run.params[group]['image']


@pytest.mark.slow
def test_eval_bound_and_grids_on_the_run(trained):
  """`eval.py`'s runner on the trained run: the test bound (eval mode) and
  the image-only grids."""
  config = runs.load_run(str(trained)).config
  config.evals.evaluators = 'bound,grids'
  metrics = runner.evaluate(config, str(trained))
  assert np.isfinite(metrics['eval/bound'])
  assert metrics['num_examples'] == BATCH


@pytest.mark.slow
def test_smoke_resumes(fixture_dirs, trained, tmp_path):
  data_dir, manual = fixture_dirs
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  first = runs.load_run(str(workdir))
  # The same workdir, two more steps from the checkpoint of step 3.
  _check_run(workdir, _config(data_dir, manual, steps=5), 5)
  resumed = runs.load_run(str(workdir))
  assert resumed.step == 5
  jax.tree.map(np.testing.assert_array_equal, _stats(first.params),
               _stats(runs.load_run(str(workdir), 3).params))
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
      _stats(resumed.params), _stats(first.params)))
  assert max(moved) > 0  # steps 4 and 5 moved them again


def test_vocabulary_size_must_match_the_data(fixture_dirs, tmp_path):
  data_dir, manual = fixture_dirs
  config = _config(data_dir, manual, vocab_size=509)
  with pytest.raises(ValueError) as e:
    train.train(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert 'model.vocab_size=509' in message
  assert f'vocabulary of {FIXTURE_V} words' in message
  assert f'vocab_size={FIXTURE_V}' in message
  # The number it names is the dataset's (its metadata, captions.py).
  builder = builders.prepare('cub_image_captions/official', data_dir)
  assert len(captions.vocabulary_from_info(builder.info).words) == FIXTURE_V
  sources.check_model_data(config.data, _config(data_dir, manual).model)
  # Models without a vocabulary are not checked (no vocab_size key).
  assert 'vocab_size' not in polymnist_configs.get_config('smoke').model


@pytest.mark.slow  # ~50 s, mostly compiling the CUB networks
def test_frechet_network_calls_use_running_averages(fixture_dirs):
  """`frechet`'s direct encoder / decoder calls on a CUB model (initialised
  params; the default-suite check of the BatchNorm path): the BatchNorm text
  encoder's `{'params', 'batch_stats'}` in eval mode: other running
  averages give other images (train mode would ignore them). The
  unconditional path and the image source apply networks without
  BatchNorm (bare params, as before)."""
  data_dir, manual = fixture_dirs
  model = models.get_model(_config(data_dir, manual).model)
  data = builders.load_split('cub_image_captions/official', 'test', data_dir)
  ids = np.asarray(data['caption'][:4], np.int32)
  images = data['image'][:4].astype(np.float32) / 255
  params = jax.jit(model.init)(jax.random.key(0),
                               {'image': images, 'caption': ids})
  key = jax.random.key(1)
  index = np.arange(4, dtype=np.int32)
  cond = jax.jit(lambda p, x, i: frechet.conditional_images(
      key, model, p, x, i, source='caption', target='image'))
  out = np.asarray(cond(params, ids, index))
  assert out.shape == (4, 64, 64, 3) and np.isfinite(out).all()
  enc = dict(params['encoders'])
  enc['caption'] = {'params': enc['caption']['params'],
                    'batch_stats': jax.tree.map(
                        lambda a: a * 0 + 0.5,
                        enc['caption']['batch_stats'])}
  other = np.asarray(cond({**params, 'encoders': enc}, ids, index))
  assert np.abs(other - out).max() > 1e-4


@pytest.mark.slow
@cub_data_test.needs_cub
def test_smoke_trains_on_real_cub23(tmp_path):
  config = _config(tmp_path / 'data', cub_data_test.SHARED_CUB.parent,
                   data='cub23', vocab_size=cub_configs.VOCABULARY_SIZES[
                       'cub23'])
  _check_run(tmp_path / 'run', config, 3)
  assert runs.load_run(str(tmp_path / 'run')).model.has_batch_stats


@pytest.mark.slow
def test_eval_caption_figures_on_the_run(trained):
  """The image-caption evaluators on the trained run: the caption figures
  and tables are written, the colour metric says it needs more examples
  than the fixture's 8, the pixel-only figures refuse the caption; species
  coherence and FD_clf (image targets only) run with species classifiers."""
  config = runs.load_run(str(trained)).config
  # Species classifiers (initialised, 200 classes: the official labels) for
  # coherence and FD_clf (image targets only, every source).
  clf_dir = os.path.join(trained, 'species_classifiers')
  classifiers.save_classifiers(clf_dir, {
      'image': classifiers.init(jax.random.key(1), (64, 64, 3),
                                'species_image', 200),
      'caption': classifiers.init(jax.random.key(2), (32,),
                                  'species_caption', 200, FIXTURE_V)})
  config.evals.update(evaluators='captions,colour,figures,coherence,fd_clf',
                      captions_examples=3, captions_unconditional=2,
                      figures_samples=2, classifier_dir=clf_dir,
                      num_unconditional=4, fid_drop_last_partial_batch=False)
  metrics = runner.evaluate(config, str(trained), tag='captions')
  out = os.path.join(trained, 'eval', '3-captions')
  for name in ('caption_to_image.png', 'image_to_caption.png',
               'unconditional_captions.png', 'image_to_caption.md',
               'unconditional_captions.md', 'traversal_z.png',
               'traversal_w.png', 'alpha_grid.png'):
    assert name in metrics['captions/files']
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  table = open(os.path.join(out, 'image_to_caption.md')).read().split('\n')
  assert len([r for r in table if r.startswith('| ')]) == 1 + 3
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(out))
  assert 'evaluate more examples' in metrics['skipped']['colour']
  assert "['caption'] are not images" in metrics['skipped']['figures']
  assert 0 <= metrics['coherence/cond/caption->image'] <= 1
  fd = {k: v for k, v in metrics.items() if k.startswith('fd_clf/')}
  assert {'fd_clf/cond/caption->image', 'fd_clf/cond/image->image',
          'fd_clf/uncond/image', 'fd_clf/cond/mean/with_self'} <= set(fd)
  assert not any('->caption' in k or k.endswith('/caption') for k in fd)
  assert fd['fd_clf/cond/mean/cross_only'] == fd['fd_clf/cond/caption->image']
  assert all(np.isfinite(v) and v >= 0 for v in fd.values())


@pytest.mark.slow
def test_caption_traversal_moves_one_dimension(trained):
  """Fig. 16 / 21 images of the trained run: at offset 0 every column of a
  traversal decodes the same latent (the base), other offsets differ; the
  alpha grid's columns differ (w scales with alpha)."""
  run = runs.load_run(str(trained))
  model = run.model
  test = sources.split_source(run.config.data, 'test').read(np.arange(1))
  batch = {n: test[n] for n in model.names}
  values = np.array([-2.0, 0.0, 2.0], np.float32)
  out = jax.tree.map(np.asarray, caption_figures._caption_source(  # pylint: disable=protected-access
      jax.random.key(0), run.params, batch, values,
      np.array([0.5, 2.0], np.float32), np.float32(1.0), model=model,
      pair=(0, 1), relative=True, alpha_samples=2))
  z = out['traversal_z']  # [Dz, 3, H, W, C]
  assert z.shape[:2] == (model.dim_z, 3)
  # Offset 0: the same latent in every column, decoded in one batch (equal
  # up to float32 reassociation across batch rows, errors of order
  # sqrt(n) u per layer for sums of n ~ 1e3 terms: 1e-4 of the images'
  # scale leaves a wide margin).
  scale = np.abs(z).max()
  same = np.abs(z[:, 1] - z[:1, 1]).max()
  assert same <= 1e-4 * scale
  assert np.abs(z[:, 0] - z[:, 1]).max() > 100 * max(same, 1e-7 * scale)
  assert out['traversal_w'].shape[:2] == (model.dim_w, 3)
  assert np.abs(out['alpha'][0] - out['alpha'][1]).max() > 0
