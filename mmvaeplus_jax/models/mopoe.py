"""MoPoE-VAE (Sutter et al. 2021): a mixture of the PoEs of all subsets.

q(z | x_1:M) = (1/|P|) sum_{S in P} q_PoE(z | x_S), P the 2^M - 1
non-empty subsets (`aggregation.all_subsets`). Following the official code
(thomassutter/MoPoE `utils/BaseMMVae.py` `poe_fusion`, flag `joint_elbo`),
only the full set's product includes the prior expert N(0, I); the other
subsets multiply their unimodal experts alone. The objective (official
`run_epochs.py` `basic_routine_epoch`; MultiVae
`src/multivae/models/mopoe/mopoe_model.py` `forward`):

    L(x) = E_{q_MoPoE(z | x_1:M)}[ sum_d lambda_d log p(x_d | z) ]
           - beta (1/|P|) sum_{S in P} KL(q_PoE(z | x_S) || p(z))

The KL term is the SUBSET AVERAGE of the analytic KLs (`calc_group_
divergence_moe` with uniform weights): by convexity it upper-bounds
KL(q_MoPoE || p), so L is a lower bound on the MoPoE ELBO. The
reconstruction expectation is estimated with one mixture component per
sample: subset s ~ U(P) per (k, b), then z ~ q_PoE(z | x_s). The official
code assigns components to contiguous batch slices of size B / |P|
(`mixture_component_selection`); drawing them per example gives the same
expectation and a per-example value. No private latents (dim_w = 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax.models import gaussian


@dataclasses.dataclass(frozen=True, eq=False)
class MoPoE(gaussian.GaussianMultimodalVAE):
  """MoPoE-VAE (module docstring); `dim_w` must be 0."""

  allows_private = False

  def prior_expert(self, subsets):
    """Only the full set includes the prior expert (official code)."""
    return np.asarray(subsets, bool).all(axis=1)

  def joint_components(self, post):
    """q(z | x_1:M): the 2^M - 1 subset products, equally weighted."""
    return self.subset_posterior(
        post, aggregation.all_subsets(post.loc_z.shape[0]))

  def sample_noise(self, key, num_samples: int, batch_size: int):
    """{'choice': [K, B] U(0, 1) picking the subset, 'z': [K, B, Dz]}."""
    k = self.check_num_samples(num_samples)
    kc, kz = jax.random.split(key)
    return {'choice': jax.random.uniform(kc, (k, batch_size)),
            'z': self.normal(kz, (k, batch_size, self.dim_z))}

  def bound(self, params, batch, noise, *, beta=1.0, present=None):
    """The MoPoE objective `[B]` (module docstring) on `noise`.

    With `present` (`[M, B]`, missing modalities): the mixture runs over the
    non-empty subsets of the observed set P_b (the prior expert joins P_b
    itself, the "full set" of the example), reconstructions over P_b, the
    KL average over those subsets: the MoPoE objective of P_b's modalities
    alone, on the same noise.
    """
    if present is not None:
      return self._masked_bound(params, batch, noise, beta, present)
    post = self.encode(params, batch)
    subsets = aggregation.all_subsets(self.num_modalities)  # [P, M]
    loc, scale = self.subset_posterior(post, subsets)  # [P, B, Dz]
    idx = gaussian.choose(noise['choice'], subsets.shape[0])  # [K, B]
    sel_loc, sel_scale = gaussian.gather_components(loc, scale, idx)
    z = sel_loc + sel_scale * noise['z']  # [K, B, Dz]
    rec = sum(self.log_likelihood(params, batch, name, z)
              for name in self.names)  # [K, B]
    kl = aggregation.gaussian_kl(loc, scale, 0.0,
                                 self.prior_scale(self.dim_z))  # [P, B]
    return jnp.mean(rec, axis=0) - beta * jnp.mean(kl, axis=0)

  def _masked_bound(self, params, batch, noise, beta, present):
    """`bound` on the observed modalities `present` `[M, B]`."""
    post = self.encode(params, batch)
    subsets = aggregation.all_subsets(self.num_modalities)  # [P, M]
    inside, members = aggregation.observed_members(subsets, present)
    full = jnp.all(jnp.asarray(subsets)[:, :, None] == present[None],
                   axis=1)  # [P, B]: the subset is P_b itself
    # A subset outside P_b becomes the prior alone (finite; never used).
    loc, scale = aggregation.gaussian_poe(
        post.loc_z, post.scale_z, members,
        prior_scale=self.prior_scale(self.dim_z), prior_expert=full | ~inside)
    count = jnp.sum(inside, axis=0)  # [B]: 2^|P_b| - 1
    pos = gaussian.choose(noise['choice'], count)  # [K, B]
    idx = aggregation.nth_true(inside, pos)  # [K, B] subset index
    sel_loc, sel_scale = gaussian.gather_components(loc, scale, idx)
    z = sel_loc + sel_scale * noise['z']  # [K, B, Dz]
    rec = sum(self.log_likelihood(params, batch, name, z, present)
              for name in self.names)  # [K, B]
    kl = aggregation.gaussian_kl(loc, scale, 0.0,
                                 self.prior_scale(self.dim_z))  # [P, B]
    kl = jnp.sum(jnp.where(inside, kl, 0.0), axis=0) / count
    return jnp.mean(rec, axis=0) - beta * kl
