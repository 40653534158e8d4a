"""Small exact models shared by the tests (not a test module)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import distributions
from mmvaeplus_jax.models import mmvaeplus


class LinearEncoder(nn.Module):
  """Separate linear heads for the private (w) and shared (z) posteriors."""

  dim_w: int
  dim_z: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    return (
        nn.Dense(self.dim_w, name='loc_w')(x),
        nn.Dense(self.dim_w, name='raw_w')(x),
        nn.Dense(self.dim_z, name='loc_z')(x),
        nn.Dense(self.dim_z, name='raw_z')(x),
    )


class LinearDecoder(nn.Module):
  dim_x: int

  @nn.compact
  def __call__(self, u):
    return nn.Dense(self.dim_x, name='out')(u)


def gaussian_log_likelihood(sigma_x):
  def ll(x, out):
    return distributions.normal_log_prob(x, out, sigma_x)
  return ll


def make_toy(num_modalities, *, dim_w=2, dim_z=2, dim_x=3, family='normal',
             sigma_x=0.5, vmap_modalities=False):
  ll = gaussian_log_likelihood(sigma_x)
  mods = tuple(
      mmvaeplus.Modality(
          name=f'm{i}',
          encoder=LinearEncoder(dim_w, dim_z),
          decoder=LinearDecoder(dim_x),
          log_likelihood=ll,
          event_shape=(dim_x,),
      )
      for i in range(num_modalities)
  )
  return mmvaeplus.MMVAEPlus(mods, dim_w=dim_w, dim_z=dim_z, family=family,
                             vmap_modalities=vmap_modalities)


def toy_batch(model, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  return {
      m.name: jnp.asarray(
          rng.normal(size=(batch_size,) + m.event_shape), jnp.float32)
      for m in model.modalities
  }
