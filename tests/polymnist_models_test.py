"""The official PolyMNIST networks: shapes, parameter count, a finite step."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.models import networks
from mmvaeplus_jax.models import polymnist

# official_reference.md section 3: per encoder 2,946,048, per decoder
# 1,485,251, plus 32 auxiliary-prior logits per modality.
OFFICIAL_TRAINABLE = 22_156_655


def _batch(model, b):
  rng = np.random.default_rng(0)
  return {n: jnp.asarray(rng.uniform(size=(b, 28, 28, 3)), jnp.float32)
          for n in model.names}


def test_full_width_parameter_count():
  model = polymnist.make_mmvaeplus()
  shapes = jax.eval_shape(model.init, jax.random.key(0), _batch(model, 2))
  assert networks.count_params(shapes) == OFFICIAL_TRAINABLE
  assert networks.count_params(shapes['encoders']['m0']) == 2_946_048
  assert networks.count_params(shapes['decoders']['m0']) == 1_485_251
  branch = shapes['encoders']['m0']['w']
  assert networks.count_params(branch) == 1_473_024
  assert branch['loc']['kernel'].shape == (12_544, 32)  # 256 * 7 * 7
  assert shapes['decoders']['m0']['fc']['kernel'].shape == (64, 12_544)
  assert shapes['aux_prior']['m3'].shape == (32,)


@pytest.mark.parametrize('width', [1.0, 0.25])
def test_output_shapes(width):
  enc = polymnist.Encoder(32, 32, width)
  dec = polymnist.Decoder(width)
  x = jnp.zeros((3, 28, 28, 3))
  outs = jax.eval_shape(lambda: enc.init_with_output(jax.random.key(0), x)[0])
  assert [o.shape for o in outs] == [(3, 32)] * 4
  u = jnp.zeros((5, 64))
  out = jax.eval_shape(lambda: dec.init_with_output(jax.random.key(0), u)[0])
  assert out.shape == (5, 28, 28, 3)


def test_pytorch_default_initialisation():
  """Weights and biases ~ U(+-1/sqrt(fan_in)), as PyTorch's defaults."""
  block = polymnist.ResnetBlock(64, 128)
  p = block.init(jax.random.key(0), jnp.zeros((1, 7, 7, 64)))['params']
  k = np.asarray(p['conv_0']['kernel'])  # fan_in = 64 * 9
  bound = 1 / np.sqrt(64 * 9)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
  np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.02)
  b = np.asarray(p['conv_0']['bias'])
  assert np.abs(b).max() <= bound and np.abs(b).std() > 0
  assert 'bias' not in p['shortcut']  # 1x1 shortcut without bias


def test_resnet_block_is_scaled_preactivation_residual():
  block = polymnist.ResnetBlock(4, 4)
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
  p = block.init(jax.random.key(0), x)['params']
  lrelu = lambda t: jnp.where(t > 0, t, 0.2 * t)
  conv = lambda t, q: jax.lax.conv_general_dilated(
      t, q['kernel'], (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + q['bias']
  want = x + 0.1 * conv(lrelu(conv(lrelu(x), p['conv_0'])), p['conv_1'])
  np.testing.assert_allclose(block.apply({'params': p}, x), want, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
def test_full_width_value_and_grad_is_finite():
  model = polymnist.make_mmvaeplus()
  batch = _batch(model, 2)
  params = model.init(jax.random.key(0), batch)
  assert networks.count_params(params) == OFFICIAL_TRAINABLE

  @jax.jit
  def loss_and_grad(params, key):
    f = lambda p: -jnp.mean(estimators.sample_objective(
        key, model, p, batch, num_samples=2, beta=2.5, estimator='dreg'))
    return jax.value_and_grad(f)(params)

  loss, grads = loss_and_grad(params, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  # Every trainable parameter receives a gradient (aux priors included).
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.slow  # ~17 s
def test_modality_subset_reads_the_named_fields():
  """`model.modalities='m1,m3'`: the model's modalities are m1 and m3, its
  parameters are keyed by them, and the bound reads those batch fields (a
  batch with only m1/m3 works; the bound changes when m3's images do)."""
  from mmvaeplus_jax import models
  from mmvaeplus_jax.configs import polymnist as configs
  config = configs.get_config('smoke')
  config.model.update(num_modalities=2, modalities='m1,m3')
  model = models.get_model(config.model)
  assert model.names == ('m1', 'm3')
  rng = np.random.default_rng(0)
  batch = {n: jnp.asarray(rng.uniform(size=(2, 28, 28, 3)), jnp.float32)
           for n in ('m1', 'm3')}
  params = model.init(jax.random.key(0), batch)
  assert set(params['encoders']) == {'m1', 'm3'}
  key = jax.random.key(1)
  lw = lambda b: estimators.sample_objective(key, model, params, b,
                                            num_samples=2)
  other = dict(batch, m3=batch['m3'][::-1])
  assert not np.allclose(lw(batch), lw(other))
  for bad, match in (('m1', 'num_modalities=1'), ('m1,m7', 'distinct names'),
                     ('m2,m2', 'distinct names')):
    config.model.modalities = bad
    with pytest.raises(ValueError, match=match):
      models.get_model(config.model)
