"""Small exact models shared by the tests (not a test module)."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax import train_state


class LinearEncoder(nn.Module):
  """Separate linear heads for the private (w) and shared (z) posteriors."""

  dim_w: int
  dim_z: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    if self.dim_w == 0:  # no private latent: empty heads (MMVAE, MVAE, ...)
      empty = jnp.zeros((x.shape[0], 0), x.dtype)
      return (empty, empty, nn.Dense(self.dim_z, name='loc_z')(x),
              nn.Dense(self.dim_z, name='raw_z')(x))
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


def save_random_checkpoint(model, tx, directory, step):
  """Saves a train state with random weights of `model`'s shapes (drawn
  with NumPy, scaled by 1/sqrt(fan-in)) as training saves it, at `step` in
  `directory`; returns the state. Compiling Flax's init and a train step
  would cost minutes on a busy 2-core CPU; evaluation tests need only a
  checkpoint of the right structure."""
  import jax  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.infra import checkpointing  # pylint: disable=g-import-not-at-top
  example = {m.name: np.zeros((1,) + tuple(m.event_shape), np.float32)
             for m in model.modalities}
  abstract = jax.eval_shape(model.init, jax.random.key(0), example)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.uniform(-1, 1, s.shape) / np.sqrt(
          np.prod(s.shape[:-1]) if len(s.shape) > 1 else 100), s.dtype),
      abstract)
  zero = jnp.zeros((), jnp.int32)
  state = train_state.TrainState(
      step=jnp.int32(step), params=params, opt_state=tx.init(params),
      nonfinite_consecutive=zero, nonfinite_total=zero)
  manager = checkpointing.make_manager(str(directory))
  checkpointing.save(manager, step, state)
  manager.wait_until_finished()
  return state
