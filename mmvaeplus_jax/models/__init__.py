"""Models: the MMVAE+ container and per-dataset networks, by name."""

from __future__ import annotations

MODEL_NAMES = ('polymnist_mmvaeplus',)

# MNIST-SVHN (models/mnist_svhn.py): MMVAE+ and MMVAE (dim_w = 0).
MNIST_SVHN_MODEL_NAMES = ('mnist_svhn_mmvaeplus', 'mnist_svhn_mmvae')
MODEL_NAMES += MNIST_SVHN_MODEL_NAMES


def _get_mnist_svhn_model(config):
  from mmvaeplus_jax.models import mnist_svhn  # pylint: disable=g-import-not-at-top
  return mnist_svhn.make_mnist_svhn(
      config.name.removeprefix('mnist_svhn_'),
      dim_w=config.dim_w, dim_z=config.dim_z, arch=config.arch,
      family=config.family, likelihood_scale=config.likelihood_scale,
      mnist_lambda=config.mnist_lambda, remat=config.get('remat', False))


def get_model(config):
  """Builds the model a `config.model` section names."""
  from mmvaeplus_jax.models import polymnist  # pylint: disable=g-import-not-at-top
  if config.name in MNIST_SVHN_MODEL_NAMES:
    return _get_mnist_svhn_model(config)
  if config.name == 'polymnist_mmvaeplus':
    return polymnist.make_mmvaeplus(
        num_modalities=config.num_modalities,
        names=config.get('modalities', ''), dim_w=config.dim_w,
        dim_z=config.dim_z, width=config.width, family=config.family,
        likelihood_scale=config.likelihood_scale,
        compute_dtype=config.get('compute_dtype', 'float32'),
        remat=config.get('remat', False),
        vmap_modalities=config.get('vmap_modalities', False),
        conv_wgrad_chunk=config.get('conv_wgrad_chunk', -1))
  raise ValueError(
      f'unknown model.name {config.name!r}; known: {MODEL_NAMES}')
