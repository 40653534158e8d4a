"""Test-time generation: the one place that samples latents to decode.

Every conditional (cross-modal) and unconditional sample of the trainer's
grids, the evaluators (coherence, FID, FD_clf, diversity, latent
classification) and the figures is built here; evaluators decode and score.

At test time the private latent w is drawn from the fixed prior p(w), scaled
by alpha (the paper's Fig. 19 sweep; alpha = 1 is the official behaviour),
and images are the decoders' means (raw outputs, not clamped). The shared
latent z of a source e is drawn from the model's posterior given that
modality alone, `model.sample_shared` over the one-member subset {e} (for
mixture models q_e(z | x_e) itself, for product models its product with the
prior expert).

Two kinds of randomness:

* batch draws (`unconditional`, `cross_modal*`, the figures' latents): one
  key per call, one draw split into parts (XLA:CPU compiles each separate
  random op for about a second);
* per-example draws (`example_noise` and the `*_per_example` functions):
  example i's noise comes from `fold_in(key, index[i])` alone, so a metric
  does not depend on the batch size, the device count or the padding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import types
from mmvaeplus_jax.infra import plotting


Array = jax.Array


def prior_from_noise(model, eps, alpha=1.0):
  """Fixed-prior samples from standardised noise `[..., D]`: alpha * scale *
  eps (p(w) scaled by alpha; p(z) with alpha = 1)."""
  return alpha * model.prior_scale(eps.shape[-1]) * eps


def prior_w(key, model, shape, alpha=1.0):
  """w ~ p(w) with scale alpha * prior scale: `[*shape, Dw]`."""
  eps = distributions.noise(model.family, key, tuple(shape) + (model.dim_w,))
  return prior_from_noise(model, eps, alpha)


def unimodal_shared(model, post: types.Posteriors, eps) -> Array:
  """z_e ~ q(z | x_e) for every modality e from noise `eps [M, B, Dz]` or
  `[M, S, B, Dz]`: the model's posterior given that modality alone
  (`model.sample_shared` over one-member subsets; for MMVAE+ q_e itself)."""
  m, b = post.loc_z.shape[:2]
  one = lambda e: model.sample_shared(
      post, np.eye(m, dtype=bool), jnp.zeros((m, b)), e)
  return one(eps) if eps.ndim == 3 else jax.vmap(one, 1, 1)(eps)


def concat_latents(w, z):
  """u = [w, z] along the last axis (private first, as the decoders take
  them)."""
  return jnp.concatenate([w, z], axis=-1)


def draw(key, model, lead, *sizes) -> list[Array]:
  """One `distributions.noise` draw `[*lead, sum(sizes)]`, split into
  `[*lead, size]` parts."""
  eps = distributions.noise(model.family, key, tuple(lead) + (sum(sizes),))
  return jnp.split(eps, np.cumsum(sizes)[:-1], axis=-1)


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
  z = unimodal_shared(model, post, distributions.noise(
      model.family, kz, post.loc_z.shape))  # [M, B, Dz]
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


# ------------------------------------------------- latents of the figures
#
# Each function makes ONE standardised draw from its key and splits it into
# the parts it needs: on XLA:CPU every separate random op compiles for about
# a second.


def cross_modal_latents(key, model, post: types.Posteriors, num_samples: int, *,
                        alpha=1.0) -> Array:
  """Conditional generation latents (Fig. 1 left, Fig. 6).

  The latents `cross_modal` decodes, S times: z_e ~ q_e(z | x_e)
  (one draw per source, sample and input, shared by all targets) and
  w ~ p_alpha(w) drawn independently for every (source, target, sample,
  input).

  Args:
    key: PRNG key.
    model: the MMVAE+.
    post: posteriors of the inputs, `[M, B, D]` fields.
    num_samples: S samples per input.
    alpha: scale of p(w) at test time (official 1).

  Returns:
    `[M_source, M_target, S, B, Dw + Dz]`.
  """
  m, b = post.loc_z.shape[:2]
  eps_z, eps_w = draw(key, model, (m, num_samples, b), model.dim_z,
                       m * model.dim_w)
  z = unimodal_shared(model, post, eps_z)  # [M_s, S, B, Dz]
  w = prior_from_noise(
      model, eps_w.reshape((m, num_samples, b, m, model.dim_w)),
             alpha)  # [M_s, S, B, M_t, Dw]
  w = jnp.transpose(w, (0, 3, 1, 2, 4))  # [M_s, M_t, S, B, Dw]
  return concat_latents(
      w, jnp.broadcast_to(z[:, None], w.shape[:-1] + z.shape[-1:]))


def unconditional_latents(key, model, num: int, *, alpha=1.0) -> Array:
  """Joint prior latents (Fig. 7), as `unconditional` draws them.

  Returns:
    `[M, N, Dw + Dz]`: u[d, i] = [w_d,i ~ p_alpha(w), z_i ~ p(z)], z_i shared
    by all modalities.
  """
  m = model.num_modalities
  eps_z, eps_w = draw(key, model, (num,), model.dim_z, m * model.dim_w)
  z = prior_from_noise(model, eps_z)  # [N, Dz]
  w = jnp.swapaxes(
      prior_from_noise(model, eps_w.reshape(num, m, model.dim_w), alpha),
                   0, 1)  # [M, N, Dw]
  return concat_latents(w, jnp.broadcast_to(z, (m,) + z.shape))


def posterior_samples(key, model, post: types.Posteriors
                      ) -> tuple[Array, Array]:
  """One draw of every unimodal posterior: (w `[M, B, Dw]`, z `[M, B, Dz]`)."""
  eps_w, eps_z = draw(key, model, post.loc_w.shape[:-1], model.dim_w,
                       model.dim_z)
  return (distributions.reparameterise(post.loc_w, post.scale_w, eps_w),
          unimodal_shared(model, post, eps_z))


def style_latents(w, z) -> Array:
  """Every shared code with every private code: u[d, i, j] = [w[d, j], z[i]].

  Args:
    w: `[M_t, P, Dw]` private codes, per target modality.
    z: `[R, Dz]` shared codes.

  Returns:
    `[M_t, R, P, Dw + Dz]`.
  """
  m, p, dw = w.shape
  r, dz = z.shape
  return concat_latents(jnp.broadcast_to(w[:, None], (m, r, p, dw)),
                 jnp.broadcast_to(z[None, :, None], (m, r, p, dz)))


def private_conditioning_latents(key, model, post_shared: types.Posteriors,
                                 post_private: types.Posteriors) -> Array:
  """Shared content from one input, private style from another (Fig. 8).

  z_e,i ~ q_e(z | x_e,i) from the shared inputs, w_d,j ~ q_d(w | x_d,j) from
  the private inputs of the target modality d (one draw each).

  Args:
    key: PRNG key.
    model: the MMVAE+.
    post_shared: posteriors of R inputs (`[M, R, D]` fields).
    post_private: posteriors of P inputs (`[M, P, D]` fields).

  Returns:
    `[M_source, M_target, R, P, Dw + Dz]`, u[e, d, i, j] = [w_d,j, z_e,i].
  """
  r = post_shared.loc_z.shape[1]
  both = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1),
                      post_shared, post_private)  # [M, R + P, D]
  w, z = posterior_samples(key, model, both)
  return jax.vmap(lambda ze: style_latents(w[:, r:], ze))(z[:, :r])


def prior_shared_latents(key, model, post_private: types.Posteriors,
                         num: int) -> Array:
  """Shared content from the prior, private style from inputs (Fig. 9).

  Returns:
    `[M_target, N, P, Dw + Dz]`: u[d, i, j] = [w_d,j ~ q_d(w | x_d,j),
    z_i ~ p(z)], z_i shared by every target and private code.
  """
  m, p = post_private.loc_w.shape[:2]
  dw, dz = model.dim_w, model.dim_z
  eps_z, eps_w = draw(key, model, (), num * dz, m * p * dw)
  w = distributions.reparameterise(post_private.loc_w, post_private.scale_w,
                                   eps_w.reshape(m, p, dw))
  return style_latents(w, prior_from_noise(model, eps_z.reshape(num, dz)))


def prior_quantiles(model, probs) -> np.ndarray:
  """Quantiles `[S]` of the fixed 1-D prior (loc 0, scale `prior_scale`)."""
  b = float(model.prior_scale(1)[0])
  p = np.asarray(probs, np.float64)
  if model.family == 'laplace':
    q = -np.sign(p - 0.5) * np.log1p(-2.0 * np.abs(p - 0.5))
  else:
    q = special.ndtri(p)
  return b * q


def traversal_values(model, steps: int, *, span: float = 5.0,
                     quantiles: bool = False) -> tuple[np.ndarray, bool]:
  """The values a traversed dimension takes: `(values [S], relative)`.

  Default (paper, App. F): offsets linspace(-span, span, S) times the
  prior's scale, added to the embedding (`relative=True`). With `quantiles`:
  the prior's quantiles at probabilities (s + 0.5) / S, which replace the
  dimension's value (`relative=False`).
  """
  if steps < 1:
    raise ValueError(f'traversal steps must be >= 1, got {steps}')
  if quantiles:
    return prior_quantiles(model, (np.arange(steps) + 0.5) / steps), False
  b = float(model.prior_scale(1)[0])
  return span * b * np.linspace(-1.0, 1.0, steps), True


def traversal_base(key, model, post: types.Posteriors, source: int,
                   index: int = 0, *, alpha=1.0) -> tuple[Array, Array]:
  """The paper's traversal embedding: (w̄ `[Dw]` ~ p_alpha(w), z̄ `[Dz]`).

  z̄ is the MEAN of q(z | x_index) given the source alone (App. F,
  footnote 3; the noise-free `sample_shared`); w̄ is one draw of the fixed
  prior p(w), used by every target.
  """
  w = prior_w(key, model, (), alpha)
  mean = unimodal_shared(model, post, jnp.zeros_like(post.loc_z))  # eps = 0
  return w, mean[source, index]


def traversal_latents(w, z, values, *, kind: str,
                      relative: bool = True) -> Array:
  """Moves one dimension of z or of w at a time (Fig. 10).

  Args:
    w: `[Dw]` private code, held fixed except when `kind='w'`.
    z: `[Dz]` shared code, held fixed except when `kind='z'`.
    values: `[S]` offsets (`relative`) or values of the moved dimension.
    kind: 'z' or 'w', the code traversed.
    relative: add `values` to the dimension (True) or replace it.

  Returns:
    `[D_kind, S, Dw + Dz]`: entry (k, s) equals [w, z] except dimension k of
    `kind`, which is `base_k + values[s]` (or `values[s]`).
  """
  if kind not in ('z', 'w'):
    raise ValueError(f"kind must be 'z' or 'w', got {kind!r}")
  base = concat_latents(w, z)  # [D]
  offset = w.shape[-1] if kind == 'z' else 0
  dim = (z if kind == 'z' else w).shape[-1]
  values = jnp.asarray(values, base.dtype)
  cols = offset + jnp.arange(dim)  # [D_kind] positions in u
  new = values[None, :] + (base[cols][:, None] if relative else 0.0)  # [Dk,S]
  moved = jax.nn.one_hot(cols, base.shape[-1], dtype=bool)  # [D_kind, D]
  return jnp.where(moved[:, None, :], new[:, :, None], base)  # [Dk, S, D]


def alpha_latents(key, model, post: types.Posteriors, alphas, num_samples: int
                  ) -> Array:
  """Cross-modal latents for every alpha, same noise for all (Fig. 20).

  Returns:
    `[A, M_source, M_target, S, B, Dw + Dz]`: z identical across alphas,
    w proportional to alpha.
  """
  return jax.vmap(lambda a: cross_modal_latents(
      key, model, post, num_samples, alpha=a))(jnp.asarray(alphas,
                                                           jnp.float32))


# ------------------------------------------------------ per-example draws
#
# Example i's noise comes from `fold_in(key, index[i])` alone: one draw per
# example, split into the parts a protocol needs (the layouts below are part
# of the recorded numbers: changing one changes every metric drawn from it).


def example_keys(key, index) -> Array:
  """`[B]` keys `fold_in(key, index[i])`."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def example_noise(family, keys, *shapes) -> list[Array]:
  """Standardised noise `[B, *shape]` for each shape, one draw per example.

  Row i of every output comes from one `distributions.noise` call on
  `keys[i]` (one draw, then split: compiling a threefry call per output
  would cost seconds on CPU).
  """
  sizes = [math.prod(s) for s in shapes]
  flat = jax.vmap(
      lambda k: distributions.noise(family, k, (sum(sizes),)))(keys)
  parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=1)
  return [p.reshape((keys.shape[0],) + tuple(s))
          for p, s in zip(parts, shapes)]


def cross_modal_per_example(key, model, post: types.Posteriors, index, *,
                            alpha=1.0) -> tuple[Array, Array, Array]:
  """The conditional-generation latents of every (source, target) pair.

  Per example i, from one draw on `fold_in(key, index[i])` laid out as
  `[M * Dz | M * Dw | M * M * Dw]`: z_e ~ q(z | x_e) per source e,
  w_e ~ q_e(w | x_e) (the self-reconstruction's private latent) and
  w ~ p_alpha(w) per (source e, target d).

  Args:
    post: posteriors of the batch, `[M, B, D]` fields.
    index: `[B]` example indices (padding may be negative: its noise is
      drawn and ignored by the caller).

  Returns:
    (z `[M(e), B, Dz]`, w_post `[M(e), B, Dw]`, w_prior `[M(e), M(d), B, Dw]`).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  eps_z, eps_wq, eps_wp = example_noise(
      model.family, example_keys(key, index), (m, dz), (m, dw),
      (m, m, dw))  # [B, ...]
  z = unimodal_shared(model, post, jnp.swapaxes(eps_z, 0, 1))  # [M(e), B, Dz]
  w_post = post.loc_w + post.scale_w * jnp.swapaxes(eps_wq, 0, 1)
  w_prior = (alpha * model.prior_scale(dw)) * jnp.transpose(
      eps_wp, (1, 2, 0, 3))  # [M(e), M(d), B, Dw]
  return z, w_post, w_prior


def target_latents(z, w_post, w_prior, d: int) -> Array:
  """u of target d from every source e (`cross_modal_per_example`'s
  outputs): w ~ p_alpha(w) for e != d, the posterior w_d for e = d (the
  self-reconstruction). Returns `[M(e), B, Dw + Dz]`."""
  w = w_prior[:, d].at[d].set(w_post[d])  # [M(e), B, Dw]
  return concat_latents(w, z)


def pair_latents_per_example(key, model, loc_w, scale_w, loc_z, scale_z,
                             index, e, d, *, alpha=1.0) -> Array:
  """u of the pair (source e, target d) from one source's posteriors alone
  (e and d may be traced): the values `cross_modal_per_example` and
  `target_latents` give for that pair, on the same per-example layout.

  Args:
    loc_w, scale_w: `[B, Dw]` q_e(w | x_e); loc_z, scale_z: `[B, Dz]`.

  Returns:
    `[B, Dw + Dz]`.
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  (eps,) = example_noise(model.family, example_keys(key, index),
                         (m * dz + m * dw + m * m * dw,))
  # z ~ q(z | x_e): the model's posterior given this one modality
  # (`sample_shared` over a one-member subset). The source's posteriors go
  # in slot 0 of an M-stack whose other slots the mask leaves out: the
  # subset stays a proper one (as it is for the model; MoPoE, e.g., adds
  # the prior expert to the full set only), and e may stay traced.
  def stack(x, fill):
    return jnp.concatenate(
        [x[None], jnp.full((m - 1,) + x.shape, fill, x.dtype)])

  post = types.Posteriors(stack(loc_w, 0.0), stack(scale_w, 1.0),
                          stack(loc_z, 0.0), stack(scale_z, 1.0))
  z = model.sample_shared(post, np.arange(m)[None] == 0,
                          jnp.zeros((1, loc_z.shape[0])),
                          _slice(eps, e * dz, dz)[None])[0]
  w_post = loc_w + scale_w * _slice(eps, m * dz + e * dw, dw)
  w_prior = alpha * model.prior_scale(dw) * _slice(
      eps, m * dz + m * dw + (e * m + d) * dw, dw)
  w = jnp.where(e == d, w_post, w_prior)  # e, d may be traced
  return concat_latents(w, z)


def _slice(x, start, size):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)


def subset_per_example(key, model, post: types.Posteriors, member, index, *,
                       alpha=1.0) -> tuple[Array, Array]:
  """Latents of the all-subsets protocol: z ~ q(z | x_S) per subset S
  (`member [S, M]` bool, static), w ~ p_alpha(w) per (subset, target).

  Per example, one draw laid out as `[S | S * Dz | S * M * Dw]` (the
  mixture component's uniform, z's noise, w's noise).

  Returns:
    (z `[S, B, Dz]`, w `[S, M(d), B, Dw]`).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  s_count = member.shape[0]
  eps_c, eps_z, eps_w = example_noise(
      model.family, example_keys(key, index), (s_count,), (s_count, dz),
      (s_count, m, dw))
  # z ~ q(z | x_S), the model's subset posterior (a mixture of S's unimodal
  # posteriors for MoE models: a uniform member, then its sample).
  z = model.sample_shared(post, member, eps_c.T,
                          jnp.swapaxes(eps_z, 0, 1))  # [S, B, Dz]
  w = (alpha * model.prior_scale(dw)) * jnp.transpose(
      eps_w, (1, 2, 0, 3))  # [S, M(d), B, Dw]
  return z, w


def unconditional_per_example(key, model, index, *, alpha=1.0
                              ) -> tuple[Array, Array]:
  """Joint prior samples: per example one z ~ p(z) shared by all modalities
  and w_d ~ p_alpha(w) per modality, from one draw laid out `[Dz | M * Dw]`.

  Returns:
    (z `[B, Dz]`, w `[M, B, Dw]`).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  eps_z, eps_w = example_noise(model.family, example_keys(key, index), (dz,),
                               (m, dw))
  z = model.prior_scale(dz) * eps_z  # [B, Dz], shared
  w = (alpha * model.prior_scale(dw)) * jnp.swapaxes(eps_w, 0, 1)  # [M, B, Dw]
  return z, w


def posterior_per_example(key, model, post: types.Posteriors, index
                          ) -> tuple[Array, Array]:
  """One draw of every unimodal posterior per example: w_m ~ q_m(w | x_m)
  and z_m ~ q(z | x_m) (the model's posterior given modality m alone), from
  `fold_in(key, index[i])` with noise `[M, Dw + Dz]` per example.

  Returns:
    (w `[M, B, Dw]`, z `[M, B, Dz]`).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  keys = example_keys(key, index)
  eps = jax.vmap(lambda k: distributions.noise(
      model.family, k, (m, dw + dz)))(keys)  # [B, M, Dw + Dz]
  eps = jnp.swapaxes(eps, 0, 1)  # [M, B, Dw + Dz]
  w = post.loc_w + post.scale_w * eps[..., :dw]
  z = model.sample_shared(post, np.eye(m, dtype=bool),
                          jnp.zeros(eps.shape[:2]), eps[..., dw:])
  return w, z
