"""Tests of evaluation.coherence and evaluation.latent_classification.

Coherence is checked on a constructed model whose answers are known: each
encoder recognises the template its input was made from and puts the
(possibly remapped) class into z with a negligible scale; each decoder
ignores w and outputs the template of (a possibly remapped) argmax(z); the
classifiers are exact template matchers. The expected accuracies then follow
from the two class maps alone.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import coherence
from mmvaeplus_jax.evaluation import latent_classification
from mmvaeplus_jax.models import mmvaeplus

C = 10  # classes
DIM = 10  # Dw = Dz
EVENT = (4, 4, 3)
IDENTITY = tuple(range(C))


def _templates(seed, event=EVENT):
  """`[C, *event]` random template images in [0, 1) (distinct per seed)."""
  return np.random.default_rng(seed).random((C,) + tuple(event)).astype(
      np.float32)


class TemplateEncoder(nn.Module):
  """x = template[c] -> z loc = 3 one_hot(class_map[c]), scale ~1e-20."""

  seed: int  # templates = _templates(seed, event)
  class_map: tuple[int, ...]
  event: tuple[int, ...] = EVENT

  @nn.compact
  def __call__(self, x):
    t = self.param('templates',
                   lambda _: jnp.asarray(_templates(self.seed, self.event)))
    dist = jnp.sum(jnp.square(x[:, None] - t[None]), axis=(2, 3, 4))
    cls = jnp.asarray(self.class_map)[jnp.argmin(dist, axis=-1)]
    b = x.shape[0]
    loc_z = 3.0 * jax.nn.one_hot(cls, DIM)
    # Normal family: scale_z = softplus(-60) + eta ~ 1e-20; w ~ N(0, 0.69).
    return (jnp.zeros((b, DIM)), jnp.zeros((b, DIM)), loc_z,
            jnp.full((b, DIM), -60.0))


class TemplateDecoder(nn.Module):
  """u -> template[class_map[argmax(u[source])]], `source` 'z' or 'w'."""

  seed: int
  class_map: tuple[int, ...]
  source: str = 'z'
  event: tuple[int, ...] = EVENT

  @nn.compact
  def __call__(self, u):
    t = self.param('templates',
                   lambda _: jnp.asarray(_templates(self.seed, self.event)))
    part = u[:, DIM:DIM + C] if self.source == 'z' else u[:, :C]
    return t[jnp.asarray(self.class_map)[jnp.argmax(part, axis=-1)]]


@functools.lru_cache(maxsize=None)  # one model (and one compile) per setup
def make_template_model(enc_maps, dec_maps, source='z'):
  mods = tuple(
      mmvaeplus.Modality(
          name=f'm{i}',
          encoder=TemplateEncoder(i, enc_maps[i]),
          decoder=TemplateDecoder(i, dec_maps[i], source),
          log_likelihood=lambda x, out: jnp.zeros(out.shape[:-3]),
          event_shape=EVENT)
      for i in range(len(enc_maps)))
  model = mmvaeplus.MMVAEPlus(mods, dim_w=DIM, dim_z=DIM, family='normal')
  params = model.init(jax.random.key(0), {
      f'm{i}': np.zeros((1,) + EVENT, np.float32) for i in range(len(mods))})
  return model, params


def template_classify(clf_params, name, x):
  """Exact template matcher: scores = -squared distance `[N, C]`."""
  t = clf_params[name]
  return -jnp.sum(jnp.square(x[:, None] - t[None]), axis=(2, 3, 4))


def make_data(num_modalities, n, seed=0):
  labels = np.random.default_rng(seed).integers(0, C, n)
  data = {f'm{i}': _templates(i)[labels] for i in range(num_modalities)}
  data['label'] = labels
  return data


def clf_params(num_modalities):
  return {f'm{i}': jnp.asarray(_templates(i)) for i in range(num_modalities)}


def remap(mapping):
  out = list(IDENTITY)
  for a, b in mapping.items():
    out[a] = b
  return tuple(out)


M = 3
ENC_MAPS = (IDENTITY, remap({3: 4, 7: 8}), IDENTITY)  # m1 encodes 3, 7 wrong
DEC_MAPS = (IDENTITY, IDENTITY, remap({0: 9}))  # m2 draws 0 as 9
KEY = jax.random.key(42)


def expected_matrix(labels):
  """acc[e, d] = mean_y [dec_d(enc_e(y)) == y]."""
  enc, dec = np.array(ENC_MAPS), np.array(DEC_MAPS)
  return np.array([[np.mean(dec[d][enc[e][labels]] == labels)
                    for d in range(M)] for e in range(M)])


def test_conditional_coherence_equals_exact_fractions():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data = make_data(M, 300)
  res = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), data,
      batch_size=64)
  want = expected_matrix(data['label'])
  assert 0 < want.min() < 1  # non-trivial
  np.testing.assert_array_equal(res.correct, np.round(want * 300))
  np.testing.assert_allclose(res.matrix, want, rtol=0, atol=1e-12)
  off = ~np.eye(M, dtype=bool)
  per_target = [want[off[:, d], d].mean() for d in range(M)]
  np.testing.assert_allclose(res.per_target, per_target, atol=1e-12)
  assert res.mean == pytest.approx(np.mean(per_target), abs=1e-12)
  metrics = res.metrics()
  assert metrics['coherence/cond/m1->m2'] == pytest.approx(want[1, 2])
  assert metrics['coherence/cond/mean'] == res.mean


def test_subset_coherence_exact_parts_and_size_one():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data = make_data(M, 300)
  labels = data['label']
  res = coherence.subset_coherence(
      KEY, model, params, template_classify, clf_params(M), data,
      batch_size=64)
  assert res.subsets == ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2))
  want = expected_matrix(labels)
  # Single sources: the off-diagonal conditional entries.
  for s, (e,) in enumerate(res.subsets[:3]):
    for d in range(M):
      if d != e:
        assert res.accuracy[s, d] == want[e, d]
      else:
        assert np.isnan(res.accuracy[s, d])
  cond = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), data)
  assert res.per_size[1] == pytest.approx(cond.mean, abs=1e-12)
  # {m0, m2} -> m1: both encoders right, decoder m1 right: exactly 1.
  assert res.accuracy[4, 1] == 1.0
  # {m0, m1} -> m2: m2 fails on label 0 always, on 3 / 7 when m1 is drawn.
  bad = np.isin(labels, (3, 7))
  p = (np.sum(labels != 0) - 0.5 * bad.sum()) / 300
  sd = np.sqrt(0.25 * bad.sum()) / 300
  assert abs(res.accuracy[3, 2] - p) < 5 * sd
  assert res.per_size[2] == pytest.approx(np.mean(res.per_subset[3:]))


def _masked_data(n, seed=1):
  """`make_data` with a random observed-modality mask (each example keeps
  at least one modality) and the absent images zeroed, as the pipeline's
  missing-modality batches have them."""
  data = make_data(M, n)
  mask = np.random.default_rng(seed).random((n, M)) < 0.6
  mask[~mask.any(axis=1), 0] = True
  for i in range(M):
    data[f'm{i}'] = np.where(mask[:, i, None, None, None], data[f'm{i}'], 0)
  data['mask'] = mask
  return data, mask


def test_conditional_coherence_conditions_only_on_observed_sources():
  """With data['mask'], source e is scored on the examples that have it:
  exactly the fraction of those examples' labels its mapping gets right;
  the zeroed absent images change nothing."""
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data, mask = _masked_data(300)
  res = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), data,
      batch_size=64)
  labels = data['label']
  want = np.stack([expected_matrix(labels[mask[:, e]])[e] for e in range(M)])
  assert 0 < mask.mean() < 1 and not np.array_equal(
      want, expected_matrix(labels))  # the mask matters
  np.testing.assert_array_equal(res.source_total, mask.sum(axis=0))
  np.testing.assert_allclose(res.matrix, want, rtol=0, atol=1e-12)
  off = ~np.eye(M, dtype=bool)
  assert res.mean == pytest.approx(
      np.mean([want[off[:, d], d].mean() for d in range(M)]), abs=1e-12)
  # All-observed mask: the unmasked result.
  full = make_data(M, 300)
  plain = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), full)
  full['mask'] = np.ones((300, M), bool)
  same = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), full)
  np.testing.assert_array_equal(same.correct, plain.correct)
  assert same.mean == plain.mean
  # Errors: a wrong mask, a modality never observed.
  with pytest.raises(ValueError, match='mask must have shape'):
    coherence.conditional_coherence(
        KEY, model, params, template_classify, clf_params(M),
        dict(full, mask=np.ones((300, M - 1), bool)))
  empty = np.ones((300, M), bool)
  empty[5] = False
  with pytest.raises(ValueError, match='observe no modality'):
    coherence.conditional_coherence(
        KEY, model, params, template_classify, clf_params(M),
        dict(full, mask=empty))
  never = np.ones((300, M), bool)
  never[:, 1] = False
  with pytest.raises(ValueError, match="'m1' is observed in no example"):
    coherence.conditional_coherence(
        KEY, model, params, template_classify, clf_params(M),
        dict(full, mask=never))


def test_subset_coherence_scores_subsets_on_examples_that_have_them():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data, mask = _masked_data(300)
  labels = data['label']
  res = coherence.subset_coherence(
      KEY, model, params, template_classify, clf_params(M), data,
      batch_size=64)
  for s, sub in enumerate(res.subsets):
    assert res.subset_total[s] == mask[:, list(sub)].all(axis=1).sum()
  for s, (e,) in enumerate(res.subsets[:3]):
    want = expected_matrix(labels[mask[:, e]])
    for d in range(M):
      if d != e:
        assert res.accuracy[s, d] == pytest.approx(want[e, d], abs=1e-12)
  # {m0, m2} -> m1 is exact (both encoders and m1's decoder right): 1 on
  # the examples with m0 and m2; their count is below 300.
  assert res.accuracy[4, 1] == 1.0 and res.subset_total[4] < 300


@pytest.mark.parametrize('dec_maps,want', [
    ((IDENTITY, IDENTITY, IDENTITY), 1.0),
    ((IDENTITY, IDENTITY, tuple((c + 1) % C for c in range(C))), 0.0),
])
def test_unconditional_coherence_exact(dec_maps, want):
  model, params = make_template_model(ENC_MAPS, dec_maps)
  res = coherence.unconditional_coherence(
      KEY, model, params, template_classify, clf_params(M), num_samples=250,
      batch_size=64)
  assert res.value == want and res.total == 250
  assert res.class_counts.shape == (M, C)
  np.testing.assert_array_equal(res.class_counts.sum(1), 250)


def test_unconditional_coherence_one_bad_class():
  # m2 draws 0 as 9: incoherent exactly when argmax z = 0 (probability 1/10).
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  n = 2000
  res = coherence.unconditional_coherence(
      KEY, model, params, template_classify, clf_params(M), num_samples=n,
      batch_size=32)
  assert res.coherent == n - res.class_counts[0, 0]
  assert abs(res.value - 0.9) < 5 * np.sqrt(0.09 / n)
  assert res.class_counts[2, 0] == 0


def test_noise_model_gives_chance_level():
  # Decoders read the class from w ~ p(w): independent of the input.
  model, params = make_template_model(ENC_MAPS, DEC_MAPS, source='w')
  n = 1500
  data = make_data(M, n)
  res = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), data,
      batch_size=32)
  tol = 5 * np.sqrt(0.09 / n)
  assert np.all(np.abs(res.matrix - 0.1) < tol), res.matrix
  unc = coherence.unconditional_coherence(
      KEY, model, params, template_classify, clf_params(M), num_samples=n,
      batch_size=32)
  # All 3 agree with probability 1/100.
  assert abs(unc.value - 0.01) < 5 * np.sqrt(0.01 * 0.99 / n)


def test_results_do_not_depend_on_batch_size():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS, source='w')
  data = make_data(M, 100, seed=3)
  args = (KEY, model, params, template_classify, clf_params(M))
  c7 = coherence.conditional_coherence(*args, data, batch_size=7)
  c32 = coherence.conditional_coherence(*args, data, batch_size=32)
  np.testing.assert_array_equal(c7.correct, c32.correct)
  assert 0 < c7.correct.min() and c7.correct.max() < 100  # genuinely random
  s7 = coherence.subset_coherence(*args, data, batch_size=7)
  s32 = coherence.subset_coherence(*args, data, batch_size=32)
  np.testing.assert_array_equal(s7.correct, s32.correct)
  u7 = coherence.unconditional_coherence(*args, num_samples=100, batch_size=7)
  u32 = coherence.unconditional_coherence(*args, num_samples=100,
                                          batch_size=32)
  np.testing.assert_array_equal(u7.class_counts, u32.class_counts)
  assert u7.coherent == u32.coherent
  # Sharded over 8 (fake CPU) devices, params and key replicated (the
  # batches are split by `api.map_batches`): the counts stay the same.
  mesh = parallel.make_mesh(jax.devices()[:8])
  repl = parallel.replicated(mesh)
  margs = (jax.device_put(KEY, repl), model, jax.device_put(params, repl),
           template_classify, jax.device_put(clf_params(M), repl))
  c8 = coherence.conditional_coherence(*margs, data, batch_size=7, mesh=mesh)
  np.testing.assert_array_equal(c8.correct, c32.correct)
  s8 = coherence.subset_coherence(*margs, data, batch_size=7, mesh=mesh)
  np.testing.assert_array_equal(s8.correct, s32.correct)
  u8 = coherence.unconditional_coherence(*margs, num_samples=100,
                                         batch_size=7, mesh=mesh)
  np.testing.assert_array_equal(u8.class_counts, u32.class_counts)
  # A different key gives different draws.
  other = coherence.conditional_coherence(
      jax.random.key(7), *args[1:], data, batch_size=32)
  assert not np.array_equal(other.correct, c32.correct)


def test_alpha_zero_makes_w_irrelevant_for_noise_decoders():
  # With alpha = 0, w = 0 off the diagonal, and argmax(0) = class 0.
  model, params = make_template_model(ENC_MAPS, DEC_MAPS, source='w')
  data = make_data(M, 50)
  res = coherence.conditional_coherence(
      KEY, model, params, template_classify, clf_params(M), data, alpha=0.0,
      batch_size=32)
  # Target d always shows class DEC_MAPS[d][0].
  for e in range(M):
    for d in range(M):
      if e != d:
        assert res.matrix[e, d] == np.mean(data['label'] == DEC_MAPS[d][0])


def test_evaluator_metric_names():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  ev = coherence.CoherenceEvaluator(
      model, template_classify, clf_params(M), make_data(M, 64), key=KEY,
      batch_size=64, num_unconditional=64, all_subsets=True)
  out = ev.run(params)
  assert {'coherence/cond/m0->m1', 'coherence/cond/m2', 'coherence/cond/mean',
          'coherence/uncond', 'coherence/subsets/m0+m1',
          'coherence/subsets/size2'} <= set(out)
  assert out['coherence/uncond'] == pytest.approx(
      coherence.unconditional_coherence(
          jax.random.fold_in(KEY, 1), model, params, template_classify,
          clf_params(M), num_samples=64, batch_size=64).value)


def test_missing_modality_in_data_raises():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data = make_data(M, 10)
  del data['m1']
  with pytest.raises(ValueError, match='m1'):
    coherence.conditional_coherence(
        KEY, model, params, template_classify, clf_params(M), data)


def test_runs_with_clfimg_on_uint8_images():
  # Integration: [28, 28, 3] uint8 inputs, image decoders, the real ClfImg.
  rng = np.random.default_rng(0)
  event = (28, 28, 3)
  templates = _templates(0, event)
  mods = tuple(
      mmvaeplus.Modality(
          name=f'm{i}', encoder=TemplateEncoder(0, IDENTITY, event),
          decoder=TemplateDecoder(0, IDENTITY, event=event),
          log_likelihood=None, event_shape=(28, 28, 3))
      for i in range(2))
  model = mmvaeplus.MMVAEPlus(mods, dim_w=DIM, dim_z=DIM, family='laplace')
  labels = rng.integers(0, C, 5)
  data = {f'm{i}': np.round(templates[labels] * 255).astype(np.uint8)
          for i in range(2)}
  params = model.init(jax.random.key(0), dict(data))
  data['label'] = labels
  clfs = {n: classifiers.init(jax.random.key(i))
          for i, n in enumerate(model.names)}
  res = coherence.conditional_coherence(
      KEY, model, params, classifiers.classify, clfs, data, batch_size=4)
  assert res.matrix.shape == (2, 2) and res.total == 5
  assert np.all((res.matrix >= 0) & (res.matrix <= 1))
  # Every decoded image is a template: the random classifier's prediction for
  # it, compared with the label, is the expected coherence.
  pred = {n: np.asarray(jnp.argmax(
      classifiers.log_probs(clfs[n], templates[labels]), -1))
          for n in model.names}
  for d, n in enumerate(model.names):
    assert res.matrix[1 - d, d] == np.mean(pred[n] == labels)
  unc = coherence.unconditional_coherence(
      KEY, model, params, classifiers.classify, clfs, num_samples=4)
  assert unc.class_counts.sum() == 8


# ------------------------------------------------------- latent classification


def test_latent_classification_z_linear_w_noise():
  # z = 3 one_hot(label) (+1e-20 noise): linearly separable; w ~ N(0, 0.69)
  # independent of the label: chance.
  maps = (IDENTITY, IDENTITY)
  model, params = make_template_model(maps, maps)
  train, test = make_data(2, 600, seed=1), make_data(2, 1000, seed=2)
  acc = latent_classification.latent_classification(
      KEY, model, params, train, test, batch_size=256)
  for name in model.names:
    assert acc[f'{name}/z'] == 1.0
    assert acc[f'{name}/u'] > 0.97
    assert abs(acc[f'{name}/w'] - 0.1) < 0.06
  assert acc['all'] == 1.0 and acc['mean/z'] == 1.0


def test_latents_do_not_depend_on_batch_size():
  model, params = make_template_model(ENC_MAPS, DEC_MAPS)
  data = make_data(M, 20)
  a = latent_classification.latents(KEY, model, params, data, batch_size=6)
  b = latent_classification.latents(KEY, model, params, data, batch_size=20)
  for n in model.names:
    np.testing.assert_array_equal(a[n]['u'], b[n]['u'])
    np.testing.assert_array_equal(a[n]['u'][:, :DIM], a[n]['w'])
    assert a[n]['u'].shape == (20, 2 * DIM)


def test_majority_vote_ties_go_to_smallest_class():
  preds = np.array([[3, 1, 2], [5, 1, 7], [5, 2, 9], [3, 4, 8]])
  np.testing.assert_array_equal(
      latent_classification.majority_vote(preds), [3, 1, 2])
