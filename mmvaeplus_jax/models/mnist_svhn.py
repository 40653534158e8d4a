"""MNIST-SVHN networks: MMVAE's and DMVAE's, as `Modality`s (NHWC).

Two modalities, 'mnist' `[28, 28, 1]` and 'svhn' `[32, 32, 3]`, images in
[0, 1]. Every encoder returns `(loc_w, raw_w, loc_z, raw_z)` from one trunk
with separate linear heads (`Dw = 0`: no w heads, `[N, 0]` outputs); every
decoder maps u = [w, z] to the Laplace mean, squashed by a sigmoid.

`arch='mmvae'` (iffsid/mmvae `src/models/vae_mnist.py`, `vae_svhn.py`;
official_reference.md section 5):

* MNIST encoder: flatten 784 -> Dense 400 -> ReLU -> heads (Dense 400 -> D);
  decoder: Dense(Dw+Dz -> 400) -> ReLU -> Dense 784 -> sigmoid, clamped to
  [1e-6, 1 - 1e-6] (MMVAE's `Constants.eta`).
* SVHN encoder: Conv(3->32, 4, s2, p1) -> ReLU -> Conv(32->64, 4, 2, 1) ->
  ReLU -> Conv(64->128, 4, 2, 1) -> ReLU -> heads Conv(128->D, 4, 1, 0)
  (4x4 -> 1x1); decoder: ConvT(Dw+Dz->128, 4, 1, 0) -> ReLU ->
  ConvT(128->64, 4, 2, 1) -> ReLU -> ConvT(64->32, 4, 2, 1) -> ReLU ->
  ConvT(32->3, 4, 2, 1) -> sigmoid. All layers with bias.

`arch='dmvae'` (Lee & Pavlovic 2021, seqam-lab/DMVAE `mnist_svhn/model.py`;
the same in AgatheSenellart/MultiVae `examples/dmvae/mnist_svhn/
architectures.py`), the networks MMVAE+ App. F uses for its comparison:

* MNIST encoder: flatten 784 -> Dense 256 -> ReLU -> heads; decoder:
  Dense(Dw+Dz -> 256) -> ReLU -> Dense 784 -> sigmoid.
* SVHN encoder: Conv(3->32) -> ReLU -> Conv(32->64) -> ReLU ->
  Conv(64->128) -> ReLU -> Conv(128->256) -> ReLU (all 4, s2, p1, no bias;
  32 -> 2 px) -> flatten in C,H,W order (1,024) -> Dense 512 -> ReLU ->
  heads; decoder: Dense(Dw+Dz -> 1,024) -> ReLU -> (256, 2, 2) ->
  ConvT(256->128) -> ReLU -> ConvT(128->64) -> ReLU -> ConvT(64->32) ->
  ReLU -> ConvT(32->3) -> sigmoid (all 4, s2, p1, no bias).
* Deviations: DMVAE's `Dropout(0.1)` after the SVHN encoder's Dense 512 is
  left out (the `Modality` encoder contract has no train/eval mode); its
  Gaussian posteriors with log-variance heads and Bernoulli-style
  likelihood are replaced by the model's `family` scale map and the Laplace
  likelihood below (DMVAE's own objective, on another branch, may plug in
  other likelihoods through `modalities(...)`); DMVAE's one Linear to
  [mu_w, logvar_w, mu_z, logvar_z] is four Dense heads of the same fan-in
  (same initial distribution).

Likelihoods: Laplace(x; decoder mean, 0.75) summed over pixels for both
modalities (MMVAE; the 0.75 of iffsid/mmvae issue #2), with MNIST's
log-likelihood scaled by lambda = 3 * 32 * 32 / 784 = 3.918 (MMVAE
`mmvae_mnist_svhn.py`: `prod(svhn.dataSize) / prod(mnist.dataSize)` when
`--llik_scaling 0`, its default) and SVHN's by 1.

Initialisers: PyTorch's defaults (`polymnist.torch_kernel_init` /
`torch_bias_init`), including the ConvTranspose quirk that PyTorch computes
the fan-in of a `ConvTranspose2d` weight `(in, out, kh, kw)` from its
second axis: U(+-1/sqrt(out * kh * kw)) for weights and biases. DMVAE
re-initialises with its own `kaiming_init`; not reproduced.

Flatten orders follow PyTorch (C, H, W) where they matter for porting
weights (DMVAE's 1,024-wide SVHN layers); MNIST has one channel, so its
H, W, C flatten equals PyTorch's.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import polymnist

MNIST_SHAPE = (28, 28, 1)
SVHN_SHAPE = (32, 32, 3)
NAMES = ('mnist', 'svhn')
ARCHS = ('mmvae', 'dmvae')
MODELS = ('mmvaeplus', 'mmvae')
LAPLACE_SCALE = 0.75  # fixed scale of the Laplace likelihoods (MMVAE)
# MMVAE's MNIST likelihood scaling: prod(3, 32, 32) / prod(1, 28, 28).
MNIST_LAMBDA = 3 * 32 * 32 / (28 * 28)
MMVAE_CLAMP = 1e-6  # MMVAE Constants.eta: MNIST means in [eta, 1 - eta]

_dense = polymnist._dense  # pylint: disable=protected-access
# PyTorch ConvTranspose2d init: fan_in = out_channels * kh * kw (see above),
# which is Flax's fan_out of an HWIO-style (kh, kw, in, out) kernel.
torch_transpose_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_out', 'uniform')


def _conv(features, kernel, stride, pad, in_channels, *, use_bias=True,
          name=None):
  """PyTorch `Conv2d(in, features, kernel, stride, pad)` in NHWC."""
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), use_bias=use_bias,
      kernel_init=polymnist.torch_kernel_init,
      bias_init=polymnist.torch_bias_init(in_channels * kernel * kernel),
      name=name)


def _conv_transpose(features, kernel, stride, pad, *, use_bias=True,
                    name=None):
  """PyTorch `ConvTranspose2d(in, features, kernel, stride, pad)` in NHWC:
  output size (in - 1) * stride - 2 pad + kernel."""
  p = kernel - 1 - pad  # padding of the stride-dilated input
  return nn.ConvTranspose(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((p, p), (p, p)), use_bias=use_bias,
      kernel_init=torch_transpose_kernel_init,
      bias_init=polymnist.torch_bias_init(features * kernel * kernel),
      name=name)


def _chw_flatten(x):  # [N, H, W, C] -> [N, C*H*W] in PyTorch's order
  return jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))


class Heads(nn.Module):
  """Linear heads on trunk features: (loc_w, raw_w, loc_z, raw_z).

  `conv_kernel > 0` makes them VALID convolutions of that size on an
  `[N, k, k, C]` map (MMVAE's SVHN heads, 4x4 -> 1x1); else Dense layers on
  `[N, F]` features. `dim_w = 0` builds no w heads (outputs `[N, 0]`).
  """

  dim_w: int
  dim_z: int
  conv_kernel: int = 0

  @nn.compact
  def __call__(self, h):
    def head(dim, name):
      if self.conv_kernel:
        k = self.conv_kernel
        out = _conv(dim, k, 1, 0, h.shape[-1], name=name)(h)
        return out.reshape((h.shape[0], dim))
      return _dense(dim, h.shape[-1], name=name)(h)

    if self.dim_w > 0:
      loc_w, raw_w = head(self.dim_w, 'loc_w'), head(self.dim_w, 'raw_w')
    else:
      loc_w = raw_w = jnp.zeros((h.shape[0], 0), jnp.float32)
    return loc_w, raw_w, head(self.dim_z, 'loc_z'), head(self.dim_z, 'raw_z')


class MnistEncoder(nn.Module):
  """MLP: `[N, 28, 28, 1]` -> Dense(hidden) -> ReLU -> heads."""

  dim_w: int
  dim_z: int
  hidden: int = 400  # MMVAE 400, DMVAE 256

  @nn.compact
  def __call__(self, x):
    h = x.reshape((x.shape[0], -1))  # [N, 784]
    h = nn.relu(_dense(self.hidden, h.shape[-1], name='fc')(h))
    return Heads(self.dim_w, self.dim_z, name='heads')(h)


class MnistDecoder(nn.Module):
  """MLP: u `[N, Dw + Dz]` -> Dense(hidden) -> ReLU -> Dense 784 -> sigmoid
  (-> clamp to [clamp, 1 - clamp] when clamp > 0) -> `[N, 28, 28, 1]`."""

  hidden: int = 400
  clamp: float = MMVAE_CLAMP

  @nn.compact
  def __call__(self, u):
    h = nn.relu(_dense(self.hidden, u.shape[-1], name='fc')(u))
    out = nn.sigmoid(_dense(28 * 28, self.hidden, name='out')(h))
    if self.clamp > 0:
      out = jnp.clip(out, self.clamp, 1.0 - self.clamp)
    return out.reshape((u.shape[0],) + MNIST_SHAPE)


class MmvaeSvhnEncoder(nn.Module):
  """MMVAE's SVHN CNN: 3 strided convs (32, 64, 128) -> 4x4 conv heads."""

  dim_w: int
  dim_z: int

  @nn.compact
  def __call__(self, x):  # [N, 32, 32, 3]
    h = x
    for i, c in enumerate((32, 64, 128)):
      h = nn.relu(_conv(c, 4, 2, 1, h.shape[-1], name=f'conv_{i}')(h))
    return Heads(self.dim_w, self.dim_z, conv_kernel=4, name='heads')(h)


class MmvaeSvhnDecoder(nn.Module):
  """MMVAE's SVHN CNN decoder: ConvT 1 -> 4 -> 8 -> 16 -> 32 px, sigmoid."""

  @nn.compact
  def __call__(self, u):
    h = u.reshape((u.shape[0], 1, 1, u.shape[-1]))
    h = nn.relu(_conv_transpose(128, 4, 1, 0, name='convt_0')(h))  # 4x4
    for i, c in enumerate((64, 32)):
      h = nn.relu(_conv_transpose(c, 4, 2, 1, name=f'convt_{i + 1}')(h))
    return nn.sigmoid(_conv_transpose(3, 4, 2, 1, name='convt_3')(h))


class DmvaeSvhnEncoder(nn.Module):
  """DMVAE's SVHN CNN: 4 bias-free strided convs -> Dense 512 -> heads."""

  dim_w: int
  dim_z: int

  @nn.compact
  def __call__(self, x):  # [N, 32, 32, 3]
    h = x
    for i, c in enumerate((32, 64, 128, 256)):
      h = nn.relu(_conv(c, 4, 2, 1, h.shape[-1], use_bias=False,
                        name=f'conv_{i}')(h))
    h = _chw_flatten(h)  # [N, 1024]
    h = nn.relu(_dense(512, h.shape[-1], name='fc')(h))
    return Heads(self.dim_w, self.dim_z, name='heads')(h)


class DmvaeSvhnDecoder(nn.Module):
  """DMVAE's SVHN decoder: Dense 1,024 -> (256, 2, 2) -> 4 ConvT -> 32 px."""

  @nn.compact
  def __call__(self, u):
    h = nn.relu(_dense(256 * 2 * 2, u.shape[-1], name='fc')(u))
    h = h.reshape((u.shape[0], 256, 2, 2)).transpose((0, 2, 3, 1))  # C,H,W
    for i, c in enumerate((128, 64, 32)):
      h = nn.relu(_conv_transpose(c, 4, 2, 1, use_bias=False,
                                  name=f'convt_{i}')(h))
    h = _conv_transpose(3, 4, 2, 1, use_bias=False, name='convt_3')(h)
    return nn.sigmoid(h)


def image_log_likelihood(x, loc, scale=LAPLACE_SCALE):
  """Laplace(x; decoder mean, scale) summed over pixels: `[..., B]`."""
  return distributions.laplace_image_log_likelihood(x, loc, scale)


def _dims(dim_w: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(dim_w, (int,)) or getattr(dim_w, 'ndim', None) == 0:
    return int(dim_w), int(dim_w)
  dims = tuple(int(d) for d in dim_w)
  if len(dims) != 2:
    raise ValueError(
        f'dim_w must be an int or (mnist, svhn) private sizes, got {dim_w!r}')
  return dims


def modalities(
    dim_w: int | Sequence[int],
    dim_z: int,
    *,
    arch: str = 'mmvae',
    likelihood_scale: float = LAPLACE_SCALE,
    mnist_lambda: float = MNIST_LAMBDA,
) -> tuple[mmvaeplus.Modality, mmvaeplus.Modality]:
  """The ('mnist', 'svhn') `Modality`s of `arch` ('mmvae' or 'dmvae').

  Args:
    dim_w: private latent size, one int for both modalities or
      `(mnist, svhn)` sizes (DMVAE's App. F sweep gives MNIST and SVHN
      different sizes; `MMVAEPlus` needs equal ones); 0: no w heads.
    dim_z: shared latent size.
    arch: whose networks (module docstring).
    likelihood_scale: scale of the Laplace likelihoods (MMVAE 0.75).
    mnist_lambda: MNIST's likelihood scaling lambda (SVHN's is 1).

  Returns:
    (mnist, svhn) modalities following the `models/base.py` contract.
  """
  if arch not in ARCHS:
    raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
  dw_mnist, dw_svhn = _dims(dim_w)
  if min(dw_mnist, dw_svhn) < 0 or dim_z < 1:
    raise ValueError(
        f'need dim_w >= 0 and dim_z >= 1, got dim_w={dim_w}, dim_z={dim_z}')
  ll = functools.partial(image_log_likelihood, scale=likelihood_scale)
  if arch == 'mmvae':
    nets = (MnistEncoder(dw_mnist, dim_z, 400), MnistDecoder(400),
            MmvaeSvhnEncoder(dw_svhn, dim_z), MmvaeSvhnDecoder())
  else:
    nets = (MnistEncoder(dw_mnist, dim_z, 256), MnistDecoder(256, clamp=0.0),
            DmvaeSvhnEncoder(dw_svhn, dim_z), DmvaeSvhnDecoder())
  mnist = mmvaeplus.Modality(
      name='mnist', encoder=nets[0], decoder=nets[1], log_likelihood=ll,
      event_shape=MNIST_SHAPE, likelihood_scale=float(mnist_lambda))
  svhn = mmvaeplus.Modality(
      name='svhn', encoder=nets[2], decoder=nets[3], log_likelihood=ll,
      event_shape=SVHN_SHAPE, likelihood_scale=1.0)
  return mnist, svhn


def make_mnist_svhn(
    model: str = 'mmvaeplus',
    *,
    dim_w: int = 0,
    dim_z: int = 20,
    arch: str = 'mmvae',
    family: distributions.Family = 'laplace',
    likelihood_scale: float = LAPLACE_SCALE,
    mnist_lambda: float = MNIST_LAMBDA,
    remat: bool = False,
) -> mmvaeplus.MMVAEPlus:
  """MMVAE+ (`model='mmvaeplus'`, dim_w > 0) or MMVAE (`'mmvae'`, dim_w 0)
  on MNIST-SVHN with `arch`'s networks (see `modalities`)."""
  if model not in MODELS:
    raise ValueError(f'model must be one of {MODELS}, got {model!r}')
  if model == 'mmvae' and dim_w != 0:
    raise ValueError(f'MMVAE has no private latents: dim_w must be 0, got'
                     f' {dim_w}')
  if model == 'mmvaeplus' and dim_w < 1:
    raise ValueError(f'MMVAE+ needs private latents: dim_w >= 1, got {dim_w}'
                     " (model='mmvae' is dim_w = 0)")
  mods = modalities(dim_w, dim_z, arch=arch,
                    likelihood_scale=likelihood_scale,
                    mnist_lambda=mnist_lambda)
  return mmvaeplus.MMVAEPlus(mods, dim_w=dim_w, dim_z=dim_z, family=family,
                             remat=remat)
