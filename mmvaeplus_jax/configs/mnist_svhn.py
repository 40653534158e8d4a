"""MNIST-SVHN configs: MMVAE (Shi et al. 2019) and MMVAE+ vs DMVAE (App. F).

Usage: `python train.py --config=mmvaeplus_jax/configs/mnist_svhn.py:VARIANT`
with VARIANT one of

* `mmvae` (default): MMVAE's MNIST-SVHN recipe (iffsid/mmvae README flags;
  official_reference.md section 8): MMVAE's networks (`arch='mmvae'`:
  MNIST MLP 400, SVHN CNN), shared latent 20, no private latent, K = 30,
  the stratified "looser" bound (modality average outside the log, which
  is this project's only MoE bound), estimator `dreg`, beta 1, Laplace
  posteriors / prior / likelihoods (0.75), MNIST likelihood scaling
  3 * 32 * 32 / 784, batch 128, 30 epochs, Adam 1e-3 amsgrad, data
  `mnist_svhn/dm30` (the 30x pairing).
  Deviations: (1) MMVAE learns the prior's scale logits (`--learn-prior`);
  here p(z) is fixed (scale 1), as in MMVAE+. (2) estimator: `dreg` is this
  project's unbiased DReG (estimators.py); MMVAE's released `m_dreg_looser`
  detaches the posterior parameters and its weight hook never runs, so it
  trains with the path-only IWAE gradient (official_reference.md section
  7.1), which is not offered; `estimator=dreg_mmvae` gives MMVAE's intended
  recipe (w-bar squared on the paths), `estimator=iwae` the plain IWAE
  gradient.
* `appf_mmvaeplus`: MMVAE+ of the paper's App. F / Fig. 17 (right): DMVAE's
  networks (`arch='dmvae'`), shared latent 10, private latent from
  `dim_w=...` (Fig. 17 grows the SVHN private size 4, 6, 8, 10, 12; default
  4), K = 10, estimator `dreg`, beta 2.5, 10 epochs, Adam 1e-3 amsgrad,
  batch 128 (App. F gives no batch size; MMVAE's). `MMVAEPlus` has one
  private size Dw for all modalities, so BOTH modalities get `dim_w`
  (Fig. 17 gives DMVAE's MNIST 3 fewer: 1, 3, 5, 7, 9; the paper does not
  say how it sized MMVAE+'s two private spaces).
* `appf_dmvae`: DMVAE (Lee & Pavlovic 2021) in the same sweep (Fig. 17
  left/right): `model.name='mnist_svhn_dmvae'`, `arch='dmvae'`, shared 10,
  private `dim_w` for BOTH modalities (DMVAE's code gives MNIST 3 fewer
  than SVHN, 1 / 4 at `dim_w=4`; the model interface stacks the
  modalities' posteriors, so one private size serves all: a documented
  deviation), Gaussian posteriors (`models/dmvae.py`, ELBO), beta 2.5
  (Fig. 17 right), 10 epochs, batch 100 and Adam 1e-3 amsgrad (DMVAE's
  code, as run by MultiVae `examples/dmvae/mnist_svhn/train.py`).
* `smoke`: a few steps of the MMVAE+ App. F model (small K and batch) on
  `mnist_svhn/dm1` for tests and CI (needs a prepared or preparable
  dataset: SVHN files in data.manual_dir).

Extra `key=value` pairs after the variant: `dim_w` (App. F private size),
`beta`, `estimator`, `data` (builder config, e.g. `dm1`).

All variants read `mnist_svhn/<data>` (data.md section 3; the builder
`datasets/mnist_svhn/`) with `data.manual_dir` holding the MNIST IDX files
and SVHN's `train_32x32.mat`, `test_32x32.mat`; in memory
(`data.in_memory = True`) through the builder's `compact_source`: each item
once (~0.27 GB), not `dm30`'s ~6.5 GB of stored pairs. Evaluators: the test
bound, coherence (digit classifiers `DigitClf`, trained with
`python -m mmvaeplus_jax.tools.classifiers --dataset mnist_svhn/dm1`),
linear latent classification and FD_clf (in DigitClf's 50-d features);
`likelihood` also runs (add it to `evals.evaluators`); `figures` does not
yet handle modalities of different shapes, and FID is untested here.
"""

from mmvaeplus_jax.configs import common
from mmvaeplus_jax.models import mnist_svhn

# Fig. 17: the private sizes swept (DMVAE's code gives MNIST 3 fewer; here
# both modalities get the same size, module docstring).
APPF_DIM_W = (4, 6, 8, 10, 12)


def get_config(arg=None):
  a = common.parse_arg(arg, variant='mmvae', dim_w=4, beta=-1.0,
                       estimator='', data='')
  c = common.base_config()
  c.data.update(name='mnist_svhn', config='dm30', in_memory=True)
  c.model.update(
      num_modalities=2, modalities='mnist,svhn', width=1.0,
      family='laplace', likelihood_scale=mnist_svhn.LAPLACE_SCALE)
  c.model.arch = 'mmvae'
  c.model.mnist_lambda = mnist_svhn.MNIST_LAMBDA
  c.optim.update(lr=1e-3, amsgrad=True)
  c.evals.evaluators = 'bound,coherence,latent_classification,fd_clf'
  if a.dim_w < 1:
    raise ValueError(f'dim_w must be >= 1, got {a.dim_w}')
  if a.variant == 'mmvae':
    c.model.update(name='mnist_svhn_mmvae', arch='mmvae', dim_w=0,
                   dim_z=20)
    c.objective.update(num_samples=30, beta=1.0, estimator='dreg')
    c.train.update(batch_size=128, num_epochs=30)
  elif a.variant == 'appf_mmvaeplus':
    c.model.update(name='mnist_svhn_mmvaeplus', arch='dmvae', dim_w=a.dim_w,
                   dim_z=10)
    c.objective.update(num_samples=10, beta=2.5, estimator='dreg')
    c.train.update(batch_size=128, num_epochs=10)
  elif a.variant == 'appf_dmvae':
    c.model.update(name='mnist_svhn_dmvae', arch='dmvae', dim_w=a.dim_w,
                   dim_z=10, family='normal')
    c.objective.update(num_samples=1, beta=2.5, estimator='elbo')
    c.train.update(batch_size=100, num_epochs=10)
  elif a.variant == 'smoke':
    c.data.update(config='dm1', prefetch=1)
    c.model.update(name='mnist_svhn_mmvaeplus', arch='dmvae', dim_w=2,
                   dim_z=4)
    c.objective.update(num_samples=2, beta=2.5, estimator='dreg')
    c.train.update(batch_size=8, num_epochs=-1, num_steps=4,
                   log_every_steps=1, eval_every_steps=2,
                   checkpoint_every_steps=2, eval_examples=16,
                   grid_examples=4)
    c.evals.update(num_examples=64, batch_size=32, bound_num_samples=2,
                   num_unconditional=64, latent_num_train=200,
                   latent_max_iter=200, fd_clf_num_examples=32,
                   fd_clf_num_unconditional=32)
  else:
    raise ValueError(
        f'unknown mnist_svhn variant {a.variant!r}: use mmvae,'
        ' appf_mmvaeplus, appf_dmvae or smoke')
  if a.beta >= 0:
    c.objective.beta = a.beta
  if a.estimator:
    c.objective.estimator = a.estimator
  if a.data:
    c.data.config = a.data
  return c
