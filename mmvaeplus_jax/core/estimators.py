"""Gradient estimators for the MMVAE+ bound, as surrogates.

`objective(...)` returns a per-example surrogate `[B]` whose *value* is the
stratified bound L (`objectives.moe_iw_bound`) and whose *gradient* is the
chosen estimator's. Maximise its mean (or minimise `-mean`).

Estimators (`ESTIMATORS`):

* `iwae`: the plain reparameterised gradient of L, scores through q's
  parameters included. This is what the official code trains with under both
  of its objective names (official_reference.md section 7.1).
* `dreg`: a doubly-reparameterised estimator (Tucker et al. 2019) that is
  unbiased for this objective for any beta and any M (derivation below).
* `dreg_mmvae`: the usual recipe of MMVAE / MultiVae: every posterior density
  detached, squared weights on both sample paths. Biased for M > 1 and for
  beta != 1; offered only for comparison.

Derivation of `dreg` (official_reference.md section 7.2, re-derived here).
Per stratum r and example, with normalised weights wbar_k = softmax_k(lw_k),
grad L_r = sum_k wbar_k grad lw_k. The encoder parameters enter lw_k through
the samples (path) and through three score terms: -beta grad log q_r(w_k) and
-beta grad log Q(z_k) = -beta sum_m rho_m(z_k) grad log q_m(z_k), with
rho_m = q_m / sum_j q_j. Tucker's identity
E_q[f(u) grad log q(u)] = E[df/du du/dphi] (f with phi held fixed) removes the
scores of the *sampling* distributions:

* private w (sampled from q_r): f = wbar_k, dwbar_k/dw_k =
  wbar_k (1 - wbar_k) dlw_k/dw_k, so the w-path weight becomes
  a_k = wbar_k - beta wbar_k (1 - wbar_k) = (1 - beta) wbar_k + beta wbar_k^2.
* shared z (sampled from q_r, but the density is the mixture): only the own
  component's score can be removed, with f = wbar_k rho_r(z_k):
  z-path weight c_k = wbar_k - beta rho_r (wbar_k - wbar_k^2), plus the path
  term -beta wbar_k drho_r/dz_k dz_k/dphi_r; the scores of the other
  components m != r stay live with weight wbar_k.
* decoders and auxiliary priors enter only through samples: weight wbar_k,
  exactly as IWAE.

For M = 1, beta = 1 this is standard DReG (a_k = c_k = wbar_k^2, rho = 1).

The single-pass construction. The path weights depend on lw, which is only
known after the decoders ran, so no stop-gradient surrogate can put them on the
sample path before the forward pass. `_reweighted_log_weights` is a
`jax.custom_vjp` around the whole log-weight computation (densities with
frozen posterior parameters): its forward pass is the ordinary forward pass
(saving the VJP); its backward pass runs that VJP once with the incoming
cotangent g_k = wbar_k / M and multiplies the cotangent of each sample by the
finite factors s_z = c_k / wbar_k = 1 - beta rho_r (1 - wbar_k) and
s_w = a_k / wbar_k = 1 - beta (1 - wbar_k), recomputed from the saved lw.
Decoder and auxiliary-prior cotangents are left untouched. Exactness: the VJP
is linear in g, and each sample (r, k) feeds only lw[r, k], so scaling the
sample cotangent by s turns sum_k g_k dlw_k/du_k into sum_k g_k s_k
dlw_k/du_k, which is exactly the weighted path gradient above. Cost: one
forward and one backward pass of the decoders, as IWAE.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from mmvaeplus_jax.core import objectives

Estimator = Literal['iwae', 'dreg', 'dreg_mmvae']
ESTIMATORS = ('iwae', 'dreg', 'dreg_mmvae')

sg = jax.lax.stop_gradient


def _lw_fn(model, args):
  """The log-weight computation wrapped by the custom VJP."""
  return objectives.log_weights_from_latents(
      model,
      args['decoders'],
      args['batch'],
      args['posteriors'],
      args['w'],
      args['z'],
      args['w_cross'],
      args['beta'],
      args.get('present'),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _reweighted_log_weights(model, mode, args):
  """lw `[M, K, B]` whose VJP reweights the sample paths (module docstring)."""
  lw, _ = _lw_fn(model, args)
  return lw


def _reweighted_fwd(model, mode, args):
  lw, vjp_fn, log_resp = jax.vjp(
      functools.partial(_lw_fn, model), args, has_aux=True
  )
  return lw, (vjp_fn, lw, log_resp, args['beta'])


def _reweighted_bwd(model, mode, res, g):
  del model
  vjp_fn, lw, log_resp, beta = res
  (cot,) = vjp_fn(g)
  wbar = jax.nn.softmax(lw, axis=1)  # [M, K, B], normalised over K
  if mode == 'dreg':
    s_z = 1.0 - beta * jnp.exp(log_resp) * (1.0 - wbar)  # c_k / wbar_k
    s_w = 1.0 - beta * (1.0 - wbar)  # a_k / wbar_k
  elif mode == 'dreg_mmvae':
    s_z = s_w = wbar  # wbar^2 overall
  else:
    raise ValueError(f'unknown reweighting mode {mode!r}')
  cot = dict(cot)
  cot['z'] = cot['z'] * s_z[..., None]
  cot['w'] = cot['w'] * s_w[..., None]
  return (cot,)


_reweighted_log_weights.defvjp(_reweighted_fwd, _reweighted_bwd)


def _check(estimator, cross_private):
  if estimator not in ESTIMATORS:
    raise ValueError(
        f'estimator must be one of {ESTIMATORS}, got {estimator!r}'
    )
  if cross_private not in objectives.CROSS_PRIVATE:
    raise ValueError(
        f'cross_private must be one of {objectives.CROSS_PRIVATE}, got'
        f' {cross_private!r}'
    )


def objective(
    model,
    params,
    batch,
    noise,
    *,
    beta=1.0,
    estimator: Estimator = 'iwae',
    cross_private: objectives.CrossPrivate = 'aux',
    present=None,
):
  """Per-example surrogate `[B]`: value = the bound L, gradient = estimator.

  Args:
    model: an `MMVAEPlus`.
    params: its params.
    batch: `{name: [B, *event]}`.
    noise: `Noise` from `model.sample_noise` (fixes K).
    beta: weight of the prior/posterior bracket (may be a traced scalar).
    estimator: 'iwae', 'dreg' or 'dreg_mmvae' (module docstring).
    cross_private: 'aux' (MMVAE+) or 'posterior' (MMVAE_f ablation).
    present: optional `[M, B]` bool, the observed modalities of each
      example (`objectives` module docstring): the bound of example b is
      that of the model restricted to its observed set, and so is every
      estimator's gradient (the derivation above holds per example with the
      mixture over the observed components; absent strata get no
      cotangent and their reweighting factors are 1).

  Returns:
    `[B]` surrogate; maximise its mean.
  """
  _check(estimator, cross_private)
  if estimator == 'iwae':
    lw = objectives.log_weights(
        model, params, batch, noise, beta=beta, cross_private=cross_private,
        present=present,
    )
    return objectives.moe_iw_bound(lw, present)

  b = model.check_batch(batch)
  model.check_noise(noise, b)
  m = model.num_modalities
  post = model.encode(params, batch)
  w, z = objectives.posterior_samples(post, noise)  # live sample paths
  w_cross = objectives.cross_private_latents(
      model, params, noise, w, cross_private
  )
  frozen = jax.tree.map(sg, post)  # densities see no score term
  beta = jnp.asarray(beta, w.dtype)
  args = dict(
      decoders=params['decoders'], batch=batch, posteriors=frozen,
      w=w, z=z, w_cross=w_cross, beta=sg(beta),
  )
  if present is not None:
    args['present'] = present
  lw = _reweighted_log_weights(model, estimator, args)  # [M, K, B]
  wbar = sg(jax.nn.softmax(lw, axis=1))
  per_stratum = jnp.sum(wbar * lw, axis=1)  # [M, B]

  if estimator == 'dreg':
    # Path term -beta wbar_k drho_r/dz_k dz_k/dphi_r: rho_r with frozen
    # parameters, z live. Zero value.
    comps = objectives.mixture_component_log_probs(
        model.family, z, frozen.loc_z, frozen.scale_z
    )
    rho = jnp.exp(objectives.log_responsibility(comps, present))
    per_stratum -= beta * jnp.sum(wbar * (rho - sg(rho)), axis=1)
    # Scores of the other mixture components m != r, kept live (they are not
    # the sampling distribution of stratum r): -beta wbar_k grad log Q with
    # z and the own component frozen. Zero value.
    comps_live = objectives.mixture_component_log_probs(
        model.family, sg(z), post.loc_z, post.scale_z
    )
    own = jnp.eye(m, dtype=bool)[:, :, None, None]
    comps_others = jnp.where(own, sg(comps_live), comps_live)
    log_q = objectives.moe_log_prob(comps_others, present)
    per_stratum -= beta * jnp.sum(wbar * (log_q - sg(log_q)), axis=1)

  surrogate = objectives.mean_over_present(per_stratum, present)  # [B]
  bound = objectives.moe_iw_bound(sg(lw), present)
  # Report the bound as the value; keep the estimator's gradient.
  return surrogate + sg(bound - surrogate)


def sample_objective(
    key,
    model,
    params,
    batch,
    *,
    num_samples: int,
    beta=1.0,
    estimator: Estimator = 'iwae',
    cross_private: objectives.CrossPrivate = 'aux',
    present=None,
):
  """Draws the noise from `key`, then evaluates `objective`: `[B]`."""
  b = model.check_batch(batch)
  noise = model.sample_noise(key, num_samples, b)
  return objective(
      model, params, batch, noise, beta=beta, estimator=estimator,
      cross_private=cross_private, present=present,
  )
