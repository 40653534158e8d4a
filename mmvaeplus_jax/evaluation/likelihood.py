"""Importance-sampled log-likelihood log p(x_1:M), chunked over samples.

The generative model of MMVAE+ (official_reference.md section 7):

    p(x_1:M, w_1:M, z) = p(z) prod_m p(w_m) p_theta_m(x_m | w_m, z).

(the same for every model here: `models/base.py`; without private latents
the w terms vanish). The proposal is the model's JOINT posterior, written as
an equal-weight mixture of R components (`model.joint_components`): for
MMVAE+ / MMVAE / MMJSD the mixture of experts (R = M),

    q(w_1:M, z | x_1:M) = q_Phi(z | x_1:M) prod_m q_phi_m(w_m | x_m),
    q_Phi(z | x_1:M) = (1/M) sum_r q_phi_r(z | x_r),

for PoE models their one product of experts (R = 1), for MoPoE its 2^M - 1
subset products. Below, M in the estimator reads R for those models.

sampled STRATIFIED over the mixture: K draws from each component r (z from
q_phi_r(z | x_r); every modality's private w_m from its own posterior
q_phi_m(w_m | x_m), fresh per draw), M K draws in all. Each draw's log weight is

    lw = sum_m log p_theta_m(x_m | w_m, z) + log p(z) + sum_m log p(w_m)
         - log q_Phi(z | x_1:M) - sum_m log q_phi_m(w_m | x_m),

and the estimate is

    log p^(x) = logsumexp_{r, k} lw[r, k] - log(M K).

Because every component is sampled equally often, (1/(M K)) sum exp(lw) is an
unbiased estimate of p(x) (E = (1/M) sum_r E_{q_r}[p / q_Phi] =
E_{q_Phi}[p / q_Phi] = p(x)), so log p^ is a lower bound in expectation that
converges to log p(x) as K grows. This is NOT the training weight
`objectives.log_weights`: there, cross-modal terms decode the private latent
of the target from the auxiliary prior r_psi_d, beta multiplies the
prior/posterior bracket, the likelihoods are scaled by lambda_d and the mean
over strata sits outside the log (`moe_iw_bound`). Here beta = 1,
lambda_d = 1 (the model's density, whatever it was trained with) and w_m is
always drawn from q_phi_m.

Memory stays bounded for any K: the M K weights are made `chunk` draws per
stratum at a time inside a `lax.fori_loop` and folded into a running
logsumexp, so a batch holds M * chunk * B latents per decoder, not M * K * B.
Draw j of example i uses noise from `fold_in(fold_in(key, i), j)`, so the
estimate does not depend on the chunk size, the batch size or the number of
devices.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import objectives
from mmvaeplus_jax.core import types
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.models import base

Array = jax.Array
Params = Any



def joint_log_weights(model: base.MultimodalVAE, params: Params,
                      batch: Mapping[str, Array],
                      posteriors: types.Posteriors, eps_z: Array,
                      eps_w: Array) -> Array:
  """Log importance weights of the joint MoE proposal (module docstring).

  Args:
    model: the model.
    params: its params.
    batch: `{name: [B, *event]}` float inputs.
    posteriors: `model.encode(params, batch)`, fields `[M, B, D]`.
    eps_z: `[R, C, B, Dz]` standardised noise: stratum r's z from the r-th
      component of `model.joint_components` (for MoE models q_r(z | x_r)).
    eps_w: `[R, M_m, C, B, Dw]` standardised noise: the private w_m ~
      q_m(w | x_m) of every modality m in each draw of stratum r.

  Returns:
    `[R, C, B]` log weights lw (beta = 1, lambda = 1).
  """
  fam = model.family
  post = posteriors
  loc_z, scale_z = model.joint_components(post)  # [R, B, Dz]
  z = loc_z[:, None] + scale_z[:, None] * eps_z  # [R, C, B, Dz]
  w = (post.loc_w[None, :, None] + post.scale_w[None, :, None]
       * eps_w)  # [R, M_m, C, B, Dw]
  log_pz = distributions.log_prob(fam, z, 0.0, model.prior_scale(model.dim_z))
  log_qz = objectives.moe_log_prob(objectives.mixture_component_log_probs(
      fam, z, loc_z, scale_z))  # [R, C, B]
  log_pw = distributions.log_prob(
      fam, w, 0.0, model.prior_scale(model.dim_w)).sum(axis=1)
  log_qw = distributions.log_prob(
      fam, w, post.loc_w[None, :, None],
      post.scale_w[None, :, None]).sum(axis=1)  # [M_r, C, B]
  log_px = 0.0
  for m, mod in enumerate(model.modalities):
    out = model.decode(params, mod.name,
                       jnp.concatenate([w[:, m], z], axis=-1))
    log_px = log_px + mod.log_likelihood(
        batch[mod.name], out.astype(jnp.float32))  # [M_r, C, B]
  return log_px + log_pz + log_pw - log_qz - log_qw


def _draw_noise(model, keys, j, r):
  """Noise of draws `j [C]` for examples with keys `[B]` and R = `r`
  strata: eps_z, eps_w."""
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  size = r * dz + r * m * dw

  def one(key, jj):
    return distributions.noise(
        model.family, jax.random.fold_in(key, jj), (size,))

  flat = jax.vmap(lambda k: jax.vmap(lambda jj: one(k, jj))(j))(keys)
  b, c = flat.shape[:2]
  eps_z = flat[..., :r * dz].reshape(b, c, r, dz)
  eps_w = flat[..., r * dz:].reshape(b, c, r, m, dw)
  return (jnp.transpose(eps_z, (2, 1, 0, 3)),  # [R, C, B, Dz]
          jnp.transpose(eps_w, (2, 3, 1, 0, 4)))  # [R, M_m, C, B, Dw]


def log_likelihood(key, model: base.MultimodalVAE, params: Params,
                   batch: Mapping[str, Array], index: Array, *,
                   num_samples, chunk: int) -> Array:
  """Per-example estimate of log p(x_1:M) with K = `num_samples` per stratum.

  Args:
    key: evaluation key; draw j of example i uses
      `fold_in(fold_in(key, index[i]), j)`.
    model: the model (static under jit).
    params: its params.
    batch: `{name: [B, *event]}` (uint8 images are divided by 255).
    index: `[B]` int example indices.
    num_samples: K >= 1 draws per mixture component (M K weights in all);
      may be traced (one compilation serves every K).
    chunk: draws per component evaluated at once (static; memory ~ M *
      chunk * B decodings per modality); any value gives the same estimate.

  Returns:
    `[B]` log p^(x_1:M) = logsumexp of the M K weights - log(M K).
  """
  batch = {n: api.to_float(jnp.asarray(batch[n])) for n in model.names}
  post = model.encode(params, batch)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  b = index.shape[0]
  r = model.joint_components(post)[0].shape[0]  # strata of the proposal

  def body(c, acc):
    j = c * chunk + jnp.arange(chunk)
    eps_z, eps_w = _draw_noise(model, keys, j, r)
    lw = joint_log_weights(model, params, batch, post, eps_z, eps_w)
    lw = jnp.where((j < num_samples)[None, :, None], lw, -jnp.inf)
    return jnp.logaddexp(acc, jax.nn.logsumexp(lw, axis=(0, 1)))

  num_chunks = (num_samples + chunk - 1) // chunk
  acc = jax.lax.fori_loop(0, num_chunks, body,
                          jnp.full((b,), -jnp.inf, jnp.float32))
  return acc - jnp.log(jnp.float32(r) * num_samples)


log_likelihood_jit = jax.jit(log_likelihood,
                             static_argnames=('model', 'chunk'))


def _num_strata(model, params, data) -> int:
  """R, the number of components of `model.joint_components` (shapes only)."""
  one = {n: api.to_float(jnp.asarray(data[n][:1])) for n in model.names}
  shape = jax.eval_shape(
      lambda p, x: model.joint_components(model.encode(p, x))[0], params, one)
  return int(shape.shape[0])


@api.register('likelihood')
def likelihood_metrics(ctx: api.EvalContext) -> dict:
  """`likelihood/log_px`: mean estimate of log p(x_1:M) over test examples.

  Config (`config.evals`): `likelihood_num_examples` (-1: all of
  `ctx.data`), `likelihood_num_samples` (K per mixture component),
  `likelihood_chunk`, `likelihood_batch_size` (examples per call).
  """
  ec = ctx.config.evals
  n_all = len(ctx.data['label'])
  n = n_all if ec.likelihood_num_examples < 0 else min(
      ec.likelihood_num_examples, n_all)
  k, chunk = int(ec.likelihood_num_samples), int(ec.likelihood_chunk)
  if k < 1 or chunk < 1:
    raise ValueError('evals.likelihood_num_samples and likelihood_chunk must'
                     f' be >= 1, got {k}, {chunk}')
  fn = functools.partial(log_likelihood_jit, model=ctx.model, num_samples=k,
                         chunk=min(chunk, k))
  key = parallel.replicate_key(ctx.mesh, ctx.key)
  est = api.map_batches(
      lambda params, key, index, batch: fn(key, params=params, batch=batch,
                                           index=index),
      ctx.mesh, n, batch_size=ec.likelihood_batch_size,
      inputs={m: ctx.data[m] for m in ctx.model.names},
      args=(ctx.params, key))
  est = np.asarray(est, np.float64)
  return {
      'likelihood/log_px': float(np.mean(est)),
      'likelihood/log_px_std': float(np.std(est)),
      'likelihood/num_examples': n,
      'likelihood/num_samples_per_component': k,
      'likelihood/num_weights': k * _num_strata(ctx.model, ctx.params,
                                                ctx.data),
  }
