"""Colour coherence of image-caption pairs: a metric with no learned weights.

CUB captions name the bird's colours ("a small bird with a red crown and
black wings"). Whether a generated image has the colours its caption names,
or a generated caption names the colours its image has, can be scored
without any trained network:

1. each pixel gets one of `COLOURS` from fixed HSV rules (`pixel_colours`);
   an image's colour fractions are the shares of its central crop
   (`colour_fractions`; the bird is usually near the centre, the crop keeps
   less sky and foliage);
2. a caption mentions a colour when one of its words is in `COLOUR_WORDS`
   (before `<eos>`; `text.mentions`);
3. per colour c, the AUROC of "fraction of c in the image" as a score for
   "the caption mentions c" (`auroc`: the probability that an image whose
   caption names c has more c than one whose caption does not, ties 1/2);
   0.5 is no association, 1 perfect;
4. the mean over the colours the REAL test captions use often enough in
   both ways (at least `MIN_COUNT` captions with and without the word; with
   none, e.g. on a handful of examples, the evaluator is skipped, saying so).

The crop side (`CROP` = 0.625 of the image side) was chosen on CUB-23's
train split, real pairs (mean AUROC over the 9 counted colours, 2026-12-07):
crop 0.25: 0.671, 0.375: 0.692, 0.5: 0.699, 0.625: 0.703, 0.75: 0.700, the
whole image: 0.678.

Reported three times (`colour_evaluator`):

* `colour/real`: real images against their own captions, the data's
  ceiling for this metric;
* `colour/caption->image`: images generated from the captions (z ~ q(z |
  caption), w ~ p(w)) against those captions;
* `colour/image->caption`: argmax captions generated from the images
  against those images. A colour the generated captions never (or always)
  use carries no information about the image: it counts 0.5.

Per-colour values are reported too (`colour/<setting>/<colour>`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from mmvaeplus_jax import generation
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import text
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.input import sources

COLOURS = ('black', 'white', 'grey', 'brown', 'red', 'orange', 'yellow',
           'green', 'blue', 'purple')
COLOUR_WORDS = {'grey': ('grey', 'gray'), 'purple': ('purple', 'violet')}
# Hue intervals in degrees [lo, hi) of the chromatic colours (red wraps).
HUES = {'red': ((0, 15), (340, 360)), 'orange': ((15, 45),),
        'yellow': ((45, 70),), 'green': ((70, 170),), 'blue': ((170, 260),),
        'purple': ((260, 340),)}
DARK = 0.25  # value below: black
GREY_SATURATION = 0.2  # saturation below: white / grey
LIGHT = 0.75  # value above (unsaturated): white
BROWN_HUE, BROWN_VALUE = (10, 45), 0.6  # dark orange-ish: brown
CROP = 0.625  # side of the central crop (fraction of the side; see below)
MIN_COUNT = 20  # real captions with and without a colour for it to count


def word_sets() -> list[tuple[str, ...]]:
  """The caption words of each of `COLOURS`."""
  return [COLOUR_WORDS.get(c, (c,)) for c in COLOURS]


def hsv(images):
  """RGB in [0, 1] `[..., 3]` -> (hue in degrees [0, 360), saturation,
  value), each `[...]` (the usual hexcone model; hue 0 for greys)."""
  xp = np if isinstance(images, np.ndarray) else jnp
  images = xp.clip(images, 0.0, 1.0)
  r, g, b = images[..., 0], images[..., 1], images[..., 2]
  v = images.max(-1)
  c = v - images.min(-1)
  s = xp.where(v > 0, c / xp.where(v > 0, v, 1.0), 0.0)
  safe = xp.where(c > 0, c, 1.0)
  h = xp.where(v == r, ((g - b) / safe) % 6.0,
               xp.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  return xp.where(c > 0, 60.0 * h, 0.0) % 360.0, s, v


def pixel_colours(images):
  """RGB in [0, 1] `[..., H, W, 3]` -> `[..., H, W]` int index into
  `COLOURS`: value < DARK black; saturation < GREY_SATURATION white (value
  > LIGHT) or grey; a hue in BROWN_HUE with value < BROWN_VALUE brown; else
  the colour of the hue interval (`HUES`)."""
  xp = np if isinstance(images, np.ndarray) else jnp
  h, s, v = hsv(images)
  idx = {c: i for i, c in enumerate(COLOURS)}
  out = xp.zeros(h.shape, xp.int32)
  for name, intervals in HUES.items():
    for lo, hi in intervals:
      out = xp.where((h >= lo) & (h < hi), idx[name], out)
  brown = (h >= BROWN_HUE[0]) & (h < BROWN_HUE[1]) & (v < BROWN_VALUE)
  out = xp.where(brown, idx['brown'], out)
  grey = s < GREY_SATURATION
  out = xp.where(grey, xp.where(v > LIGHT, idx['white'], idx['grey']), out)
  return xp.where(v < DARK, idx['black'], out)


def colour_fractions(images, crop: float = CROP):
  """`[N, H, W, 3]` RGB in [0, 1] -> `[N, len(COLOURS)]` share of each
  colour among the pixels of the central `crop` x `crop` region."""
  xp = np if isinstance(images, np.ndarray) else jnp
  hh, ww = images.shape[-3:-1]
  ch, cw = max(1, round(hh * crop)), max(1, round(ww * crop))
  top, left = (hh - ch) // 2, (ww - cw) // 2
  x = images[..., top:top + ch, left:left + cw, :]
  one_hot = pixel_colours(x)[..., None] == xp.arange(len(COLOURS))
  return one_hot.mean(axis=(-3, -2), dtype=xp.float32)


def auroc(scores, labels) -> float:
  """P(score of a positive > score of a negative), ties counted 1/2 (the
  Mann-Whitney U over n_pos n_neg); NaN without both classes."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks = stats.rankdata(scores)  # average ranks for ties
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def counted_colours(real_mentions, min_count: int = MIN_COUNT) -> np.ndarray:
  """bool `[C]`: colours with >= min_count real captions naming them and
  >= min_count not naming them."""
  m = np.asarray(real_mentions, bool)
  return (m.sum(0) >= min_count) & ((~m).sum(0) >= min_count)


def coherence(fractions, mentions, counted) -> dict[str, float]:
  """`{'mean': .., colour: ..}`: per counted colour the AUROC of the image
  fractions `[N, C]` for the caption mentions `[N, C]`; 0.5 where the
  mentions are all equal (no information)."""
  out = {}
  for k in np.flatnonzero(counted):
    a = auroc(np.asarray(fractions)[:, k], np.asarray(mentions)[:, k])
    out[COLOURS[k]] = 0.5 if np.isnan(a) else a
  out['mean'] = float(np.mean(list(out.values()))) if out else float('nan')
  return out


# ----------------------------------------------------------------- evaluator


def image_and_text(model) -> tuple[int, int] | None:
  """(image modality index, text modality index) of a model with exactly
  one of each, else None."""
  images = [i for i, m in enumerate(model.modalities)
            if plotting.is_image_shape(m.event_shape)]
  texts = [i for i, m in enumerate(model.modalities) if text.is_text(m)]
  return (images[0], texts[0]) if len(images) == 1 and len(texts) == 1 else None


def _pair_outputs(params, key, index, batch, *, model, source, target, alpha,
                  crop):
  """Per example: target `target` decoded from source `source` (z ~ q(z |
  x_source), w ~ p_alpha(w); `generation.pair_latents_per_example`), as
  colour fractions `[B, C]` (image target) or argmax ids `[B, L]` (text)."""
  x = {n: api.to_float(batch[n]) for n in model.names}
  post = model.encode(params, x)
  e = source
  u = generation.pair_latents_per_example(
      key, model, post.loc_w[e], post.scale_w[e], post.loc_z[e],
      post.scale_z[e], index, source, target, alpha=alpha)
  out = model.decode(params, model.names[target], u)
  if text.is_text(model.modalities[target]):
    return text.argmax_ids(out)
  return colour_fractions(out, crop)


_pair_outputs_jit = jax.jit(
    _pair_outputs,
    static_argnames=('model', 'source', 'target', 'alpha', 'crop'))


def generated(ctx: api.EvalContext, source: int, target: int, *,
              crop: float = CROP) -> np.ndarray:
  """`_pair_outputs` over every example of `ctx.data`."""
  fn = functools.partial(_pair_outputs_jit, model=ctx.model, source=source,
                         target=target, alpha=float(ctx.config.evals.alpha),
                         crop=crop)
  return api.map_batches(
      fn, ctx.mesh, len(ctx.data['label']),
      batch_size=ctx.config.evals.batch_size,
      inputs={n: ctx.data[n] for n in ctx.model.names},
      args=(ctx.params, parallel.replicate_key(ctx.mesh, ctx.key)))


@api.register('colour')
def colour_evaluator(ctx: api.EvalContext) -> dict:
  """`colour/real`, `colour/caption->image`, `colour/image->caption` (mean
  AUROC over the counted colours) and their per-colour values, plus
  `colour/num_colours` (module docstring)."""
  pair = image_and_text(ctx.model)
  if pair is None:
    return api.skip('colour', 'the model has no image-caption pair of'
                    ' modalities (exactly one image and one text modality)')
  img, txt = pair
  vocabulary = sources.vocabulary(ctx.config.data)
  real_images = ctx.data[ctx.model.names[img]].astype(np.float32) / 255.0
  real_fractions = colour_fractions(real_images)
  real_mentions = text.mentions(ctx.data[ctx.model.names[txt]], vocabulary,
                                word_sets())
  counted = counted_colours(real_mentions)
  if not counted.any():
    return api.skip('colour', (
        f'no colour is named by >= {MIN_COUNT} and missing from >= {MIN_COUNT}'
        f' of the {len(real_mentions)} test captions evaluated: evaluate more'
        ' examples (evals.num_examples)'))
  gen_fractions = generated(ctx, txt, img)
  gen_mentions = text.mentions(generated(ctx, img, txt), vocabulary,
                               word_sets())
  names = (ctx.model.names[img], ctx.model.names[txt])
  settings = {
      'real': coherence(real_fractions, real_mentions, counted),
      f'{names[1]}->{names[0]}': coherence(gen_fractions, real_mentions,
                                           counted),
      f'{names[0]}->{names[1]}': coherence(real_fractions, gen_mentions,
                                           counted),
  }
  out = {'colour/num_colours': int(counted.sum())}
  for setting, values in settings.items():
    out[f'colour/{setting}'] = values.pop('mean')
    out.update({f'colour/{setting}/{c}': v for c, v in values.items()})
  out['colour/generated_mention_rate'] = float(gen_mentions[:, counted].mean())
  out['colour/real_mention_rate'] = float(real_mentions[:, counted].mean())
  return out
