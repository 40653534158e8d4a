"""The official PolyMNIST networks (srl-ethz/mmvaeplus `resnet_polyMNIST.py`).

Layout follows official_reference.md section 3, in NHWC:

* `ResnetBlock(fin, fout)`: pre-activation, scaled residual,
  out = shortcut(x) + 0.1 * conv_1(lrelu(conv_0(lrelu(x)))), fh = min(fin, fout),
  3x3 convs with bias, shortcut a bias-free 1x1 conv when fin != fout,
  leaky ReLU slope 0.2, no normalisation.
* `Encoder`: two independent branches (w and z), each
  Conv3x3(3->64) -> RB(64,64) -> AvgPool(3,2,1) -> RB(64,128) -> AvgPool(3,2,1)
  -> RB(128,256) -> flatten in C,H,W order -> Linear heads (loc, raw scale).
* `Decoder`: Linear(Dw+Dz -> 256*7*7) -> (256,7,7) -> RB(256,128) -> nearest x2
  -> RB(128,64) -> nearest x2 -> RB(64,64) -> lrelu -> Conv3x3(64->3); the
  output is the Laplace mean, unbounded (no sigmoid, no clamp).

`width` multiplies every channel count (64, 128, 256) so reduced models fit a
CPU; width = 1 is the official model (22,156,655 trainable parameters for
5 modalities with Dw = Dz = 32).

Initialisers: PyTorch's defaults, so training dynamics match the official
code: weights U(+-1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)), biases
U(+-1/sqrt(fan_in)). Flax's own defaults (lecun-normal, zero bias) differ.
The C,H,W flatten order of the two 12,544-wide layers keeps PyTorch weights
portable (conv kernels OIHW -> HWIO).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmvaeplus_jax import distributions
from mmvaeplus_jax.models import mmvaeplus

EVENT_SHAPE = (28, 28, 3)
LIKELIHOOD_SCALE = 0.75  # fixed Laplace scale of p(x_d | u), official

# PyTorch default weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform'
)


def torch_bias_init(fan_in: int):
  """PyTorch default bias init U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _conv(features, kernel, fan_in_channels, use_bias=True, name=None):
  fan_in = fan_in_channels * kernel * kernel
  return nn.Conv(
      features,
      (kernel, kernel),
      padding=((kernel // 2, kernel // 2),) * 2,
      use_bias=use_bias,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )


def _dense(features, fan_in, name=None):
  return nn.Dense(
      features,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )


def lrelu(x):
  return nn.leaky_relu(x, negative_slope=0.2)


class ResnetBlock(nn.Module):
  """Pre-activation residual block with a 0.1-scaled residual branch."""

  fin: int
  fout: int

  @nn.compact
  def __call__(self, x):  # [N, H, W, fin] -> [N, H, W, fout]
    fh = min(self.fin, self.fout)
    dx = _conv(fh, 3, self.fin, name='conv_0')(lrelu(x))
    dx = _conv(self.fout, 3, fh, name='conv_1')(lrelu(dx))
    if self.fin != self.fout:
      x = _conv(self.fout, 1, self.fin, use_bias=False, name='shortcut')(x)
    return x + 0.1 * dx


def _avg_pool(x):  # AvgPool(3, stride 2, pad 1), count_include_pad=True
  return nn.avg_pool(
      x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
      count_include_pad=True,
  )


def _chw_flatten(x):  # [N, H, W, C] -> [N, C*H*W] in PyTorch's order
  return jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))


class EncoderBranch(nn.Module):
  """One branch (w or z): image -> (loc [N, D], raw scale [N, D])."""

  latent_dim: int
  width: float = 1.0

  @nn.compact
  def __call__(self, x):  # [N, 28, 28, 3]
    c1, c2, c3 = (max(1, round(c * self.width)) for c in (64, 128, 256))
    h = _conv(c1, 3, x.shape[-1], name='conv_in')(x)
    h = ResnetBlock(c1, c1, name='block_0')(h)
    h = _avg_pool(h)
    h = ResnetBlock(c1, c2, name='block_1')(h)
    h = _avg_pool(h)
    h = ResnetBlock(c2, c3, name='block_2')(h)
    h = _chw_flatten(h)  # [N, c3 * 7 * 7]
    loc = _dense(self.latent_dim, h.shape[-1], name='loc')(h)
    raw = _dense(self.latent_dim, h.shape[-1], name='raw_scale')(h)
    return loc, raw


class Encoder(nn.Module):
  """Two unshared branches; returns (loc_w, raw_w, loc_z, raw_z)."""

  dim_w: int = 32
  dim_z: int = 32
  width: float = 1.0

  @nn.compact
  def __call__(self, x):  # [N, 28, 28, 3]
    loc_w, raw_w = EncoderBranch(self.dim_w, self.width, name='w')(x)
    loc_z, raw_z = EncoderBranch(self.dim_z, self.width, name='z')(x)
    return loc_w, raw_w, loc_z, raw_z


class Decoder(nn.Module):
  """u = [w, z] `[N, Dw + Dz]` -> Laplace mean `[N, 28, 28, 3]`."""

  width: float = 1.0

  @nn.compact
  def __call__(self, u):
    c1, c2, c3 = (max(1, round(c * self.width)) for c in (64, 128, 256))
    h = _dense(c3 * 7 * 7, u.shape[-1], name='fc')(u)
    h = h.reshape((u.shape[0], c3, 7, 7)).transpose((0, 2, 3, 1))  # C,H,W
    h = ResnetBlock(c3, c2, name='block_0')(h)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
    h = ResnetBlock(c2, c1, name='block_1')(h)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    h = ResnetBlock(c1, c1, name='block_2')(h)
    return _conv(EVENT_SHAPE[-1], 3, c1, name='conv_out')(lrelu(h))


def image_log_likelihood(x, loc, scale=LIKELIHOOD_SCALE):
  """Laplace(x; decoder mean, 0.75) summed over pixels: `[..., B]`."""
  return distributions.laplace_image_log_likelihood(x, loc, scale)


def make_mmvaeplus(
    *,
    num_modalities: int = 5,
    dim_w: int = 32,
    dim_z: int = 32,
    width: float = 1.0,
    family: distributions.Family = 'laplace',
    likelihood_scale: float = LIKELIHOOD_SCALE,
) -> mmvaeplus.MMVAEPlus:
  """The official PolyMNIST MMVAE+ (modalities 'm0'..'m{M-1}')."""
  ll = functools.partial(image_log_likelihood, scale=likelihood_scale)
  mods = tuple(
      mmvaeplus.Modality(
          name=f'm{i}',
          encoder=Encoder(dim_w, dim_z, width),
          decoder=Decoder(width),
          log_likelihood=ll,
          event_shape=EVENT_SHAPE,
      )
      for i in range(num_modalities)
  )
  return mmvaeplus.MMVAEPlus(mods, dim_w=dim_w, dim_z=dim_z, family=family)
