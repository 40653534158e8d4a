"""Every model through the same trainer step and the same evaluators.

One test per model (`models.MODEL_NAMES`, PolyMNIST): a smoke config
changing only `config.model` (`polymnist.py:smoke,model=<name>`), a train
state with random weights saved as training saves it, then `eval.py`'s
runner with every evaluator but FID (no Inception weights offline): the
bound, conditional / all-subsets / unconditional coherence, FD_clf, latent
classification, log-likelihood and the figures. No evaluator has a
model-specific branch, so this runs the same code for every model.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax import models
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import runner
from mmvaeplus_jax.training import step as step_lib
from mmvaeplus_jax.infra import rundir
from mmvaeplus_jax import train_state
import toy_models

POLYMNIST_MODELS = tuple(n for n in models.MODEL_NAMES
                         if n.startswith('polymnist_'))
# Every model is in the slow suite (CI runs it after the default suite;
# ~70 s each, mostly compilation); MMVAE+'s evaluators are also tested in
# the default suite (eval_test.py, diversity_test.py, ...).
DEFAULT = ()
PARAMS = [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow)
          for n in POLYMNIST_MODELS]
EVALUATORS = ('bound,coherence,fd_clf,latent_classification,diversity,'
              'likelihood,figures,grids')


def smoke_config(name, data_dir):
  config = polymnist_configs.get_config(
      f'smoke,model={name.removeprefix("polymnist_")}')
  assert config.model.name == name
  config.model.num_modalities = 3
  config.data.data_dir = data_dir
  return config


@pytest.mark.parametrize('name', PARAMS)
def test_every_model_through_every_evaluator(name, data_dir, tmp_path):
  config = smoke_config(name, data_dir)
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  workdir = tmp_path / 'run'
  state = toy_models.save_random_checkpoint(model, tx,
                                           workdir / 'checkpoints', 2)
  rundir.save_config(config, str(workdir))
  clf_dir = tmp_path / 'clf'
  classifiers.save_classifiers(clf_dir, {
      n: classifiers.init(jax.random.key(i))
      for i, n in enumerate(model.names)})
  config.evals.update(
      evaluators=EVALUATORS, num_examples=24, batch_size=8,
      classifier_dir=str(clf_dir), all_subsets=True, num_unconditional=16,
      fd_clf_num_examples=16, fd_clf_num_unconditional=16,
      fid_drop_last_partial_batch=False, fid_batch_size=8,
      latent_num_train=40, latent_max_iter=50,
      likelihood_num_examples=8, likelihood_num_samples=4,
      likelihood_chunk=2, likelihood_batch_size=8, figures_samples=1,
      figures_unconditional=2, traversal_steps=3, alpha_grid=(0.5, 1.0),
      alpha_grid_samples=1, diversity_num_examples=6, diversity_repeats=3)

  out = runner.evaluate(config, str(workdir))

  assert out['step'] == 2 and not out['skipped'], out['skipped']
  names = model.names
  finite = ['eval/bound', 'coherence/cond/mean', 'coherence/uncond',
            'fd_clf/cond/mean/with_self', 'fd_clf/uncond/mean',
            'latent/mean/z', 'latent/all', 'likelihood/log_px',
            'diversity/cond/mean', 'diversity/real/mean', 'diversity/ratio']
  finite += [f'coherence/cond/{s}->{t}' for s in names for t in names
             if s != t]
  for k in finite:
    assert k in out and math.isfinite(out[k]), (k, out.get(k))
  assert 0.0 <= out['coherence/cond/mean'] <= 1.0
  # Private representations exactly when the model has private latents.
  has_w = model.dim_w > 0
  assert ('latent/mean/w' in out) == has_w
  assert ('latent/mean/u' in out) == has_w
  files = out['figures/files']
  assert any(f.startswith('cross_modal_') for f in files)
  assert any(f.startswith('traversal_z_') for f in files)
  assert any(f.startswith('private_conditioning_') for f in files) == has_w
  # The trainer's step runs the model's objective with its default
  # estimator: a finite loss and gradient.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  batch = {n: jnp.asarray(np.random.default_rng(1).uniform(
      0, 1, (4, 28, 28, 3)), jnp.float32) for n in names}
  new, metrics = jax.jit(step_lib.make_train_step(config, model, tx))(
      state, batch, jax.random.key(3))
  assert np.isfinite(float(metrics['train/loss']))
  assert np.isfinite(float(metrics['train/grad_norm']))
  assert int(new.step) == 1 and int(new.nonfinite_total) == 0
