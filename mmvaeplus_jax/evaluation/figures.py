"""The paper's per-checkpoint figures (Figs. 1/6, 7, 8, 9, 10, 20).

Each figure decodes latents `u = [w, z]` (private first, as the decoders
take them) built by `generation.py` (`cross_modal_latents`,
`unconditional_latents`, `private_conditioning_latents`,
`prior_shared_latents`, `traversal_latents`, `alpha_latents`), so tests can
check what is fed to the decoders, not just pictures. `decode_latents`
decodes `[M_t, ..., Dw + Dz]` latents with every target in fixed-size
chunks (one compilation serves every figure); `image_grids.save_image_grid`
writes each grid as a pixel-exact PNG.

Evaluator `figures` (`evaluation.api`): every grid as a PNG in
`ctx.out_dir`, with the knobs of `FigureOptions` from `config.evals`
(`grid_examples`, `alpha`, `figures_*`, `traversal_*`, `alpha_grid*`;
defaults in `configs/common.py`). Related: `evaluation/alpha_sweep.py`
(Fig. 19) and `experiments/scatter.py` (Fig. 1 right, across runs).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.core import types
from mmvaeplus_jax.infra import plotting
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import image_grids
from mmvaeplus_jax.input import pipeline

Array = jax.Array
Params = Any
Posteriors = types.Posteriors


# ---------------------------------------------------------------- decoding


def _decode_targets(model, params, u) -> Array:
  """`[M_t, N, Dw + Dz]` -> `[M_t, N, *event]`, target d decodes u[d]."""
  canvas = plotting.canvas_shape([m.event_shape for m in model.modalities])
  return jnp.stack([plotting.to_canvas(model.decode(params, name, u[d]), canvas)
                    for d, name in enumerate(model.names)])


_decode_chunk = jax.jit(_decode_targets, static_argnums=0)
_encode = jax.jit(lambda model, params, batch: model.encode(params, batch),
                  static_argnums=0)


def encode(model, params, data: Mapping[str, np.ndarray]) -> Posteriors:
  """Posteriors `[M, B, D]` of uint8 or float inputs `{name: [B, *event]}`."""
  return _encode(model, params,
                 pipeline.to_model_inputs({n: np.asarray(data[n])
                                           for n in model.names}))


def decode_latents(model, params, u, *, chunk: int = 128) -> np.ndarray:
  """Decoder means of latents, target d decoding `u[d]`.

  Decodes in chunks of exactly `chunk` latents per target (the last one
  padded), so every call with the same chunk reuses one compilation.
  Modalities of different image shapes come back on a common RGB canvas
  (`plotting.to_canvas`).

  Args:
    model: the MMVAE+.
    params: its params.
    u: `[M_t, *S, Dw + Dz]` latents (any sample axes S).
    chunk: latents per target per device call.

  Returns:
    `[M_t, *S, H, W, C]` float32 numpy (raw decoder means, not clamped).
  """
  u = np.asarray(u, np.float32)
  m = model.num_modalities
  if u.shape[0] != m:
    raise ValueError(f'u must have the {m} targets first, got {u.shape}')
  lead = u.shape[1:-1]
  flat = u.reshape(m, -1, u.shape[-1])
  n = flat.shape[1]
  outs = []
  for start in range(0, n, chunk):
    part = flat[:, start:start + chunk]
    valid = part.shape[1]
    if valid < chunk:
      part = np.concatenate(
          [part, np.zeros((m, chunk - valid, u.shape[-1]), np.float32)], 1)
    outs.append(np.asarray(_decode_chunk(model, params, part))[:, :valid])
  out = np.concatenate(outs, axis=1)
  return out.reshape((m,) + lead + out.shape[2:])


# ------------------------------------------------------------ figure options


@dataclasses.dataclass(frozen=True)
class FigureOptions:
  """Knobs of the `figures` evaluator, read from `config.evals` (defaults in
  `configs/common.py`)."""

  num_examples: int  # inputs per grid (grid_examples)
  num_samples: int  # cross-modal samples per input (Fig. 1: 4)
  num_unconditional: int  # joint prior samples (Fig. 7 shows 64)
  source: str  # modality of Figs. 10 and 20 ('' = the first)
  alpha: float  # test-time scale of p(w) for Figs. 6, 7, 10
  traversal_steps: int
  traversal_span: float  # paper: +-5 prior scales
  traversal_quantiles: bool
  alpha_grid: tuple[float, ...]  # Fig. 20
  alpha_grid_samples: int
  zoom: int
  chunk: int

  @classmethod
  def from_config(cls, evals) -> FigureOptions:
    return cls(
        num_examples=int(evals.grid_examples),
        num_samples=int(evals.figures_samples),
        num_unconditional=int(evals.figures_unconditional),
        source=str(evals.figures_source),
        alpha=float(evals.alpha),
        traversal_steps=int(evals.traversal_steps),
        traversal_span=float(evals.traversal_span),
        traversal_quantiles=bool(evals.traversal_quantiles),
        alpha_grid=tuple(float(a) for a in evals.alpha_grid),
        alpha_grid_samples=int(evals.alpha_grid_samples),
        zoom=int(evals.figures_zoom),
        chunk=int(evals.figures_chunk))


@dataclasses.dataclass(frozen=True)
class Grid:
  """One figure: images `[R, C, H, W, 3]` and its text."""

  images: np.ndarray
  title: str
  row_labels: Sequence[str] = ()
  col_labels: Sequence[str] = ()


def _white(shape) -> np.ndarray:
  """Blank cells (white, the padding colour)."""
  return np.ones(shape, np.float32)


def _float_images(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else (
      x.astype(np.float32))


@functools.partial(jax.jit, static_argnames=(
    'model', 'num_samples', 'num_unconditional', 'source', 'grid_samples',
    'relative'))
def _figure_latents(key, model, post, alpha, values, alphas, *, num_samples,
                    num_unconditional, source, grid_samples, relative):
  """Every figure's latents in one compiled program (eager random ops each
  compile on their own). `post` holds 2G inputs: G shared, G private."""
  g = post.loc_z.shape[1] // 2
  post_in = jax.tree.map(lambda t: t[:, :g], post)
  post_priv = jax.tree.map(lambda t: t[:, g:], post)
  k_cross, k_unc, k_priv, k_prior, k_trav, k_alpha = jax.random.split(key, 6)
  w_bar, z_bar = generation.traversal_base(k_trav, model, post_in, source, 0,
                                alpha=alpha)
  one = jax.tree.map(lambda t: t[:, :1], post_in)
  return {
      'cross': generation.cross_modal_latents(
          k_cross, model, post_in, num_samples,
          alpha=alpha),  # [M_s, M_t, S, G, D]
      'unconditional': generation.unconditional_latents(
          k_unc, model, num_unconditional, alpha=alpha),  # [M, N, D]
      'private': generation.private_conditioning_latents(
          k_priv, model, post_in, post_priv),  # [M_s, M_t, G, G, D]
      'prior': generation.prior_shared_latents(k_prior, model, post_priv, g),
      'traversal_z': generation.traversal_latents(
          w_bar, z_bar, values, kind='z', relative=relative),  # [Dz, S, D]
      'traversal_w': generation.traversal_latents(
          w_bar, z_bar, values, kind='w', relative=relative),  # [Dw, S, D]
      'alpha': generation.alpha_latents(
          k_alpha, model, one, alphas, grid_samples)[
              :, source, :, :, 0],  # [A, M_t, S, D]
  }


def figure_images(key, model, params, data: Mapping[str, np.ndarray],
                  options: FigureOptions
                  ) -> dict[str, Grid]:
  """Every per-checkpoint figure as image grids (no files written).

  Inputs: the first G = `options.num_examples` examples of `data` give the
  inputs and shared codes, the next G (wrapping around) the private codes.

  Returns:
    `{file name: Grid}` for `write_figures`.
  """
  names = model.names
  m = model.num_modalities
  n = len(data['label']) if 'label' in data else len(data[names[0]])
  g = min(options.num_examples, n)
  idx = np.concatenate([np.arange(g), (np.arange(g) + g) % n])
  canvas = plotting.canvas_shape([mod.event_shape for mod in model.modalities])
  inputs = {k: _float_images(np.asarray(data[k])[idx]) for k in names}
  shown = {k: plotting.to_canvas(v, canvas) for k, v in inputs.items()}
  shared = {k: v[:g] for k, v in shown.items()}  # as shown in the grids
  private = {k: v[g:] for k, v in shown.items()}
  source = names.index(options.source) if options.source else 0
  src = names[source]
  values, relative = generation.traversal_values(
      model, options.traversal_steps, span=options.traversal_span,
      quantiles=options.traversal_quantiles)
  alphas = options.alpha_grid
  s, sa = options.num_samples, options.alpha_grid_samples
  lat = _figure_latents(
      key, model, encode(model, params, inputs), jnp.float32(options.alpha),
      jnp.asarray(values, jnp.float32), jnp.asarray(alphas, jnp.float32),
      num_samples=s, num_unconditional=options.num_unconditional,
      source=source, grid_samples=sa, relative=relative)
  dec = functools.partial(decode_latents, model, params, chunk=options.chunk)
  out = {}

  # Fig. 1 left / Fig. 6: per source, its inputs, then S samples per target.
  x = dec(jnp.swapaxes(lat['cross'], 0, 1))  # [M_t, M_s, S, G, ...]
  for e, name in enumerate(names):
    rows = [shared[name]] + [x[d, e, i] for d in range(m) for i in range(s)]
    out[f'cross_modal_{name}.png'] = Grid(
        np.stack(rows),
        f'{name} -> all: z ~ q(z|x_{name}), w ~ p(w) (alpha={options.alpha:g})',
        row_labels=[f'input {name}'] + [f'{t} #{i + 1}' for t in names
                                        for i in range(s)])

  # Fig. 7: columns are joint samples (one z shared down the column).
  out['unconditional.png'] = Grid(
      dec(lat['unconditional']),
      f'z ~ p(z) shared per column, w ~ p(w) (alpha={options.alpha:g})',
      row_labels=list(names))

  if model.dim_w == 0:  # no private latent: Figs. 8, 9 and the w traversal
    return _without_private(out, lat, dec, shared, names, m, src, values,
                            relative, alphas, sa)

  # Fig. 8: rows fix z (from x_e), column blocks per target fix w (from x_d).
  x = dec(jnp.swapaxes(lat['private'], 0, 1))  # [M_t, M_s, G(z), G(w), ...]
  top = np.concatenate([_white((1,) + x.shape[-3:])]
                       + [private[t] for t in names])[None]  # [1, 1 + M G]
  for e, name in enumerate(names):
    body = np.concatenate(
        [shared[name][:, None]] + [x[d, e] for d in range(m)], axis=1)
    out[f'private_conditioning_{name}.png'] = Grid(
        np.concatenate([top, body]),
        f'z ~ q(z|x_{name}) (left), w ~ q(w|x_d) (top), per target d',
        row_labels=['w from'] + [f'z of {name}[{i}]' for i in range(g)],
        col_labels=[''] + [t if j == 0 else '' for t in names
                           for j in range(g)])

  # Fig. 9: rows z ~ p(z), column blocks per target w ~ q_d(w | x_d).
  x = dec(lat['prior'])  # [M_t, G, G, ...]
  top = np.concatenate([private[t] for t in names])[None]
  body = np.concatenate([x[d] for d in range(m)], axis=1)
  out['private_conditioning_prior.png'] = Grid(
      np.concatenate([top, body]),
      'z ~ p(z) shared per row, w ~ q(w|x_d) (top), per target d',
      row_labels=['w from'] + [f'z ~ p(z) #{i + 1}' for i in range(g)],
      col_labels=[t if j == 0 else '' for t in names for j in range(g)])

  return _traversal_and_alpha(out, lat, dec, shared, names, m, src, values,
                              relative, alphas, sa, ('z', 'w'))


def _without_private(out, lat, dec, shared, names, m, src, values, relative,
                     alphas, sa):
  """The figures of a model without private latents (no Figs. 8, 9 and no
  w traversal: w is empty)."""
  return _traversal_and_alpha(out, lat, dec, shared, names, m, src, values,
                              relative, alphas, sa, ('z',))


def _traversal_and_alpha(out, lat, dec, shared, names, m, src, values,
                         relative, alphas, sa, kinds):
  """Fig. 10 (traversals of `kinds`) and Fig. 20 (alpha grid) into `out`."""
  # Fig. 10: one column per dimension, rows (target, value).
  vlabel = (lambda v: f'{v:+.1f}') if relative else (lambda v: f'={v:.2f}')
  for kind in kinds:
    u = lat[f'traversal_{kind}']
    u = jnp.broadcast_to(u, (m,) + u.shape)  # [M_t, D_kind, S, D]
    x = np.swapaxes(dec(u), 1, 2)  # [M_t, S, D_kind, ...]
    x = x.reshape((m * len(values),) + x.shape[2:])
    first = np.concatenate(
        [shared[src][:1], _white((x.shape[0] - 1,) + x.shape[-3:])])
    out[f'traversal_{kind}_{src}.png'] = Grid(
        np.concatenate([first[:, None], x], axis=1),
        f'traversal of {kind} around (mean of q(z|x_{src}), w ~ p(w));'
        f' rows: target, {"offset" if relative else "quantile"}',
        row_labels=[f'{t} {vlabel(v)}' for t in names for v in values],
        col_labels=['input'] + [f'{kind}{k}' for k in range(x.shape[1])])

  # Fig. 20: one input of the source, S samples per target, one column per
  # alpha (the same noise in every column).
  x = dec(jnp.transpose(lat['alpha'], (1, 2, 0, 3)))  # [M_t, S, A, ...]
  rows = [np.repeat(shared[src][:1], len(alphas), axis=0)] + [
      x[d, i] for d in range(m) for i in range(sa)]
  out[f'alpha_grid_{src}.png'] = Grid(
      np.stack(rows), f'{src} -> all, w ~ p_alpha(w), alpha per column',
      row_labels=[f'input {src}'] + [f'{t} #{i + 1}' for t in names
                                     for i in range(sa)],
      col_labels=[f'{a:g}' for a in alphas])
  return out


def write_figures(key, model, params, data: Mapping[str, np.ndarray],
                  out_dir: str, options: FigureOptions,
                  *, write: bool = True) -> list[str]:
  """Computes `figure_images` and writes each as a PNG in `out_dir`.

  Returns:
    The file names (relative to `out_dir`), sorted.
  """
  figs = figure_images(key, model, params, data, options)
  if write:
    for name, f in figs.items():
      image_grids.save_image_grid(
          os.path.join(out_dir, name), f.images, title=f.title,
          row_labels=f.row_labels, col_labels=f.col_labels,
          zoom=options.zoom)
  return sorted(figs)


@api.register('figures')
def figures_evaluator(ctx: api.EvalContext) -> dict:
  """All per-checkpoint figures (Figs. 1 left, 6, 7, 8, 9, 10, 20)."""
  skipped = api.skip_unless_images(ctx, 'figures', 'captions')
  if skipped:
    return skipped
  files = write_figures(
      ctx.key, ctx.model, ctx.params, ctx.data, ctx.out_dir,
      FigureOptions.from_config(ctx.config.evals),
      write=jax.process_index() == 0)
  return {'figures/files': files}


