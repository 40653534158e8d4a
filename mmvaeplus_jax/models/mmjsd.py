"""MMJSD (Sutter et al. 2020): a Jensen-Shannon regulariser, dynamic prior.

Shared latent z with unimodal Gaussian posteriors q_m(z | x_m); optional
modality-specific latents w_m (dim_w > 0, the "factorized representation";
the paper's Fig. 2 shortcut ablation: shared 32, private 4..32). The
objective (thomassutter/mmjsd `networks/VAEtrimodalSVHNMNIST.py` `forward`,
`divergence_jsd`; thomassutter/MoPoE `run_epochs.py`, flag `modality_jsd`):

    L(x) = E_{z ~ (1/M) sum_m q_m(z | x_m), w_d ~ q_d(w_d | x_d)}
             [ sum_d lambda_d log p(x_d | w_d, z) ]
           - beta ( JS_pi(q_1, .., q_M, p(z))
                    + sum_d KL(q_d(w_d | x_d) || p(w)) )

    JS_pi = sum_k pi_k KL(q_k || f),  f ∝ prod_k q_k^pi_k  (dynamic prior)

over the M + 1 experts (unimodal posteriors and the prior N(0, I)), pi
uniform 1/(M + 1) (`aggregation.jensen_shannon_dynamic_prior`). The
reconstruction samples z from the MoE of the unimodal posteriors (the prior
component has weight 0 there: mmjsd `moe_fusion` sets weights[0] = 0), one
component per sample drawn at random (the official code uses contiguous
batch slices, same expectation). Conditional generation: the MoE of the
subset's unimodal posteriors (`base.mixture_sample_shared`). beta scales
both divergences (official beta_style = beta_content = 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import base
from mmvaeplus_jax.models import gaussian


@dataclasses.dataclass(frozen=True, eq=False)
class MMJSD(gaussian.GaussianMultimodalVAE):
  """MMJSD with optional private latents (module docstring)."""

  def sample_shared(self, post, subsets, eps_choice, eps):
    """q(z | x_S) = the MoE of S's unimodal posteriors."""
    return base.mixture_sample_shared(
        post, subsets, self.uniform_from_noise(eps_choice), eps)

  def joint_components(self, post):
    """q(z | x_1:M) = the MoE of the unimodal posteriors (M components)."""
    return post.loc_z, post.scale_z

  def sample_noise(self, key, num_samples: int, batch_size: int):
    """{'choice': [K, B], 'z': [K, B, Dz], 'w': [M, K, B, Dw]}."""
    k = self.check_num_samples(num_samples)
    kc, kz, kw = jax.random.split(key, 3)
    m, b = self.num_modalities, batch_size
    return {'choice': jax.random.uniform(kc, (k, b)),
            'z': self.normal(kz, (k, b, self.dim_z)),
            'w': self.normal(kw, (m, k, b, self.dim_w))}

  def divergence(self, post: types.Posteriors):
    """JS_pi(q_1, .., q_M, p(z)) `[B]` (`jensen_shannon_dynamic_prior`)."""
    js, _, _ = aggregation.jensen_shannon_dynamic_prior(
        post.loc_z, post.scale_z, prior_scale=self.prior_scale(self.dim_z))
    return js

  def bound(self, params, batch, noise, *, beta=1.0, present=None):
    """The MMJSD objective `[B]` (module docstring) on `noise`.

    With `present` (`[M, B]`, missing modalities): the MoE, the
    reconstructions and the private KLs over the observed modalities, the
    JS divergence over their experts and the prior (weights
    1 / (|P_b| + 1)): the MMJSD objective of P_b's modalities alone.
    """
    if present is not None:
      return self._masked_bound(params, batch, noise, beta, present)
    post = self.encode(params, batch)
    idx = gaussian.choose(noise['choice'], self.num_modalities)  # [K, B]
    sel_loc, sel_scale = gaussian.gather_components(post.loc_z, post.scale_z,
                                                    idx)
    z = sel_loc + sel_scale * noise['z']  # [K, B, Dz]
    w = post.loc_w[:, None] + post.scale_w[:, None] * noise['w']  # [M, K, B, Dw]
    rec = sum(
        self.log_likelihood(params, batch, name,
                            jnp.concatenate([w[d], z], axis=-1))
        for d, name in enumerate(self.names))  # [K, B]
    reg = self.divergence(post) + self.private_kl(post)  # [B]
    return jnp.mean(rec, axis=0) - beta * reg

  def _masked_bound(self, params, batch, noise, beta, present):
    """`bound` on the observed modalities `present` `[M, B]`."""
    post = self.encode(params, batch)
    count = jnp.sum(present, axis=0)  # [B]
    pos = gaussian.choose(noise['choice'], count)  # [K, B]
    idx = aggregation.nth_true(present, pos)  # [K, B] observed component
    sel_loc, sel_scale = gaussian.gather_components(post.loc_z, post.scale_z,
                                                    idx)
    z = sel_loc + sel_scale * noise['z']  # [K, B, Dz]
    w = post.loc_w[:, None] + post.scale_w[:, None] * noise['w']
    rec = sum(
        self.log_likelihood(params, batch, name,
                            jnp.concatenate([w[d], z], axis=-1), present)
        for d, name in enumerate(self.names))  # [K, B]
    dtype = post.loc_z.dtype
    pi = jnp.concatenate([present.astype(dtype),
                          jnp.ones_like(present[:1], dtype)])  # [M + 1, B]
    pi = pi / (count + 1).astype(dtype)
    js, _, _ = aggregation.jensen_shannon_dynamic_prior(
        post.loc_z, post.scale_z, prior_scale=self.prior_scale(self.dim_z),
        weights=pi)
    reg = js + self.private_kl(post, present)  # [B]
    return jnp.mean(rec, axis=0) - beta * reg
