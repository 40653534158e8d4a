"""The MMVAE+ objective as pure per-example functions.

Notation (official_reference.md section 7, paper Appendix B): M modalities,
K importance samples, B batch, beta the regularisation weight, lambda_d the
likelihood scaling. For stratum (source) r and sample k:

    (w_r^k, z_r^k) ~ q_phi_r(w | x_r) q_phi_r(z | x_r)
    u_{r->r}^k = [w_r^k, z_r^k];  u_{r->d}^k = [w~_{r->d}^k, z_r^k], w~ ~ r_psi_d

    lw[r, k] = sum_d lambda_d log p_theta_d(x_d | u_{r->d}^k)
             + beta * ( log p(z_r^k) + log p(w_r^k)
                        - log (1/M) sum_m q_phi_m(z_r^k | x_m)
                        - log q_phi_r(w_r^k | x_r) )

    L = (1/M) sum_r log (1/K) sum_k exp(lw[r, k])

The log-weights are a pure function of (params, batch, noise): sampling is
kept apart (`MMVAEPlus.sample_noise`), so a reference implementation can be
compared on identical samples, and a user can drive it with their own noise.

Missing modalities: every function below that takes `present` (`[M, B]`
bool, modality m observed in example b; None = all observed, the unmasked
program) restricts example b to its observed set P_b: the mixture
q_Phi(z | x_P) = (1/|P_b|) sum_{m in P_b} q_m(z | x_m), the reconstructions
to targets d in P_b, and the bound to the strata r in P_b,
L_b = (1/|P_b|) sum_{r in P_b} log (1/K) sum_k exp(lw[r, k]): exactly the
bound of the model with only P_b's modalities (tests/masks_test.py). Absent
entries are removed by `where`, never by multiplying, so nothing computed
from an absent modality's (filler) data reaches a value or a gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import types

CrossPrivate = Literal['aux', 'posterior']
CROSS_PRIVATE = ('aux', 'posterior')


def log_mean_exp(x, axis: int):
  """log (1/n) sum_i exp(x_i) along `axis`, stable."""
  return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def mixture_component_log_probs(family, z, loc, scale):
  """log q_m(z_r | x_m) for every stratum r and mixture component m.

  Args:
    family: 'laplace' or 'normal'.
    z: `[M, K, B, Dz]` samples, stratum r in axis 0.
    loc: `[M, B, Dz]` component locations, component m in axis 0.
    scale: `[M, B, Dz]` component scales.

  Returns:
    `[M_r, M_m, K, B]` component log-densities.
  """
  # [M_r, 1, K, B, Dz] against [1, M_m, 1, B, Dz]
  return distributions.log_prob(
      family, z[:, None], loc[None, :, None], scale[None, :, None]
  )


def _present_components(component_log_probs, present):
  """Component log-densities with absent components at -inf."""
  return jnp.where(present[None, :, None, :], component_log_probs, -jnp.inf)


def moe_log_prob(component_log_probs, present=None):
  """log q_Phi(z | x_1:M) = logsumexp_m log q_m(z | x_m) - log M.

  Args:
    component_log_probs: `[M_r, M_m, K, B]`.
    present: optional `[M_m, B]` bool: the mixture over the observed
      components only, (1/|P_b|) sum_{m in P_b} (module docstring).

  Returns:
    `[M_r, K, B]` mixture log-density at each stratum's samples.
  """
  if present is None:
    return log_mean_exp(component_log_probs, axis=1)
  count = jnp.sum(present, axis=0).astype(component_log_probs.dtype)  # [B]
  return (jax.nn.logsumexp(_present_components(component_log_probs, present),
                           axis=1) - jnp.log(count))


def log_responsibility(component_log_probs, present=None):
  """log rho_r(z_r) = log q_r(z_r | x_r) - log sum_m q_m(z_r | x_m).

  Args:
    component_log_probs: `[M_r, M_m, K, B]`.
    present: optional `[M, B]` bool: the sum over observed components only;
      an absent stratum gets -inf (rho = 0: it is not in the bound).

  Returns:
    `[M_r, K, B]`: the log-responsibility of the sampling component r.
  """
  m = component_log_probs.shape[0]
  own = component_log_probs[jnp.arange(m), jnp.arange(m)]  # [M, K, B]
  if present is None:
    return own - jax.nn.logsumexp(component_log_probs, axis=1)
  out = own - jax.nn.logsumexp(
      _present_components(component_log_probs, present), axis=1)
  return jnp.where(present[:, None, :], out, -jnp.inf)


def mean_over_present(values, present=None):
  """`[M, B]` -> `[B]`: the mean over modalities, or over the observed ones
  of each example (`present` `[M, B]` bool; absent entries never read)."""
  if present is None:
    return jnp.mean(values, axis=0)
  count = jnp.sum(present, axis=0).astype(values.dtype)
  return jnp.sum(jnp.where(present, values, 0.0), axis=0) / count


def moe_iw_bound(log_weights, present=None):
  """The stratified MoE importance-weighted bound, per example.

  L = (1/M) sum_r log (1/K) sum_k exp(lw[r, k]); with K = 1 it is the
  stratified MoE ELBO (the modality average stays outside the log, MMVAE's
  "looser" bound).

  Args:
    log_weights: `[M, K, B]`.
    present: optional `[M, B]` bool: the mean over the observed strata.

  Returns:
    `[B]`.
  """
  return mean_over_present(log_mean_exp(log_weights, axis=1), present)


def posterior_samples(posteriors: types.Posteriors, noise):
  """Reparameterised posterior samples of every stratum.

  Returns:
    w `[M, K, B, Dw]` and z `[M, K, B, Dz]`.
  """
  w = distributions.reparameterise(
      posteriors.loc_w[:, None], posteriors.scale_w[:, None], noise.w
  )
  z = distributions.reparameterise(
      posteriors.loc_z[:, None], posteriors.scale_z[:, None], noise.z
  )
  return w, z


def cross_private_latents(model, params, noise, w, mode: CrossPrivate = 'aux'):
  """The private latents decoded in cross-modal reconstructions.

  Args:
    model: the `MMVAEPlus`.
    params: model params (the auxiliary prior logits are used).
    noise: `Noise`; `noise.aux[r, d]` drives w~_{r->d}.
    w: `[M, K, B, Dw]` own private posterior samples.
    mode: 'aux' (MMVAE+): w~_{r->d} ~ r_psi_d, reparameterised so psi_d is
      learned; 'posterior' (the MMVAE_f ablation): w~_{r->d} = w_d, the
      target's own posterior sample.

  Returns:
    `[M_r, M_d, K, B, Dw]`; the diagonal r = d is not used.
  """
  if mode == 'aux':
    scale = model.aux_prior_scale(params)  # [M_d, Dw]
    return distributions.reparameterise(0.0, scale[None, :, None, None], noise.aux)
  if mode == 'posterior':
    return jnp.broadcast_to(w[None], noise.aux.shape)
  raise ValueError(f'cross_private must be one of {CROSS_PRIVATE}, got {mode!r}')


def reconstruction_log_likelihood(model, decoder_params, batch, w, z, w_cross,
                                  present=None):
  """sum_d lambda_d log p_theta_d(x_d | u_{r->d}) for every stratum r.

  Each target modality d decodes all M strata at once (M * K * B latents);
  modalities with equal networks run as one vmapped call.

  Args:
    model: the `MMVAEPlus`.
    decoder_params: `params['decoders']`.
    batch: `{name: [B, *event]}`.
    w: `[M, K, B, Dw]` own private samples (decoded on the diagonal r = d).
    z: `[M, K, B, Dz]` shared samples.
    w_cross: `[M_r, M_d, K, B, Dw]` private latents for r != d.
    present: optional `[M, B]` bool: the sum over observed targets only.

  Returns:
    `[M, K, B]`.
  """
  m = model.num_modalities
  eye = jnp.eye(m, dtype=bool)[:, :, None, None, None]
  w_dec = jnp.where(eye, w[:, None], w_cross)  # [M_r, M_d, K, B, Dw]
  z_dec = jnp.broadcast_to(z[None], (m,) + z.shape)  # [M_d, M_r, K, B, Dz]
  u = jnp.concatenate([jnp.swapaxes(w_dec, 0, 1), z_dec], axis=-1)
  return model.decode_log_likelihood(
      {'decoders': decoder_params}, batch, u, present=present)  # [M_r, K, B]


def log_weights_from_latents(
    model, decoder_params, batch, posteriors, w, z, w_cross, beta,
    present=None,
):
  """lw[r, k, b] from given latents; also returns log rho_r(z_r).

  `posteriors` is used only inside the densities; pass stop-gradient copies to
  get path-only derivatives (as DReG does).

  Args:
    model: the `MMVAEPlus`.
    decoder_params: `params['decoders']`.
    batch: `{name: [B, *event]}`.
    posteriors: `Posteriors` with `[M, B, D]` fields.
    w: `[M, K, B, Dw]`; z: `[M, K, B, Dz]`; w_cross: `[M, M, K, B, Dw]`.
    beta: weight of the prior/posterior bracket inside the weight.
    present: optional `[M, B]` bool (module docstring); the rows of absent
      strata are computed but belong to no bound.

  Returns:
    (lw `[M, K, B]`, log_resp `[M, K, B]`).
  """
  fam = model.family
  recon = reconstruction_log_likelihood(
      model, decoder_params, batch, w, z, w_cross, present
  )
  log_pz = distributions.log_prob(fam, z, 0.0, model.prior_scale(model.dim_z))
  log_pw = distributions.log_prob(fam, w, 0.0, model.prior_scale(model.dim_w))
  comps = mixture_component_log_probs(
      fam, z, posteriors.loc_z, posteriors.scale_z
  )
  log_qz = moe_log_prob(comps, present)
  log_qw = distributions.log_prob(
      fam, w, posteriors.loc_w[:, None], posteriors.scale_w[:, None]
  )
  lw = recon + beta * (log_pz + log_pw - log_qz - log_qw)
  return lw, log_responsibility(comps, present)


def log_weights(
    model,
    params,
    batch,
    noise,
    *,
    beta: float = 1.0,
    cross_private: CrossPrivate = 'aux',
    present=None,
):
  """The per-example log importance weights `lw [M, K, B]` (section 7).

  A pure function of params, batch and standardised noise; differentiable in
  params through the reparameterised samples and the densities. `present`:
  optional `[M, B]` bool (module docstring).

  Raises:
    ValueError: on a batch or noise that does not fit the model (trace time).
  """
  b = model.check_batch(batch)
  model.check_noise(noise, b)
  post = model.encode(params, batch)
  w, z = posterior_samples(post, noise)
  w_cross = cross_private_latents(model, params, noise, w, cross_private)
  lw, _ = log_weights_from_latents(
      model, params['decoders'], batch, post, w, z, w_cross, beta, present
  )
  return lw
