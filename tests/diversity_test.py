"""Sample diversity (evaluation.diversity) against numpy and exact toys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.evaluation import diversity
import toy_models


def test_sample_spread_is_the_per_pixel_std_averaged():
  x = np.random.default_rng(0).uniform(size=(7, 2, 3, 4, 5, 3))
  want = x.std(axis=0).mean(axis=(-3, -2, -1))
  np.testing.assert_allclose(diversity.sample_spread(jnp.asarray(x)), want,
                             rtol=1e-6)
  np.testing.assert_allclose(
      diversity.sample_spread(jnp.asarray(x[..., 0, 0]), event_ndim=1),
      x[..., 0, 0].std(axis=0).mean(axis=-1), rtol=1e-6)


def test_within_class_spread_averages_classes_not_images():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
  b = np.full((5, 4, 4, 3), 17, np.uint8)  # a constant class: spread 0
  images, labels = np.concatenate([a, b]), np.array([3] * 30 + [8] * 5)
  want = ((a / 255.0).std(axis=0).mean() + 0.0) / 2
  assert diversity.within_class_spread(images, labels) == pytest.approx(
      want, rel=1e-12)


def test_spread_metrics_excludes_the_diagonal():
  spread = np.zeros((4, 3, 3))
  spread[:, 0, 1], spread[:, 2, 1], spread[:, 1, 1] = 0.2, 0.4, 9.0
  out = diversity.spread_metrics(spread, {'a': 0.1, 'b': 0.2, 'c': 0.3},
                                 ('a', 'b', 'c'))
  assert out['diversity/cond/a->b'] == pytest.approx(0.2)
  assert out['diversity/cond/mean'] == pytest.approx(0.6 / 6)
  assert out['diversity/real/mean'] == pytest.approx(0.2)
  assert out['diversity/ratio'] == pytest.approx(0.5)
  assert 'diversity/cond/b->b' not in out


def _toy(z_weight):
  """Linear MMVAE+ toy (Normal latents, Dw = Dz = 2, 3 outputs), decoders
  x = 0.5 + A w + z_weight * B z with small A, B (outputs stay in [0, 1],
  so the clip is inactive)."""
  model = toy_models.make_toy(2)
  params = model.init(jax.random.key(0), toy_models.toy_batch(model, 2))
  a = np.array([[0.02, 0.0, 0.01], [0.0, 0.03, 0.02]], np.float32)
  for n in model.names:
    kernel = np.concatenate([a, z_weight * a[::-1]])  # rows [w; z]
    params['decoders'][n]['out'] = {'kernel': jnp.asarray(kernel),
                                    'bias': jnp.full((3,), 0.5)}
  return model, params, a


def _spread(model, params, alpha, repeats):
  batch = toy_models.toy_batch(model, 3)
  return np.asarray(diversity._spread_jit(
      params, jax.random.key(5), jnp.arange(3), batch, model=model,
      num_repeats=repeats, alpha=alpha))  # [B, M_s, M_t]


def test_no_variation_when_w_is_fixed_and_z_is_ignored():
  model, params, _ = _toy(z_weight=0.0)
  assert np.all(_spread(model, params, alpha=0.0, repeats=4) == 0.0)


def test_spread_of_a_linear_decoder_is_alpha_times_the_prior_std():
  """z ignored: x_j = 0.5 + sum_k A_kj w_k with w ~ N(0, (alpha s)^2 I)
  (s = the prior scale, softplus(0) here), so each output's std is
  alpha s ||A_:j||; the estimate from R = 4,000
  samples has relative error about 1 / sqrt(2 R) = 1.1 % (ddof 0 bias
  1 / (2 R)); 8 % is 7 standard errors."""
  model, params, a = _toy(z_weight=0.0)
  for alpha in (1.0, 2.5):
    got = _spread(model, params, alpha, repeats=4000)
    want = alpha * float(model.prior_scale(1)[0]) * np.linalg.norm(
        a, axis=0).mean()
    np.testing.assert_allclose(got, want, rtol=0.08)
