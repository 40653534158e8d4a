"""Test-time generation: unconditional and cross-modal samples.

At test time the private latent w is drawn from the fixed prior p(w), scaled
by alpha (the paper's Fig. 19 sweep; alpha = 1 is the official behaviour), and
images are the decoders' Laplace means (raw outputs, not clamped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import distributions
from mmvaeplus_jax import plotting


def prior_w(key, model, shape, alpha=1.0):
  """w ~ p(w) with scale alpha * prior scale: `[*shape, Dw]`."""
  eps = distributions.noise(model.family, key, tuple(shape) + (model.dim_w,))
  return alpha * model.prior_scale(model.dim_w) * eps


def unconditional(key, model, params, num, *, alpha=1.0):
  """Joint prior samples: one z ~ p(z) shared, w_d ~ p(w) per modality.

  Returns:
    `{name: [num, *event]}` decoder means.
  """
  kz, kw = jax.random.split(key)
  z = distributions.noise(model.family, kz, (num, model.dim_z)) * (
      model.prior_scale(model.dim_z))
  w = prior_w(kw, model, (model.num_modalities, num), alpha)
  return {
      n: model.decode(params, n, jnp.concatenate([w[d], z], -1))
      for d, n in enumerate(model.names)
  }


def cross_modal_by_target(key, model, params, batch, *, alpha=1.0):
  """Every source's z ~ q(z | x_source) decoded by every target with w ~ p(w).

  Returns:
    a tuple over targets d of `[M_source, B, *event_d]` decoder means (the
    diagonal is also decoded from p(w)); modalities may differ in shape.
  """
  return cross_modal_from_posteriors(key, model, params,
                                     model.encode(params, batch), alpha=alpha)


def cross_modal_from_posteriors(key, model, params, post, *, alpha=1.0):
  """`cross_modal_by_target` given the encoders' posteriors `post`
  (`model.encode(params, batch)`, `[M, B, D]`): draw many samples of one
  batch without encoding it again."""
  m, b = post.loc_z.shape[:2]
  kz, kw = jax.random.split(key)
  # z_e ~ q(z | x_e), the model's posterior given modality e alone.
  z = model.sample_shared(
      post, np.eye(m, dtype=bool), jnp.zeros((m, b)),
      distributions.noise(model.family, kz, post.loc_z.shape))  # [M, B, Dz]
  w = prior_w(kw, model, (m, m, b), alpha)  # [M_s, M_t, B, Dw]
  return tuple(
      jnp.stack([model.decode(params, n, jnp.concatenate([w[e, d], z[e]], -1))
                 for e in range(m)])
      for d, n in enumerate(model.names))


def cross_modal(key, model, params, batch, *, alpha=1.0):
  """`cross_modal_by_target` stacked: `[M_source, M_target, B, H, W, C]`
  (modalities of different image shapes are centred on a common RGB
  canvas, `plotting.to_canvas`)."""
  canvas = plotting.canvas_shape([mod.event_shape for mod in model.modalities])
  return jnp.stack([
      plotting.to_canvas(x, canvas)
      for x in cross_modal_by_target(key, model, params, batch, alpha=alpha)],
                   axis=1)
