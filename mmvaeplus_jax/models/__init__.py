"""Models: the MMVAE+ container, the baselines and per-dataset networks.

Names (`config.model.name`):

* `polymnist_mmvaeplus`: MMVAE+ (`models/mmvaeplus.py`).
* `polymnist_mmvae`: MMVAE (Shi et al. 2019) = MMVAE+ with `dim_w = 0`.
* `polymnist_mvae`, `polymnist_mopoe`, `polymnist_mmjsd`,
  `polymnist_dmvae`: the Gaussian baselines (`models/{mvae,mopoe,mmjsd,
  dmvae}.py`); MVAE and MoPoE ignore `config.model.dim_w` (no private
  latents) and all four ignore `family` (Gaussian posteriors).
* `mnist_svhn_mmvaeplus`, `mnist_svhn_mmvae`, `mnist_svhn_dmvae`: the
  MNIST-SVHN networks (`models/mnist_svhn.py`, MMVAE's or DMVAE's by
  `config.model.arch`) under MMVAE+, MMVAE and DMVAE.
* `cub_mmvaeplus`, `cub_mmvae`, `cub_mvae`, `cub_mopoe`: the CUB
  Image-Captions networks (`models/cub.py`; `config.model.vocab_size` from
  the data, `image_lambda`, `text_lambda` the likelihood scalings).
"""

from __future__ import annotations

from mmvaeplus_jax.models import base
from mmvaeplus_jax.models import cub
from mmvaeplus_jax.models import dmvae
from mmvaeplus_jax.models import mnist_svhn
from mmvaeplus_jax.models import polymnist

MODEL_NAMES = ('polymnist_mmvaeplus', 'polymnist_mmvae', 'polymnist_mvae',
               'polymnist_mopoe', 'polymnist_mmjsd', 'polymnist_dmvae')
# The models `model.dtype='float64'` supports.
FLOAT64_MODEL_NAMES = MODEL_NAMES

_GAUSSIAN = {'polymnist_mvae': 'mvae', 'polymnist_mopoe': 'mopoe',
             'polymnist_mmjsd': 'mmjsd', 'polymnist_dmvae': 'dmvae'}

# MNIST-SVHN (models/mnist_svhn.py): MMVAE+ and MMVAE (dim_w = 0).
MNIST_SVHN_MODEL_NAMES = ('mnist_svhn_mmvaeplus', 'mnist_svhn_mmvae',
                          'mnist_svhn_dmvae')
MODEL_NAMES += MNIST_SVHN_MODEL_NAMES

# CUB Image-Captions (models/cub.py): image + caption modalities.
CUB_MODEL_NAMES = tuple(f'cub_{k}' for k in cub.KINDS)
MODEL_NAMES += CUB_MODEL_NAMES


def _get_cub_model(config):
  if config.vocab_size < 1:
    raise ValueError(
        'model.vocab_size must be the dataset\'s vocabulary size'
        f' (its metadata `vocabulary_size`), got {config.vocab_size}')
  return cub.make_cub(
      config.name.removeprefix('cub_'), vocab_size=config.vocab_size,
      dim_w=config.dim_w, dim_z=config.dim_z, family=config.family,
      remat=config.remat, width=config.width,
      image_scale=config.likelihood_scale, image_lambda=config.image_lambda,
      text_lambda=config.text_lambda)


def _get_mnist_svhn_model(config):
  if config.name == 'mnist_svhn_dmvae':
    mods = mnist_svhn.modalities(
        config.dim_w, config.dim_z, arch=config.arch,
        likelihood_scale=config.likelihood_scale,
        mnist_lambda=config.mnist_lambda)
    return dmvae.DMVAE(mods, dim_w=config.dim_w, dim_z=config.dim_z,
                       family='normal', remat=config.remat)
  return mnist_svhn.make_mnist_svhn(
      config.name.removeprefix('mnist_svhn_'),
      dim_w=config.dim_w, dim_z=config.dim_z, arch=config.arch,
      family=config.family, likelihood_scale=config.likelihood_scale,
      mnist_lambda=config.mnist_lambda, remat=config.remat)


def cpu_microbatch_limits(config):
  """(examples, decoder rows) per device call of the train step's gradient
  under `train.microbatch_size=-1` on CPU (`training/microbatch.py:
  resolve_microbatch`), or None: one call.

  PolyMNIST, measured on the 2-core CPU (bench/RESULTS.md, 2026-12-03): at
  full width the per-example step time grows once a call holds more than
  16 examples at K = 1 (80 decoder rows: 0.24-0.25 s per example; B = 128 in
  one call 0.32) and stays flat at K = 10 with 4 examples (200 rows); at
  widths 1/4 and 1/8 one call on B = 32 was 17-20 % faster than
  microbatches. Activations per row scale with the width, so the limits
  scale with 1 / width. MNIST-SVHN: not measured, one call.
  """
  if config.name in MNIST_SVHN_MODEL_NAMES + CUB_MODEL_NAMES:
    return None
  width = float(config.width)
  return 16.0 / width, 200.0 / width


def get_model(config):
  """Builds the model a `config.model` section names."""
  dtype = base.check_dtype(config.get('dtype', 'float32'))
  if dtype != 'float32' and config.name not in FLOAT64_MODEL_NAMES:
    raise ValueError(
        f"model.dtype={dtype!r} is supported by the PolyMNIST models"
        f" {FLOAT64_MODEL_NAMES} only, got model.name {config.name!r}")
  if config.name in MNIST_SVHN_MODEL_NAMES:
    return _get_mnist_svhn_model(config)
  if config.name in CUB_MODEL_NAMES:
    return _get_cub_model(config)
  common = dict(
      num_modalities=config.num_modalities,
      names=config.modalities, dim_z=config.dim_z,
      width=config.width, likelihood_scale=config.likelihood_scale,
      compute_dtype=config.compute_dtype, dtype=dtype, remat=config.remat,
      vmap_modalities=config.vmap_modalities,
      conv_wgrad_chunk=config.conv_wgrad_chunk, conv_impl=config.conv_impl)
  if config.name == 'polymnist_mmvaeplus':
    return polymnist.make_mmvaeplus(dim_w=config.dim_w, family=config.family,
                                    **common)
  if config.name == 'polymnist_mmvae':
    return polymnist.make_mmvaeplus(dim_w=0, family=config.family, **common)
  if config.name in _GAUSSIAN:
    kind = _GAUSSIAN[config.name]
    dim_w = 0 if kind in ('mvae', 'mopoe') else config.dim_w
    return polymnist.make_gaussian_model(kind, dim_w=dim_w, **common)
  raise ValueError(
      f'unknown model.name {config.name!r}; known: {MODEL_NAMES}')


def objective_options(objective_cfg, model) -> dict:
  """The model's extra objective options (`model.objective_options`) read
  from `config.objective`.

  Raises:
    ValueError: the config lacks one of them.
  """
  missing = [k for k in model.objective_options if k not in objective_cfg]
  if missing:
    raise ValueError(
        f'{type(model).__name__} needs config.objective keys {missing}')
  return {k: objective_cfg[k] for k in model.objective_options}
