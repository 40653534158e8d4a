"""The paper's figures for one checkpoint, and coherence vs FID across runs.

Pure generation functions build the latents `u = [w, z]` (private first, as
the decoders take them) that each figure decodes, so tests can check what is
fed to the decoders, not just pictures:

* `cross_modal_latents` (Fig. 1 left / Fig. 6): z ~ q_e(z | x_e) per source,
  w ~ p_alpha(w) per (source, target), several samples per input: the
  latents `generation.cross_modal` decodes (same distributions; one random
  draw per call instead of three).
* `unconditional_latents` (Fig. 7): one z ~ p(z) shared by all modalities,
  w_d ~ p_alpha(w) per modality, as `generation.unconditional`.
* `private_conditioning_latents` (Fig. 8): z from the posterior of one
  input, w from the posterior of another (style transfer): each row of the
  grid fixes z and varies w, each column fixes w and varies z.
* `prior_shared_latents` (Fig. 9): z ~ p(z), w from posteriors.
* `traversal_latents` (Fig. 10): the paper's embedding (z = mean of
  q_source(z | x), one w ~ p(w)) with one dimension of z or of w moved over
  `traversal_values` (the paper's +-5 prior scales, or the prior's
  quantiles), everything else fixed.
* `alpha_latents` (Fig. 20): cross-modal latents for a list of test-time
  scales alpha of p(w), with the same standardised noise for every alpha.

`decode_latents` decodes `[M_t, ..., Dw + Dz]` latents with every target in
fixed-size chunks (one compilation serves every figure), and
`save_image_grid` writes an `[R, C, H, W, 3]` image grid as a PNG through
matplotlib, pixel-exact: cell (i, j) lies where `GridLayout.cell(i, j)`
says (integer `zoom`, `PAD` pixels between cells, margins sized to the
labels and title).

Evaluators (`evaluation.api`):

* `figures`: every per-checkpoint grid above (PNG files in `ctx.out_dir`);
* `alpha_sweep` (Fig. 19): conditional coherence and the classifier-feature
  Fréchet distance FD_clf (`evaluation.fd_clf`) versus alpha, a two-panel
  line plot plus `alpha_sweep.json`; skipped (with a reason) without
  classifiers.

Command line (Fig. 1 right), one point per run from each run's latest
`eval/<step>/metrics.json`:

  python -m mmvaeplus_jax.evaluation.figures scatter --workdirs A B C \
      --out fig.png [--coherence_key coherence/cond/mean \
      --fid_key fid/cond/mean/with_self [--coherence_key ... --fid_key ...]]

Config keys read from `config.evals` (with defaults when absent):
`grid_examples`, `alpha`, `batch_size` (existing) and `figures_samples` (4),
`figures_unconditional` (16), `figures_source` ('' = first modality),
`figures_zoom` (2), `figures_chunk` (128), `traversal_steps` (9),
`traversal_span` (5.0), `traversal_quantiles` (False), `alpha_grid`
(0.1, 0.2, ..., 3.0), `alpha_grid_samples` (2), `alpha_sweep`
((0.5, 1, 2, 4, 8)), `alpha_sweep_fd_key` ('fd_clf/cond/mean/with_self';
`evaluation.fd_clf` reads its own `fd_clf_*` / `fid_*` keys).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from matplotlib import figure as mpl_figure
import numpy as np
from scipy import special

from mmvaeplus_jax import distributions
from mmvaeplus_jax import generation
from mmvaeplus_jax import plotting
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import fd_clf
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.models import base

Array = jax.Array
Params = Any
Posteriors = base.Posteriors

DEFAULT_ALPHA_SWEEP = (0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 31))
DEFAULT_FD_KEY = 'fd_clf/cond/mean/with_self'  # the paper's averaging

# ----------------------------------------------------------------- latents
#
# Each function makes ONE standardised draw from its key and splits it into
# the parts it needs: on XLA:CPU every separate random op compiles for about
# a second (coherence.py does the same).


def _draw(key, model, lead, *sizes) -> list[Array]:
  """One `distributions.noise` draw `[*lead, sum(sizes)]`, split into
  `[*lead, size]` parts."""
  eps = distributions.noise(model.family, key, tuple(lead) + (sum(sizes),))
  return jnp.split(eps, np.cumsum(sizes)[:-1], axis=-1)


def _prior(model, eps, alpha=1.0):
  """Fixed-prior samples from standardised noise: alpha * scale * eps, the
  formula of `generation.prior_w` (p(z) with alpha = 1)."""
  return alpha * model.prior_scale(eps.shape[-1]) * eps


def _unimodal_shared(model, post: Posteriors, eps) -> Array:
  """z_e ~ q(z | x_e) for every modality e from noise `eps [M, B, Dz]` or
  `[M, S, B, Dz]`: the model's posterior given that modality alone
  (`model.sample_shared` over one-member subsets; for MMVAE+ q_e itself)."""
  m, b = post.loc_z.shape[:2]
  one = lambda e: model.sample_shared(
      post, np.eye(m, dtype=bool), jnp.zeros((m, b)), e)
  return one(eps) if eps.ndim == 3 else jax.vmap(one, 1, 1)(eps)


def _concat(w, z):
  """u = [w, z] along the last axis (private first)."""
  return jnp.concatenate([w, z], axis=-1)


def cross_modal_latents(key, model, post: Posteriors, num_samples: int, *,
                        alpha=1.0) -> Array:
  """Conditional generation latents (Fig. 1 left, Fig. 6).

  The latents `generation.cross_modal` decodes, S times: z_e ~ q_e(z | x_e)
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
  eps_z, eps_w = _draw(key, model, (m, num_samples, b), model.dim_z,
                       m * model.dim_w)
  z = _unimodal_shared(model, post, eps_z)  # [M_s, S, B, Dz]
  w = _prior(model, eps_w.reshape((m, num_samples, b, m, model.dim_w)),
             alpha)  # [M_s, S, B, M_t, Dw]
  w = jnp.transpose(w, (0, 3, 1, 2, 4))  # [M_s, M_t, S, B, Dw]
  return _concat(w, jnp.broadcast_to(z[:, None], w.shape[:-1] + z.shape[-1:]))


def unconditional_latents(key, model, num: int, *, alpha=1.0) -> Array:
  """Joint prior latents (Fig. 7), as `generation.unconditional` draws them.

  Returns:
    `[M, N, Dw + Dz]`: u[d, i] = [w_d,i ~ p_alpha(w), z_i ~ p(z)], z_i shared
    by all modalities.
  """
  m = model.num_modalities
  eps_z, eps_w = _draw(key, model, (num,), model.dim_z, m * model.dim_w)
  z = _prior(model, eps_z)  # [N, Dz]
  w = jnp.swapaxes(_prior(model, eps_w.reshape(num, m, model.dim_w), alpha),
                   0, 1)  # [M, N, Dw]
  return _concat(w, jnp.broadcast_to(z, (m,) + z.shape))


def posterior_samples(key, model, post: Posteriors) -> tuple[Array, Array]:
  """One draw of every unimodal posterior: (w `[M, B, Dw]`, z `[M, B, Dz]`)."""
  eps_w, eps_z = _draw(key, model, post.loc_w.shape[:-1], model.dim_w,
                       model.dim_z)
  return (distributions.reparameterise(post.loc_w, post.scale_w, eps_w),
          _unimodal_shared(model, post, eps_z))


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
  return _concat(jnp.broadcast_to(w[:, None], (m, r, p, dw)),
                 jnp.broadcast_to(z[None, :, None], (m, r, p, dz)))


def private_conditioning_latents(key, model, post_shared: Posteriors,
                                 post_private: Posteriors) -> Array:
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


def prior_shared_latents(key, model, post_private: Posteriors,
                         num: int) -> Array:
  """Shared content from the prior, private style from inputs (Fig. 9).

  Returns:
    `[M_target, N, P, Dw + Dz]`: u[d, i, j] = [w_d,j ~ q_d(w | x_d,j),
    z_i ~ p(z)], z_i shared by every target and private code.
  """
  m, p = post_private.loc_w.shape[:2]
  dw, dz = model.dim_w, model.dim_z
  eps_z, eps_w = _draw(key, model, (), num * dz, m * p * dw)
  w = distributions.reparameterise(post_private.loc_w, post_private.scale_w,
                                   eps_w.reshape(m, p, dw))
  return style_latents(w, _prior(model, eps_z.reshape(num, dz)))


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


def traversal_base(key, model, post: Posteriors, source: int,
                   index: int = 0, *, alpha=1.0) -> tuple[Array, Array]:
  """The paper's traversal embedding: (w̄ `[Dw]` ~ p_alpha(w), z̄ `[Dz]`).

  z̄ is the MEAN of q(z | x_index) given the source alone (App. F,
  footnote 3; the noise-free `sample_shared`); w̄ is one draw of the fixed
  prior p(w), used by every target.
  """
  w = generation.prior_w(key, model, (), alpha)
  mean = _unimodal_shared(model, post, jnp.zeros_like(post.loc_z))  # eps = 0
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
  base = _concat(w, z)  # [D]
  offset = w.shape[-1] if kind == 'z' else 0
  dim = (z if kind == 'z' else w).shape[-1]
  values = jnp.asarray(values, base.dtype)
  cols = offset + jnp.arange(dim)  # [D_kind] positions in u
  new = values[None, :] + (base[cols][:, None] if relative else 0.0)  # [Dk,S]
  moved = jax.nn.one_hot(cols, base.shape[-1], dtype=bool)  # [D_kind, D]
  return jnp.where(moved[:, None, :], new[:, :, None], base)  # [Dk, S, D]


def alpha_latents(key, model, post: Posteriors, alphas, num_samples: int
                  ) -> Array:
  """Cross-modal latents for every alpha, same noise for all (Fig. 20).

  Returns:
    `[A, M_source, M_target, S, B, Dw + Dz]`: z identical across alphas,
    w proportional to alpha.
  """
  return jax.vmap(lambda a: cross_modal_latents(
      key, model, post, num_samples, alpha=a))(jnp.asarray(alphas,
                                                           jnp.float32))


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


# ------------------------------------------------------------- grid figures

PAD = 2  # pixels between cells
DPI = 100
TITLE_TOP = 20  # pixels for the title
LABEL_TOP = 16  # pixels for column labels
MARGIN = 4
LABEL_PT, TITLE_PT = 7, 8  # font sizes
# Upper bounds of the mean glyph width (pixels) of the default sans font.
LABEL_CHAR_PX, TITLE_CHAR_PX = 6, 7


@dataclasses.dataclass(frozen=True)
class GridLayout:
  """Pixel geometry of a grid PNG written by `save_image_grid`.

  Cell (i, j) occupies rows `top + PAD + i (cell_h + PAD)` and columns
  `left + PAD + j (cell_w + PAD)` (cell_h x cell_w pixels) of a
  `height x width` image; the padding is white.
  """

  rows: int
  cols: int
  cell_h: int
  cell_w: int
  left: int
  top: int
  width: int
  height: int

  def cell(self, i: int, j: int) -> tuple[slice, slice]:
    y = self.top + PAD + i * (self.cell_h + PAD)
    x = self.left + PAD + j * (self.cell_w + PAD)
    return slice(y, y + self.cell_h), slice(x, x + self.cell_w)


def grid_layout(rows: int, cols: int, event_hw: tuple[int, int], *,
                zoom: int = 2, title: str = '',
                row_labels: Sequence[str] = (),
                col_labels: Sequence[str] = ()) -> GridLayout:
  """The layout `save_image_grid` uses: the left margin fits the longest row
  label, the width fits the title."""
  ch, cw = event_hw[0] * zoom, event_hw[1] * zoom
  left = MARGIN + (
      LABEL_CHAR_PX * max(len(str(r)) for r in row_labels) + 4
      if row_labels else 0)
  top = MARGIN + (TITLE_TOP if title else 0) + (LABEL_TOP if col_labels
                                                 else 0)
  body_h = rows * (ch + PAD) + PAD
  body_w = cols * (cw + PAD) + PAD
  width = max(left + body_w, TITLE_CHAR_PX * len(title)) + MARGIN
  return GridLayout(rows, cols, ch, cw, left, top, width,
                    top + body_h + MARGIN)


def save_image_grid(path: str, images, *, title: str = '',
                    row_labels: Sequence[str] = (),
                    col_labels: Sequence[str] = (),
                    zoom: int = 2) -> GridLayout:
  """Writes images `[R, C, H, W, 3]` (float, clamped to [0, 1]) as a PNG.

  The grid is placed pixel for pixel (`figimage`, integer `zoom`), labels
  and title as text in margins sized by `grid_layout`; see `GridLayout` for
  where each cell lies. Returns the layout.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 5 or images.shape[-1] != 3:
    raise ValueError(f'images must be [R, C, H, W, 3], got {images.shape}')
  r, c, h, w, _ = images.shape
  for name, labels, n in (('row_labels', row_labels, r),
                          ('col_labels', col_labels, c)):
    if labels and len(labels) != n:
      raise ValueError(f'{name} has {len(labels)} entries for {n}')
  zoom = int(zoom)
  if zoom > 1:
    images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
  body = plotting.grid(images, pad=PAD)
  lay = grid_layout(r, c, (h, w), zoom=zoom, title=title,
                    row_labels=row_labels, col_labels=col_labels)
  # +0.5 px: the canvas is int(size * dpi) pixels, never one short.
  fig = mpl_figure.Figure(figsize=((lay.width + 0.5) / DPI,
                                   (lay.height + 0.5) / DPI), dpi=DPI)
  fig.figimage(body, xo=lay.left, yo=MARGIN, origin='upper')
  if title:
    fig.text(MARGIN / lay.width, 1 - MARGIN / lay.height, title,
             ha='left', va='top', fontsize=TITLE_PT)
  for i, label in enumerate(row_labels):
    rows, _ = lay.cell(i, 0)
    y = (rows.start + rows.stop) / 2
    fig.text((lay.left - 2) / lay.width, 1 - y / lay.height, str(label),
             ha='right', va='center', fontsize=LABEL_PT)
  for j, label in enumerate(col_labels):
    _, cols = lay.cell(0, j)
    x = (cols.start + cols.stop) / 2
    fig.text(x / lay.width, 1 - (lay.top - 2) / lay.height, str(label),
             ha='center', va='bottom', fontsize=LABEL_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, facecolor='white')
  return lay


# ------------------------------------------------------------ figure options


@dataclasses.dataclass(frozen=True)
class FigureOptions:
  """Knobs of the `figures` evaluator (from `config.evals`, see the module
  docstring for the key names)."""

  num_examples: int = 8  # inputs per grid (grid_examples)
  num_samples: int = 4  # cross-modal samples per input (Fig. 1: 4)
  num_unconditional: int = 16  # joint prior samples (Fig. 7 shows 64)
  source: str = ''  # modality of Figs. 10 and 20 ('' = the first)
  alpha: float = 1.0  # test-time scale of p(w) for Figs. 6, 7, 10
  traversal_steps: int = 9
  traversal_span: float = 5.0  # paper: +-5 prior scales
  traversal_quantiles: bool = False
  alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID  # Fig. 20
  alpha_grid_samples: int = 2
  zoom: int = 2
  chunk: int = 128

  @classmethod
  def from_config(cls, evals) -> FigureOptions:
    d = cls()
    return cls(
        num_examples=int(evals.get('grid_examples', d.num_examples)),
        num_samples=int(evals.get('figures_samples', d.num_samples)),
        num_unconditional=int(evals.get('figures_unconditional',
                                        d.num_unconditional)),
        source=str(evals.get('figures_source', d.source)),
        alpha=float(evals.get('alpha', d.alpha)),
        traversal_steps=int(evals.get('traversal_steps', d.traversal_steps)),
        traversal_span=float(evals.get('traversal_span', d.traversal_span)),
        traversal_quantiles=bool(evals.get('traversal_quantiles',
                                           d.traversal_quantiles)),
        alpha_grid=tuple(float(a) for a in evals.get('alpha_grid',
                                                     d.alpha_grid)),
        alpha_grid_samples=int(evals.get('alpha_grid_samples',
                                         d.alpha_grid_samples)),
        zoom=int(evals.get('figures_zoom', d.zoom)),
        chunk=int(evals.get('figures_chunk', d.chunk)))


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
  w_bar, z_bar = traversal_base(k_trav, model, post_in, source, 0,
                                alpha=alpha)
  one = jax.tree.map(lambda t: t[:, :1], post_in)
  return {
      'cross': cross_modal_latents(k_cross, model, post_in, num_samples,
                                   alpha=alpha),  # [M_s, M_t, S, G, D]
      'unconditional': unconditional_latents(
          k_unc, model, num_unconditional, alpha=alpha),  # [M, N, D]
      'private': private_conditioning_latents(
          k_priv, model, post_in, post_priv),  # [M_s, M_t, G, G, D]
      'prior': prior_shared_latents(k_prior, model, post_priv, g),
      'traversal_z': traversal_latents(w_bar, z_bar, values, kind='z',
                                       relative=relative),  # [Dz, S, D]
      'traversal_w': traversal_latents(w_bar, z_bar, values, kind='w',
                                       relative=relative),  # [Dw, S, D]
      'alpha': alpha_latents(k_alpha, model, one, alphas, grid_samples)[
          :, source, :, :, 0],  # [A, M_t, S, D]
  }


def figure_images(key, model, params, data: Mapping[str, np.ndarray],
                  options: FigureOptions = FigureOptions()
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
  values, relative = traversal_values(
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
                  out_dir: str, options: FigureOptions = FigureOptions(),
                  *, write: bool = True) -> list[str]:
  """Computes `figure_images` and writes each as a PNG in `out_dir`.

  Returns:
    The file names (relative to `out_dir`), sorted.
  """
  figs = figure_images(key, model, params, data, options)
  if write:
    for name, f in figs.items():
      save_image_grid(os.path.join(out_dir, name), f.images, title=f.title,
                      row_labels=f.row_labels, col_labels=f.col_labels,
                      zoom=options.zoom)
  return sorted(figs)


@api.register('figures')
def figures_evaluator(ctx: api.EvalContext) -> dict:
  """All per-checkpoint figures (Figs. 1 left, 6, 7, 8, 9, 10, 20)."""
  files = write_figures(
      ctx.key, ctx.model, ctx.params, ctx.data, ctx.out_dir,
      FigureOptions.from_config(ctx.config.evals),
      write=jax.process_index() == 0)
  return {'figures/files': files}


# ---------------------------------------------------------------- alpha sweep


def alpha_sweep(key, model, params, data: Mapping[str, np.ndarray], alphas,
                *, classify, clf_params, fd_fn: Callable | None = None,
                batch_size: int = 256,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, list]:
  """Conditional coherence (and FD) for each test-time alpha (Fig. 19).

  Every alpha uses the same key, hence the same standardised noise: w =
  alpha * scale * eps with eps fixed per example, so the curves are smooth
  in alpha (common random numbers).

  Args:
    key: PRNG key (`coherence.conditional_coherence`).
    model, params: the MMVAE+.
    data: `{name: [N, *event], 'label': [N]}` test examples.
    alphas: `[A]` scales of p(w).
    classify, clf_params: the coherence classifiers (coherence contract).
    fd_fn: optional `alpha -> {metric: float}` (e.g. FD_clf).
    batch_size: examples per device call (does not change the numbers).
    mesh: shard the coherence batches over it (`coherence`).

  Returns:
    `{'alpha': [A], metric: [A] values}` with `coherence/cond/mean`,
    `coherence/cond/<target>` and the keys of `fd_fn`.
  """
  out: dict[str, list] = {'alpha': [float(a) for a in alphas]}
  for a in alphas:
    res = coherence.conditional_coherence(
        key, model, params, classify, clf_params, data,
        batch_size=batch_size, alpha=float(a), mesh=mesh)
    vals = {f'coherence/cond/{n}': float(v)
            for n, v in zip(model.names, res.per_target)}
    vals['coherence/cond/mean'] = res.mean
    if fd_fn is not None:
      vals.update({k: float(v) for k, v in fd_fn(float(a)).items()
                   if isinstance(v, (int, float, np.floating))})
    for k, v in vals.items():
      out.setdefault(k, []).append(v)
  return out


def plot_alpha_sweep(path: str, sweep: Mapping[str, Sequence[float]], *,
                     fd_key: str = DEFAULT_FD_KEY,
                     names: Sequence[str] = ()) -> str:
  """Two panels: conditional coherence vs alpha, FD vs alpha (Fig. 19)."""
  alphas = np.asarray(sweep['alpha'], np.float64)
  fig = mpl_figure.Figure(figsize=(9, 3.6), dpi=DPI)
  ax_c, ax_f = fig.subplots(1, 2)
  for n in names:
    k = f'coherence/cond/{n}'
    if k in sweep:
      ax_c.plot(alphas, sweep[k], lw=0.8, alpha=0.5, label=n)
  ax_c.plot(alphas, sweep['coherence/cond/mean'], 'o-', color='k', lw=1.8,
            label='mean')
  ax_c.set(xlabel='alpha (scale of p(w))', ylabel='conditional coherence',
           title='Coherence vs alpha')
  ax_c.legend(fontsize=7)
  if fd_key in sweep:
    ax_f.plot(alphas, sweep[fd_key], 'o-', color='C3')
  else:
    ax_f.text(0.5, 0.5, f'{fd_key}: not computed', ha='center',
              transform=ax_f.transAxes)
  ax_f.set(xlabel='alpha (scale of p(w))', ylabel=fd_key,
           title='Fréchet distance vs alpha')
  if np.all(alphas > 0):
    for ax in (ax_c, ax_f):
      ax.set_xscale('log', base=2)
  for ax in (ax_c, ax_f):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, facecolor='white')
  return path


@api.register('alpha_sweep')
def alpha_sweep_evaluator(ctx: api.EvalContext) -> dict:
  """Coherence and FD_clf vs the test-time scale alpha of p(w) (Fig. 19)."""
  if ctx.classifiers is None:
    return api.skip(
        'alpha_sweep',
        'no classifiers: set --config.evals.classifier_dir to a folder made'
        ' by `python -m mmvaeplus_jax.evaluation.classifiers`')
  ec = ctx.config.evals
  alphas = tuple(float(a) for a in ec.get('alpha_sweep', DEFAULT_ALPHA_SWEEP))
  fd_key = str(ec.get('alpha_sweep_fd_key', DEFAULT_FD_KEY))
  clf_params, meta = ctx.classifiers
  sweep = alpha_sweep(
      jax.random.fold_in(ctx.key, 0), ctx.model, ctx.params, ctx.data,
      alphas, classify=classifiers.classify, clf_params=clf_params,
      fd_fn=lambda a: fd_clf.fd_clf_metrics(ctx, alpha=a),
      batch_size=int(ec.get('batch_size', 256)), mesh=ctx.mesh)
  metrics: dict = {}
  for k in ('coherence/cond/mean', fd_key):
    for a, v in zip(alphas, sweep.get(k, ())):
      metrics[f'alpha_sweep/alpha_{a:g}/{k}'] = v
  files = ['alpha_sweep.json', 'alpha_sweep.png']
  metrics['alpha_sweep/files'] = files
  if fd_key not in sweep:
    metrics['skipped'] = {'alpha_sweep/fd': (
        f'fd_clf.fd_clf_metrics returned no {fd_key!r}; got'
        f' {sorted(k for k in sweep if k.startswith("fd"))}; set'
        ' --config.evals.alpha_sweep_fd_key')}
  if jax.process_index() == 0:
    record = dict(sweep, step=ctx.step, fd_key=fd_key,
                  num_examples=len(ctx.data['label']),
                  classifier_test_accuracy=meta.get('test_accuracy', {}))
    with open(os.path.join(ctx.out_dir, files[0]), 'w') as f:
      json.dump(record, f, indent=2, sort_keys=True)
    plot_alpha_sweep(os.path.join(ctx.out_dir, files[1]), sweep,
                     fd_key=fd_key, names=ctx.model.names)
  return metrics


# ------------------------------------------------------- scatter across runs


def latest_metrics(workdir: str) -> tuple[int, dict]:
  """(step, metrics) of the newest `workdir/eval/<step>/metrics.json`.

  Raises:
    FileNotFoundError: naming the workdir when it has none.
  """
  eval_dir = os.path.join(workdir, 'eval')
  steps = []
  if os.path.isdir(eval_dir):
    steps = [int(d) for d in os.listdir(eval_dir) if d.isdigit()
             and os.path.isfile(os.path.join(eval_dir, d, 'metrics.json'))]
  if not steps:
    raise FileNotFoundError(
        f'{workdir}: no eval/<step>/metrics.json (looked in {eval_dir});'
        f' evaluate it first: python eval.py --config=<its config>'
        f' --workdir={workdir}')
  step = max(steps)
  with open(os.path.join(eval_dir, str(step), 'metrics.json')) as f:
    return step, json.load(f)


@dataclasses.dataclass(frozen=True)
class RunPoint:
  label: str
  workdir: str
  step: int
  coherence: float
  fid: float


def run_points(workdirs: Sequence[str], *, coherence_key: str, fid_key: str,
               labels: Sequence[str] | None = None) -> list[RunPoint]:
  """One (coherence, FID) point per run, from its latest metrics.json.

  Raises:
    FileNotFoundError / KeyError: listing every workdir without metrics or
    without one of the keys (all problems at once).
  """
  if labels and len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  points, missing, nokey = [], [], []
  for i, wd in enumerate(workdirs):
    try:
      step, metrics = latest_metrics(wd)
    except FileNotFoundError as e:
      missing.append(str(e))
      continue
    absent = [k for k in (coherence_key, fid_key)
              if not isinstance(metrics.get(k), (int, float))]
    if absent:
      prefixes = {k.split('/')[0] for k in absent}
      near = sorted(k for k in metrics if k.split('/')[0] in prefixes)
      skipped = metrics.get('skipped') or {}
      why = {p: skipped[p] for p in prefixes if p in skipped}
      nokey.append(f'{wd} (eval/{step}/metrics.json): no number for {absent};'
                   f' similar keys: {near[:12]}'
                   + (f'; skipped there: {why}' if why else ''))
      continue
    label = labels[i] if labels else os.path.basename(os.path.normpath(wd))
    points.append(RunPoint(label, wd, step, float(metrics[coherence_key]),
                           float(metrics[fid_key])))
  if missing:
    raise FileNotFoundError('runs without metrics:\n  ' + '\n  '.join(
        missing + nokey))
  if nokey:
    raise KeyError('runs without the requested metrics:\n  '
                   + '\n  '.join(nokey))
  return points


def plot_scatter(path: str, panels: Sequence[tuple[str, str, list]]) -> str:
  """One panel per (coherence_key, fid_key, points): FID (x) vs coherence (y),
  each point labelled with its run (Fig. 1 right: top-left is best)."""
  fig = mpl_figure.Figure(figsize=(4.8 * len(panels), 4.2), dpi=DPI)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (ck, fk, points) in zip(axes, panels):
    for i, p in enumerate(points):
      ax.scatter([p.fid], [p.coherence], color=f'C{i % 10}', s=30)
      ax.annotate(p.label, (p.fid, p.coherence), textcoords='offset points',
                  xytext=(4, 4), fontsize=7)
    ax.set(xlabel=f'{fk} (lower is better)',
           ylabel=f'{ck} (higher is better)')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, facecolor='white')
  return path


def write_scatter(workdirs: Sequence[str], out: str, *,
                  coherence_keys: Sequence[str] = ('coherence/cond/mean',),
                  fid_keys: Sequence[str] = ('fid/cond/mean/with_self',),
                  labels: Sequence[str] | None = None) -> list:
  """Coherence-vs-FID scatter of several runs; returns the panels' points."""
  if len(coherence_keys) != len(fid_keys):
    raise ValueError(
        f'give as many --coherence_key ({len(coherence_keys)}) as --fid_key'
        f' ({len(fid_keys)}): one panel per pair')
  panels = [(ck, fk, run_points(workdirs, coherence_key=ck, fid_key=fk,
                                labels=labels))
            for ck, fk in zip(coherence_keys, fid_keys)]
  plot_scatter(out, panels)
  return panels


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mmvaeplus_jax.evaluation.figures',
      description='Figures across runs.')
  sub = parser.add_subparsers(dest='command', required=True)
  sc = sub.add_parser('scatter', help='coherence vs FID, one point per run')
  sc.add_argument('--workdirs', nargs='+', required=True)
  sc.add_argument('--out', required=True, help='output PNG')
  sc.add_argument('--coherence_key', action='append', default=None,
                  help='metric on the y axis (repeat for more panels;'
                  ' default coherence/cond/mean)')
  sc.add_argument('--fid_key', action='append', default=None,
                  help='metric on the x axis, paired with --coherence_key'
                  ' (default fid/cond/mean/with_self)')
  sc.add_argument('--labels', nargs='+', default=None)
  args = parser.parse_args(argv)
  try:
    panels = write_scatter(
        args.workdirs, args.out,
        coherence_keys=args.coherence_key or ['coherence/cond/mean'],
        fid_keys=args.fid_key or ['fid/cond/mean/with_self'],
        labels=args.labels)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'error: {e.args[0] if e.args else e}', file=sys.stderr)
    return 1
  for ck, fk, points in panels:
    for p in points:
      print(f'{p.label}: step {p.step}, {ck}={p.coherence:.4g},'
            f' {fk}={p.fid:.4g}')
  print(f'written to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
