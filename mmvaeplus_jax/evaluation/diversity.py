"""Sample diversity: how much the cross-modal samples of one input vary.

The paper's claim (Sections 1 and 5, Figs. 1 and 6) is diversity at equal
coherence: MMVAE+'s cross-modal samples of one input vary in style (the
private latent w ~ p(w) of the target) while keeping the digit, where
MMVAE's vary little. Measured here, per test example i, source s and target
t != s:

* R conditional samples x^r = decoder_t(w^r, z^r), z^r ~ q(z | x_s) (the
  model's posterior given modality s alone) and w^r ~ p(w) scaled by alpha
  (`generation.cross_modal_from_posteriors`), clipped to [0, 1];
* `spread_i(s, t)` = the per-pixel standard deviation over the R samples
  (ddof 0), averaged over the pixels and channels (`sample_spread`).

Its reference is the real within-class spread of the target: per digit
class, the per-pixel standard deviation over the evaluated test images of
that class, averaged over pixels, then over the classes present
(`within_class_spread`). A model whose samples of one input vary as much as
the real images of its digit scores a ratio near 1.

The 'diversity' evaluator (`evaluation.api`) uses the first
`config.evals.diversity_num_examples` evaluated test examples and
`config.evals.diversity_repeats` samples each; metrics
`diversity/cond/<s>-><t>`, `diversity/cond/mean` (over the M (M - 1)
pairs), `diversity/real/<t>`, `diversity/real/mean`, `diversity/ratio`
(cond mean / real mean). Example i's noise is `fold_in(key, i)`, so the
numbers do not depend on the batch size or the device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api


def sample_spread(samples, event_ndim: int = 3) -> jax.Array:
  """Mean over pixels of the per-pixel std over repeats.

  Args:
    samples: `[R, *lead, *event]` R samples of the same inputs (images:
      event `[H, W, C]`).
    event_ndim: the number of event axes (3 for images).

  Returns:
    `[*lead]` the standard deviation over R (ddof 0) averaged over the
    event axes.
  """
  std = jnp.std(samples, axis=0)
  return jnp.mean(std, axis=tuple(range(std.ndim - event_ndim, std.ndim)))


def within_class_spread(images: np.ndarray, labels: np.ndarray) -> float:
  """The real images' within-class spread (numpy, float64).

  Args:
    images: `[N, H, W, C]` in [0, 1] (uint8 is divided by 255).
    labels: `[N]` classes.

  Returns:
    per class present, the per-pixel std over its images (ddof 0) averaged
    over H, W, C; then the mean over classes.
  """
  x = np.asarray(images, np.float64)
  if np.asarray(images).dtype == np.uint8:
    x = x / 255.0
  labels = np.asarray(labels)
  return float(np.mean([x[labels == c].std(axis=0).mean()
                        for c in np.unique(labels)]))



def _per_example_spread(params, key, index, batch, *, model, num_repeats,
                        alpha):
  """`[B, M_s, M_t]` spread of each example's cross-modal samples (example i
  alone with key fold_in(key, i), vmapped)."""

  def one(i, x):
    x1 = {n: api.to_float(v)[None] for n, v in x.items()}
    post = model.encode(params, x1)  # [M, 1, D]
    keys = jax.random.split(jax.random.fold_in(key, i), num_repeats)
    by_target = jax.vmap(lambda k: generation.cross_modal_from_posteriors(
        k, model, params, post, alpha=alpha))(keys)  # t: [R, M_s, 1, ...]
    return jnp.stack([
        sample_spread(jnp.clip(x_t[:, :, 0], 0.0, 1.0), len(mod.event_shape))
        for x_t, mod in zip(by_target, model.modalities)], axis=-1)

  return jax.vmap(one)(index, {n: batch[n] for n in model.names})


_spread_jit = jax.jit(_per_example_spread,
                      static_argnames=('model', 'num_repeats', 'alpha'))


def spread_metrics(spread: np.ndarray, real: dict[str, float],
                   names) -> dict[str, float]:
  """`[N, M_s, M_t]` per-example spreads and the real spreads per target ->
  the metrics (module docstring)."""
  mean = np.asarray(spread, np.float64).mean(axis=0)  # [M_s, M_t]
  out, pairs = {}, []
  for s, src in enumerate(names):
    for t, tgt in enumerate(names):
      if s != t:
        out[f'diversity/cond/{src}->{tgt}'] = float(mean[s, t])
        pairs.append(mean[s, t])
  out['diversity/cond/mean'] = float(np.mean(pairs))
  for tgt in names:
    out[f'diversity/real/{tgt}'] = real[tgt]
  out['diversity/real/mean'] = float(np.mean([real[t] for t in names]))
  out['diversity/ratio'] = out['diversity/cond/mean'] / out[
      'diversity/real/mean']
  return out


@api.register('diversity')
def diversity_evaluator(ctx: api.EvalContext) -> dict:
  """Cross-modal sample spread against the real within-class spread."""
  skipped = api.skip_unless_images(ctx, 'diversity')
  if skipped:
    return skipped
  ec = ctx.config.evals
  model = ctx.model
  if model.num_modalities < 2:
    return api.skip('diversity', 'needs at least two modalities')
  n = len(ctx.data['label'])
  if ec.diversity_num_examples > 0:
    n = min(n, int(ec.diversity_num_examples))
  repeats = int(ec.diversity_repeats)
  if repeats < 2:
    raise ValueError(
        f'config.evals.diversity_repeats must be >= 2, got {repeats}')
  fn = functools.partial(_spread_jit, model=model, num_repeats=repeats,
                         alpha=float(ec.alpha))
  key = parallel.replicate_key(ctx.mesh, ctx.key)
  spread = api.map_batches(
      fn, ctx.mesh, n, batch_size=max(1, int(ec.batch_size) // repeats),
      inputs={m: ctx.data[m][:n] for m in model.names},
      args=(ctx.params, key))
  real = {m: within_class_spread(ctx.data[m], ctx.data['label'])
          for m in model.names}
  return spread_metrics(spread, real, model.names)
