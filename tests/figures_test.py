"""Tests of evaluation.figures.

* Latents: an "echo" model whose decoders output the latent they are fed
  (u itself), so what each figure function feeds the decoders is checked
  directly: what is shared, what varies, where it comes from (posterior
  means when the posterior scales are ~1e-26), and that the random parts
  follow the right prior (Kolmogorov-Smirnov at fixed keys).
* PNGs: the grid writer is pixel-exact, so every cell of a written PNG is
  compared with the image it should hold; the `figures` evaluator's files on
  a tiny random PolyMNIST model have the expected rows x cols.
* Alpha sweep: a constructed model (as in coherence_test.py) whose decoder
  draws the wrong digit exactly when |w| > T, so coherence at alpha is
  P(|alpha s eps| <= T), with common random numbers across alphas
  (strictly monotone, exactly 1 at alpha = 0); the evaluator's JSON, plot
  and metrics with a stand-in for `fd_clf.fd_clf_metrics`.
* Scatter: fake metrics.json files, the latest step read, clear errors.
"""

import functools
import inspect
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

import toy_models
from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.configs import common
from mmvaeplus_jax.evaluation import alpha_sweep
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import fd_clf
from mmvaeplus_jax.evaluation import figures
from mmvaeplus_jax.evaluation import image_grids
from mmvaeplus_jax.experiments import scatter
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import polymnist
from mmvaeplus_jax.tools import scatter as scatter_cli

KEY = jax.random.key(3)

# Jitted once per test module: op-by-op (eager) random ops compile one by one.
def _jit(fn):
  names = {'model', 'num_samples', 'num'} & set(
      inspect.signature(fn).parameters)
  return jax.jit(fn, static_argnames=tuple(names))


cross_modal_latents = _jit(generation.cross_modal_latents)
unconditional_latents = _jit(generation.unconditional_latents)
private_conditioning_latents = _jit(generation.private_conditioning_latents)
prior_shared_latents = _jit(generation.prior_shared_latents)
alpha_latents = _jit(generation.alpha_latents)
traversal_latents = jax.jit(generation.traversal_latents,
                            static_argnames=('kind', 'relative'))

# ------------------------------------------------------------- echo model

def _fast_params(model, batch, seed=0):
  """Random params of the right shapes without compiling Flax's init
  (a jitted init of the conv nets takes ~30 s on this CPU)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), batch)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return jnp.asarray(rng.uniform(-1, 1, leaf.shape).astype(np.float32)
                       / np.sqrt(fan_in))

  return jax.tree.map(fill, abstract)



DW, DZ, DX, M = 2, 3, 4, 3


class Echo(nn.Module):
  """Decoder that returns its input latent u = [w, z] unchanged."""

  @nn.compact
  def __call__(self, u):
    return u + 0.0 * self.param('unused', nn.initializers.zeros, (1,))


@functools.cache  # one model object: one compilation
def echo_model(tiny_scales=False):
  """M linear encoders, echo decoders; with `tiny_scales` every posterior
  scale is softplus(-60) ~ 1e-26, so posterior samples equal the means."""
  mods = tuple(
      mmvaeplus.Modality(
          name=f'm{i}', encoder=toy_models.LinearEncoder(DW, DZ),
          decoder=Echo(), log_likelihood=None, event_shape=(DX,))
      for i in range(M))
  model = mmvaeplus.MMVAEPlus(mods, dim_w=DW, dim_z=DZ, family='normal')
  params = _fast_params(model, toy_models.toy_batch(model, 1))
  if tiny_scales:
    for name in model.names:
      for head in ('raw_w', 'raw_z'):
        p = params['encoders'][name][head]
        params['encoders'][name][head] = {
            'kernel': jnp.zeros_like(p['kernel']),
            'bias': jnp.full_like(p['bias'], -60.0)}
  return model, params


def _is_normal(x, scale):
  """Kolmogorov-Smirnov: x ~ N(0, scale^2); p > 1e-6, so a correct sampler
  fails for about one key in a million."""
  return stats.kstest(np.ravel(x), 'norm', args=(0, scale)).pvalue > 1e-6


PRIOR_SCALE = np.log(2.0)  # Normal family: softplus(0)


def test_cross_modal_latents():
  model, params = echo_model()
  batch = toy_models.toy_batch(model, 5)
  post = figures.encode(model, params, batch)
  u = np.asarray(cross_modal_latents(KEY, model, post, 40, alpha=0.7))
  assert u.shape == (M, M, 40, 5, DW + DZ)  # [source, target, S, B, D]
  z, w = u[..., DW:], u[..., :DW]
  # z ~ q_e(z | x_e): one draw per (source, sample, input), shared by all
  # targets; w ~ p_alpha(w) independent for every (source, target).
  assert np.all(z == z[:, :1])
  eps = (z[:, 0] - np.asarray(post.loc_z)[:, None]) / np.asarray(
      post.scale_z)[:, None]
  assert _is_normal(eps, 1.0)
  assert _is_normal(w, 0.7 * PRIOR_SCALE)
  assert not _is_normal(w, PRIOR_SCALE)  # the test can tell alpha apart
  # Independent draws, not one reused stream: a reused key repeats whole
  # blocks (>= 1/M of the values duplicated). Exact uniqueness is not
  # required: among n float32 normal draws about n^2 / 2^26 pairs collide
  # (~0.2 for w's 3,600), so that would depend on the key.
  assert len(np.unique(w)) > 0.99 * w.size
  assert len(np.unique(z)) > 0.99 * z.size // M
  # Decoding puts target d's latents through decoder d (echo: images = u),
  # in chunks, padding dropped.
  ut = np.swapaxes(u, 0, 1)
  np.testing.assert_array_equal(
      figures.decode_latents(model, params, ut, chunk=64), ut)
  # Same formulas as generation.cross_modal: its samples pass the same tests.
  g = np.asarray(jax.jit(generation.cross_modal, static_argnums=1)(
      KEY, model, params, batch, alpha=0.7))  # [M_s, M_t, B, D]
  assert np.all(g[..., DW:] == g[:, :1, :, DW:])
  assert _is_normal(g[..., :DW], 0.7 * PRIOR_SCALE)


def test_unconditional_latents():
  model, _ = echo_model()
  u = np.asarray(unconditional_latents(KEY, model, 200, alpha=2.0))
  assert u.shape == (M, 200, DW + DZ)
  assert np.all(u[:, :, DW:] == u[:1, :, DW:])  # one z shared by all
  assert _is_normal(u[0, :, DW:], PRIOR_SCALE)  # z ~ p(z), never scaled
  assert _is_normal(u[..., :DW], 2.0 * PRIOR_SCALE)  # w_d ~ p_alpha(w)
  # w_d independent (a reused key would duplicate whole blocks; a few
  # float32 collisions are possible for any key, see above).
  assert len(np.unique(u[..., :DW])) > 0.99 * M * 200 * DW
  u1 = np.asarray(unconditional_latents(KEY, model, 200, alpha=1.0))
  np.testing.assert_allclose(u[..., :DW], 2.0 * u1[..., :DW], rtol=1e-6)
  np.testing.assert_array_equal(u[..., DW:], u1[..., DW:])


def test_private_conditioning_fixes_z_per_row_and_w_per_column():
  model, params = echo_model(tiny_scales=True)
  post_s = figures.encode(model, params, toy_models.toy_batch(model, 4, seed=1))
  post_p = figures.encode(model, params, toy_models.toy_batch(model, 5, seed=2))
  u = np.asarray(
      private_conditioning_latents(KEY, model, post_s, post_p))
  assert u.shape == (M, M, 4, 5, DW + DZ)  # [source, target, R, P, D]
  # z of (source e, row i) is the shared input's code: same for every
  # target d and column j; w of (target d, column j) is the private input's
  # code of modality d: same for every source e and row i.
  want_z = np.broadcast_to(np.asarray(post_s.loc_z)[:, None, :, None],
                           (M, M, 4, 5, DZ))
  want_w = np.broadcast_to(np.asarray(post_p.loc_w)[None, :, None],
                           (M, M, 4, 5, DW))
  np.testing.assert_allclose(u[..., DW:], want_z, rtol=0, atol=1e-6)
  np.testing.assert_allclose(u[..., :DW], want_w, rtol=0, atol=1e-6)
  assert len(np.unique(want_z[0, 0, :, 0, 0])) == 4  # rows genuinely differ


def test_prior_shared_latents():
  model, params = echo_model(tiny_scales=True)
  post_p = figures.encode(model, params, toy_models.toy_batch(model, 5, seed=2))
  u = np.asarray(prior_shared_latents(KEY, model, post_p, 6))
  assert u.shape == (M, 6, 5, DW + DZ)  # [target, N, P, D]
  np.testing.assert_allclose(
      u[..., :DW], np.broadcast_to(np.asarray(post_p.loc_w)[:, None],
                                   u[..., :DW].shape), rtol=0, atol=1e-6)
  z = u[..., DW:]
  assert np.all(z == z[:1, :, :1])  # shared by targets and columns
  assert len(np.unique(z[0, :, 0, 0])) == 6  # one z ~ p(z) per row


@pytest.mark.parametrize('kind', ['z', 'w'])
def test_traversal_moves_only_the_traversed_dimension(kind):
  model, params = echo_model()
  post = figures.encode(model, params, toy_models.toy_batch(model, 3))
  w, z = jax.jit(generation.traversal_base, static_argnums=(1, 3, 4))(
      KEY, model, post, 1, 2)  # source m1, example 2
  np.testing.assert_array_equal(z, post.loc_z[1, 2])  # the posterior MEAN
  assert w.shape == (DW,)
  values, relative = generation.traversal_values(model, 5)
  assert relative
  np.testing.assert_allclose(values, 5 * np.log(2) * np.linspace(-1, 1, 5),
                             rtol=1e-6)
  u = np.asarray(traversal_latents(w, z, values, kind=kind))
  dim, offset = (DZ, DW) if kind == 'z' else (DW, 0)
  assert u.shape == (dim, 5, DW + DZ)
  base = np.concatenate([w, z])
  for k in range(dim):
    changed = np.zeros(DW + DZ, bool)
    changed[offset + k] = True
    np.testing.assert_array_equal(  # everything else exactly unchanged
        u[k][:, ~changed], np.broadcast_to(base[~changed], (5, DW + DZ - 1)))
    np.testing.assert_allclose(u[k][:, offset + k] - base[offset + k], values,
                               rtol=0, atol=1e-5)
  # Quantile mode replaces the value by the prior's quantiles.
  q, relative = generation.traversal_values(model, 4, quantiles=True)
  assert not relative
  np.testing.assert_allclose(
      q, stats.norm.ppf([0.125, 0.375, 0.625, 0.875], scale=np.log(2)),
      rtol=1e-6)
  u = np.asarray(traversal_latents(w, z, q, kind=kind, relative=False))
  np.testing.assert_allclose(u[1, :, offset + 1], q, rtol=1e-6)


def test_prior_quantiles_laplace():
  model = polymnist.make_mmvaeplus(num_modalities=1, dim_w=2, dim_z=2,
                                   width=0.0625)
  p = np.array([0.01, 0.3, 0.5, 0.8])
  np.testing.assert_allclose(generation.prior_quantiles(model, p),
                             stats.laplace.ppf(p), rtol=1e-6, atol=1e-12)


def test_alpha_latents_share_noise_across_alphas():
  model, params = echo_model()
  post = figures.encode(model, params, toy_models.toy_batch(model, 5))
  alphas = np.array([0.5, 1.0, 3.0])
  u = np.asarray(alpha_latents(KEY, model, post, alphas, 40))
  assert u.shape == (3, M, M, 40, 5, DW + DZ)
  np.testing.assert_array_equal(u[1:, ..., DW:], np.broadcast_to(
      u[:1, ..., DW:], u[1:, ..., DW:].shape))
  scaled = u[..., :DW] / alphas[:, None, None, None, None, None]
  np.testing.assert_allclose(scaled, np.broadcast_to(scaled[:1], scaled.shape),
                             rtol=1e-5)
  np.testing.assert_allclose(
      u[1], cross_modal_latents(KEY, model, post, 40, alpha=1.0), rtol=1e-6)


# ------------------------------------------------------------------- PNGs


def _png(path):
  with Image.open(path) as im:
    assert im.format == 'PNG'
    return np.asarray(im.convert('RGB'))


def _tile(image, zoom):
  """The uint8 pixels a cell shows for a float or uint8 image."""
  x = np.asarray(image)
  x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x
  u8 = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
  return u8.repeat(zoom, 0).repeat(zoom, 1)


@pytest.mark.parametrize('labels', [True, False])
def test_save_image_grid_is_pixel_exact(tmp_path, labels):
  rng = np.random.default_rng(0)
  images = rng.uniform(-0.2, 1.2, (3, 4, 5, 6, 3)).astype(np.float32)
  path = str(tmp_path / 'g.png')
  kw = {'title': 't', 'row_labels': ['a', 'b', 'c'],
        'col_labels': ['w', 'x', 'y', 'z']} if labels else {}
  lay = image_grids.save_image_grid(path, images, zoom=2, **kw)
  assert lay == image_grids.grid_layout(3, 4, (5, 6), zoom=2, **kw)
  if labels:  # margins hold the labels; the width holds a long title
    assert lay.left > image_grids.grid_layout(3, 4, (5, 6)).left
    long = image_grids.grid_layout(3, 4, (5, 6), title='x' * 200)
    assert long.width >= 200 * image_grids.TITLE_CHAR_PX
  png = _png(path)
  assert png.shape == (lay.height, lay.width, 3)
  assert (lay.cell_h, lay.cell_w) == (10, 12)
  body = np.zeros(png.shape[:2], bool)
  for i in range(3):
    for j in range(4):
      np.testing.assert_array_equal(png[lay.cell(i, j)], _tile(images[i, j], 2))
      body[lay.cell(i, j)] = True
  # Padding between cells is white.
  ys, xs = lay.cell(0, 0)[0].start, lay.cell(0, 0)[1].start
  ye, xe = lay.cell(2, 3)[0].stop, lay.cell(2, 3)[1].stop
  between = ~body[ys:ye, xs:xe]
  assert np.all(png[ys:ye, xs:xe][between] == 255)
  with pytest.raises(ValueError, match='row_labels'):
    image_grids.save_image_grid(path, images, row_labels=['a'])


def _context(model, params, data, out_dir, evals, classifiers_=None):
  mesh = parallel.make_mesh()
  config = common.base_config()
  config.evals.update(evals)
  params = jax.device_put(params, parallel.replicated(mesh))
  return api.EvalContext(
      config=config, model=model, params=params, data=data,
      train_source=None, mesh=mesh, key=jax.random.key(11),
      out_dir=str(out_dir), step=0, classifiers=classifiers_)


def test_figures_evaluator_writes_every_grid(tmp_path):
  model = polymnist.make_mmvaeplus(num_modalities=2, dim_w=4, dim_z=4,
                                   width=0.0625)
  rng = np.random.default_rng(0)
  n, g, s, steps, alphas = 6, 3, 2, 3, (0.5, 1.0, 2.0)
  data = {name: rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
          for name in model.names}
  data['label'] = rng.integers(0, 10, n)
  params = _fast_params(model, {k: data[k][:1] for k in model.names})
  evals = {'grid_examples': g, 'figures_samples': s,
           'figures_unconditional': 4, 'traversal_steps': steps,
           'alpha_grid': alphas, 'alpha_grid_samples': 1, 'figures_zoom': 1,
           'figures_chunk': 64, 'alpha': 1.0}
  ctx = _context(model, params, data, tmp_path, evals)
  out = api.get('figures')(ctx)
  # The same key gives the same grids: the PNGs hold them pixel for pixel.
  figs = figures.figure_images(
      ctx.key, model, ctx.params, data,
      figures.FigureOptions.from_config(ctx.config.evals))
  m = 2
  expected = {  # name: (rows, cols)
      'cross_modal_m0.png': (1 + m * s, g),
      'cross_modal_m1.png': (1 + m * s, g),
      'unconditional.png': (m, 4),
      'private_conditioning_m0.png': (1 + g, 1 + m * g),
      'private_conditioning_m1.png': (1 + g, 1 + m * g),
      'private_conditioning_prior.png': (1 + g, m * g),
      'traversal_z_m0.png': (m * steps, 1 + 4),
      'traversal_w_m0.png': (m * steps, 1 + 4),
      'alpha_grid_m0.png': (1 + m, len(alphas)),
  }
  assert out == {'figures/files': sorted(expected)} and set(figs) == set(
      expected)
  pngs = {}
  for name, (r, c) in expected.items():
    f = figs[name]
    assert f.images.shape == (r, c, 28, 28, 3), name
    lay = image_grids.grid_layout(r, c, (28, 28), zoom=1, title=f.title,
                              row_labels=f.row_labels,
                              col_labels=f.col_labels)
    png = _png(tmp_path / name)
    assert png.shape == (lay.height, lay.width, 3), name
    for i in range(r):
      for j in range(c):
        np.testing.assert_array_equal(png[lay.cell(i, j)],
                                      _tile(f.images[i, j], 1))
    pngs[name] = (png, lay)
  # Inputs sit where the layout says.
  png, lay = pngs['cross_modal_m1.png']
  for j in range(g):
    np.testing.assert_array_equal(png[lay.cell(0, j)], data['m1'][j])
  png, lay = pngs['private_conditioning_m0.png']
  for i in range(g):  # shared inputs down the left column
    np.testing.assert_array_equal(png[lay.cell(1 + i, 0)], data['m0'][i])
  for d, name in enumerate(model.names):  # private inputs along the top
    for j in range(g):
      np.testing.assert_array_equal(png[lay.cell(0, 1 + d * g + j)],
                                    data[name][g + j])
  assert np.all(png[lay.cell(0, 0)] == 255)  # blank corner
  for name in ('traversal_z_m0.png', 'alpha_grid_m0.png'):
    png, lay = pngs[name]
    np.testing.assert_array_equal(png[lay.cell(0, 0)], data['m0'][0])
  # Traversal: the middle step (offset 0) of every dimension decodes the
  # same latent, so those cells agree across columns.
  png, lay = pngs['traversal_z_m0.png']
  mid = [png[lay.cell(1, k)] for k in range(1, 5)]
  assert all(np.array_equal(mid[0], x) for x in mid[1:])
  assert not np.array_equal(png[lay.cell(0, 1)], png[lay.cell(2, 1)])
  # Without classifiers the alpha sweep says why, and writes nothing.
  res = api.get('alpha_sweep')(ctx)
  assert set(res) == {'skipped'} and 'classifier_dir' in res['skipped'][
      'alpha_sweep']
  assert not (tmp_path / 'alpha_sweep.json').exists()


# ------------------------------------------------------------ alpha sweep

C = 10
T = 0.5  # |w| above T: the decoder draws the next digit
EVENT = (28, 28, 3)


def _templates(seed):
  """`[C, 28, 28, 3]` digit stand-ins on the k/255 grid (uint8-exact)."""
  t = np.random.default_rng(seed).integers(0, 256, (C,) + EVENT) / 255
  return t.astype(np.float32)


class TemplateEncoder(nn.Module):
  """x = template[c] -> z loc = 3 one_hot(c), scale ~1e-26; w loc 0."""

  seed: int

  @nn.compact
  def __call__(self, x):
    t = self.param('templates', lambda _: jnp.asarray(_templates(self.seed)))
    dist = jnp.sum(jnp.square(x[:, None] - t[None]), axis=(2, 3, 4))
    b = x.shape[0]
    return (jnp.zeros((b, 1)), jnp.zeros((b, 1)),
            3.0 * jax.nn.one_hot(jnp.argmin(dist, -1), C),
            jnp.full((b, C), -60.0))


class TemplateDecoder(nn.Module):
  """u = [w, z] -> template[c'], c = argmax z, c' = c if |w| <= T else
  c + 1 (mod C)."""

  seed: int

  @nn.compact
  def __call__(self, u):
    t = self.param('templates', lambda _: jnp.asarray(_templates(self.seed)))
    c = jnp.argmax(u[:, 1:], axis=-1)
    return t[jnp.where(jnp.abs(u[:, 0]) <= T, c, (c + 1) % C)]


@functools.cache  # one model object: one compilation
def template_model():
  mods = tuple(mmvaeplus.Modality(
      name=f'm{i}', encoder=TemplateEncoder(i), decoder=TemplateDecoder(i),
      log_likelihood=None, event_shape=EVENT) for i in range(2))
  model = mmvaeplus.MMVAEPlus(mods, dim_w=1, dim_z=C, family='normal')
  params = model.init(jax.random.key(0), {
      f'm{i}': np.zeros((1,) + EVENT, np.float32) for i in range(2)})
  return model, params


def template_data(n, seed=0):
  labels = np.random.default_rng(seed).integers(0, C, n)
  data = {f'm{i}': np.round(_templates(i)[labels] * 255).astype(np.uint8)
          for i in range(2)}
  data['label'] = labels
  return data


def template_classify(clf_params, name, x):
  """Exact template matcher: scores = -squared distance `[N, C]`."""
  t = clf_params[name]
  return -jnp.sum(jnp.square(x[:, None] - t[None]), axis=(2, 3, 4))


def test_alpha_sweep_on_constructed_model(tmp_path):
  model, params = template_model()
  n = 240
  data = template_data(n)
  alphas = [0.0, 0.5, 1.0, 2.0, 4.0]
  clf = {f'm{i}': jnp.asarray(_templates(i)) for i in range(2)}
  calls = []

  def fd_fn(alpha):  # records the calls; non-numbers are dropped
    calls.append(alpha)
    return {'fd/x': 10 * alpha, 'skipped': {'a': 'b'}}

  sweep = alpha_sweep.alpha_sweep(KEY, model, params, data, alphas,
                              classify=template_classify, clf_params=clf,
                              fd_fn=fd_fn, batch_size=96)
  coh = np.array(sweep['coherence/cond/mean'])
  # alpha = 0: w = 0, every digit right; then the same eps per example, so
  # a digit that flips at alpha stays flipped above it.
  assert coh[0] == 1.0
  assert np.all(np.diff(coh) < 0), coh
  for a, c in zip(alphas[1:], coh[1:]):
    p = 2 * stats.norm.cdf(T / (a * PRIOR_SCALE)) - 1  # P(|alpha s eps| <= T)
    assert abs(c - p) < 5 * np.sqrt(p * (1 - p) / (2 * n)), (a, c, p)
  np.testing.assert_allclose(  # two targets, one source each
      coh, np.mean([sweep['coherence/cond/m0'], sweep['coherence/cond/m1']],
                   0))
  assert calls == alphas and sweep['fd/x'] == [10 * a for a in alphas]
  assert sweep['alpha'] == alphas and 'skipped' not in sweep
  path = alpha_sweep.plot_alpha_sweep(str(tmp_path / 'a.png'), sweep,
                                  fd_key='fd/x', names=model.names)
  assert _png(path).shape[2] == 3


def test_alpha_sweep_evaluator_writes_json_and_plot(tmp_path, monkeypatch):
  # FD_clf itself (evaluation.fd_clf, ~30 s to compile here) runs end to end
  # in eval_test.py (test_eval_py_on_1_and_8_devices_and_twice, slow); here
  # a stand-in with its signature and metric names.
  assert 'alpha' in inspect.signature(fd_clf.fd_clf_metrics).parameters
  model, params = template_model()
  data = template_data(32, seed=1)
  clf = ({f'm{i}': classifiers.init(jax.random.key(i)) for i in range(2)},
         {'test_accuracy': {'m0': 0.5, 'm1': 0.6}})
  ctx = _context(model, params, data, tmp_path,
                 {'alpha_sweep': (0.25, 4.0), 'batch_size': 16}, clf)
  seen = []

  def fake_fd(c, *, alpha=1.0):
    seen.append((c, alpha))
    return {'fd_clf/cond/mean/with_self': 3.0 * alpha, 'fd_clf/num_real': 32,
            'fd_clf/cond/m0->m1': 1.0}

  monkeypatch.setattr(fd_clf, 'fd_clf_metrics', fake_fd)
  out = api.get('alpha_sweep')(ctx)
  assert seen == [(ctx, 0.25), (ctx, 4.0)]
  with open(tmp_path / 'alpha_sweep.json') as f:
    rec = json.load(f)
  assert rec['alpha'] == [0.25, 4.0] and rec['step'] == 0
  assert rec['classifier_test_accuracy'] == {'m0': 0.5, 'm1': 0.6}
  assert rec['fd_key'] == 'fd_clf/cond/mean/with_self'
  assert rec['fd_clf/cond/mean/with_self'] == [0.75, 12.0]
  assert all(0 <= v <= 1 for v in rec['coherence/cond/mean'])
  # The coherence is `coherence.conditional_coherence` with ClfImg.
  want = coherence.conditional_coherence(
      jax.random.fold_in(ctx.key, 0), model, ctx.params, classifiers.classify,
      clf[0], data, batch_size=16, alpha=4.0)
  assert rec['coherence/cond/mean'][1] == want.mean
  for k in ('coherence/cond/mean', 'fd_clf/cond/mean/with_self'):
    for a, v in zip(rec['alpha'], rec[k]):
      assert out[f'alpha_sweep/alpha_{a:g}/{k}'] == v
  assert out['alpha_sweep/files'] == ['alpha_sweep.json', 'alpha_sweep.png']
  assert 'skipped' not in out
  _png(tmp_path / 'alpha_sweep.png')
  # An FD key the FD function does not return: a reason, not a crash.
  ctx2 = _context(model, params, data, tmp_path / 'b',
                  {'alpha_sweep': (1.0,), 'batch_size': 16,
                   'alpha_sweep_fd_key': 'fd_clf/nope'}, clf)
  os.makedirs(ctx2.out_dir)
  out = api.get('alpha_sweep')(ctx2)
  assert 'fd_clf/nope' in out['skipped']['alpha_sweep/fd']
  _png(tmp_path / 'b' / 'alpha_sweep.png')


# ---------------------------------------------------------------- scatter


FID = 'fid/cond/mean/with_self'  # the default x axis


def _write_metrics(workdir, step, metrics):
  d = os.path.join(workdir, 'eval', str(step))
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, 'metrics.json'), 'w') as f:
    json.dump(metrics, f)


def test_scatter_reads_latest_metrics_and_plots(tmp_path, capsys):
  a, b = str(tmp_path / 'run_a'), str(tmp_path / 'run_b')
  _write_metrics(a, 3, {'coherence/cond/mean': 0.1, FID: 90.0})
  _write_metrics(a, 10, {'coherence/cond/mean': 0.7, FID: 40.0,
                         'coherence/uncond': 0.5, 'fid/uncond/mean': 50.0})
  _write_metrics(b, 5, {'coherence/cond/mean': 0.6, FID: 60.0,
                        'coherence/uncond': 0.4, 'fid/uncond/mean': 70.0})
  os.makedirs(os.path.join(a, 'eval', '12'))  # a later eval without metrics
  points = scatter.run_points([a, b], coherence_key='coherence/cond/mean',
                              fid_key=FID)
  assert [(p.label, p.step, p.coherence, p.fid) for p in points] == [
      ('run_a', 10, 0.7, 40.0), ('run_b', 5, 0.6, 60.0)]
  one, two = str(tmp_path / 'one.png'), str(tmp_path / 'two.png')
  assert scatter_cli.main(['--workdirs', a, b, '--out', one]) == 0
  assert scatter_cli.main([
      '--workdirs', a, b, '--out', two, '--labels', 'A', 'B',
      '--coherence_key', 'coherence/cond/mean', '--fid_key', FID,
      '--coherence_key', 'coherence/uncond', '--fid_key', 'fid/uncond/mean',
  ]) == 0
  assert 'A: step 10' in capsys.readouterr().out
  assert _png(two).shape[1] > _png(one).shape[1]  # two panels


def test_scatter_errors_name_the_run(tmp_path, capsys):
  a, c = str(tmp_path / 'run_a'), str(tmp_path / 'run_c')
  _write_metrics(a, 1, {'coherence/cond/mean': 0.7, FID: 40.0})
  os.makedirs(os.path.join(c, 'eval', '4'))
  with pytest.raises(FileNotFoundError, match='run_c'):
    scatter.run_points([a, c], coherence_key='coherence/cond/mean',
                       fid_key=FID)
  assert scatter_cli.main(['--workdirs', a, c, '--out',
                       str(tmp_path / 'x.png')]) == 1
  err = capsys.readouterr().err
  assert 'run_c' in err and 'metrics.json' in err
  assert not (tmp_path / 'x.png').exists()
  with pytest.raises(KeyError, match='fid/uncond/mean'):
    scatter.run_points([a], coherence_key='coherence/cond/mean',
                       fid_key='fid/uncond/mean')
  # A metric the evaluation skipped: the reason is in the message.
  _write_metrics(a, 2, {'coherence/cond/mean': 0.7,
                        'skipped': {'fid': 'no Inception weights'}})
  with pytest.raises(KeyError, match='no Inception weights'):
    scatter.run_points([a], coherence_key='coherence/cond/mean', fid_key=FID)
