"""Expert combination on stacked unimodal posteriors: PoE, MoE, MoPoE.

Pure functions shared by the multimodal VAEs that combine M unimodal
posteriors `[M, B, D]` into the posterior of a subset S of modalities:

* product of experts (MVAE, MoPoE-VAE, DMVAE, the MMJSD dynamic prior):
  Gaussian experts multiply in closed form, precision-weighted
  (`gaussian_product`, `gaussian_poe` with the prior N(0, s^2 I) as an
  extra expert);
* mixture of experts (MMVAE, MMVAE+, MMJSD): the density is
  `objectives.moe_log_prob` over `objectives.mixture_component_log_probs`
  (reused, not copied: `mixture_log_prob`);
* mixture of the products of all 2^M - 1 subsets (MoPoE-VAE:
  `all_subsets`, `mopoe_log_prob`);
* random subsets for MVAE's sub-sampled objective (`sample_subsets`).

Subsets are `[S, M]` bool masks (static NumPy, or traced arrays where a
function says so), as `models/base.py` `subset_mask`.

Shapes: `M` modalities, `S` subsets, `K` samples, `B` batch, `D` latent dims.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import objectives


def gaussian_product(loc, scale, weights):
  """Weighted product of diagonal Gaussian experts, in closed form.

  prod_n N(loc_n, scale_n^2)^(w_n) is (up to normalisation) N(mu, s^2) with
  precision 1/s^2 = sum_n w_n / scale_n^2 and
  mu = s^2 sum_n w_n loc_n / scale_n^2 (MVAE, Wu & Goodman 2018, Eq. 4; the
  weighted form is MMJSD's `alpha_poe`, thomassutter/mmjsd
  `divergence_measures/mm_div.py`). Computed from log-precisions with a
  logsumexp, as MultiVae `src/multivae/models/mvae/mvae_model.py` `poe`, so
  experts with tiny or huge variances neither overflow nor underflow.

  Args:
    loc: `[N, B, D]` expert means.
    scale: `[N, B, D]` expert standard deviations (> 0).
    weights: `[S, N]` non-negative weights (0 drops an expert; a 0/1 mask
      gives the plain product of the selected experts), or `[S, N, B]`
      per example (missing modalities); every row needs a positive entry.
      May be traced.

  Returns:
    (loc `[S, B, D]`, scale `[S, B, D]`).
  """
  weights = jnp.asarray(weights, loc.dtype)
  log_prec = -2.0 * jnp.log(scale)  # [N, B, D]
  w = weights[..., None] if weights.ndim == 3 else weights[:, :, None, None]
  # log sum_n w_n / scale_n^2, with w_n = 0 contributing nothing.
  log_prec_prod = jax.nn.logsumexp(log_prec[None], axis=1, b=w)  # [S, B, D]
  # Normalised precision weights w_n prec_n / prec: sum to 1 over n.
  # (The exponent of a dropped expert is set to 0 first, so a huge
  # precision of an unused, e.g. missing, expert cannot make 0 * inf.)
  diff = log_prec[None] - log_prec_prod[:, None]
  resp = w * jnp.exp(jnp.where(w > 0, diff, 0.0))  # [S, N, B, D]
  mu = jnp.sum(resp * loc[None], axis=1)
  return mu, jnp.exp(-0.5 * log_prec_prod)


def gaussian_poe(loc, scale, subsets, *, prior_scale=1.0, prior_expert=True):
  """q(z | x_S) ∝ p(z)^[prior] prod_{m in S} q_m(z | x_m), Gaussian experts.

  The prior expert is N(0, prior_scale^2 I) (MVAE's; MoPoE's official code
  adds it only to the full set, thomassutter/MoPoE `utils/BaseMMVae.py`
  `poe_fusion`; MultiVae's DMVAE only to sets of two or more,
  `src/multivae/models/dmvae/dmvae_model.py` `_poe`).

  Args:
    loc: `[M, B, D]` unimodal means.
    scale: `[M, B, D]` unimodal standard deviations.
    subsets: `[S, M]` bool membership (NumPy or traced), or `[S, M, B]`
      per example (missing modalities: the observed members only).
    prior_scale: scalar or `[D]` scale of the prior expert.
    prior_expert: bool, `[S]` bools (whether subset s includes the prior),
      or `[S, B]` per example.

  Returns:
    (loc `[S, B, D]`, scale `[S, B, D]`).
  """
  subsets = jnp.asarray(subsets)
  prior = jnp.broadcast_to(jnp.asarray(prior_expert, bool),
                           subsets.shape[:1] + subsets.shape[2:])  # [S(, B)]
  ploc = jnp.zeros((1,) + loc.shape[1:], loc.dtype)
  pscale = jnp.broadcast_to(jnp.asarray(prior_scale, scale.dtype),
                            (1,) + scale.shape[1:])
  experts_loc = jnp.concatenate([loc, ploc])  # [M + 1, B, D]
  experts_scale = jnp.concatenate([scale, pscale])
  weights = jnp.concatenate([subsets, prior[:, None]], axis=1)  # [S, M + 1(, B)]
  return gaussian_product(experts_loc, experts_scale, weights)


def observed_members(subsets, present):
  """`[S, M]` subsets and `[M, B]` observed modalities -> (`[S, B]` bool:
  subset s is fully observed in example b, `[S, M, B]` its members, with an
  unobserved subset's members cleared)."""
  subsets = jnp.asarray(subsets, bool)
  inside = jnp.all(~subsets[:, :, None] | present[None], axis=1)  # [S, B]
  return inside, subsets[:, :, None] & inside[:, None, :]


def nth_true(flags, position):
  """Index of the (position + 1)-th True of `flags` along axis 0.

  Args:
    flags: `[C, B]` bool.
    position: `[K, B]` int in 0 .. count - 1 per column.

  Returns:
    `[K, B]` int32.
  """
  rank = jnp.cumsum(flags.astype(jnp.int32), axis=0)  # [C, B]
  hit = rank[None] > position[:, None, :]  # [K, C, B]
  return jnp.argmax(hit, axis=1).astype(jnp.int32)


def gaussian_kl(loc, scale, prior_loc=0.0, prior_scale=1.0):
  """KL(N(loc, scale^2) || N(prior_loc, prior_scale^2)), summed over D.

  KL = sum_d log(s_p / s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2.

  Args:
    loc, scale: `[..., D]`.
    prior_loc, prior_scale: broadcastable to `[..., D]`.

  Returns:
    `[...]`.
  """
  ratio = jnp.square(scale / prior_scale)
  per_dim = 0.5 * (ratio + jnp.square((loc - prior_loc) / prior_scale)
                   - 1.0 - jnp.log(ratio))
  return jnp.sum(per_dim, axis=-1)


def jensen_shannon_dynamic_prior(loc, scale, *, prior_scale=1.0,
                                 weights=None):
  """MMJSD's regulariser: sum_k pi_k KL(q_k || f), f = prod_k q_k^pi_k.

  The M + 1 experts are the unimodal posteriors and the prior
  N(0, prior_scale^2 I); f is their pi-weighted product (the dynamic prior,
  `gaussian_product`). Sutter et al. 2020, Eq. 7 with the geometric mean as
  the abstract mean; thomassutter/mmjsd `divergence_measures/mm_div.py`
  `calc_alphaJSD_modalities` (weights `alpha_modalities`, uniform
  1/(M + 1) by default). It is >= 0, and 0 iff all experts are equal.

  Args:
    loc: `[M, B, D]` unimodal means.
    scale: `[M, B, D]` unimodal standard deviations.
    prior_scale: scalar or `[D]` scale of the prior expert.
    weights: `[M + 1]` weights pi (unimodal first, prior last) summing to 1,
      or `[M + 1, B]` per example (missing modalities: 0 drops an expert);
      None: uniform.

  Returns:
    (divergence `[B]`, dynamic prior loc `[B, D]`, scale `[B, D]`).
  """
  m = loc.shape[0]
  if weights is None:
    weights = jnp.full((m + 1,), 1.0 / (m + 1), loc.dtype)
  weights = jnp.asarray(weights, loc.dtype)
  experts_loc = jnp.concatenate([loc, jnp.zeros_like(loc[:1])])
  experts_scale = jnp.concatenate(
      [scale, jnp.broadcast_to(jnp.asarray(prior_scale, scale.dtype),
                               scale[:1].shape)])  # [M + 1, B, D]
  f_loc, f_scale = gaussian_product(experts_loc, experts_scale,
                                    weights[None])  # [1, B, D]
  kls = gaussian_kl(experts_loc, experts_scale, f_loc, f_scale)  # [M + 1, B]
  if weights.ndim == 1:
    return jnp.tensordot(weights, kls, axes=1), f_loc[0], f_scale[0]
  kls = jnp.where(weights > 0, kls, 0.0)  # a dropped expert is never read
  return jnp.sum(weights * kls, axis=0), f_loc[0], f_scale[0]


def mixture_log_prob(family, z, loc, scale):
  """log (1/S) sum_s q_s(z) for every sample z (a uniform mixture).

  Reuses `objectives.mixture_component_log_probs` and
  `objectives.moe_log_prob` (MMVAE's mixture density).

  Args:
    family: 'normal' or 'laplace' (the components' family).
    z: `[R, K, B, D]` points (R strata, e.g. the sampling component).
    loc: `[S, B, D]` component locations.
    scale: `[S, B, D]` component scales.

  Returns:
    `[R, K, B]`.
  """
  comps = objectives.mixture_component_log_probs(family, z, loc, scale)
  return objectives.moe_log_prob(comps)  # [R, K, B]


def all_subsets(num_modalities: int) -> np.ndarray:
  """The 2^M - 1 non-empty subsets as `[2^M - 1, M]` bool (static NumPy).

  Ordered by size, then lexicographically (itertools.combinations), as
  thomassutter/MoPoE `utils/BaseExperiment.py` `set_subsets` and MultiVae
  `mopoe_model.py` `all_subsets` (minus the empty set).
  """
  rows = []
  for r in range(1, num_modalities + 1):
    for c in itertools.combinations(range(num_modalities), r):
      row = np.zeros(num_modalities, bool)
      row[list(c)] = True
      rows.append(row)
  return np.stack(rows)


def mopoe_log_prob(z, loc, scale, subsets, *, prior_scale=1.0,
                   prior_expert=True):
  """log q_MoPoE(z | x_1:M) = log (1/|P|) sum_{S in P} q_PoE(z | x_S).

  Sutter et al. 2021, Eq. 8: the uniform mixture over the subset PoEs
  (`gaussian_poe`), its density by `mixture_log_prob`.

  Args:
    z: `[R, K, B, D]` points.
    loc, scale: `[M, B, D]` unimodal Gaussian posteriors.
    subsets: `[S, M]` bool, e.g. `all_subsets(M)`.
    prior_scale, prior_expert: as `gaussian_poe`.

  Returns:
    `[R, K, B]`.
  """
  sloc, sscale = gaussian_poe(loc, scale, subsets, prior_scale=prior_scale,
                              prior_expert=prior_expert)
  return mixture_log_prob('normal', z, sloc, sscale)


def subsample_candidates(num_modalities: int) -> np.ndarray:
  """MVAE's candidate random subsets: sizes 2 .. M - 1, `[C, M]` bool.

  The joint and the M unimodal subsets are always in the objective; the
  random ones are drawn from the rest (MultiVae
  `src/multivae/models/mvae/mvae_model.py` `set_subsets`). Empty `[0, M]`
  for M <= 2.
  """
  subs = all_subsets(num_modalities)
  sizes = subs.sum(1)
  out = subs[(sizes >= 2) & (sizes <= num_modalities - 1)]
  return out.reshape((-1, num_modalities))


def sample_subsets(key, num_modalities: int, num_subsets: int):
  """`num_subsets` distinct random subsets of sizes 2 .. M - 1: `[k, M]` bool.

  Uniform over `subsample_candidates(M)` without replacement (MultiVae's
  `choice(..., replace=False)`; Wu & Goodman 2018's "sub-sampled" training
  paradigm).

  Raises:
    ValueError: if more subsets are asked than there are candidates.
  """
  cands = subsample_candidates(num_modalities)
  if num_subsets == 0:
    return jnp.zeros((0, num_modalities), bool)
  if num_subsets > cands.shape[0]:
    raise ValueError(
        f'cannot draw {num_subsets} distinct subsets of sizes 2..M-1 from'
        f' M={num_modalities} modalities ({cands.shape[0]} exist)')
  idx = jax.random.choice(key, cands.shape[0], (num_subsets,), replace=False)
  return jnp.asarray(cands)[idx]


def num_subsets(num_modalities: int) -> int:
  """2^M - 1."""
  return int(math.pow(2, num_modalities)) - 1
