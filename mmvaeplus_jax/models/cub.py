"""The official CUB Image-Captions networks (srl-ethz/mmvaeplus
`resnet_cub_image.py`, `cnn_cub_text.py`; official_reference.md section 4).

Two modalities, named by the `cub_image_captions` dataset's features:

* `image`: float32 [64, 64, 3] in [0, 1]. `ImageEncoder`: two independent
  branches (w and z), each Conv3x3(3->64) -> RB(64,64) -> 5 x [AvgPool(3,2,1)
  -> RB] with RB(64,128), RB(128,256), RB(256,256) x 3 (64 -> 2 px) ->
  flatten 256*2*2 in C,H,W order -> Linear heads. `ImageDecoder`:
  Linear(Dw+Dz -> 256*2*2) -> 5 x [RB -> nearest x2] with RB(256,256) x 3,
  RB(256,128), RB(128,64) -> RB(64,64) -> lrelu -> Conv3x3(64->3), the
  Laplace mean (scale 0.01). `ResnetBlock` is PolyMNIST's (`polymnist.py`).
* `caption`: int32 [32] token ids (`input/captions.py`). `TextEncoder`:
  one-hot [32, V] -> Linear(V->128) per token, shared by both branches ->
  a 1-channel 32x128 picture; w: 3 x [Conv4x4 s2 p1 -> BN -> ReLU] (32, 64,
  128 ch, -> 4x16) -> flatten 8,192 -> Linear heads; z: the same 3 + 2 x
  [Conv(1,4) s(1,2) p(0,1) -> BN -> ReLU] (256, 512 ch, -> 4x4) -> Conv4x4
  heads (-> 1x1). `TextDecoder`: w and z branches of ConvTranspose + BN +
  ReLU to 128 x [4x16] each, concatenated (w first) -> ConvT(256->128,3,1,1)
  -> 3 x ConvT(4,2,1) (-> 64, 32, 1 ch; the last with ReLU, no BN) -> [32,
  128] -> Linear(128->V): logits of a categorical per position.

Parameters at V = 1,590, Dw = 16, Dz = 48 (tests/cub_models_test.py): image
encoder 8,552,448, decoder 4,276,931; text encoder 2,240,064, decoder
3,096,023 (BatchNorm scale and bias counted; running statistics are not
parameters).

BatchNorm (`BatchNorm`) follows PyTorch's `BatchNorm2d`: train mode
normalises with the batch's mean and biased variance and updates the
running averages with momentum 0.1 (new = 0.9 old + 0.1 batch, the variance
unbiased, n / (n - 1)); eval mode normalises with the running averages. The
running averages are the Flax collection `batch_stats`
(`networks.NetworkVAE`, docs/cub.md "Networks and recipes").

Initialisers: PyTorch's defaults, as `polymnist.py`: weights and biases
U(+-1/sqrt(fan_in)); for a transposed convolution PyTorch's fan_in is
out_channels * kh * kw (its weight is [in, out, kh, kw]). BatchNorm scale 1,
bias 0. Transposed convolutions have PyTorch's padding semantics: output
(i - 1) s - 2 p + k (`_conv_transpose`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import mopoe
from mmvaeplus_jax.models import mvae
from mmvaeplus_jax.models import polymnist

IMAGE_SHAPE = (64, 64, 3)
MAX_LENGTH = 32  # tokens per caption (input/captions.py)
EMBEDDING = 128
OFFICIAL_VOCABULARY_SIZE = 1590
IMAGE_SCALE = 0.01  # fixed Laplace scale of p(image | u), official
# Likelihood scalings of the official CUB run (run_CUB_experiment.sh).
IMAGE_LAMBDA = 32.0 / (3 * 64 * 64)
TEXT_LAMBDA = 5.0
NAMES = ('image', 'caption')


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _conv(features, kernel, strides, padding, fan_in_channels, name=None):
  """PyTorch `Conv2d` (bias, default init) in NHWC."""
  fan_in = fan_in_channels * kernel[0] * kernel[1]
  return nn.Conv(features, kernel, strides=strides,
                 padding=tuple((p, p) for p in padding),
                 kernel_init=polymnist.torch_kernel_init,
                 bias_init=polymnist.torch_bias_init(fan_in), name=name)


def _conv_transpose(features, kernel, strides, padding, name=None):
  """PyTorch `ConvTranspose2d(in, features, kernel, strides, padding)`.

  PyTorch's output size (i - 1) s - 2 p + k is `lax.conv_transpose` with
  explicit padding k - 1 - p on both sides; `transpose_kernel` makes the
  kernel the gradient of a forward convolution, as PyTorch's. Init
  U(+-1/sqrt(fan_in)) with PyTorch's fan_in = features * kh * kw.
  """
  bound = 1.0 / math.sqrt(features * kernel[0] * kernel[1])
  return nn.ConvTranspose(
      features, kernel, strides=strides,
      padding=tuple((k - 1 - p, k - 1 - p) for k, p in zip(kernel, padding)),
      transpose_kernel=True, kernel_init=_uniform(bound),
      bias_init=_uniform(bound), name=name)


def _dense(features, fan_in, name=None):
  return nn.Dense(features, kernel_init=polymnist.torch_kernel_init,
                  bias_init=polymnist.torch_bias_init(fan_in), name=name)


class BatchNorm(nn.Module):
  """PyTorch `BatchNorm2d` over the last (channel) axis (module docstring).

  Variables: params `scale`, `bias` `[C]`; batch_stats `mean`, `var` `[C]`
  (init 0 and 1). The running averages change only in train mode with
  `batch_stats` mutable.
  """

  momentum: float = 0.1  # PyTorch's (Flax's `momentum` is 1 - this)
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):  # [..., C] -> [..., C]
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var',
                           lambda: jnp.ones((c,), jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)  # biased: normalisation
      if (self.is_mutable_collection('batch_stats')
          and not self.is_initializing()):
        n = x.size // c
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _width(c, width):
  return max(1, round(c * width))


# ------------------------------------------------------------------ image


class ImageEncoderBranch(nn.Module):
  """One branch: image `[N, 64, 64, 3]` -> (loc, raw scale) `[N, D]`."""

  latent_dim: int
  width: float = 1.0

  @nn.compact
  def __call__(self, x):
    c64, c128, c256 = (_width(c, self.width) for c in (64, 128, 256))
    h = _conv(c64, (3, 3), (1, 1), (1, 1), x.shape[-1], name='conv_in')(x)
    h = polymnist.ResnetBlock(c64, c64, name='block_0')(h)
    chans = [c64, c128, c256, c256, c256, c256]
    for i in range(5):  # 64 -> 32 -> 16 -> 8 -> 4 -> 2 px
      h = polymnist._avg_pool(h)  # pylint: disable=protected-access
      h = polymnist.ResnetBlock(chans[i], chans[i + 1],
                                name=f'block_{i + 1}')(h)
    h = polymnist._chw_flatten(h)  # [N, 256 * 2 * 2]  pylint: disable=protected-access
    loc = _dense(self.latent_dim, h.shape[-1], name='loc')(h)
    raw = _dense(self.latent_dim, h.shape[-1], name='raw_scale')(h)
    return loc, raw


class ImageEncoder(nn.Module):
  """(loc_w, raw_w, loc_z, raw_z); no w branch when `dim_w = 0`."""

  dim_w: int = 16
  dim_z: int = 48
  width: float = 1.0

  @nn.compact
  def __call__(self, x):
    if self.dim_w > 0:
      loc_w, raw_w = ImageEncoderBranch(self.dim_w, self.width, name='w')(x)
    else:
      loc_w = raw_w = jnp.zeros((x.shape[0], 0), jnp.float32)
    loc_z, raw_z = ImageEncoderBranch(self.dim_z, self.width, name='z')(x)
    return loc_w, raw_w, loc_z, raw_z


class ImageDecoder(nn.Module):
  """u `[N, Dw + Dz]` -> Laplace mean `[N, 64, 64, 3]` (unbounded)."""

  width: float = 1.0

  @nn.compact
  def __call__(self, u):
    c64, c128, c256 = (_width(c, self.width) for c in (64, 128, 256))
    h = _dense(c256 * 2 * 2, u.shape[-1], name='fc')(u)
    h = h.reshape((u.shape[0], c256, 2, 2)).transpose((0, 2, 3, 1))  # C,H,W
    chans = [c256, c256, c256, c256, c128, c64]
    for i in range(5):  # 2 -> 4 -> ... -> 64 px
      h = polymnist.ResnetBlock(chans[i], chans[i + 1], name=f'block_{i}')(h)
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
    h = polymnist.ResnetBlock(c64, c64, name='block_5')(h)
    return _conv(IMAGE_SHAPE[-1], (3, 3), (1, 1), (1, 1), c64,
                 name='conv_out')(polymnist.lrelu(h))


def image_log_likelihood(x, loc, scale=IMAGE_SCALE):
  """Laplace(x; decoder mean, 0.01) summed over pixels.

  Args:
    x: `[B, 64, 64, 3]`.
    loc: `[..., B, 64, 64, 3]`.

  Returns:
    `[..., B]`.
  """
  return distributions.laplace_image_log_likelihood(x, loc, scale)


# ------------------------------------------------------------------- text


class _ConvBNReLU(nn.Module):
  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int]
  padding: tuple[int, int]
  transpose: bool = False
  norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    if self.transpose:
      conv = _conv_transpose(self.features, self.kernel, self.strides,
                             self.padding, name='conv')
    else:
      conv = _conv(self.features, self.kernel, self.strides, self.padding,
                   x.shape[-1], name='conv')
    h = conv(x)
    if self.norm:
      h = BatchNorm(name='bn')(h, train)
    return nn.relu(h)


class TextEncoder(nn.Module):
  """Token ids `[N, 32]` -> (loc_w, raw_w, loc_z, raw_z) (module docstring).

  `train`: BatchNorm mode (batch statistics) or eval (running averages).
  """

  vocab_size: int
  dim_w: int = 16
  dim_z: int = 48
  width: float = 1.0
  uses_batch_stats = True  # NetworkVAE: has a `batch_stats` collection

  @nn.compact
  def __call__(self, ids, train: bool = False):
    f = [_width(c, self.width) for c in (32, 64, 128, 256, 512)]
    x = jax.nn.one_hot(ids.astype(jnp.int32), self.vocab_size,
                       dtype=jnp.float32)  # [N, L, V]
    e = _dense(EMBEDDING, self.vocab_size, name='embedding')(x)
    e = e[..., None]  # [N, 32, 128, 1]: PyTorch's 1 x 32 x 128

    def trunk(h, prefix):
      for i in range(3):  # -> [N, 4, 16, f2]
        h = _ConvBNReLU(f[i], (4, 4), (2, 2), (1, 1),
                        name=f'{prefix}_{i}')(h, train)
      return h

    if self.dim_w > 0:
      hw = polymnist._chw_flatten(trunk(e, 'w'))  # [N, f2*4*16]  pylint: disable=protected-access
      loc_w = _dense(self.dim_w, hw.shape[-1], name='loc_w')(hw)
      raw_w = _dense(self.dim_w, hw.shape[-1], name='raw_w')(hw)
    else:
      loc_w = raw_w = jnp.zeros((ids.shape[0], 0), jnp.float32)
    hz = trunk(e, 'z')
    for i in (3, 4):  # -> [N, 4, 4, f4]
      hz = _ConvBNReLU(f[i], (1, 4), (1, 2), (0, 1), name=f'z_{i}')(hz, train)
    head = lambda name: _conv(self.dim_z, (4, 4), (1, 1), (0, 0), f[4],
                              name=name)(hz).reshape((ids.shape[0], -1))
    return loc_w, raw_w, head('loc_z'), head('raw_z')


class TextDecoder(nn.Module):
  """u `[N, Dw + Dz]` -> logits `[N, 32, V]` (module docstring)."""

  vocab_size: int
  dim_w: int = 16
  width: float = 1.0
  uses_batch_stats = True

  @nn.compact
  def __call__(self, u, train: bool = False):
    f = [_width(c, self.width) for c in (32, 64, 128, 256, 512)]
    n = u.shape[0]
    block = functools.partial(_ConvBNReLU, transpose=True)
    z = u[:, self.dim_w:].reshape((n, 1, 1, -1))
    hz = block(f[4], (4, 4), (1, 1), (0, 0), name='z_0')(z, train)  # 4x4
    hz = block(f[3], (1, 4), (1, 2), (0, 1), name='z_1')(hz, train)  # 4x8
    hz = block(f[3], (3, 3), (1, 1), (1, 1), name='z_2')(hz, train)
    hz = block(f[2], (1, 4), (1, 2), (0, 1), name='z_3')(hz, train)  # 4x16
    hs = [hz]
    if self.dim_w > 0:
      w = u[:, :self.dim_w].reshape((n, 1, 1, -1))
      hw = block(f[4], (4, 4), (1, 1), (0, 0), name='w_0')(w, train)
      hw = block(f[3], (1, 4), (1, 2), (0, 1), name='w_1')(hw, train)
      hw = block(f[2], (1, 4), (1, 2), (0, 1), name='w_2')(hw, train)
      hs = [hw, hz]  # PyTorch: cat((hw, hu), dim=1)
    h = jnp.concatenate(hs, axis=-1)  # [N, 4, 16, 2 f2]
    h = block(f[2], (3, 3), (1, 1), (1, 1), name='h_0')(h, train)
    h = block(f[1], (4, 4), (2, 2), (1, 1), name='h_1')(h, train)  # 8x32
    h = block(f[0], (4, 4), (2, 2), (1, 1), name='h_2')(h, train)  # 16x64
    h = block(1, (4, 4), (2, 2), (1, 1), norm=False, name='h_3')(h, train)
    h = h.reshape((n, MAX_LENGTH, EMBEDDING))  # [N, 32, 128]
    return _dense(self.vocab_size, EMBEDDING, name='to_vocab')(h)


def text_log_likelihood(ids, logits):
  """One-hot categorical log-likelihood summed over all 32 positions (pads
  and `<eos>` included, as the official text likelihood).

  Args:
    ids: `[B, L]` int token ids.
    logits: `[..., B, L, V]`.

  Returns:
    `[..., B]`: sum_l log softmax(logits[l])[ids[l]].
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  ids = jnp.broadcast_to(ids, logits.shape[:-1])[..., None]
  return jnp.sum(jnp.take_along_axis(log_p, ids, axis=-1)[..., 0], axis=-1)


# ------------------------------------------------------------------ models


def make_modalities(*, vocab_size: int, dim_w: int = 16, dim_z: int = 48,
                    width: float = 1.0, image_scale: float = IMAGE_SCALE,
                    image_lambda: float = IMAGE_LAMBDA,
                    text_lambda: float = TEXT_LAMBDA):
  """The image and caption modalities (networks, likelihoods, scalings)."""
  ll = functools.partial(image_log_likelihood, scale=image_scale)
  return (
      mmvaeplus.Modality(
          name='image', encoder=ImageEncoder(dim_w, dim_z, width),
          decoder=ImageDecoder(width), log_likelihood=ll,
          event_shape=IMAGE_SHAPE, likelihood_scale=image_lambda),
      mmvaeplus.Modality(
          name='caption',
          encoder=TextEncoder(vocab_size, dim_w, dim_z, width),
          decoder=TextDecoder(vocab_size, dim_w, width),
          log_likelihood=text_log_likelihood, event_shape=(MAX_LENGTH,),
          likelihood_scale=text_lambda),
  )


KINDS = ('mmvaeplus', 'mmvae', 'mvae', 'mopoe')


def make_cub(kind: str, *, vocab_size: int, dim_w: int = 16, dim_z: int = 48,
             family: distributions.Family = 'normal', remat: bool = False,
             **modality_kwargs) -> Any:
  """MMVAE+ / MMVAE (dim_w = 0) / MVAE / MoPoE on the CUB networks.

  Args:
    kind: one of `KINDS`.
    vocab_size: V, from the data (`captions.Vocabulary`, the dataset's
      `vocabulary_size`; 1,590 on the official files).
    family: MMVAE+ / MMVAE latents (the baselines are Gaussian).
    **modality_kwargs: `make_modalities`' width and likelihood knobs.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if kind != 'mmvaeplus':
    dim_w = 0
  mods = make_modalities(vocab_size=vocab_size, dim_w=dim_w, dim_z=dim_z,
                         **modality_kwargs)
  if kind in ('mmvaeplus', 'mmvae'):
    return mmvaeplus.MMVAEPlus(mods, dim_w=dim_w, dim_z=dim_z, family=family,
                               remat=remat)
  cls = {'mvae': mvae.MVAE, 'mopoe': mopoe.MoPoE}[kind]
  return cls(mods, dim_w=0, dim_z=dim_z, family='normal', remat=remat)
