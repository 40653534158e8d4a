"""CUB Image-Captions configs (official_reference.md section 8).

Usage: `python train.py --config=mmvaeplus_jax/configs/cub.py:VARIANT`
with VARIANT one of

* `paper`: the paper's recipe for `model=` on the `official` data (the
  cub.zip layout, a manual directory: docs/cub.md):
  - `mmvaeplus` (default), `mmvae`: Normal latents, K = 10, DReG (`dreg`,
    our unbiased DReG; the official code trained with the IWAE gradient,
    `estimator=iwae` reproduces it), beta 1, w = 16, z = 48 (MMVAE: one
    48-dim shared latent), Adam 1e-3 amsgrad, batch 32, 50 epochs;
  - `mvae`, `mopoe`: Gaussian, ELBO (K = 1), beta 9, lr 5e-4, 150 epochs,
    z = 48, batch 32.
  Likelihood scalings image 32 / (3 * 64 * 64), text 5.0; image Laplace
  scale 0.01; vocabulary 1,590.
* `cub23` (default): the same recipe shape sized for a 2-core CPU on the
  offline CUB-23 data (`../shared/data` as manual_dir): what is reduced is
  the width (1/8 of every channel count), K = 1 (IWAE = ELBO gradient for
  MMVAE+ / MMVAE), batch 16 and the steps (2,000); latents, beta, lr,
  likelihoods and scalings are the paper's; vocabulary 509 (CUB-23's).
* `smoke`: a few steps of a tiny model for tests (width 1/32, K = 2, B = 4).

`eval.py` runs `EVALUATORS` on these runs: the test bound, species coherence
and FD_clf (with `evals.classifier_dir`), latent classification, the
likelihood, the weight-free colour coherence (`evaluation/colour.py`) and the
caption <-> image figures, traversals and alpha grid
(`evaluation/caption_figures.py`), and the alpha sweep (with
`evals.classifier_dir`).

Extra `key=value` pairs: `model` (mmvaeplus, mmvae, mvae, mopoe), `beta`,
`estimator`, `data` (`cub23` or `official`), `vocab_size` (the dataset's
`vocabulary_size`; default by data config: 509 for cub23, 1,590 official).
"""

from mmvaeplus_jax.configs import common

MODELS = ('mmvaeplus', 'mmvae', 'mvae', 'mopoe')
EVALUATORS = ('bound,coherence,fd_clf,latent_classification,likelihood,'
              'colour,captions,alpha_sweep')
VOCABULARY_SIZES = {'cub23': 509, 'official': 1590}


def _set_model(c, model):
  c.model.name = f'cub_{model}'
  if model != 'mmvaeplus':
    c.model.dim_w = 0
  if model in ('mvae', 'mopoe'):
    c.model.family = 'normal'
    c.objective.update(estimator='elbo', num_samples=1, beta=9.0)
    c.optim.lr = 5e-4


def get_config(arg=None):
  a = common.parse_arg(arg, variant='cub23', model='mmvaeplus', beta=-1.0,
                       estimator='', data='', vocab_size=-1)
  if a.model not in MODELS:
    raise ValueError(f'unknown model {a.model!r}: use one of {MODELS}')
  c = common.base_config()
  c.data.update(name='cub_image_captions', config='cub23',
                manual_dir='../shared/data')
  c.model.update(dim_w=16, dim_z=48, family='normal', width=1.0,
                 likelihood_scale=0.01, image_lambda=32.0 / (3 * 64 * 64),
                 text_lambda=5.0, vocab_size=-1)
  c.objective.update(num_samples=10, beta=1.0, estimator='dreg')
  c.optim.update(lr=1e-3, amsgrad=True)
  c.train.update(batch_size=32, num_epochs=50, microbatch_size=0,
                 final_coherence=False)
  # What eval.py runs on CUB: the pixel-only evaluators (figures, samples,
  # diversity, fid) would refuse the caption; `colour` and `captions` are
  # the image-caption ones; coherence / fd_clf need evals.classifier_dir.
  c.evals.evaluators = EVALUATORS
  # Fig. 21: alpha 0.1..3.0 in steps of 0.1, ten images from one caption.
  c.evals.update(alpha_grid=tuple(round(0.1 * i, 1) for i in range(1, 31)),
                 alpha_grid_samples=10)
  if a.variant == 'paper':
    c.data.update(config='official', manual_dir='')
    if a.model in ('mvae', 'mopoe'):
      c.train.num_epochs = 150
  elif a.variant == 'cub23':
    c.model.width = 0.125
    c.objective.num_samples = 1
    c.train.update(batch_size=16, num_epochs=-1, num_steps=2000,
                   log_every_steps=100, eval_every_steps=1000,
                   checkpoint_every_steps=1000, eval_examples=320)
  elif a.variant == 'smoke':
    c.model.update(width=1 / 32, dim_w=4, dim_z=4)
    c.objective.num_samples = 2
    c.train.update(batch_size=4, num_epochs=-1, num_steps=3,
                   log_every_steps=1, eval_every_steps=3,
                   checkpoint_every_steps=3, eval_examples=8,
                   grid_examples=2)
    c.data.prefetch = 1
    c.evals.update(evaluators='bound', num_examples=8, batch_size=4,
                   bound_num_samples=2)
  else:
    raise ValueError(
        f'unknown cub variant {a.variant!r}: use paper, cub23 or smoke')
  if a.data:
    c.data.config = a.data
  _set_model(c, a.model)
  c.model.vocab_size = (a.vocab_size if a.vocab_size > 0
                        else VOCABULARY_SIZES[c.data.config])
  if a.beta >= 0:
    c.objective.beta = a.beta
  if a.estimator:
    c.objective.estimator = a.estimator
  return c
