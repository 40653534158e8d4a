"""Base of the Gaussian-posterior baselines (MVAE, MoPoE-VAE, MMJSD, DMVAE).

These models share MMVAE+'s per-modality networks and parameters
(`networks.NetworkVAE`: `init`, `encode`, `decode`), not its auxiliary
priors or its objective; what they add is

* the scale map: the encoders' raw scale head is a LOG-VARIANCE,
  sigma = exp(raw / 2), and the fixed priors are N(0, I) (`prior_scale` =
  `scale(0)` = 1), as in the official MVAE / MoPoE / MMJSD code and MultiVae
  (`poe` on `log_covariance`). `eta` is not used. (MMVAE+'s 'normal' family
  uses softplus(raw) with prior scale 0.693 instead; official quirk 3.)
* the objective: an ELBO with analytic Gaussian KL terms and a K-sample
  Monte Carlo average of the reconstruction term (estimator 'elbo', the
  plain reparameterised gradient); each model writes it over noise drawn
  by its `sample_noise`, so tests can evaluate it on fixed samples;
* `sample_shared`: each model's posterior of a subset.

Likelihoods are the modalities' own (PolyMNIST: Laplace, scale 0.75; paper
App. D: "Laplace likelihoods and Gaussian priors and posteriors").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import networks


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMultimodalVAE(networks.NetworkVAE):
  """Gaussian posteriors with log-variance heads, N(0, I) priors.

  Subclasses implement `sample_noise(key, num_samples, batch_size,
  **options) -> dict`, `bound(params, batch, noise, *, beta, present=None,
  **options) -> [B]` and `prior_expert(subsets) -> [S] bool`. `present`
  (`[M, B]` bool or None): the observed modalities of each example; the
  bound of example b is then the model's bound on those alone.
  """

  family: str = 'normal'
  estimators = ('elbo',)
  objective_options = ()
  # Whether the model has private latents (MVAE and MoPoE here: no).
  allows_private = True

  def __post_init__(self):
    super().__post_init__()
    if self.family != 'normal':
      raise ValueError(
          f'{type(self).__name__} has Gaussian posteriors and priors: family'
          f' must be \'normal\', got {self.family!r}')
    if self.dim_w > 0 and not self.allows_private:
      raise ValueError(
          f'{type(self).__name__} has no private latents: dim_w must be 0,'
          f' got {self.dim_w}')

  # ------------------------------------------------------------ interface

  def scale(self, raw):
    """sigma = exp(raw / 2): `raw` is a log-variance (prior: raw = 0)."""
    return jnp.exp(0.5 * raw)

  def objective_noise(self, key, num_samples: int, batch_size: int,
                      **options):
    """The noise `objective` draws from `key` (`sample_noise`)."""
    return self.sample_noise(key, num_samples, batch_size, **options)

  def objective_on_noise(self, params, batch, noise, *, beta=1.0,
                         estimator=None, mask=None, **options):
    """The model's ELBO (`bound`) on given noise: `[B]`. `mask` `[B, M]`:
    the observed modalities; `bound` gets them as `present` `[M, B]`."""
    self.check_estimator(estimator)
    present = (None if mask is None else
               self.check_mask(mask, self.check_batch(batch)))
    return self.bound(params, batch, noise, beta=beta, present=present,
                      **options)

  def prior_expert(self, subsets) -> np.ndarray:
    """`[S]` bool: whether q(z | x_S) includes the prior expert."""
    raise NotImplementedError

  def subset_posterior(self, post: types.Posteriors, subsets):
    """The model's q(z | x_S): loc, scale `[S, B, Dz]` (`gaussian_poe`)."""
    return aggregation.gaussian_poe(
        post.loc_z, post.scale_z, subsets,
        prior_scale=self.prior_scale(self.dim_z),
        prior_expert=self.prior_expert(subsets))

  def sample_shared(self, post: types.Posteriors, subsets, eps_choice, eps):
    """z ~ q(z | x_S), the model's product of experts: `[S, B, Dz]`."""
    del eps_choice  # a product has one component
    loc, scale = self.subset_posterior(post, np.asarray(subsets, bool))
    return loc + scale * eps

  def joint_components(self, post: types.Posteriors):
    """q(z | x_1:M) as one component: the product of all experts."""
    return self.subset_posterior(
        post, np.ones((1, post.loc_z.shape[0]), bool))

  # ---------------------------------------------------------------- pieces

  def check_num_samples(self, num_samples) -> int:
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
      raise ValueError(
          f'num_samples (K) must be an integer >= 1, got {num_samples!r}')
    return int(num_samples)

  def normal(self, key, shape):
    return jax.random.normal(key, shape, self.dtype)

  def log_likelihood(self, params, batch, name: str, u, present=None):
    """lambda_d log p_theta_d(x_d | u) for one modality d.

    Args:
      params: model params.
      batch: `{name: [B, *event]}`.
      name: the modality d.
      u: `[*S, B, Dw + Dz]` latents (any sample axes S before B).
      present: optional `[M, B]` bool: 0 where d is not observed.

    Returns:
      `[*S, B]`.
    """
    d = self.names.index(name)
    mod = self.modalities[d]
    one = self.modality_log_likelihood_fn(mod)
    ll = mod.likelihood_scale * one(params['decoders'][name], u, batch[name])
    if present is None:
      return ll
    return jnp.where(present[d], ll, 0.0)

  def private_kl(self, post: types.Posteriors, present=None):
    """sum_d KL(q_d(w_d | x_d) || p(w)): `[B]` (0 without private latents;
    with `present` `[M, B]`, the sum over the observed d)."""
    if self.dim_w == 0:
      return jnp.zeros(post.loc_z.shape[1], post.loc_z.dtype)
    kl = aggregation.gaussian_kl(post.loc_w, post.scale_w, 0.0,
                                 self.prior_scale(self.dim_w))  # [M, B]
    if present is not None:
      kl = jnp.where(present, kl, 0.0)
    return jnp.sum(kl, axis=0)


def choose(u, num: int):
  """Index floor(u num) in 0 .. num - 1 from U(0, 1) values `u`."""
  return jnp.clip(jnp.floor(u * num).astype(jnp.int32), 0, num - 1)


def gather_components(loc, scale, idx):
  """loc[idx[k, b], b]: component parameters chosen per sample.

  Args:
    loc, scale: `[C, B, D]`.
    idx: `[K, B]` int component per sample.

  Returns:
    (loc `[K, B, D]`, scale `[K, B, D]`).
  """
  cols = jnp.arange(idx.shape[1])[None, :]
  return loc[idx, cols], scale[idx, cols]
