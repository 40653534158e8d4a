"""pytorch-fid 0.2.1's FID InceptionV3 up to pool3 (2048-d), in Flax Linen.

This is `pytorch_fid.inception.InceptionV3([3])` (resize_input=True,
normalize_input=True) in NHWC: torchvision's Inception3 trunk with the FID
patches of pytorch-fid's `fid_inception_v3()`:

* Mixed_5b/5c/5d (`FIDInceptionA`), Mixed_6b..6e (`FIDInceptionC`) and
  Mixed_7b (`FIDInceptionE_1`) average-pool with count_include_pad=False
  (TensorFlow semantics; torchvision's stock blocks count the padded zeros);
* Mixed_7c (`FIDInceptionE_2`) has a 3x3 *max*-pool (stride 1, pad 1) pool
  branch, a quirk of the TF 2015-12-05 graph;
* every `BasicConv2d` is conv (no bias) -> BatchNorm (eps 1e-3, running
  statistics from the `batch_stats` collection) -> ReLU;
* input [N, H, W, 3] in [0, 1] -> bilinear resize to 299x299
  (align_corners=False, no antialiasing) -> 2x - 1 -> trunk -> mean over H, W.

Submodule names equal the PyTorch state-dict prefixes, so the variables are
`params/<X>/conv/kernel` [kH, kW, I, O] (torch OIHW transposed (2, 3, 1, 0)),
`params/<X>/bn/{scale,bias}` and `batch_stats/<X>/bn/{mean,var}` for every
torch key `<X>.conv.weight`, `<X>.bn.{weight,bias,running_mean,running_var}`
(see `inception_weights.convert_state_dict`).

Convolutions and the resize run at `lax.Precision.HIGHEST`, so GPUs do not
fall back to TF32. The module is inference-only (BatchNorm always uses the
running averages).

Block outputs are sown into the `intermediates` collection (apply with
`mutable=['intermediates']`): `block0` [N, 73, 73, 64] after maxpool1,
`block1` [N, 35, 35, 192] after maxpool2, `block2` [N, 17, 17, 768] after
Mixed_6e, as pytorch-fid's output blocks 0, 1, 2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

IMAGE_SIZE = 299  # pytorch-fid resizes every input to 299 x 299
FEATURE_DIM = 2048  # pool3
BN_EPSILON = 1e-3  # torchvision BasicConv2d
_HIGHEST = jax.lax.Precision.HIGHEST


def resize_bilinear(images: Array, size: int = IMAGE_SIZE) -> Array:
  """torch `F.interpolate(mode='bilinear', align_corners=False)`, NHWC.

  Half-pixel centres, no antialiasing (torch's default), borders clamped.

  Args:
    images: [N, H, W, C] float images.
    size: output height and width.

  Returns:
    [N, size, size, C], same dtype.
  """
  n, _, _, c = images.shape
  return jax.image.resize(
      images, (n, size, size, c), method='bilinear', antialias=False,
      precision=_HIGHEST,
  )


def _avg_pool_3x3(x: Array) -> Array:
  """3x3 / stride 1 / pad 1 average pool, padded zeros not counted."""
  return nn.avg_pool(
      x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
      count_include_pad=False,
  )


def _max_pool_3x3(x: Array, stride: int, pad: int) -> Array:
  return nn.max_pool(
      x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad))
  )


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)  # (pad_h, pad_w), symmetric as in torch

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ph, pw = self.padding
    x = nn.Conv(
        self.features, self.kernel_size, strides=self.strides,
        padding=((ph, ph), (pw, pw)), use_bias=False, precision=_HIGHEST,
        name='conv',
    )(x)
    x = nn.BatchNorm(
        use_running_average=True, epsilon=BN_EPSILON, name='bn'
    )(x)
    return nn.relu(x)


def _conv(features, kernel_size, name, strides=(1, 1), padding=(0, 0)):
  return BasicConv2d(features, kernel_size, strides, padding, name=name)


class FIDInceptionA(nn.Module):
  """Mixed_5b/5c/5d: 35x35 block, avg pool without the padded zeros."""

  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = _conv(64, (1, 1), 'branch1x1')(x)
    b5 = _conv(48, (1, 1), 'branch5x5_1')(x)
    b5 = _conv(64, (5, 5), 'branch5x5_2', padding=(2, 2))(b5)
    b3 = _conv(64, (1, 1), 'branch3x3dbl_1')(x)
    b3 = _conv(96, (3, 3), 'branch3x3dbl_2', padding=(1, 1))(b3)
    b3 = _conv(96, (3, 3), 'branch3x3dbl_3', padding=(1, 1))(b3)
    bp = _conv(self.pool_features, (1, 1), 'branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 reduction (torchvision's InceptionB)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = _conv(384, (3, 3), 'branch3x3', strides=(2, 2))(x)
    bd = _conv(64, (1, 1), 'branch3x3dbl_1')(x)
    bd = _conv(96, (3, 3), 'branch3x3dbl_2', padding=(1, 1))(bd)
    bd = _conv(96, (3, 3), 'branch3x3dbl_3', strides=(2, 2))(bd)
    bp = _max_pool_3x3(x, stride=2, pad=0)
    return jnp.concatenate([b3, bd, bp], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: 17x17 factorised-7x7 block, avg pool without padding."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    b1 = _conv(192, (1, 1), 'branch1x1')(x)
    b7 = _conv(c7, (1, 1), 'branch7x7_1')(x)
    b7 = _conv(c7, (1, 7), 'branch7x7_2', padding=(0, 3))(b7)
    b7 = _conv(192, (7, 1), 'branch7x7_3', padding=(3, 0))(b7)
    bd = _conv(c7, (1, 1), 'branch7x7dbl_1')(x)
    bd = _conv(c7, (7, 1), 'branch7x7dbl_2', padding=(3, 0))(bd)
    bd = _conv(c7, (1, 7), 'branch7x7dbl_3', padding=(0, 3))(bd)
    bd = _conv(c7, (7, 1), 'branch7x7dbl_4', padding=(3, 0))(bd)
    bd = _conv(192, (1, 7), 'branch7x7dbl_5', padding=(0, 3))(bd)
    bp = _conv(192, (1, 1), 'branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 reduction (torchvision's InceptionD)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = _conv(192, (1, 1), 'branch3x3_1')(x)
    b3 = _conv(320, (3, 3), 'branch3x3_2', strides=(2, 2))(b3)
    b7 = _conv(192, (1, 1), 'branch7x7x3_1')(x)
    b7 = _conv(192, (1, 7), 'branch7x7x3_2', padding=(0, 3))(b7)
    b7 = _conv(192, (7, 1), 'branch7x7x3_3', padding=(3, 0))(b7)
    b7 = _conv(192, (3, 3), 'branch7x7x3_4', strides=(2, 2))(b7)
    bp = _max_pool_3x3(x, stride=2, pad=0)
    return jnp.concatenate([b3, b7, bp], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (`FIDInceptionE_1`, avg pool) / Mixed_7c (`_2`, max pool)."""

  max_pool_branch: bool  # True only for Mixed_7c (FIDInceptionE_2)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = _conv(320, (1, 1), 'branch1x1')(x)
    b3 = _conv(384, (1, 1), 'branch3x3_1')(x)
    b3 = jnp.concatenate([
        _conv(384, (1, 3), 'branch3x3_2a', padding=(0, 1))(b3),
        _conv(384, (3, 1), 'branch3x3_2b', padding=(1, 0))(b3),
    ], axis=-1)
    bd = _conv(448, (1, 1), 'branch3x3dbl_1')(x)
    bd = _conv(384, (3, 3), 'branch3x3dbl_2', padding=(1, 1))(bd)
    bd = jnp.concatenate([
        _conv(384, (1, 3), 'branch3x3dbl_3a', padding=(0, 1))(bd),
        _conv(384, (3, 1), 'branch3x3dbl_3b', padding=(1, 0))(bd),
    ], axis=-1)
    if self.max_pool_branch:
      pooled = _max_pool_3x3(x, stride=1, pad=1)
    else:
      pooled = _avg_pool_3x3(x)
    bp = _conv(192, (1, 1), 'branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's `InceptionV3([3])`: images [N, H, W, 3] -> pool3 [N, 2048].

  Attributes:
    resize_input: bilinearly resize to 299 x 299 first (pytorch-fid default).
    normalize_input: map [0, 1] to [-1, 1] by 2x - 1 (pytorch-fid default).
  """

  resize_input: bool = True
  normalize_input: bool = True

  @nn.compact
  def __call__(self, images: Array) -> Array:
    """Pool3 features.

    Args:
      images: [N, H, W, 3] RGB in [0, 1] (any H, W; at least 75 without the
        resize).

    Returns:
      [N, 2048] features, the dtype of the images / variables.
    """
    x = images
    if self.resize_input:
      x = resize_bilinear(x)  # [N, 299, 299, 3]
    if self.normalize_input:
      x = 2 * x - 1
    # Block 0.
    x = _conv(32, (3, 3), 'Conv2d_1a_3x3', strides=(2, 2))(x)  # 149x149
    x = _conv(32, (3, 3), 'Conv2d_2a_3x3')(x)  # 147x147
    x = _conv(64, (3, 3), 'Conv2d_2b_3x3', padding=(1, 1))(x)
    x = _max_pool_3x3(x, stride=2, pad=0)  # [N, 73, 73, 64]
    self.sow('intermediates', 'block0', x)
    # Block 1.
    x = _conv(80, (1, 1), 'Conv2d_3b_1x1')(x)
    x = _conv(192, (3, 3), 'Conv2d_4a_3x3')(x)  # 71x71
    x = _max_pool_3x3(x, stride=2, pad=0)  # [N, 35, 35, 192]
    self.sow('intermediates', 'block1', x)
    # Block 2.
    x = FIDInceptionA(32, name='Mixed_5b')(x)  # 256 channels
    x = FIDInceptionA(64, name='Mixed_5c')(x)  # 288
    x = FIDInceptionA(64, name='Mixed_5d')(x)  # 288
    x = InceptionB(name='Mixed_6a')(x)  # [N, 17, 17, 768]
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)  # [N, 17, 17, 768]
    self.sow('intermediates', 'block2', x)
    # Block 3.
    x = InceptionD(name='Mixed_7a')(x)  # [N, 8, 8, 1280]
    x = FIDInceptionE(max_pool_branch=False, name='Mixed_7b')(x)  # 2048
    x = FIDInceptionE(max_pool_branch=True, name='Mixed_7c')(x)  # 2048
    return jnp.mean(x, axis=(1, 2))  # [N, 2048], AdaptiveAvgPool2d(1)
