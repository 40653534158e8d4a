"""MVAE (Wu & Goodman 2018): product of experts with a prior expert.

q(z | x_S) ∝ p(z) prod_{m in S} q_m(z | x_m) (`aggregation.gaussian_poe`),
trained on the sum of subset ELBOs (the "sub-sampled" objective; MultiVae
`src/multivae/models/mvae/mvae_model.py` `forward` / `_compute_elbo_subset`):

    L(x) = sum_{S in {1:M, {1}, .., {M}} ∪ R} ELBO_S(x)
    ELBO_S(x) = E_{q(z | x_S)}[ sum_{d in S} lambda_d log p(x_d | z) ]
                - beta KL(q(z | x_S) || p(z))

R: `mvae_subsets` subsets of sizes 2 .. M - 1 drawn uniformly without
replacement at each step (`aggregation.sample_subsets`; 0 = none, MultiVae
`k`). Each subset reconstructs only its own modalities. The KL is analytic;
the expectation a K-sample average. No private latents (dim_w = 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax.models import gaussian


@dataclasses.dataclass(frozen=True, eq=False)
class MVAE(gaussian.GaussianMultimodalVAE):
  """MVAE with the sub-sampled ELBO (module docstring); `dim_w` must be 0."""

  allows_private = False
  objective_options = ('mvae_subsets',)

  def prior_expert(self, subsets):
    return np.ones(np.shape(subsets)[0], bool)  # always (Wu & Goodman)

  def fixed_subsets(self) -> np.ndarray:
    """`[1 + M, M]`: the joint, then the M unimodal subsets."""
    m = self.num_modalities
    return np.concatenate([np.ones((1, m), bool), np.eye(m, dtype=bool)])

  def sample_noise(self, key, num_samples: int, batch_size: int, *,
                   mvae_subsets: int = 0):
    """{'subsets': [R, M] bool random subsets, 'z': [1 + M + R, K, B, Dz]}."""
    k = self.check_num_samples(num_samples)
    ks, kz = jax.random.split(key)
    rand = aggregation.sample_subsets(ks, self.num_modalities,
                                      int(mvae_subsets))
    s = 1 + self.num_modalities + rand.shape[0]
    return {'subsets': rand,
            'z': self.normal(kz, (s, k, batch_size, self.dim_z))}

  def bound(self, params, batch, noise, *, beta=1.0, mvae_subsets: int = 0,
            present=None):
    """Sum of the subset ELBOs `[B]` (module docstring) on `noise`.

    With `present` (`[M, B]`, missing modalities): the joint ELBO is that
    of the observed modalities, and a unimodal or random subset's ELBO
    counts only in examples that observe all its modalities (the sum over
    the subsets of MVAE restricted to the observed set).
    """
    del mvae_subsets  # fixed by noise['subsets']
    m = self.num_modalities
    post = self.encode(params, batch)
    subsets = jnp.concatenate(
        [jnp.asarray(self.fixed_subsets()), noise['subsets']])  # [S, M]
    inside = None
    if present is not None:  # each subset's observed members [S, M, B]
      inside, subsets = aggregation.observed_members(subsets, present)
      subsets = subsets.at[0].set(present)  # the joint: every observed one
      inside = inside.at[0].set(True)
    loc, scale = aggregation.gaussian_poe(
        post.loc_z, post.scale_z, subsets,
        prior_scale=self.prior_scale(self.dim_z), prior_expert=True)
    z = loc[:, None] + scale[:, None] * noise['z']  # [S, K, B, Dz]
    # Reconstructions: modality d decodes the joint sample, its own
    # unimodal sample and the random subsets' samples (masked); each subset
    # reconstructs its (observed) members.
    rec_joint = 0.0
    rec_uni = []
    rec_rand = 0.0
    for d, name in enumerate(self.names):
      zd = jnp.concatenate([z[:1], z[1 + d:2 + d], z[1 + m:]])  # [2 + R, ..]
      ll = self.log_likelihood(params, batch, name, zd)  # [2 + R, K, B]
      rec_uni.append(ll[1])  # with a mask: counts where d is (`inside`)
      if present is None:
        rec_joint += ll[0]
        mask = noise['subsets'][:, d].astype(ll.dtype)  # [R]
        rec_rand += mask[:, None, None] * ll[2:]
      else:
        rec_joint += jnp.where(present[d], ll[0], 0.0)
        rec_rand += jnp.where(subsets[1 + m:, d][:, None], ll[2:], 0.0)
    rec = jnp.concatenate(
        [rec_joint[None], jnp.stack(rec_uni),
         jnp.broadcast_to(rec_rand, (noise['subsets'].shape[0],)
                          + rec_joint.shape)])  # [S, K, B]
    kl = aggregation.gaussian_kl(loc, scale, 0.0,
                                 self.prior_scale(self.dim_z))  # [S, B]
    elbos = jnp.mean(rec, axis=1) - beta * kl  # [S, B]
    if inside is not None:  # subsets with a missing member count nothing
      elbos = jnp.where(inside, elbos, 0.0)
    return jnp.sum(elbos, axis=0)
