"""Log-densities against scipy.stats, sample moments, scale maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import numerics
from mmvaeplus_jax.core import distributions


def _assert_sum_close(got, terms, axes, extra=0.0):
  """float32 `got` against the float64 sum of `terms` over `axes`, within
  the forward-error bound of a float32 sum: |err| <= (n + c) u sum |t_i| (n
  terms, c = 8 ulps for the elementwise ops producing each term, u =
  2**-24). A relative tolerance would not do: the terms have mixed signs and
  a sum near 0 has no relative accuracy."""
  terms = np.asarray(terms, np.float64)
  n = np.prod([terms.shape[a] for a in np.atleast_1d(axes)])
  scale = np.abs(terms).sum(axes) + extra
  err = np.abs(np.asarray(got, np.float64) - terms.sum(axes))
  np.testing.assert_array_less(err, (n + 8) * numerics.U32 * scale)


def _data(seed, shape=(4, 3, 7)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape) * 2
  loc = rng.normal(size=shape)
  scale = np.exp(rng.normal(size=shape) * 0.5)
  return x.astype(np.float32), loc.astype(np.float32), scale.astype(np.float32)


@pytest.mark.parametrize(
    'family,ref',
    [('laplace', stats.laplace.logpdf), ('normal', stats.norm.logpdf)],
)
def test_log_prob_matches_scipy_under_jit(family, ref):
  x, loc, scale = _data(0)
  got = jax.jit(distributions.log_prob, static_argnums=0)(family, x, loc, scale)
  terms = ref(x.astype(np.float64), loc, scale)
  assert got.shape == (4, 3)
  _assert_sum_close(got, terms, axes=-1)


def test_image_likelihood_matches_scipy():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(2, 5, 5, 3)).astype(np.float32)
  loc = rng.normal(size=(4, 2, 5, 5, 3)).astype(np.float32)
  got = jax.jit(distributions.laplace_image_log_likelihood)(x, loc, 0.75)
  terms = stats.laplace.logpdf(x, loc.astype(np.float64), 0.75)
  assert got.shape == (4, 2)
  _assert_sum_close(got, terms, axes=(-3, -2, -1))


def test_one_hot_categorical_matches_scipy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(3, 2, 6, 11)).astype(np.float32)
  tokens = rng.integers(0, 11, size=(2, 6))
  x = np.eye(11, dtype=np.float32)[tokens]
  got = jax.jit(distributions.one_hot_categorical_log_likelihood)(x, logits)
  p = special.softmax(logits.astype(np.float64), axis=-1)
  terms = np.zeros((3, 2, 6))
  for s in range(3):
    for b in range(2):
      for l in range(6):
        terms[s, b, l] = stats.multinomial.logpmf(x[b, l], 1, p[s, b, l])
  # Each position's log-softmax rounds relative to its logits' size, not to
  # its own (small) value: add max |logit| to the terms' scale.
  _assert_sum_close(got, terms, axes=-1,
                    extra=np.abs(logits).max(-1).sum(-1))


@pytest.mark.parametrize(
    'family,var', [('laplace', 2.0), ('normal', 1.0)])
def test_sample_moments(family, var):
  n = 400_000
  loc = jnp.array([[1.5, -2.0]])
  scale = jnp.array([[0.5, 3.0]])
  s = jax.jit(distributions.sample, static_argnums=(0, 4))(
      family, jax.random.key(3), loc, scale, n)
  assert s.shape == (n, 1, 2)
  s = np.asarray(s, np.float64)[:, 0]
  sd = np.sqrt(var) * np.asarray(scale[0])
  # Mean within 5 standard errors; variance within 2%.
  np.testing.assert_array_less(
      np.abs(s.mean(0) - np.asarray(loc[0])), 5 * sd / np.sqrt(n))
  np.testing.assert_allclose(s.var(0), sd**2, rtol=0.02)
  # Whole distribution: Kolmogorov-Smirnov against scipy.
  dist = stats.laplace if family == 'laplace' else stats.norm
  z = (s[:20000, 1] - float(loc[0, 1])) / float(scale[0, 1])
  assert stats.kstest(z, dist.cdf).pvalue > 1e-6


def test_laplace_noise_finite_at_extremes(monkeypatch):
  """The inverse CDF at the extreme uniforms the sampler can produce: u =
  minval = -1 + eps and the largest float32 below maxval = 1."""
  seen = {}

  def extremes(key, shape, dtype, minval, maxval):
    del key
    seen.update(minval=minval, maxval=maxval)
    lo = np.float32(minval)
    hi = np.nextafter(np.float32(maxval), np.float32(0))
    return jnp.broadcast_to(jnp.array([lo, hi, 0.0], dtype), shape)

  monkeypatch.setattr(jax.random, 'uniform', extremes)
  e = np.asarray(distributions.laplace_noise(jax.random.key(0), (3,)),
                 np.float64)
  monkeypatch.undo()
  eps = np.finfo(np.float32).eps
  assert np.float32(seen['minval']) == np.float32(-1 + eps)
  assert seen['maxval'] == 1.0
  assert np.all(np.isfinite(e))
  # e = -sign(u) log1p(-|u|): log(eps) at the low end, -log(2**-24) at the
  # high end (1 - 2**-24 is the largest float32 below 1), 0 at u = 0.
  np.testing.assert_allclose(e, [np.log(eps), 24 * np.log(2), 0.0],
                             rtol=1e-3)
  # And an ordinary large draw stays finite.
  e = distributions.laplace_noise(jax.random.key(0), (1_000_000,))
  assert bool(jnp.all(jnp.isfinite(e)))


def test_scale_maps():
  raw = jnp.array([[0.3, -1.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
  lap = distributions.laplace_scale(raw, eta=0.0)
  np.testing.assert_allclose(np.asarray(lap.sum(-1)), [4.0, 4.0], rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(lap), 4 * special.softmax(np.asarray(raw, np.float64), -1),
      rtol=1e-6)
  nor = distributions.normal_scale(raw, eta=1e-6)
  np.testing.assert_allclose(
      np.asarray(nor), np.logaddexp(0, np.asarray(raw, np.float64)) + 1e-6,
      rtol=1e-6)
  # Priors at raw = 0: Laplace 1, Normal softplus(0) = log 2.
  # (Elementwise maps of positive values: no cancellation, a few ulps; the
  # rtol 1e-6 above is 16 u.)
  np.testing.assert_allclose(
      distributions.laplace_scale(jnp.zeros(3)), 1.0, rtol=4 * numerics.U32)
  np.testing.assert_allclose(
      distributions.normal_scale(jnp.zeros(3)), np.log(2.0),
      rtol=4 * numerics.U32)


def test_unknown_family_raises():
  with pytest.raises(ValueError, match='family'):
    distributions.log_prob('gamma', jnp.zeros(2), 0.0, 1.0)
