"""Missing modalities: the per-example mask `[B, M]` of `model.objective`.

The reference is exact and model-free: with modalities P_b observed,
example b's masked bound must equal the bound of the SAME model built on P_b's
modalities alone (the same networks and parameters, the noise rows of those
modalities), in value and in gradient, for every model and MMVAE+ estimator;
the parameters of the absent modalities get exactly zero gradient from it.
An all-observed mask gives the unmasked objective; the absent modalities'
data reach neither value nor gradient.

Tolerances: the masked and the sub-model programs differ only in the order
of float32 sums of at most ~64 terms (toy sizes: 3-dim events, 2-dim
latents, M <= 3) and in where a constant log |P| is rounded, so both values
and whole gradients agree to n u ||.|| with n <= 64, u = 2^-24: 4e-6
relative; TOL = 2e-5 leaves a factor 5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
import toy_models
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import dmvae
from mmvaeplus_jax.models import mmjsd
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import mopoe
from mmvaeplus_jax.models import mvae

M, B, K = 3, 6, 3
TOL = 2e-5
BETA = 0.7
# Observed sets of the B examples: all, pairs, singletons.
MASK = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1],
                 [0, 1, 1]], bool)

KINDS = {
    'mmvaeplus': (mmvaeplus.MMVAEPlus, 2, 'normal'),
    'mmvae': (mmvaeplus.MMVAEPlus, 0, 'laplace'),
    'mvae': (mvae.MVAE, 0, 'normal'),
    'mopoe': (mopoe.MoPoE, 0, 'normal'),
    'mmjsd': (mmjsd.MMJSD, 2, 'normal'),
    'dmvae': (dmvae.DMVAE, 2, 'normal'),
}
CASES = [('mmvaeplus', 'iwae'), ('mmvaeplus', 'dreg'),
         ('mmvaeplus', 'dreg_mmvae'), ('mmvae', 'dreg'), ('mvae', None),
         ('mopoe', None), ('mmjsd', None), ('dmvae', None)]
# The default suite checks one mixture and one product model per example
# (each case compiles a sub-model per observed set); the rest are slow.
FAST = (('mmvaeplus', 'dreg'), ('mopoe', None))
SOME_SLOW = [c if c in FAST else pytest.param(*c, marks=pytest.mark.slow)
             for c in CASES]


def _model(kind, modalities=None):
  cls, dim_w, family = KINDS[kind]
  toy = toy_models.make_toy(M, dim_w=dim_w, dim_z=2, family=family)
  mods = toy.modalities if modalities is None else modalities
  return cls(mods, dim_w=dim_w, dim_z=2, family=family)


def _setup(kind):
  model = _model(kind)
  batch = toy_models.toy_batch(model, B, seed=3)
  params = model.init(jax.random.key(0), batch)
  if kind == 'mmvaeplus':  # learned auxiliary priors away from their init
    params['aux_prior'] = {n: jnp.asarray([0.3, -0.4]) * (i + 1)
                           for i, n in enumerate(model.names)}
  noise = model.objective_noise(jax.random.key(1), K, B)
  return model, batch, params, noise


def _sub_noise(kind, noise, keep, b):
  """The noise rows of the observed modalities `keep`, example b."""
  ex = lambda x, axis: jax.lax.slice_in_dim(x, b, b + 1, axis=axis)
  rows = [0] + [1 + i for i in keep]
  if kind in ('mmvaeplus', 'mmvae'):
    return types.Noise(w=ex(noise.w[keep], 2), z=ex(noise.z[keep], 2),
                       aux=ex(noise.aux[keep][:, keep], 3))
  if kind == 'mvae':
    return {'subsets': jnp.zeros((0, len(keep)), bool),
            'z': ex(noise['z'][np.array(rows)], 2)}
  if kind == 'mopoe':
    return {'choice': ex(noise['choice'], 1), 'z': ex(noise['z'], 1)}
  if kind == 'mmjsd':
    return {'choice': ex(noise['choice'], 1), 'z': ex(noise['z'], 1),
            'w': ex(noise['w'][keep], 2)}
  return {'z': ex(noise['z'][np.array(rows)], 2),
          'w': ex(noise['w'][np.array(rows)][:, keep], 3)}


def _sub_params(params, names):
  return {group: {n: v for n, v in tree.items() if n in names}
          for group, tree in params.items()}


@pytest.mark.parametrize('kind,estimator', SOME_SLOW)
def test_masked_example_is_the_bound_of_its_observed_modalities(kind,
                                                                estimator):
  model, batch, params, noise = _setup(kind)
  mask = jnp.asarray(MASK)

  def masked(p):
    return model.objective_on_noise(p, batch, noise, beta=BETA,
                                    estimator=estimator, mask=mask)

  values = jax.jit(masked)(params)
  jacobian = jax.jit(jax.jacrev(masked))(params)  # leaves [B, ...]
  for b in range(B):
    keep = np.flatnonzero(MASK[b])
    names = [model.names[i] for i in keep]
    sub = _model(kind, tuple(model.modalities[i] for i in keep))
    sub_batch = {n: batch[n][b:b + 1] for n in names}
    sub_noise = _sub_noise(kind, noise, keep, b)

    def reference(p):
      return sub.objective_on_noise(p, sub_batch, sub_noise, beta=BETA,
                                    estimator=estimator)[0]

    value = values[b]
    grads = jax.tree.map(lambda g: g[b], jacobian)  # pylint: disable=cell-var-from-loop
    want, want_grads = jax.jit(jax.value_and_grad(reference))(
        _sub_params(params, names))
    what = f'{kind} {estimator} example {b} observing {names}'
    numerics.assert_rel_l2(value, want, TOL, what + ' value')
    numerics.assert_rel_l2(_sub_params(grads, names), want_grads, TOL,
                           what + ' gradient')
    absent = [n for n in model.names if n not in names]
    for group, tree in grads.items():
      for n in absent:
        if n in tree:  # absent modality: exactly no gradient
          assert all(not np.any(np.asarray(g)) for g in
                     jax.tree.leaves(tree[n])), (what, group, n)


# Every model in the default suite; MMVAE+'s other two estimators slow.
ALL_MODELS = [c if c[0] != 'mmvaeplus' or c[1] == 'dreg' else
              pytest.param(*c, marks=pytest.mark.slow) for c in CASES]


@pytest.mark.parametrize('kind,estimator', ALL_MODELS)
def test_all_observed_mask_is_the_unmasked_objective(kind, estimator):
  model, batch, params, noise = _setup(kind)
  full = jnp.ones((B, M), bool)

  def loss(p, mask):
    return jnp.mean(model.objective_on_noise(
        p, batch, noise, beta=BETA, estimator=estimator, mask=mask))

  value, grads = jax.jit(jax.value_and_grad(loss))(params, full)
  want, want_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
      params, None)
  numerics.assert_rel_l2(value, want, TOL, f'{kind} value')
  numerics.assert_rel_l2(grads, want_grads, TOL, f'{kind} gradient')


@pytest.mark.parametrize('kind,estimator', SOME_SLOW)
def test_absent_data_reach_neither_value_nor_gradient(kind, estimator):
  model, batch, params, noise = _setup(kind)
  mask = jnp.asarray(MASK)

  def objective(x):
    return model.objective_on_noise(params, x, noise, beta=BETA,
                                    estimator=estimator, mask=mask)

  # Other data in every absent slot: the same per-example bounds.
  rng = np.random.default_rng(5)
  other = {n: jnp.where(mask[:, i, None], batch[n],
                        1e3 * rng.normal(size=batch[n].shape))
           for i, n in enumerate(model.names)}
  objective = jax.jit(objective)
  np.testing.assert_array_equal(objective(batch), objective(other))
  grads = jax.jit(jax.grad(lambda x: jnp.sum(objective(x))))(batch)
  for i, n in enumerate(model.names):
    g = np.asarray(grads[n])
    assert not np.any(g[~MASK[:, i]]), (kind, n)
    assert np.any(g[MASK[:, i]]), (kind, n)  # observed data do matter


def test_model_objective_passes_the_mask_and_checks_it():
  model, batch, params, _ = _setup('mmvaeplus')
  key = jax.random.key(4)
  mask = jnp.asarray(MASK)
  got = model.objective(key, params, batch, num_samples=K, mask=mask)
  noise = model.objective_noise(key, K, B)
  np.testing.assert_array_equal(
      got, model.objective_on_noise(params, batch, noise, mask=mask))
  with pytest.raises(ValueError, match=r'mask must have shape \[B, M\]'):
    model.objective(key, params, batch, mask=mask.T)
  with pytest.raises(ValueError, match=r'mask rows \[1\] observe no'):
    model.objective(key, params, batch, mask=mask.at[1].set(False))
  gaussian = _model('mopoe')
  with pytest.raises(ValueError, match='observe no modality'):
    gaussian.objective(key, gaussian.init(jax.random.key(0), batch), batch,
                       mask=mask.at[4].set(False))


# ------------------------------------------------------ data and training


def test_missing_mask_is_seeded_and_keeps_a_modality():
  from mmvaeplus_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  a = pipeline.missing_mask(20_000, 5, rate=0.5, seed=3)
  np.testing.assert_array_equal(a, pipeline.missing_mask(20_000, 5, rate=0.5,
                                                         seed=3))
  assert not np.array_equal(a, pipeline.missing_mask(20_000, 5, rate=0.5,
                                                     seed=4))
  assert a.any(axis=1).all()
  # Expected missing fraction rate - rate^M / M = 0.49375 (an example
  # that lost all M gets one back); binomial standard error over 1e5
  # entries 0.0016: 5 sigma.
  assert abs((1 - a.mean()) - (0.5 - 0.5 ** 5 / 5)) < 0.008
  # Independent across modalities: each column's rate alike.
  assert np.ptp(1 - a.mean(axis=0)) < 0.03
  assert pipeline.missing_mask(10, 3, rate=0.0, seed=0).all()
  with pytest.raises(ValueError, match='missing_rate must be in'):
    pipeline.missing_mask(10, 3, rate=1.0, seed=0)


def test_missing_source_zeroes_what_is_missing():
  from mmvaeplus_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = {'a': rng.integers(1, 255, (6, 2, 2, 3), dtype=np.uint8),
            'b': rng.normal(size=(6, 4)).astype(np.float32) + 10,
            'label': np.arange(6)}
  source = pipeline.MissingSource(pipeline.ArraySource(arrays), ('a', 'b'),
                                  MASK[:, :2] | ~MASK[:, :2].any(1)[:, None])
  out = source.read(np.array([4, 1, 2]))
  np.testing.assert_array_equal(out['mask'], source.mask[[4, 1, 2]])
  for m, name in enumerate(('a', 'b')):
    seen = out['mask'][:, m]
    assert not np.any(out[name][~seen])
    np.testing.assert_array_equal(out[name][seen],
                                  arrays[name][[4, 1, 2]][seen])
  np.testing.assert_array_equal(out['label'], [4, 1, 2])
  with pytest.raises(ValueError, match='mask must be'):
    pipeline.MissingSource(pipeline.ArraySource(arrays), ('a', 'b'),
                           MASK[:5, :2])


@pytest.mark.slow  # ~30 s each: the trainer compiles the smoke model
@pytest.mark.parametrize('model', ['mmvaeplus', 'mopoe'])
def test_mini_run_with_half_the_modalities_missing(data_dir, tmp_path, model):
  """`data.missing_rate=0.5` on `mini`: MMVAE+ and MoPoE train on masked
  batches (finite, no skipped step) and evaluate on the complete test set."""
  from mmvaeplus_jax.configs import polymnist as polymnist_configs  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.experiments import train  # pylint: disable=g-import-not-at-top
  c = polymnist_configs.get_config(f'smoke,model={model}')
  c.model.num_modalities = 2
  c.data.update(data_dir=data_dir, missing_rate=0.5, missing_seed=1)
  c.train.num_steps = 3
  c.evals.update(evaluators='bound,coherence')
  metrics = train.train(c, str(tmp_path / model))
  assert metrics['step'] == 3
  assert np.isfinite(metrics['train/loss'])
  assert metrics['train/nonfinite_steps'] == 0
  assert np.isfinite(metrics['eval/bound'])
  evaluated = runner.evaluate(c, str(tmp_path / model))
  assert np.isfinite(evaluated['eval/bound'])


def test_train_step_reads_the_batch_mask():
  """The trainer's step uses the batch's `mask`: its update is the one of
  the masked objective's gradient (an SGD step of lr 1 shows it), not the
  unmasked one's."""
  import optax  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax import train_state  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  model, batch, params, _ = _setup('mmvaeplus')
  tx = optax.sgd(1.0)
  state = train_state.init_state(jax.random.key(0), batch, model=model, tx=tx)
  state = state.replace(params=params)
  key = jax.random.key(7)
  masked = dict(batch, mask=jnp.asarray(MASK))
  step = jax.jit(lambda s, b: step_lib.train_step(
      s, b, key, model=model, tx=tx, num_samples=K, beta=BETA,
      estimator='dreg'))
  new, _ = step(state, masked)

  def loss(p, mask):
    return -jnp.mean(model.objective(
        jax.random.fold_in(key, 0), p, batch, num_samples=K, beta=BETA,
        estimator='dreg', mask=mask))

  for mask, same in ((jnp.asarray(MASK), True), (None, False)):
    grads = jax.grad(loss)(params, mask)
    want = jax.tree.map(lambda p, g: p - g, params, grads)
    err = numerics.rel_l2(jax.tree.map(jnp.subtract, new.params, params),
                          jax.tree.map(jnp.subtract, want, params))
    assert (err <= TOL) == same, (mask is None, err)
