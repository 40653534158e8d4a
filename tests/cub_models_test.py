"""Tests of the CUB networks, likelihoods and BatchNorm state
(`models/cub.py`, `networks.NetworkVAE`'s running averages, the train
step, checkpoints)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from mmvaeplus_jax import models
from mmvaeplus_jax import train_state
from mmvaeplus_jax.configs import cub as cub_configs
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.infra import checkpointing
from mmvaeplus_jax.models import cub
from mmvaeplus_jax.models import networks
from mmvaeplus_jax.training import step as step_lib

V = cub.OFFICIAL_VOCABULARY_SIZE


def _count(module, x, collection='params'):
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return networks.count_params(variables[collection])


def test_official_parameter_counts_at_vocabulary_1590():
  image = jnp.zeros((1,) + cub.IMAGE_SHAPE)
  ids = jnp.zeros((1, 32), jnp.int32)
  u = jnp.zeros((1, 64))
  assert _count(cub.ImageEncoder(16, 48), image) == 8_552_448
  assert _count(cub.ImageDecoder(), u) == 4_276_931
  assert _count(cub.TextEncoder(V, 16, 48), ids) == 2_240_064
  assert _count(cub.TextDecoder(V, 16), u) == 3_096_023


# Slow: the full text networks, eagerly (~30 s on the 2-core CPU).
@pytest.mark.slow
def test_text_shapes_follow_pytorch_padding():
  dec = cub.TextDecoder(V, 16)
  variables = dec.init(jax.random.key(0), jnp.zeros((2, 64)))
  _, inter = dec.apply(variables, jnp.zeros((2, 64)),
                       capture_intermediates=True)
  shapes = {k: v['__call__'][0].shape
            for k, v in inter['intermediates'].items() if k != '__call__'}
  assert shapes['z_0'] == (2, 4, 4, 512)
  assert shapes['z_1'] == (2, 4, 8, 256)
  assert shapes['z_3'] == (2, 4, 16, 128)
  assert shapes['w_2'] == (2, 4, 16, 128)
  assert shapes['h_3'] == (2, 32, 128, 1)
  logits = dec.apply(variables, jnp.zeros((2, 64)))
  assert logits.shape == (2, 32, V)
  enc = cub.TextEncoder(V, 16, 48)
  ids = jnp.zeros((3, 32), jnp.int32)
  outs = enc.apply(enc.init(jax.random.key(0), ids), ids)
  assert [o.shape for o in outs] == [(3, 16), (3, 16), (3, 48), (3, 48)]
  img = cub.ImageEncoder(16, 48)
  x = jnp.zeros((2,) + cub.IMAGE_SHAPE)
  outs = img.apply(img.init(jax.random.key(0), x), x)
  assert [o.shape for o in outs] == [(2, 16), (2, 16), (2, 48), (2, 48)]
  d = cub.ImageDecoder()
  assert d.apply(d.init(jax.random.key(0), u := jnp.zeros((2, 64))),
                 u).shape == (2, 64, 64, 3)


def test_conv_transpose_matches_pytorch_definition():
  # PyTorch ConvTranspose2d: out[o, i*s - p + a] += x[c, i] w[c, o, a].
  rng = np.random.default_rng(0)
  layer = cub._conv_transpose(3, (1, 4), (1, 2), (0, 1))
  x = rng.normal(size=(1, 2, 5, 2)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x)
  k = np.asarray(variables['params']['kernel'])
  # With transpose_kernel, Flax's kernel is [kh, kw, out, in]: PyTorch's
  # weight [in, out, kh, kw] transposed, not flipped.
  assert k.shape == (1, 4, 3, 2)
  b = np.asarray(variables['params']['bias'])
  out = np.asarray(layer.apply(variables, x))
  assert out.shape == (1, 2, 10, 3)  # (5 - 1) 2 - 2 + 4
  ref = np.zeros((1, 2, 12, 3))
  for h in range(2):
    for i in range(5):
      for a in range(4):
        ref[0, h, i * 2 + a] += x[0, h, i] @ k[0, a].T
  ref = ref[:, :, 1:11] + b
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_likelihoods_against_scipy():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
  loc = rng.normal(size=(2, 3, 64, 64, 3)).astype(np.float32) * 0.02 + x
  got = cub.image_log_likelihood(x, loc)
  ref = stats.laplace.logpdf(x, loc, 0.01).sum((-3, -2, -1))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  ids = rng.integers(0, 11, size=(3, 32))
  logits = rng.normal(size=(2, 3, 32, 11)).astype(np.float32)
  got = cub.text_log_likelihood(jnp.asarray(ids), logits)
  one_hot = np.eye(11)[ids]
  ref = (one_hot * special.log_softmax(logits, -1)).sum((-2, -1))
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_batch_norm_pytorch_semantics():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3, 4)).astype(np.float32) * 2 + 1
  bn = cub.BatchNorm()
  variables = bn.init(jax.random.key(0), x, False)
  out, upd = bn.apply(variables, x, True, mutable=['batch_stats'])
  flat = x.reshape(-1, 4)
  mean, var = flat.mean(0), flat.var(0)
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5),
                             rtol=1e-4, atol=1e-5)
  n = flat.shape[0]
  np.testing.assert_allclose(upd['batch_stats']['mean'], 0.1 * mean,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  # Eval mode: the running averages, nothing updated.
  ev = bn.apply({**variables, **upd}, x, False)
  np.testing.assert_allclose(
      ev, (x - upd['batch_stats']['mean'])
      / np.sqrt(upd['batch_stats']['var'] + 1e-5), rtol=1e-4, atol=1e-5)


def _cub_batch(b=4, vocab=509, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(b,) + cub.IMAGE_SHAPE).astype(
      np.float32), 'caption': rng.integers(0, vocab, (b, 32)).astype(np.int32)}


# Slow: each compiles the train step, the eval bound and the train-mode
# objective of a CUB model (60-100 s on the 2-core CPU).
@pytest.mark.slow
@pytest.mark.parametrize('kind', cub.KINDS)
def test_cub_step_updates_batch_stats_eval_does_not(kind):
  c = cub_configs.get_config(f'smoke,model={kind}')
  model = models.get_model(c.model)
  assert model.has_batch_stats
  tx = train_state.make_optimizer(c.optim)
  batch = _cub_batch()
  state = train_state.init_state(jax.random.key(0), batch, model=model, tx=tx)
  new, metrics = jax.jit(step_lib.make_train_step(c, model, tx))(
      state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics['train/loss']))
  for group in ('encoders', 'decoders'):
    before = jax.tree.leaves(state.params[group]['caption']['batch_stats'])
    after = jax.tree.leaves(new.params[group]['caption']['batch_stats'])
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))
  # Trainable params moved; the optimiser state covers them only.
  assert (jax.tree.structure(new.opt_state)
          == jax.tree.structure(tx.init(model.trainable_params(new.params))))
  # Eval mode: the objective reads the running averages, changes nothing,
  # and differs from train mode (batch statistics).
  options = models.objective_options(c.objective, model)
  ev = jax.jit(lambda p, b, k: step_lib.eval_step(
      p, b, k, model=model, num_samples=1, beta=1.0,
      options=tuple(options.items())))(new.params, batch, jax.random.key(2))
  trained = model.train_mode()
  tr = jax.jit(lambda k, p, b: trained.objective(
      k, p, b, num_samples=1, **options))(jax.random.key(2), new.params, batch)
  assert np.isfinite(float(ev)) and not np.isclose(float(ev), float(tr.sum()))


def test_model_without_batch_norm_has_no_state():
  c = polymnist_configs.get_config('smoke')
  model = models.get_model(c.model)
  assert not model.has_batch_stats
  batch = {n: np.zeros((2, 28, 28, 3), np.float32) for n in model.names}
  params = jax.eval_shape(model.init, jax.random.key(0), batch)
  assert model.trainable_params(params) is params
  assert 'batch_stats' not in str(jax.tree.structure(params))


# Slow: a CUB train step's compile (~70 s on the 2-core CPU).
@pytest.mark.slow
def test_batch_stats_round_trip_through_checkpoint(tmp_path):
  c = cub_configs.get_config('smoke')
  model = models.get_model(c.model)
  tx = train_state.make_optimizer(c.optim)
  batch = _cub_batch()
  state = train_state.init_state(jax.random.key(0), batch, model=model, tx=tx)
  state, _ = jax.jit(step_lib.make_train_step(c, model, tx))(
      state, batch, jax.random.key(1))
  manager = checkpointing.make_manager(str(tmp_path / 'checkpoints'))
  checkpointing.save(manager, 1, state)
  manager.wait_until_finished()
  params, step = train_state.restore_params(c, model, str(tmp_path))
  assert step == 1
  for group in ('encoders', 'decoders'):
    jax.tree.map(np.testing.assert_array_equal,
                 params[group]['caption']['batch_stats'],
                 state.params[group]['caption']['batch_stats'])
