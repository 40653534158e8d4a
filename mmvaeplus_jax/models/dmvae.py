"""DMVAE (Lee & Pavlovic 2021): a shared PoE latent plus private latents.

Each modality has a private latent w_d ~ q_d(w_d | x_d) and a shared
posterior q_m(z | x_m); the joint shared posterior is their product with
the prior expert (for two or more experts; a single expert is used alone,
MultiVae `src/multivae/models/dmvae/dmvae_model.py` `_poe`). The objective
(MultiVae `forward` / `_compute_elbo`) sums the joint ELBO and the M
"cross" ELBOs, in which every modality is reconstructed from the shared
latent of ONE modality and its own private latent:

    L(x) = sum_{e in {joint, 1, .., M}}
             E_{z ~ q_e(z | x), w_d ~ q_d(w_d | x_d)}
               [ sum_d lambda_d log p(x_d | w_d, z) ]
             - beta ( KL(q_e(z | x) || p(z)) + sum_d KL(q_d(w_d) || p(w)) )

with q_joint = PoE(q_1, .., q_M, p) and q_e = q_m(z | x_m). Private
samples are drawn afresh in each ELBO (as MultiVae). KL terms analytic.
beta scales the shared and private KLs alike (MultiVae weights the private
KLs by separate `modalities_specific_betas`, default 1).
Conditional generation: the same PoE over the subset.

The authors' code (seqam-lab/DMVAE `mnist_svhn/main.py` `elbo`, two
modalities) differs from MultiVae's form used here: it sums per-TARGET
terms, log p(x_d | w_d, z_e) - KL(w_d) - KL(z_e) for z_e the target's own,
the other modality's and the PoE shared latent (so each shared KL counts
once per target), zeroes the PoE reconstruction terms while keeping their
KLs, and estimates the KLs by probtorch's minibatch-weighted TC
decomposition (`objectives/mws_tcvae.py`, weights `beta1`, `beta2`) rather
than analytically. Not reproduced here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax.models import gaussian


@dataclasses.dataclass(frozen=True, eq=False)
class DMVAE(gaussian.GaussianMultimodalVAE):
  """DMVAE (module docstring)."""

  def prior_expert(self, subsets):
    """The prior expert joins products of two or more experts."""
    return np.asarray(subsets, bool).sum(axis=1) >= 2

  def elbo_subsets(self) -> np.ndarray:
    """`[1 + M, M]`: the joint, then the M unimodal shared posteriors."""
    m = self.num_modalities
    return np.concatenate([np.ones((1, m), bool), np.eye(m, dtype=bool)])

  def sample_noise(self, key, num_samples: int, batch_size: int):
    """{'z': [1 + M, K, B, Dz], 'w': [1 + M, M, K, B, Dw]}."""
    k = self.check_num_samples(num_samples)
    kz, kw = jax.random.split(key)
    m, b = self.num_modalities, batch_size
    return {'z': self.normal(kz, (1 + m, k, b, self.dim_z)),
            'w': self.normal(kw, (1 + m, m, k, b, self.dim_w))}

  def bound(self, params, batch, noise, *, beta=1.0, present=None):
    """The sum of DMVAE's M + 1 ELBOs `[B]` (module docstring).

    With `present` (`[M, B]`, missing modalities): the joint ELBO over the
    observed modalities (prior expert when two or more), the unimodal ELBOs
    of the observed ones, each reconstructing the observed targets, private
    KLs of the observed: DMVAE's bound on P_b's modalities alone.
    """
    if present is not None:
      return self._masked_bound(params, batch, noise, beta, present)
    post = self.encode(params, batch)
    loc, scale = self.subset_posterior(post, self.elbo_subsets())  # [E, B, Dz]
    z = loc[:, None] + scale[:, None] * noise['z']  # [E, K, B, Dz]
    w = (post.loc_w[None, :, None] + post.scale_w[None, :, None]
         * noise['w'])  # [E, M, K, B, Dw]
    rec = sum(
        self.log_likelihood(params, batch, name,
                            jnp.concatenate([w[:, d], z], axis=-1))
        for d, name in enumerate(self.names))  # [E, K, B]
    kl_z = aggregation.gaussian_kl(loc, scale, 0.0,
                                   self.prior_scale(self.dim_z))  # [E, B]
    elbos = (jnp.mean(rec, axis=1)
             - beta * (kl_z + self.private_kl(post)[None]))  # [E, B]
    return jnp.sum(elbos, axis=0)

  def _masked_bound(self, params, batch, noise, beta, present):
    """`bound` on the observed modalities `present` `[M, B]`."""
    post = self.encode(params, batch)
    m, b = present.shape
    members = jnp.concatenate(
        [present[None], jnp.broadcast_to(jnp.eye(m, dtype=bool)[:, :, None],
                                         (m, m, b))])  # [E, M, B]
    valid = jnp.concatenate([jnp.ones((1, b), bool), present])  # [E, B]
    prior = jnp.sum(members, axis=1) >= 2  # [E, B]
    loc, scale = aggregation.gaussian_poe(
        post.loc_z, post.scale_z, members,
        prior_scale=self.prior_scale(self.dim_z), prior_expert=prior)
    z = loc[:, None] + scale[:, None] * noise['z']  # [E, K, B, Dz]
    w = (post.loc_w[None, :, None] + post.scale_w[None, :, None]
         * noise['w'])  # [E, M, K, B, Dw]
    rec = sum(
        self.log_likelihood(params, batch, name,
                            jnp.concatenate([w[:, d], z], axis=-1), present)
        for d, name in enumerate(self.names))  # [E, K, B]
    kl_z = aggregation.gaussian_kl(loc, scale, 0.0,
                                   self.prior_scale(self.dim_z))  # [E, B]
    elbos = (jnp.mean(rec, axis=1)
             - beta * (kl_z + self.private_kl(post, present)[None]))
    return jnp.sum(jnp.where(valid, elbos, 0.0), axis=0)
