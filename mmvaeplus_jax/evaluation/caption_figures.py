"""Figures and tables of an image-caption model (the paper's Figs. 4/13, 14
and 15 for CUB): evaluator `captions`.

For a model with one image and one text modality (`colour.image_and_text`),
on the first `evals.captions_examples` test examples, with
S = `evals.figures_samples` draws each:

* `caption_to_image.png` (Figs. 4 and 13): per row a test caption, its real
  image, then S images generated from the caption (z ~ q(z | caption),
  w ~ p_alpha(w));
* `image_to_caption.png` and `.md` (Fig. 14): per row a test image, its real
  caption, then S captions generated from the image (argmax decoding, one
  latent draw each) and one caption with sampled tokens (temperature 1) from
  the first draw;
* `unconditional_captions.png` and `.md` (Fig. 15): `evals.captions_
  unconditional` joint prior samples, one z ~ p(z) decoded into an image and
  a caption (w ~ p_alpha(w) per modality);
* `traversal_z.png` and, with private latents, `traversal_w.png` (Fig. 16):
  the first test caption's traversal embedding (z̄ the mean of
  q(z | caption), w̄ one draw of p_alpha(w); `generation.traversal_base`),
  one dimension moved at a time (`evals.traversal_*`: the paper's +-5
  prior scales), decoded into images: one column per dimension, one row per
  value;
* `alpha_grid.png` (Fig. 21): the first test caption, `evals.
  alpha_grid_samples` images generated from it per alpha of `evals.
  alpha_grid` (rows: draws, the same noise in every column; CUB's configs
  set the paper's 0.1..3.0 in steps of 0.1 and 10 draws);
* the three tables as TensorBoard text summaries (an event file in the
  evaluation's folder).

The latents are `generation.cross_modal_latents`,
`generation.unconditional_latents`, `generation.traversal_latents` and
`generation.alpha_latents` (batch draws from the evaluator's key; the
traversal and alpha figures from `fold_in(key, 1)`, so adding them left the
other figures' draws unchanged).
"""

from __future__ import annotations

import functools
import os
import textwrap

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from mmvaeplus_jax import generation
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import colour
from mmvaeplus_jax.evaluation import text
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.infra import writers
from mmvaeplus_jax.input import sources

FONT_SIZE = 12
TEXT_WIDTH = 360  # px of a caption cell
PAD = 4
ZOOM = 2  # image magnification


@functools.partial(jax.jit, static_argnames=('model', 'pair', 'num_samples',
                                             'num_prior', 'alpha'))
def _generate(key, params, batch, *, model, pair, num_samples, num_prior,
              alpha):
  """Everything the figures show, from one key (module docstring).

  Returns:
    {'from_caption': images `[S, B, H, W, C]`, 'from_image': argmax ids
    `[S, B, L]`, 'sampled': sampled ids `[B, L]`, 'prior_image': `[U, H, W,
    C]`, 'prior_caption': argmax ids `[U, L]`}.
  """
  img, txt = pair
  k_cross, k_prior, k_tokens = jax.random.split(key, 3)
  x = {n: api.to_float(batch[n]) for n in model.names}
  u = generation.cross_modal_latents(k_cross, model, model.encode(params, x),
                                     num_samples, alpha=alpha)
  s, b = u.shape[2:4]
  flat = lambda v: v.reshape((s * b, v.shape[-1]))
  images = model.decode(params, model.names[img], flat(u[txt, img]))
  logits = model.decode(params, model.names[txt], flat(u[img, txt]))
  logits = logits.reshape((s, b) + logits.shape[1:])
  prior = generation.unconditional_latents(k_prior, model, num_prior,
                                           alpha=alpha)
  return {
      'from_caption': images.reshape((s, b) + images.shape[1:]),
      'from_image': text.argmax_ids(logits),
      'sampled': text.sample_ids(k_tokens, logits[0]),
      'prior_image': model.decode(params, model.names[img], prior[img]),
      'prior_caption': text.argmax_ids(
          model.decode(params, model.names[txt], prior[txt])),
  }


@functools.partial(jax.jit, static_argnames=(
    'model', 'pair', 'relative', 'alpha_samples'))
def _caption_source(key, params, batch, values, alphas, alpha, *, model,
                    pair, relative, alpha_samples):
  """The traversal and alpha figures' images, from the first example's
  caption (module docstring).

  Returns:
    {'traversal_z': `[Dz, V, H, W, C]`, 'traversal_w': `[Dw, V, H, W, C]`,
    'alpha': `[A, S, H, W, C]`}: images of the image modality.
  """
  img, txt = pair
  k_trav, k_alpha = jax.random.split(key)
  x = {n: api.to_float(batch[n]) for n in model.names}
  post = model.encode(params, x)
  w_bar, z_bar = generation.traversal_base(k_trav, model, post, txt, 0,
                                           alpha=alpha)
  one = jax.tree.map(lambda t: t[:, :1], post)
  lat = {kind: generation.traversal_latents(w_bar, z_bar, values, kind=kind,
                                            relative=relative)
         for kind in ('z', 'w')[:1 + (model.dim_w > 0)]}  # [D_kind, V, D]
  lat = {f'traversal_{k}': v for k, v in lat.items()}
  lat['alpha'] = generation.alpha_latents(
      k_alpha, model, one, alphas, alpha_samples)[:, txt, img, :, 0]  # [A,S,D]
  decode = lambda u: model.decode(
      params, model.names[img], u.reshape((-1, u.shape[-1]))).reshape(
          u.shape[:-1] + model.modalities[img].event_shape)
  return {k: decode(v) for k, v in lat.items()}


def _font():
  return ImageFont.load_default(size=FONT_SIZE)


def text_cell(lines: list[str], width: int, height: int) -> np.ndarray:
  """uint8 `[height, width, 3]`: black text on white, each line wrapped to
  the width (lines that do not fit are cut with '...')."""
  font = _font()
  chars = max(8, int(width / (0.55 * FONT_SIZE)))
  wrapped = [w for line in lines for w in (textwrap.wrap(line, chars) or [''])]
  step = FONT_SIZE + 3
  fit = max(1, (height - PAD) // step)
  if len(wrapped) > fit:
    wrapped = wrapped[:fit - 1] + [wrapped[fit - 1][:chars - 3] + '...']
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(wrapped):
    draw.text((PAD, PAD + i * step), line, fill='black', font=font)
  return np.asarray(canvas)


def _image_cell(image, zoom: int = ZOOM) -> np.ndarray:
  x = plotting.to_uint8(image)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, -1)
  return x.repeat(zoom, 0).repeat(zoom, 1)


def _row(cells: list[np.ndarray]) -> np.ndarray:
  h = max(c.shape[0] for c in cells)
  padded = [np.pad(c, ((0, h - c.shape[0]), (0, PAD), (0, 0)),
                   constant_values=255) for c in cells]
  return np.concatenate(padded, axis=1)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
  w = max(r.shape[1] for r in rows)
  padded = [np.pad(r, ((0, PAD), (0, w - r.shape[1]), (0, 0)),
                   constant_values=255) for r in rows]
  return np.pad(np.concatenate(padded, axis=0), ((PAD, 0), (PAD, 0), (0, 0)),
                constant_values=255)


def caption_to_image(captions, real_images, generated) -> np.ndarray:
  """The Fig. 4 / 13 grid: `captions` N strings, `real_images` `[N, H, W,
  C]`, `generated` `[S, N, H, W, C]` -> uint8 image."""
  rows = []
  for i, caption in enumerate(captions):
    real = _image_cell(real_images[i])
    rows.append(_row([text_cell([caption], TEXT_WIDTH, real.shape[0]), real]
                     + [_image_cell(g[i]) for g in generated]))
  return _stack(rows)


def image_to_caption(real_images, lines) -> np.ndarray:
  """The Fig. 14 table as an image: `real_images` `[N, H, W, C]`, `lines` N
  lists of strings (real caption, generated ones) -> uint8 image."""
  rows = []
  for image, row_lines in zip(real_images, lines):
    cell = _image_cell(image)
    height = max(cell.shape[0], (FONT_SIZE + 3) * 2 * len(row_lines) + PAD)
    rows.append(_row([cell, text_cell(row_lines, 2 * TEXT_WIDTH, height)]))
  return _stack(rows)


def labelled_grid(images, *, title: list[str], row_labels: list[str],
                  col_labels: list[str], zoom: int = 1) -> np.ndarray:
  """An image grid under a text title: `images` `[R, C, H, W, C]`, one
  label per row (left) and per column (top) -> uint8 image."""
  r, c = images.shape[:2]
  side = images.shape[3] * zoom
  label_w = 56
  head = FONT_SIZE + 2 * PAD
  rows = [_row([text_cell([''], label_w, head)]
               + [text_cell([lab], side, head) for lab in col_labels])]
  for i in range(r):
    rows.append(_row([text_cell([row_labels[i]], label_w, side)]
                     + [_image_cell(images[i, j], zoom) for j in range(c)]))
  body = _stack(rows)
  caption = text_cell(title, body.shape[1],
                      (FONT_SIZE + 3) * len(title) + 2 * PAD)
  return np.concatenate([caption, body], axis=0)


def source_figures(caption: str, out, values, relative: bool, alphas,
                   *, title_alpha: float) -> dict[str, np.ndarray]:
  """The Fig. 16 and Fig. 21 grids from `_caption_source`'s outputs
  (numpy): `{file name: uint8 image}`."""
  vlabel = (lambda v: f'{v:+.1f}') if relative else (lambda v: f'={v:.2f}')
  figs = {}
  for kind in ('z', 'w'):
    x = out.get(f'traversal_{kind}')
    if x is None:
      continue
    figs[f'traversal_{kind}.png'] = labelled_grid(
        np.swapaxes(x, 0, 1),  # [V, D_kind, ...]: a column per dimension
        title=[f'Traversal of {kind}, one dimension per column, around'
               f' (mean of q(z|caption), w ~ p(w), alpha={title_alpha:g});'
               f' rows: {"offset" if relative else "value"}',
               f'caption: {caption}'],
        row_labels=[vlabel(v) for v in values],
        col_labels=[f'{kind}{k}' for k in range(x.shape[0])])
  a = out['alpha']  # [A, S, ...]
  figs['alpha_grid.png'] = labelled_grid(
      np.swapaxes(a, 0, 1),
      title=['Images from the caption, w ~ p_alpha(w), alpha per column'
             ' (same noise in every column)', f'caption: {caption}'],
      row_labels=[f'#{i + 1}' for i in range(a.shape[1])],
      col_labels=[f'{v:g}' for v in alphas])
  return figs


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A GitHub markdown table ('|' in cells escaped)."""
  esc = lambda s: str(s).replace('|', r'\|')
  out = ['| ' + ' | '.join(map(esc, header)) + ' |',
         '|' + '---|' * len(header)]
  out += ['| ' + ' | '.join(map(esc, r)) + ' |' for r in rows]
  return '\n'.join(out) + '\n'


def caption_tables(data, vocabulary, out, names) -> dict[str, str]:
  """The markdown of `image_to_caption.md` and `unconditional_captions.md`
  from `_generate`'s outputs `out` (numpy) and the test `data`."""
  img, txt = names
  real = text.to_texts(data[txt], vocabulary)
  generated = [text.to_texts(ids, vocabulary) for ids in out['from_image']]
  sampled = text.to_texts(out['sampled'], vocabulary)
  s = len(generated)
  rows = [[str(i), real[i]] + [g[i] for g in generated] + [sampled[i]]
          for i in range(len(real))]
  header = (['example', 'real caption'] + [f'argmax {j + 1}' for j in range(s)]
            + ['sampled tokens (draw 1)'])
  prior = text.to_texts(out['prior_caption'], vocabulary)
  return {
      'image_to_caption.md': (
          f'# Captions generated from {img} (test examples 0..{len(real) - 1})'
          '\n\n' + markdown_table(header, rows)),
      'unconditional_captions.md': (
          '# Captions of joint prior samples (the images:'
          ' unconditional_captions.png)\n\n'
          + markdown_table(['sample', 'caption'],
                           [[str(i), c] for i, c in enumerate(prior)])),
  }


def write_caption_figures(ctx: api.EvalContext, pair) -> list[str]:
  """Generates and writes the figures and tables (module docstring);
  returns the file names."""
  ec = ctx.config.evals
  names = tuple(ctx.model.names[i] for i in pair)
  n = min(int(ec.captions_examples), len(ctx.data['label']))
  batch = {k: np.asarray(ctx.data[k][:n]) for k in ctx.model.names}
  out = jax.tree.map(np.asarray, _generate(
      ctx.key, ctx.params, batch, model=ctx.model, pair=pair,
      num_samples=int(ec.figures_samples),
      num_prior=int(ec.captions_unconditional), alpha=float(ec.alpha)))
  vocabulary = sources.vocabulary(ctx.config.data)
  tables = caption_tables(batch, vocabulary, out, names)
  real_images = batch[names[0]].astype(np.float32) / 255.0
  real = text.to_texts(batch[names[1]], vocabulary)
  lines = [[f'real: {real[i]}']
           + [f'{j + 1}: {c[i]}' for j, c in enumerate(
               text.to_texts(ids, vocabulary) for ids in out['from_image'])]
           + [f'sampled: {text.to_texts(out["sampled"], vocabulary)[i]}']
           for i in range(n)]
  prior_captions = text.to_texts(out['prior_caption'], vocabulary)
  images = {
      'caption_to_image.png': caption_to_image(real, real_images,
                                               out['from_caption']),
      'image_to_caption.png': image_to_caption(real_images, lines),
      'unconditional_captions.png': image_to_caption(
          out['prior_image'], [[c] for c in prior_captions]),
  }
  values, relative = generation.traversal_values(
      ctx.model, int(ec.traversal_steps), span=float(ec.traversal_span),
      quantiles=bool(ec.traversal_quantiles))
  alphas = tuple(float(a) for a in ec.alpha_grid)
  src = jax.tree.map(np.asarray, _caption_source(
      jax.random.fold_in(ctx.key, 1), ctx.params,
      {k: v[:1] for k, v in batch.items()}, np.asarray(values, np.float32),
      np.asarray(alphas, np.float32), np.float32(ec.alpha), model=ctx.model,
      pair=pair, relative=relative,
      alpha_samples=int(ec.alpha_grid_samples)))
  images.update(source_figures(real[0], src, values, relative, alphas,
                               title_alpha=float(ec.alpha)))
  if jax.process_index() == 0:
    for name, image in images.items():
      plotting.save_png(os.path.join(ctx.out_dir, name), image)
    for name, md in tables.items():
      with open(os.path.join(ctx.out_dir, name), 'w') as f:
        f.write(md)
    writer = writers.TensorboardWriter(ctx.out_dir)
    writer.write_texts(ctx.step, {
        f'captions/{os.path.splitext(k)[0]}': v for k, v in tables.items()})
    writer.close()
  return sorted(list(images) + list(tables))


@api.register('captions')
def captions_evaluator(ctx: api.EvalContext) -> dict:
  """The caption figures and tables of an image-caption model."""
  pair = colour.image_and_text(ctx.model)
  if pair is None:
    return api.skip('captions', 'the model has no image-caption pair of'
                    ' modalities (exactly one image and one text modality)')
  return {'captions/files': write_caption_figures(ctx, pair)}

