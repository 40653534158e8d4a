"""The MMVAE+ log-weights and bound against independent references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import numerics
import toy_models
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.core import objectives
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import polymnist


def _np(x):
  return np.asarray(x, np.float64)


def _np_scale(family, raw):
  raw = _np(raw)
  if family == 'laplace':
    return raw.shape[-1] * special.softmax(raw, axis=-1) + 1e-20
  return np.logaddexp(0.0, raw) + 1e-20


@pytest.mark.parametrize('family', ['laplace', 'normal'])
def test_k1_bound_equals_independent_stratified_elbo(family):
  """K = 1: L equals (1/M) sum_r [recon + beta (prior - posterior)] by scipy."""
  m, b, beta, sigma_x = 3, 4, 2.5, 0.5
  model = toy_models.make_toy(m, dim_w=2, dim_z=3, dim_x=4, family=family,
                              sigma_x=sigma_x)
  batch = toy_models.toy_batch(model, b)
  params = model.init(jax.random.key(0), batch)
  rng = np.random.default_rng(5)
  for n in model.names:  # a learned (non-trivial) auxiliary prior
    params['aux_prior'][n] = jnp.asarray(rng.normal(size=2), jnp.float32)
  noise = model.sample_noise(jax.random.key(1), 1, b)

  got_lw = jax.jit(functools.partial(
      objectives.log_weights, model, beta=beta))(params, batch, noise)
  got = jax.jit(functools.partial(
      estimators.objective, model, beta=beta))(params, batch, noise)
  assert got_lw.shape == (m, 1, b) and got.shape == (b,)

  dist = stats.laplace if family == 'laplace' else stats.norm
  p_scale = _np_scale(family, np.zeros(1))[0]
  enc = []
  for mod in model.modalities:
    lw_, rw, lz, rz = mod.encoder.apply(
        {'params': params['encoders'][mod.name]}, batch[mod.name])
    enc.append((_np(lw_), _np_scale(family, rw), _np(lz), _np_scale(family, rz)))
  want = np.zeros(b)
  for r in range(m):
    loc_w, sc_w, loc_z, sc_z = enc[r]
    w = loc_w + sc_w * _np(noise.w[r, 0])
    z = loc_z + sc_z * _np(noise.z[r, 0])
    total = np.zeros(b)
    for d, mod in enumerate(model.modalities):
      if d == r:
        w_in = w
      else:
        aux_sc = _np_scale(family, params['aux_prior'][mod.name])
        w_in = aux_sc * _np(noise.aux[r, d, 0])
      u = np.concatenate([w_in, z], -1).astype(np.float32)
      out = _np(mod.decoder.apply({'params': params['decoders'][mod.name]}, u))
      total += stats.norm.logpdf(_np(batch[mod.name]), out, sigma_x).sum(-1)
    log_p = dist.logpdf(z, 0, p_scale).sum(-1) + dist.logpdf(
        w, 0, p_scale).sum(-1)
    comps = np.stack([dist.logpdf(z, e[2], e[3]).sum(-1) for e in enc])
    log_q = special.logsumexp(comps, axis=0) - np.log(m)
    log_q += dist.logpdf(w, loc_w, sc_w).sum(-1)
    total += beta * (log_p - log_q)
    np.testing.assert_allclose(_np(got_lw[r, 0]), total, rtol=2e-5)
    want += total / m
  np.testing.assert_allclose(_np(got), want, rtol=2e-5)


def test_vmapped_modalities_equal_one_call_per_modality():
  """Grouped (vmapped) networks give the same log-weights and gradients."""
  kw = dict(dim_w=2, dim_z=3, dim_x=4, family='laplace')
  grouped = toy_models.make_toy(3, vmap_modalities=True, **kw)
  single = toy_models.make_toy(3, **kw)
  assert grouped.groups() == ((0, 1, 2),)
  assert single.groups() == ((0,), (1,), (2,))
  batch = toy_models.toy_batch(grouped, 4)
  params = grouped.init(jax.random.key(0), batch)
  noise = grouped.sample_noise(jax.random.key(1), 3, 4)
  vals = []
  for model in (grouped, single):
    f = lambda p: jnp.mean(estimators.objective(
        model, p, batch, noise, beta=2.5, estimator='dreg'))
    vals.append(jax.jit(jax.value_and_grad(f))(params))
  # Equal up to float32 reassociation. Bound: every value and gradient
  # element here is a sum of at most M * K * B * (Dw + Dz + Dx) = 324 terms
  # through a few dozen operations: <= ~1,000 u of the terms' scale. As a
  # whole-tree relative L2 (the auxiliary-prior and bias leaves whose
  # elements cancel carry little of the norm) we allow 1,000 u. A wrong
  # grouping (a modality's parameters swapped or shared) moves it by O(1).
  tol = 1000 * numerics.U32
  np.testing.assert_allclose(vals[0][0], vals[1][0], rtol=tol)
  numerics.assert_rel_l2(vals[0][1], vals[1][1], tol, 'vmapped vs looped')


def test_moe_log_prob_matches_scipy_mixture():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 5, 2, 4)).astype(np.float32)  # [M_r, K, B, D]
  loc = rng.normal(size=(3, 2, 4)).astype(np.float32)  # [M, B, D]
  scale = np.exp(rng.normal(size=(3, 2, 4))).astype(np.float32)
  comps = objectives.mixture_component_log_probs('laplace', z, loc, scale)
  got = objectives.moe_log_prob(comps)
  assert comps.shape == (3, 3, 5, 2) and got.shape == (3, 5, 2)
  dens = np.stack([
      stats.laplace.pdf(_np(z), _np(loc[m])[None], _np(scale[m])[None]).prod(-1)
      for m in range(3)])  # [M, M_r, K, B]
  np.testing.assert_allclose(_np(got), np.log(dens.mean(0)), rtol=1e-5)
  resp = objectives.log_responsibility(comps)
  own = np.stack([dens[r, r] for r in range(3)])
  np.testing.assert_allclose(
      _np(resp), np.log(own / dens.sum(0)), rtol=1e-4, atol=1e-5)


def test_moe_iw_bound_reference():
  lw = np.random.default_rng(1).normal(size=(3, 7, 2)) * 3
  got = objectives.moe_iw_bound(jnp.asarray(lw, jnp.float32))
  want = np.mean(np.log(np.mean(np.exp(lw), axis=1)), axis=0)
  np.testing.assert_allclose(_np(got), want, rtol=1e-5)


# ------------------------------------------------ linear-Gaussian, exact p(x)

_SIGMA_X = 0.6


def _linear_gaussian(num_modalities):
  """Exact model x_m = A_m z + C_m w_m + b_m + N(0, s^2), Dz = Dw = 1."""
  model = toy_models.make_toy(num_modalities, dim_w=1, dim_z=1, dim_x=2,
                              family='normal', sigma_x=_SIGMA_X)
  rng = np.random.default_rng(11)
  sp = float(_np_scale('normal', np.zeros(1))[0])  # prior std softplus(0)
  a = rng.normal(size=(num_modalities, 2)) * 1.5
  c = rng.normal(size=(num_modalities, 2))
  bias = rng.normal(size=(num_modalities, 2)) * 0.3
  batch = {n: jnp.zeros((1, 2)) for n in model.names}
  params = model.init(jax.random.key(0), batch)
  for i, n in enumerate(model.names):
    params['decoders'][n]['out'] = {
        'kernel': jnp.asarray(np.stack([c[i], a[i]]), jnp.float32),  # [w, z]
        'bias': jnp.asarray(bias[i], jnp.float32)}
  # Data from the model; encoders = exact unimodal posteriors of z and of w.
  z0 = rng.normal() * sp
  x = {}
  for i, n in enumerate(model.names):
    x[n] = a[i] * z0 + c[i] * rng.normal() * sp + bias[i] + (
        rng.normal(size=2) * _SIGMA_X)
    cov = sp**2 * (np.outer(a[i], a[i]) + np.outer(c[i], c[i])) + (
        _SIGMA_X**2 * np.eye(2))
    prec = np.linalg.inv(cov)
    enc = {}
    for name, v in (('z', a[i]), ('w', c[i])):
      gain = sp**2 * prec @ v  # E[latent | x] = gain . (x - b)
      std = np.sqrt(sp**2 - sp**4 * v @ prec @ v)
      enc['loc_' + name] = {'kernel': gain[:, None], 'bias': -gain @ bias[i:i+1].T}
      enc['raw_' + name] = {'kernel': np.zeros((2, 1)),
                            'bias': np.log(np.expm1(std))[None]}
    params['encoders'][n] = jax.tree.map(
        lambda t: jnp.asarray(t, jnp.float32).reshape(np.shape(t)), enc)
  batch = {n: jnp.asarray(v[None], jnp.float32) for n, v in x.items()}
  # Exact log p(x_1:M).
  x_all = np.concatenate([x[n] for n in model.names])
  a_all = np.concatenate(list(a))
  cov = sp**2 * np.outer(a_all, a_all) + _SIGMA_X**2 * np.eye(2 * num_modalities)
  for i in range(num_modalities):
    cov[2*i:2*i+2, 2*i:2*i+2] += sp**2 * np.outer(c[i], c[i])
  log_px = stats.multivariate_normal.logpdf(x_all, np.concatenate(list(bias)), cov)
  # The K -> infinity limit of the stratified bound, by quadrature over z:
  # (1/M) sum_r log int q_r(z) p(z) prod_d p(x_d | z) / Q(z) dz.
  grid = np.linspace(-8, 8, 20001) * sp
  log_lik = np.zeros_like(grid)
  for i, n in enumerate(model.names):
    cov_d = sp**2 * np.outer(c[i], c[i]) + _SIGMA_X**2 * np.eye(2)
    mean_d = a[i][None] * grid[:, None] + bias[i]
    log_lik += stats.multivariate_normal.logpdf(mean_d - x[n], np.zeros(2), cov_d)
  q = []
  for n in model.names:
    e = params['encoders'][n]
    loc = float((np.asarray(e['loc_z']['kernel'])[:, 0] @ x[n])
                + np.asarray(e['loc_z']['bias'])[0])
    std = float(np.logaddexp(0, np.asarray(e['raw_z']['bias'])[0]))
    q.append(stats.norm.pdf(grid, loc, std))
  q = np.stack(q)
  big_q = q.mean(0)
  integrand = np.exp(stats.norm.logpdf(grid, 0, sp) + log_lik - log_px) / big_q
  limit = log_px + np.mean(
      [np.log(np.trapezoid(q[r] * integrand, grid)) for r in range(len(q))])
  return model, params, batch, log_px, limit


@pytest.mark.parametrize('num_modalities', [1, 2])
def test_bound_below_exact_log_px_and_rises_with_k(num_modalities):
  model, params, batch, log_px, limit = _linear_gaussian(num_modalities)
  n_keys = 20_000

  @functools.partial(jax.jit, static_argnums=1)
  def bounds(keys, k):
    f = lambda key: estimators.sample_objective(
        key, model, params, batch, num_samples=k, beta=1.0)[0]
    return jax.vmap(f)(keys)

  means, ses = [], []
  for i, k in enumerate((1, 10, 100)):
    v = np.asarray(bounds(jax.random.split(jax.random.key(i), n_keys), k),
                   np.float64)
    means.append(v.mean())
    ses.append(v.std() / np.sqrt(n_keys))
  print(f'M={num_modalities} log p(x)={log_px:.4f} limit={limit:.4f} '
        f'means={np.round(means, 4)} se={np.round(ses, 4)}')
  assert limit <= log_px + 1e-9
  if num_modalities == 1:
    np.testing.assert_allclose(limit, log_px, atol=1e-6)
  for mean, se in zip(means, ses):
    # Below its K -> infinity limit for every K (IWAE monotonicity holds for
    # each stratum's proposal), and the limit is below log p(x): a bound
    # that was too high would cross the limit at K = 100, where
    # limit - mean < 0.05 (asserted below).
    assert mean <= limit + 3 * se
  for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:]):
    assert hi - lo > 3 * np.hypot(se_lo, se_hi)  # strictly rises with K
  # Approaches its K -> infinity limit (log p(x) itself when M = 1).
  assert limit - means[2] < 0.2 * (limit - means[0])
  assert abs(limit - means[2]) < 0.05


# -------------------------------------------------------------- bad inputs

def _small_polymnist():
  model = polymnist.make_mmvaeplus(num_modalities=3, width=0.125,
                                   dim_w=4, dim_z=4)
  batch = {n: jnp.zeros((2, 28, 28, 3)) for n in model.names}
  params = jax.eval_shape(model.init, jax.random.key(0), batch)
  return model, params, batch


def _trace(model, params, batch, num_samples=2):
  f = lambda p, x: estimators.sample_objective(
      jax.random.key(0), model, p, x, num_samples=num_samples)
  return jax.eval_shape(jax.jit(f), params, batch)


def test_good_input_traces():
  model, params, batch = _small_polymnist()
  assert _trace(model, params, batch).shape == (2,)


def test_wrong_number_of_modalities_raises():
  model, params, batch = _small_polymnist()
  del batch['m2']
  with pytest.raises(ValueError, match=r"missing \['m2'\]"):
    _trace(model, params, batch)
  batch['m2'] = batch['m3'] = jnp.zeros((2, 28, 28, 3))
  with pytest.raises(ValueError, match=r"unknown \['m3'\]"):
    _trace(model, params, batch)


def test_mismatched_batch_sizes_raise():
  model, params, batch = _small_polymnist()
  batch['m1'] = jnp.zeros((3, 28, 28, 3))
  with pytest.raises(ValueError, match=r"same batch size.*'m1': 3"):
    _trace(model, params, batch)


def test_wrong_image_shape_raises():
  model, params, batch = _small_polymnist()
  batch['m0'] = jnp.zeros((2, 28, 28, 1))
  with pytest.raises(
      ValueError, match=r"batch\['m0'\] must have shape \[B, 28, 28, 3\], "
      r"got \[2, 28, 28, 1\]"):
    _trace(model, params, batch)


@pytest.mark.parametrize('k', [0, -1, 2.5])
def test_bad_num_samples_raises(k):
  model, params, batch = _small_polymnist()
  with pytest.raises(ValueError, match=r'num_samples \(K\) must be an integer'):
    _trace(model, params, batch, num_samples=k)


def test_bad_noise_shape_raises():
  model, params, batch = _small_polymnist()
  noise = model.sample_noise(jax.random.key(0), 2, 3)  # B = 3, batch has 2
  with pytest.raises(ValueError, match=r'noise.w must have shape'):
    jax.eval_shape(
        lambda p: estimators.objective(model, p, batch, noise), params)
  noise = types.Noise(w=jnp.zeros((3, 0, 2, 4)), z=jnp.zeros((3, 0, 2, 4)),
                          aux=jnp.zeros((3, 3, 0, 2, 4)))
  with pytest.raises(ValueError, match=r'K must be >= 1'):
    jax.eval_shape(
        lambda p: estimators.objective(model, p, batch, noise), params)
