"""Models: the MMVAE+ container, the baselines and per-dataset networks.

Names (`config.model.name`):

* `polymnist_mmvaeplus`: MMVAE+ (`models/mmvaeplus.py`).
* `polymnist_mmvae`: MMVAE (Shi et al. 2019) = MMVAE+ with `dim_w = 0`.
* `polymnist_mvae`, `polymnist_mopoe`, `polymnist_mmjsd`,
  `polymnist_dmvae`: the Gaussian baselines (`models/{mvae,mopoe,mmjsd,
  dmvae}.py`); MVAE and MoPoE ignore `config.model.dim_w` (no private
  latents) and all four ignore `family` (Gaussian posteriors).
"""

from __future__ import annotations

MODEL_NAMES = ('polymnist_mmvaeplus', 'polymnist_mmvae', 'polymnist_mvae',
               'polymnist_mopoe', 'polymnist_mmjsd', 'polymnist_dmvae')

_GAUSSIAN = {'polymnist_mvae': 'mvae', 'polymnist_mopoe': 'mopoe',
             'polymnist_mmjsd': 'mmjsd', 'polymnist_dmvae': 'dmvae'}


def get_model(config):
  """Builds the model a `config.model` section names."""
  from mmvaeplus_jax.models import polymnist  # pylint: disable=g-import-not-at-top
  common = dict(
      num_modalities=config.num_modalities,
      names=config.get('modalities', ''), dim_z=config.dim_z,
      width=config.width, likelihood_scale=config.likelihood_scale,
      compute_dtype=config.get('compute_dtype', 'float32'),
      remat=config.get('remat', False),
      vmap_modalities=config.get('vmap_modalities', False),
      conv_wgrad_chunk=config.get('conv_wgrad_chunk', -1))
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
