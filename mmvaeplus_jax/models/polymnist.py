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

`dtype` is the compute dtype of every Conv / Dense (`'bfloat16'` for mixed
precision): parameters stay float32 (`param_dtype`); each layer casts its
input and kernel to `dtype`, adds its float32 bias to the product in float32
and rounds the result to `dtype`, so convolutions, matmuls and the
activations between layers are bf16 while bias gradients are summed in
float32; both networks return float32, so posteriors, likelihoods and the
bound are always evaluated in float32.

Initialisers: PyTorch's defaults, so training dynamics match the official
code: weights U(+-1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)), biases
U(+-1/sqrt(fan_in)). Flax's own defaults (lecun-normal, zero bias) differ.
The C,H,W flatten order of the two 12,544-wide layers keeps PyTorch weights
portable (conv kernels OIHW -> HWIO).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.input import polymnist_data
from mmvaeplus_jax.models import base
from mmvaeplus_jax.models import conv as conv_lib
from mmvaeplus_jax.models import dmvae
from mmvaeplus_jax.models import mmjsd
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import mopoe
from mmvaeplus_jax.models import mvae

EVENT_SHAPE = (28, 28, 3)
LIKELIHOOD_SCALE = 0.75  # fixed Laplace scale of p(x_d | u), official
COMPUTE_DTYPES = ('float32', 'bfloat16')

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


def _promote_keep_bias(inputs, kernel, bias, *, dtype=None):
  """Flax `promote_dtype` for mixed precision: inputs and kernel in `dtype`,
  the float32 bias left as it is (so `product + bias` is float32)."""
  return (jnp.asarray(inputs, dtype), jnp.asarray(kernel, dtype), bias)


class _MixedConv(nn.Conv):
  """`nn.Conv` in a low-precision `dtype`: product in `dtype`, bias added in
  float32, output rounded back to `dtype`.

  The float32 add makes the bias gradient, a sum over N * H * W cotangents, a
  float32 sum: with the bias in bf16 that sum saturated on XLA:CPU (the
  output-bias gradient came out 28x too small at width 1/16, B = 8).
  """

  def __call__(self, inputs):
    return super().__call__(inputs).astype(self.dtype)


class _MixedDense(nn.Dense):
  """`nn.Dense` in a low-precision `dtype` (see `_MixedConv`)."""

  def __call__(self, inputs):
    return super().__call__(inputs).astype(self.dtype)


def _out_dtype(dtype):
  """The networks' output dtype: float32 for float32 / bfloat16 compute,
  float64 in the float64 mode."""
  return jnp.promote_types(dtype, jnp.float32)


def _layer(float32_cls, mixed_cls, dtype, **kw):
  if jnp.dtype(dtype) in (jnp.float32, jnp.float64):  # params in `dtype` too
    return float32_cls(dtype=dtype, param_dtype=dtype, **kw)
  return mixed_cls(dtype=dtype, param_dtype=jnp.float32,
                   promote_dtype=_promote_keep_bias, **kw)


def _conv(features, kernel, fan_in_channels, use_bias=True, name=None,
          dtype=jnp.float32, wgrad_chunk=0):
  fan_in = fan_in_channels * kernel * kernel
  return _layer(
      nn.Conv, _MixedConv, dtype,
      conv_general_dilated=conv_lib.make_conv_general_dilated(wgrad_chunk),
      features=features,
      kernel_size=(kernel, kernel),
      padding=((kernel // 2, kernel // 2),) * 2,
      use_bias=use_bias,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )


def _dense(features, fan_in, name=None, dtype=jnp.float32):
  return _layer(
      nn.Dense, _MixedDense, dtype,
      features=features,
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
  dtype: Any = jnp.float32  # compute dtype; params are float32
  wgrad_chunk: int | str = 0  # conv.py: 0 XLA's own, -1 auto, n rows, 'onednn'

  @nn.compact
  def __call__(self, x):  # [N, H, W, fin] -> [N, H, W, fout]
    fh = min(self.fin, self.fout)
    conv = functools.partial(_conv, dtype=self.dtype,
                             wgrad_chunk=self.wgrad_chunk)
    dx = conv(fh, 3, self.fin, name='conv_0')(lrelu(x))
    dx = conv(self.fout, 3, fh, name='conv_1')(lrelu(dx))
    if self.fin != self.fout:
      x = conv(self.fout, 1, self.fin, use_bias=False, name='shortcut')(x)
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
  dtype: Any = jnp.float32  # compute dtype; params and outputs are float32
  wgrad_chunk: int | str = 0  # conv.py: 0 XLA's own, -1 auto, n rows, 'onednn'

  @nn.compact
  def __call__(self, x):  # [N, 28, 28, 3]
    c1, c2, c3 = (max(1, round(c * self.width)) for c in (64, 128, 256))
    block = functools.partial(ResnetBlock, dtype=self.dtype,
                              wgrad_chunk=self.wgrad_chunk)
    h = _conv(c1, 3, x.shape[-1], name='conv_in', dtype=self.dtype,
              wgrad_chunk=self.wgrad_chunk)(x)
    h = block(c1, c1, name='block_0')(h)
    h = _avg_pool(h)
    h = block(c1, c2, name='block_1')(h)
    h = _avg_pool(h)
    h = block(c2, c3, name='block_2')(h)
    h = _chw_flatten(h)  # [N, c3 * 7 * 7]
    loc = _dense(self.latent_dim, h.shape[-1], name='loc', dtype=self.dtype)(h)
    raw = _dense(self.latent_dim, h.shape[-1], name='raw_scale',
                 dtype=self.dtype)(h)
    out = _out_dtype(self.dtype)
    return loc.astype(out), raw.astype(out)


class Encoder(nn.Module):
  """Two unshared branches; returns (loc_w, raw_w, loc_z, raw_z).

  With `dim_w = 0` the w branch is absent and the w outputs are `[N, 0]`.
  """

  dim_w: int = 32
  dim_z: int = 32
  width: float = 1.0
  dtype: Any = jnp.float32  # compute dtype; params and outputs are float32
  wgrad_chunk: int | str = 0  # conv.py: 0 XLA's own, -1 auto, n rows, 'onednn'

  @nn.compact
  def __call__(self, x):  # [N, 28, 28, 3]
    if self.dim_w > 0:
      loc_w, raw_w = EncoderBranch(self.dim_w, self.width, self.dtype,
                                   self.wgrad_chunk, name='w')(x)
    else:  # no private latent (MMVAE): no w branch at all
      loc_w = raw_w = jnp.zeros((x.shape[0], 0), _out_dtype(self.dtype))
    loc_z, raw_z = EncoderBranch(self.dim_z, self.width, self.dtype,
                                 self.wgrad_chunk, name='z')(x)
    return loc_w, raw_w, loc_z, raw_z


class Decoder(nn.Module):
  """u = [w, z] `[N, Dw + Dz]` -> Laplace mean `[N, 28, 28, 3]` (float32)."""

  width: float = 1.0
  dtype: Any = jnp.float32  # compute dtype; params and outputs are float32
  wgrad_chunk: int | str = 0  # conv.py: 0 XLA's own, -1 auto, n rows, 'onednn'

  @nn.compact
  def __call__(self, u):
    c1, c2, c3 = (max(1, round(c * self.width)) for c in (64, 128, 256))
    block = functools.partial(ResnetBlock, dtype=self.dtype,
                              wgrad_chunk=self.wgrad_chunk)
    h = _dense(c3 * 7 * 7, u.shape[-1], name='fc', dtype=self.dtype)(u)
    h = h.reshape((u.shape[0], c3, 7, 7)).transpose((0, 2, 3, 1))  # C,H,W
    h = block(c3, c2, name='block_0')(h)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
    h = block(c2, c1, name='block_1')(h)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    h = block(c1, c1, name='block_2')(h)
    out = _conv(EVENT_SHAPE[-1], 3, c1, name='conv_out', dtype=self.dtype,
                wgrad_chunk=self.wgrad_chunk)(
        lrelu(h))
    return out.astype(_out_dtype(self.dtype))  # likelihood: float32 / 64


def image_log_likelihood(x, loc, scale=LIKELIHOOD_SCALE):
  """Laplace(x; decoder mean, 0.75) summed over pixels: `[..., B]`."""
  return distributions.laplace_image_log_likelihood(x, loc, scale)


def modality_names(num_modalities: int,
                   names: Sequence[str] | str | None = None) -> tuple[str, ...]:
  """The modalities' names: `names` (a sequence or 'm1,m3'), checked against
  `num_modalities` and PolyMNIST's fields, or 'm0'..'m{M-1}' when empty."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  if not names:
    return tuple(f'm{i}' for i in range(num_modalities))
  names = tuple(names)
  if len(names) != num_modalities:
    raise ValueError(
        f'model.modalities names {len(names)} modalities {list(names)} but'
        f' model.num_modalities is {num_modalities}: set'
        f' --config.model.num_modalities={len(names)}')
  known = polymnist_data.MODALITIES  # the dataset's fields
  bad = [n for n in names if n not in known]
  if bad or len(set(names)) != len(names):
    raise ValueError(
        f'model.modalities must be distinct names among {list(known)},'
        f' got {list(names)}')
  return names


def make_mmvaeplus(
    *,
    num_modalities: int = 5,
    names: Sequence[str] | str | None = None,
    dim_w: int = 32,
    dim_z: int = 32,
    width: float = 1.0,
    family: distributions.Family = 'laplace',
    likelihood_scale: float = LIKELIHOOD_SCALE,
    compute_dtype: str = 'float32',
    dtype: str = 'float32',
    remat: bool = False,
    vmap_modalities: bool = False,
    conv_wgrad_chunk: int = -1,
    conv_impl: str = 'xla',
) -> mmvaeplus.MMVAEPlus:
  """The official PolyMNIST MMVAE+ (modalities `names`, default 'm0'..).

  Args:
    num_modalities: M.
    names: the M modalities' names, i.e. the dataset fields they read
      (default 'm0'..'m{M-1}'; e.g. ('m1', 'm3') trains on those two).
    compute_dtype: 'float32' or 'bfloat16': dtype of the networks' Conv /
      Dense compute (parameters, likelihoods and the bound stay float32).
    dtype: 'float32' or 'float64' (needs `jax_enable_x64`; only with
      compute_dtype 'float32'): params, networks, noise, densities and the
      bound all in this dtype (`base.check_dtype`).
    remat: recompute each encoder / decoder application in the backward
      pass instead of storing its activations (`MMVAEPlus.remat`).
    vmap_modalities: see `MMVAEPlus.vmap_modalities`.
    conv_wgrad_chunk: rows per slice of the convolutions' weight gradient
      (`models/conv.py`): -1 = automatic (on CPU sized per layer shape,
      on GPU/TPU XLA's own), 0 = XLA's own, n > 0 = slices of n rows. Same
      values; gradients equal up to float32 reassociation.
    conv_impl: 'xla' (default) or 'onednn': every convolution as oneDNN
      custom calls on CPU (`mmvaeplus_jax/infra/onednn.py`; values and gradients
      equal up to float32 reassociation; `conv_wgrad_chunk` is then unused).
  """
  mods = make_modalities(
      num_modalities=num_modalities, names=names, dim_w=dim_w, dim_z=dim_z,
      width=width, likelihood_scale=likelihood_scale,
      compute_dtype=compute_dtype, dtype=dtype,
      conv_wgrad_chunk=conv_wgrad_chunk, conv_impl=conv_impl)
  return mmvaeplus.MMVAEPlus(mods, dim_w=dim_w, dim_z=dim_z, family=family,
                             dtype=dtype, remat=remat,
                             vmap_modalities=vmap_modalities)


def make_modalities(
    *,
    num_modalities: int = 5,
    names: Sequence[str] | str | None = None,
    dim_w: int = 32,
    dim_z: int = 32,
    width: float = 1.0,
    likelihood_scale: float = LIKELIHOOD_SCALE,
    compute_dtype: str = 'float32',
    dtype: str = 'float32',
    conv_wgrad_chunk: int = -1,
    conv_impl: str = 'xla',
) -> tuple[mmvaeplus.Modality, ...]:
  """The PolyMNIST modalities (Encoder, Decoder, Laplace likelihood) that
  every model here shares (arguments as `make_mmvaeplus`)."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
        f'compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}')
  base.check_dtype(dtype)
  if dtype == 'float64' and compute_dtype != 'float32':
    raise ValueError(
        f"model.dtype='float64' computes everything in float64; it cannot be"
        f" combined with model.compute_dtype={compute_dtype!r} (leave"
        " compute_dtype at 'float32')")
  if dtype == 'float64' and conv_impl != 'xla':
    raise ValueError(
        f"model.dtype='float64' needs model.conv_impl='xla' (oneDNN takes"
        f" float32 operands), got {conv_impl!r}")
  dtype = jnp.dtype('float64' if dtype == 'float64' else compute_dtype)
  names = modality_names(num_modalities, names)
  chunk = conv_lib.resolve_conv(conv_wgrad_chunk, conv_impl)
  ll = functools.partial(image_log_likelihood, scale=likelihood_scale)
  return tuple(
      mmvaeplus.Modality(
          name=name,
          encoder=Encoder(dim_w, dim_z, width, dtype, chunk),
          decoder=Decoder(width, dtype, chunk),
          log_likelihood=ll,
          event_shape=EVENT_SHAPE,
      )
      for name in names
  )


def make_gaussian_model(
    kind: str,
    *,
    dim_w: int = 0,
    dim_z: int = 32,
    remat: bool = False,
    vmap_modalities: bool = False,
    **modality_kwargs,
):
  """A Gaussian-posterior baseline on the PolyMNIST networks.

  Args:
    kind: 'mvae', 'mopoe', 'mmjsd' or 'dmvae' (`models/{kind}.py`).
    dim_w: private latent size (MVAE and MoPoE: 0).
    dim_z: shared latent size.
    remat, vmap_modalities: as `make_mmvaeplus`.
    **modality_kwargs: `make_modalities` arguments (num_modalities, names,
      width, likelihood_scale, compute_dtype, dtype, conv_wgrad_chunk,
      conv_impl).
  """
  classes = {'mvae': mvae.MVAE, 'mopoe': mopoe.MoPoE, 'mmjsd': mmjsd.MMJSD,
             'dmvae': dmvae.DMVAE}
  if kind not in classes:
    raise ValueError(f'kind must be one of {sorted(classes)}, got {kind!r}')
  mods = make_modalities(dim_w=dim_w, dim_z=dim_z, **modality_kwargs)
  return classes[kind](mods, dim_w=dim_w, dim_z=dim_z, family='normal',
                       dtype=modality_kwargs.get('dtype', 'float32'),
                       remat=remat, vmap_modalities=vmap_modalities)
