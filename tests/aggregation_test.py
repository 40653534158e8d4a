"""aggregation.py against NumPy/SciPy references written out here.

Tolerances: float32 against float64 references. Each function below is a
handful of float32 operations per element plus one short reduction over
N <= 8 experts or S <= 31 subsets, so its rounding error is at most
c (N + 2) u times the scale of its terms (u = 2^-24, c a small constant for
log/exp, <= 4); the tests allow TOL = 8 (N + 2) u relative to the norm of
the terms' absolute values (tests/numerics.py), so a missing expert, a
missing prior or a wrong weight (all O(1) changes) cannot pass.
"""

import jax
import numpy as np
import pytest
from scipy import special
from scipy import stats

from mmvaeplus_jax.core import aggregation

U32 = 2.0 ** -24


def _experts(seed, m=3, b=4, d=5):
  rng = np.random.default_rng(seed)
  loc = rng.normal(size=(m, b, d)).astype(np.float32)
  scale = np.exp(rng.normal(scale=0.7, size=(m, b, d))).astype(np.float32)
  return loc, scale


def _np_product(loc, scale, weights):
  """Precision-weighted closed form in float64: loc, scale, and the scale of
  the mean's terms sum_n r_n |loc_n| (for the tolerance)."""
  loc, scale = np.float64(loc), np.float64(scale)
  w = np.float64(weights)[:, :, None, None]  # [S, N, 1, 1]
  prec = np.sum(w / scale[None] ** 2, axis=1)  # [S, B, D]
  r = w / scale[None] ** 2 / prec[:, None]
  mu = np.sum(r * loc[None], axis=1)
  return mu, 1.0 / np.sqrt(prec), np.sum(r * np.abs(loc[None]), axis=1)


def _assert_norm_close(got, want, scale_terms, n):
  tol = 8 * (n + 2) * U32
  err = np.linalg.norm(np.float64(got) - want)
  assert err <= tol * np.linalg.norm(scale_terms), (err, tol)


@pytest.mark.parametrize('prior_scale', [1.0, 0.5])
def test_gaussian_poe_is_precision_weighted_with_prior_expert(prior_scale):
  loc, scale = _experts(0)
  subsets = aggregation.all_subsets(3)
  prior_expert = np.array([True, False, True, False, True, True, False])
  got_loc, got_scale = jax.jit(
      lambda l, s: aggregation.gaussian_poe(
          l, s, subsets, prior_scale=prior_scale, prior_expert=prior_expert)
  )(loc, scale)
  # Reference: the experts of each subset plus N(0, prior_scale^2) where
  # prior_expert says so.
  e_loc = np.concatenate([loc, np.zeros_like(loc[:1])])
  e_scale = np.concatenate([scale, np.full_like(scale[:1], prior_scale)])
  weights = np.concatenate([subsets, prior_expert[:, None]], axis=1)
  mu, sd, mu_terms = _np_product(e_loc, e_scale, weights)
  _assert_norm_close(got_loc, mu, mu_terms, 4)
  _assert_norm_close(got_scale, sd, sd, 4)
  # The prior expert matters: without it the single-expert subsets would be
  # the experts themselves.
  no_prior, _ = aggregation.gaussian_poe(loc, scale, subsets[:1],
                                         prior_scale=prior_scale,
                                         prior_expert=False)
  np.testing.assert_array_equal(no_prior[0], loc[0])
  assert np.linalg.norm(got_loc[0] - loc[0]) > 1e3 * 8 * 6 * U32 * (
      np.linalg.norm(loc[0]))


def test_gaussian_product_weighted_equals_closed_form():
  loc, scale = _experts(1, m=4)
  weights = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 2.0]])
  got_loc, got_scale = jax.jit(aggregation.gaussian_product)(
      loc, scale, weights)
  mu, sd, mu_terms = _np_product(loc, scale, weights)
  _assert_norm_close(got_loc, mu, mu_terms, 4)
  _assert_norm_close(got_scale, sd, sd, 4)


def test_gaussian_kl_matches_scipy_entropy_identity():
  # KL(q || p) = -H(q) - E_q log p; both terms in closed form from SciPy's
  # entropy and the Gaussian cross-entropy, in float64.
  loc, scale = _experts(2)
  ploc, pscale = 0.3, 1.7
  got = aggregation.gaussian_kl(loc, scale, ploc, pscale)
  h = stats.norm(np.float64(loc), np.float64(scale)).entropy()
  cross = (np.log(pscale) + 0.5 * np.log(2 * np.pi)
           + (np.float64(scale) ** 2 + (np.float64(loc) - ploc) ** 2)
           / (2 * pscale ** 2))
  want = np.sum(cross - h, axis=-1)
  terms = np.sum(np.abs(cross) + np.abs(h), axis=-1)
  _assert_norm_close(got, want, terms, 5)


@pytest.mark.parametrize('m', [1, 2, 3, 4, 5])
def test_all_subsets_enumerates_the_nonempty_subsets(m):
  subs = aggregation.all_subsets(m)
  assert subs.shape == (2 ** m - 1, m) == (aggregation.num_subsets(m), m)
  rows = {tuple(r) for r in subs.tolist()}
  want = {tuple(bool(i >> j & 1) for j in range(m)) for i in range(1, 2 ** m)}
  assert rows == want  # each non-empty subset exactly once


def test_mopoe_log_prob_equals_brute_force_mixture():
  loc, scale = _experts(3)
  m, b, d = loc.shape
  subsets = aggregation.all_subsets(m)
  prior_expert = subsets.all(axis=1)  # MoPoE's: prior in the full set only
  z = np.random.default_rng(4).normal(size=(2, 3, b, d)).astype(np.float32)
  got = jax.jit(lambda z, l, s: aggregation.mopoe_log_prob(
      z, l, s, subsets, prior_expert=prior_expert))(z, loc, scale)
  # Brute force: each subset's product by its own loop over members, then
  # the mixture density summed term by term.
  comps, terms = [], []
  for s, pe in zip(subsets, prior_expert):
    prec = np.zeros((b, d)) + (1.0 if pe else 0.0)
    num = np.zeros((b, d))
    for i in np.flatnonzero(s):
      prec += 1.0 / np.float64(scale[i]) ** 2
      num += np.float64(loc[i]) / np.float64(scale[i]) ** 2
    mu, sd = num / prec, 1.0 / np.sqrt(prec)
    lp = stats.norm(mu, sd).logpdf(np.float64(z))  # [2, 3, B, D]
    comps.append(lp.sum(-1))
    terms.append(np.abs(lp).sum(-1))
  want = special.logsumexp(np.stack(comps), axis=0) - np.log(len(subsets))
  _assert_norm_close(got, want, np.max(np.stack(terms), axis=0), 31)


def test_mixture_log_prob_reuses_objectives_moe():
  loc, scale = _experts(5)
  z = np.random.default_rng(6).normal(size=(3, 2, 4, 5)).astype(np.float32)
  got = aggregation.mixture_log_prob('normal', z, loc, scale)
  lp = stats.norm(np.float64(loc)[None, :, None],
                  np.float64(scale)[None, :, None]).logpdf(
                      np.float64(z)[:, None])  # [R, M, K, B, D]
  want = special.logsumexp(lp.sum(-1), axis=1) - np.log(3)
  _assert_norm_close(got, want, np.abs(lp).sum(-1).max(axis=1), 3)


def test_jensen_shannon_dynamic_prior_reference_nonnegative_and_zero():
  loc, scale = _experts(7)
  m, b, d = loc.shape
  js, f_loc, f_scale = jax.jit(aggregation.jensen_shannon_dynamic_prior)(
      loc, scale)
  # Reference: uniform pi over the M experts and N(0, I); f their
  # pi-weighted product; JS = sum_k pi_k KL(q_k || f).
  e_loc = np.concatenate([np.float64(loc), np.zeros((1, b, d))])
  e_scale = np.concatenate([np.float64(scale), np.ones((1, b, d))])
  pi = np.full(m + 1, 1.0 / (m + 1))
  prec = np.tensordot(pi, 1 / e_scale ** 2, axes=1)
  mu = np.tensordot(pi, e_loc / e_scale ** 2, axes=1) / prec
  sd = 1 / np.sqrt(prec)
  kl = (np.log(sd / e_scale) + (e_scale ** 2 + (e_loc - mu) ** 2)
        / (2 * sd ** 2) - 0.5)  # [M + 1, B, D]
  want = np.tensordot(pi, kl.sum(-1), axes=1)
  _assert_norm_close(js, want, np.tensordot(pi, np.abs(kl).sum(-1), axes=1),
                     m + 1)
  _assert_norm_close(f_loc, mu, np.abs(mu) + 1.0, m + 1)
  _assert_norm_close(f_scale, sd, sd, m + 1)
  assert np.all(np.asarray(js) > 0)
  # >= 0 over many random experts.
  for seed in range(8, 14):
    l2, s2 = _experts(seed, m=4, b=16, d=3)
    assert np.all(np.asarray(
        aggregation.jensen_shannon_dynamic_prior(l2, s2)[0]) >= 0)
  # 0 when every expert equals the prior: unimodal experts N(0, s^2) and a
  # prior of scale s (rounding only: a few u times D terms of size 1).
  s = np.exp(np.random.default_rng(15).normal(size=(1, 4, 5))).astype(
      np.float32)
  zero, _, _ = aggregation.jensen_shannon_dynamic_prior(
      np.zeros((3, 4, 5), np.float32), np.repeat(s, 3, axis=0),
      prior_scale=s[0])
  assert np.max(np.abs(zero)) <= 8 * 5 * 5 * U32
  # ... and it detects one differing expert.
  one_off = np.zeros((3, 4, 5), np.float32)
  one_off[1] = 0.5
  off, _, _ = aggregation.jensen_shannon_dynamic_prior(
      one_off, np.repeat(s, 3, axis=0), prior_scale=s[0])
  assert np.all(np.asarray(off) > 1e-3)


def test_sample_subsets_distinct_sizes_two_to_m_minus_one():
  m = 5
  cands = aggregation.subsample_candidates(m)
  assert len(cands) == 2 ** m - 2 - m
  for seed in range(3):
    subs = np.asarray(aggregation.sample_subsets(jax.random.key(seed), m, 6))
    assert subs.shape == (6, m)
    sizes = subs.sum(1)
    assert np.all((sizes >= 2) & (sizes <= m - 1))
    assert len({tuple(r) for r in subs.tolist()}) == 6  # without replacement
  assert aggregation.sample_subsets(jax.random.key(0), 2, 0).shape == (0, 2)
  with pytest.raises(ValueError, match='cannot draw'):
    aggregation.sample_subsets(jax.random.key(0), 3, 4)
  # Uniform over the candidates: every candidate appears over many keys.
  seen = set()
  for seed in range(60):
    seen |= {tuple(r) for r in np.asarray(aggregation.sample_subsets(
        jax.random.key(seed), 4, 2)).tolist()}
  assert seen == {tuple(r) for r in aggregation.subsample_candidates(
      4).tolist()}
