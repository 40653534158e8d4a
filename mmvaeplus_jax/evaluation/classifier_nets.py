"""Classifier networks for coherence: architectures, names, params.

Digit classifiers here; CUB's species classifiers in `species_nets`.

One classifier per modality. Each architecture has a name (`MODULES`) and
serves one image shape (`ARCHITECTURES`); `log_probs` and `features` pick
the module statically from the parameter shapes (`arch_of`), so they need
no per-dataset branch:

* `[28, 28, 3]` (PolyMNIST): 'wide' (`ClfImgWide`, the default for newly
  trained classifiers) or 'official' (`ClfImg`, the architecture of the
  official pretrained weights);
* `[28, 28, 1]` (MNIST) and `[32, 32, 3]` (SVHN): 'digit' (`DigitClf`),
  the MNIST / SVHN classifiers of MMVAE (iffsid/mmvae `src/report/helper.py`,
  `MNIST_Classifier` / `SVHN_Classifier`, used by `analyse_ms.py`) that
  DMVAE reuses (seqam-lab/DMVAE `mnist_svhn/classifier.py`):

    Conv(C->10, 5) -> MaxPool 2 -> ReLU -> Conv(10->20, 5) -> Dropout2d(0.5)
    -> MaxPool 2 -> ReLU -> flatten in C,H,W order (320 MNIST / 500 SVHN)
    -> Linear(->50) -> ReLU -> Dropout(0.5) -> Linear(50->10) -> log_softmax

  (valid convolutions; `features` returns the 50-d penultimate ReLU
  output). Their pretrained weights are not available offline either.

'official' (`ClfImg`): the coherence classifiers of MMVAE+ on PolyMNIST
(from MoPoE; official_reference.md section 9), in NHWC:

  Conv(3->10, 4, s2, p1) -> Dropout2d(0.5) -> ReLU
  -> Conv(10->20, 4, s2, p1) -> Dropout2d(0.5) -> ReLU
  -> flatten in C,H,W order (980) -> Linear(980->128) -> Dropout(0.5) -> ReLU
  -> Linear(128->10) -> log_softmax

Dropout2d drops whole channels (one Bernoulli draw per example and channel).
Initialisers are PyTorch's defaults, as in `models/polymnist.py`. The
C,H,W flatten keeps PyTorch weights portable (conv kernels OIHW -> HWIO).
The pretrained official weights are not available offline (targets.md
section 1), so the project trains its own (`classifier_training`) and must
report their test accuracy with every coherence number.

'wide' (`ClfImgWide`), in NHWC, 3x3 convolutions with 'same' padding:

  per-image standardisation (`standardize`)
  -> Conv(3->32, s2) -> ReLU -> Conv(32->64, s2) -> ReLU
  -> Conv(64->64, s1) -> ReLU -> flatten in C,H,W order (3136)
  -> Dropout(0.25) -> Linear(3136->128) -> ReLU -> Dropout(0.25)
  -> Linear(128->10) -> log_softmax

(460k parameters; `features` are the 128-d penultimate ReLU output, as for
`ClfImg`; LeCun-uniform kernels, zero biases). PolyMNIST draws each digit
in the inverted colour of its background crop, so on mid-grey crops (m4's
shingles, m0's sky) it is nearly invisible; standardising each image
restores its contrast. Its convolutions use the batch-sliced weight
gradient of `models/conv.py` on CPU (same values). Measured accuracies of
all three: docs/results.md.

The CUB species classifiers ('species_image' for `[64, 64, 3]` images,
'species_caption' for `[32]` caption ids or `[32, V]` caption logits) live
in `species_nets`; their class count (and vocabulary) is a property of the
params (`num_classes_of`, `vocab_size_of`), given to `init` from the data.
The digit classifiers always have `NUM_CLASSES` = 10.

All image inputs are `[N, *image_shape]`, uint8 (divided by 255 here) or
float (used as they are, e.g. unclamped decoder means). An unknown
architecture name raises one ValueError that lists the names.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import species_nets
from mmvaeplus_jax.models import conv as conv_lib
from mmvaeplus_jax.models import polymnist

Array = jax.Array
Params = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 3)
FEATURE_DIM = 128
# The 'wide' PolyMNIST classifier (ClfImgWide).
# (kernel size, channels, stride) of the convolutions ('same' padding).
WIDE_CONVS = ((3, 32, 2), (3, 64, 2), (3, 64, 1))
WIDE_DROPOUT = 0.25
WIDE_STANDARDIZE = True  # per-image standardisation of the input


def _conv(features: int, fan_in_channels: int, name: str) -> nn.Conv:
  return nn.Conv(
      features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
      kernel_init=polymnist.torch_kernel_init,
      bias_init=polymnist.torch_bias_init(fan_in_channels * 16), name=name)


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
  return nn.Dense(
      features, kernel_init=polymnist.torch_kernel_init,
      bias_init=polymnist.torch_bias_init(fan_in), name=name)


def to_float(images) -> Array:
  """uint8 images -> float32 in [0, 1]; float images unchanged
  (`api.to_float` on a host or device array)."""
  return api.to_float(jnp.asarray(images))


class ClfImg(nn.Module):
  """The official image-to-digit classifier (MoPoE `ClfImg`).

  Attributes:
    dropout_rate: rate of the three dropout layers (official 0.5).
  """

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """Classifies images.

    Args:
      x: `[N, 28, 28, 3]` images (uint8 or float).
      train: enables dropout (needs a 'dropout' rng).
      return_features: return the `[N, 128]` penultimate activations (after
        the ReLU; dropout is off in eval mode) instead of the log-probs.

    Returns:
      `[N, 10]` log-probabilities, or `[N, 128]` features.
    """
    x = to_float(x)
    h = _conv(10, x.shape[-1], 'conv_0')(x)  # [N, 14, 14, 10]
    # Dropout2d: one draw per (example, channel), shared over H and W.
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)
    h = nn.relu(h)
    h = _conv(20, 10, 'conv_1')(h)  # [N, 7, 7, 20]
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)
    h = nn.relu(h)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape((h.shape[0], -1))  # [N, 980]
    h = _dense(FEATURE_DIM, h.shape[-1], 'fc_0')(h)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = nn.relu(h)  # [N, 128]
    if return_features:
      return h
    logits = _dense(NUM_CLASSES, FEATURE_DIM, 'fc_1')(h)
    return jax.nn.log_softmax(logits, axis=-1)


def _max_pool(x):  # F.max_pool2d(x, 2)
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class DigitClf(nn.Module):
  """MMVAE's MNIST / SVHN digit classifier (module docstring).

  Attributes:
    dropout_rate: rate of Dropout2d and Dropout (PyTorch default 0.5).
  """

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """`[N, 28, 28, 1]` or `[N, 32, 32, 3]` -> `[N, 10]` log-probs (or
    `[N, 50]` features)."""
    x = to_float(x)
    conv = lambda c, fan_in, name: nn.Conv(
        c, (5, 5), padding='VALID', kernel_init=polymnist.torch_kernel_init,
        bias_init=polymnist.torch_bias_init(fan_in * 25), name=name)
    h = nn.relu(_max_pool(conv(10, x.shape[-1], 'conv_0')(x)))
    h = conv(20, 10, 'conv_1')(h)
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)  # Dropout2d
    h = nn.relu(_max_pool(h))  # [N, 4, 4, 20] MNIST, [N, 5, 5, 20] SVHN
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape((h.shape[0], -1))
    h = nn.relu(_dense(50, h.shape[-1], 'fc_0')(h))
    if return_features:
      return h
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = _dense(NUM_CLASSES, 50, 'fc_1')(h)
    return jax.nn.log_softmax(logits, axis=-1)


def standardize(x) -> Array:
  """Per-image standardisation: `(x - mean) / max(std, 1/255)` over each
  image's pixels and channels (`[N, H, W, C]` -> same; float32). Digits
  whose colour is close to their background's (PolyMNIST draws them in the
  inverted background colour, near-invisible on mid-grey crops) get the
  same contrast as the others."""
  x = to_float(x)
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.maximum(std, 1.0 / 255.0)


# Kernels U(+-sqrt(3 / fan_in)); biases Flax's zeros.
_LECUN_UNIFORM = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


class ClfImgWide(nn.Module):
  """The stronger PolyMNIST classifier (arch 'wide'; module docstring).

  Attributes:
    dropout_rate: rate of the two dropout layers (before each dense layer).
  """

  dropout_rate: float = WIDE_DROPOUT

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """`[N, 28, 28, 3]` images (uint8 or float) -> `[N, 10]` log-probs, or
    the `[N, 128]` penultimate ReLU features with `return_features`."""
    x = standardize(x) if WIDE_STANDARDIZE else to_float(x)
    # The batch-sliced weight gradient on CPU (models/conv.py; values and
    # input gradients are those of the plain convolution).
    conv_fn = conv_lib.make_conv_general_dilated(
        conv_lib.resolve_wgrad_chunk(conv_lib.AUTO))
    h = x
    for i, (k, c, stride) in enumerate(WIDE_CONVS):
      pad = (k - 1) // 2
      h = nn.Conv(c, (k, k), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)),
                  kernel_init=_LECUN_UNIFORM,
                  conv_general_dilated=conv_fn, name=f'conv_{i}')(h)
      h = nn.relu(h)
    # [N, 7, 7, 64] -> C,H,W flatten (3136), as ClfImg.
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape((h.shape[0], -1))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = nn.relu(nn.Dense(FEATURE_DIM, kernel_init=_LECUN_UNIFORM,
                         name='fc_0')(h))  # [N, 128]
    if return_features:
      return h
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(NUM_CLASSES, kernel_init=_LECUN_UNIFORM,
                      name='fc_1')(h)
    return jax.nn.log_softmax(logits, axis=-1)


# Architecture name -> classifier module.
MODULES = {
    'official': ClfImg(),  # PolyMNIST, the official MoPoE ClfImg
    'wide': ClfImgWide(),  # PolyMNIST, the stronger default (>= 98 %)
    'digit': DigitClf(),  # MNIST and SVHN (MNIST-SVHN)
}
# Image shape -> the architectures for it; the first one is what
# classifier folders without an `archs` entry (written before) hold, and
# what `init` draws by default.
ARCHITECTURES = {
    IMAGE_SHAPE: ('official', 'wide'),  # PolyMNIST
    (28, 28, 1): ('digit',),  # MNIST (MNIST-SVHN)
    (32, 32, 3): ('digit',),  # SVHN (MNIST-SVHN)
    species_nets.IMAGE_SHAPE: ('species_image',),  # CUB images
    species_nets.CAPTION_SHAPE: ('species_caption',),  # CUB caption ids
}
# Architectures whose class count (and vocabulary) come from the data.
SPECIES_ARCHS = tuple(species_nets.INPUT_SHAPES)
# What newly trained classifiers use (`train_classifier` with arch=None).
DEFAULT_ARCH = {IMAGE_SHAPE: 'wide', (28, 28, 1): 'digit',
                (32, 32, 3): 'digit',
                species_nets.IMAGE_SHAPE: 'species_image',
                species_nets.CAPTION_SHAPE: 'species_caption'}


def check_arch(arch: str | None, image_shape) -> str:
  """The architecture name for images of `image_shape` (`[H, W, C]`):
  `arch` itself, or `DEFAULT_ARCH` when None.

  Raises:
    ValueError: unknown shape, unknown name, or a name not made for the
      shape.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if image_shape not in ARCHITECTURES:
    raise ValueError(
        f'no digit classifier for images of shape {list(image_shape)}; known'
        f' shapes: {[list(s) for s in ARCHITECTURES]}')
  if arch is None:
    return DEFAULT_ARCH[image_shape]
  if arch not in ARCHITECTURES[image_shape]:
    raise ValueError(
        f'unknown classifier architecture {arch!r} for images of shape'
        f' {list(image_shape)}; choose one of'
        f' {list(ARCHITECTURES[image_shape])}')
  return arch


def module_for(image_shape, arch: str | None = None,
               num_classes: int | None = None,
               vocab_size: int | None = None) -> nn.Module:
  """The classifier module for inputs of `image_shape` (`[H, W, C]`, or
  `[32]` caption ids): architecture `arch`, by default the first listed for
  the shape (the official one for PolyMNIST). `num_classes` (and
  `vocab_size`) are needed by the species architectures only; the digit
  ones have 10 classes.

  Raises:
    ValueError: unknown shape or name, a species architecture without its
      sizes, or a class count other than 10 for a digit architecture.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if arch is None and image_shape in ARCHITECTURES:
    arch = ARCHITECTURES[image_shape][0]
  arch = check_arch(arch, image_shape)
  if arch in SPECIES_ARCHS:
    return species_nets.module(arch, num_classes, vocab_size)
  if num_classes not in (None, NUM_CLASSES):
    raise ValueError(f'digit classifier {arch!r} has {NUM_CLASSES} classes,'
                     f' got num_classes={num_classes}')
  return MODULES[arch]


@functools.lru_cache(maxsize=None)
def _abstract_params(image_shape=IMAGE_SHAPE, arch: str | None = None,
                     num_classes: int | None = None,
                     vocab_size: int | None = None):
  """ShapeDtypeStructs of the params (tracing only, nothing compiles)."""
  image_shape = tuple(image_shape)
  module = module_for(image_shape, arch, num_classes, vocab_size)
  x = (species_nets.example_input(arch) if arch in SPECIES_ARCHS
       else jnp.zeros((1,) + image_shape))
  return jax.eval_shape(
      lambda: module.init(jax.random.key(0), x)['params'])


def _shapes(tree):
  shapes = jax.tree.map(lambda x: tuple(x.shape), tree)
  return jax.tree.structure(shapes), jax.tree.leaves(shapes)


def architecture_of(params: Params) -> tuple[tuple[int, ...], str]:
  """(image shape, architecture name) that `params` belong to (static: from
  the parameter shapes alone, so it works under `jax.jit`)."""
  species = species_nets.arch_of_keys(params)
  if species is not None:
    return species_nets.INPUT_SHAPES[species], species
  got = _shapes(params)
  for image_shape, archs in ARCHITECTURES.items():
    for arch in archs:
      if arch in SPECIES_ARCHS:
        continue
      if _shapes(_abstract_params(image_shape, arch)) == got:
        return image_shape, arch
  raise ValueError(
      'params match no classifier architecture of'
      f' {[(list(s), a) for s, a in ARCHITECTURES.items()]}')


def image_shape_of(params: Params) -> tuple[int, ...]:
  """The image shape whose architecture `params` belong to."""
  return architecture_of(params)[0]


def arch_of(params: Params) -> str:
  """The architecture name (`MODULES`) of `params`."""
  return architecture_of(params)[1]


def num_classes_of(params: Params) -> int:
  """The class count of classifier `params` (10 for the digit ones)."""
  return int(params['fc_1']['kernel'].shape[-1])


def vocab_size_of(params: Params) -> int | None:
  """The vocabulary size of a caption classifier's `params`; None for image
  classifiers."""
  if arch_of(params) != 'species_caption':
    return None
  return int(params['embed']['kernel'].shape[0])


def module_of_params(params: Params) -> nn.Module:
  """The module that `params` belong to (sizes read from their shapes)."""
  image_shape, arch = architecture_of(params)
  if arch in SPECIES_ARCHS:
    return species_nets.module(arch, num_classes_of(params),
                               vocab_size_of(params))
  return MODULES[arch]


def _module_of(params: Params, images) -> nn.Module:
  """The module of `params`, checked against the inputs' shape."""
  image_shape, arch = architecture_of(params)
  if arch in SPECIES_ARCHS:
    species_nets.check_input(arch, vocab_size_of(params), images)
    return module_of_params(params)
  check_arch(None, images.shape[1:])  # a known image shape
  if tuple(images.shape[1:]) != image_shape:
    raise ValueError(
        f'classifier of {arch!r} for images {list(image_shape)} got images'
        f' of shape {list(images.shape)}')
  return MODULES[arch]


@functools.partial(jax.jit, static_argnames=('image_shape', 'arch',
                                             'num_classes', 'vocab_size'))
def init(key, image_shape=IMAGE_SHAPE, arch: str | None = None,
         num_classes: int | None = None,
         vocab_size: int | None = None) -> Params:
  """Fresh params of classifier `arch` for `image_shape` (default: the first
  architecture of the shape, PolyMNIST's official `ClfImg`). The species
  architectures need `num_classes` (from the labels) and, for
  'species_caption' (`image_shape` `[32]`), the `vocab_size` of the data;
  the digit ones have 10 classes (None or 10).

  'official' and 'digit': PyTorch's default initialisation, every kernel
  and bias of a layer U(+-1/sqrt(fan_in)) (fan_in = kh kw c_in for a conv,
  d_in for a dense layer). 'wide' and the species ones: LeCun-uniform kernels U(+-sqrt(3 /
  fan_in)) (variance 1 / fan_in, Flax's default scale) and zero biases.
  These are the distributions the modules' own initialisers give; drawn
  here with a single random call, because Flax's per-parameter key
  derivation takes ~10 s to compile on CPU.
  """
  image_shape = tuple(image_shape)
  check_arch(None, image_shape)  # a known shape
  arch = check_arch(arch or ARCHITECTURES[image_shape][0], image_shape)
  lecun = arch == 'wide' or arch in SPECIES_ARCHS
  abstract = _abstract_params(tuple(image_shape), arch, num_classes,
                              vocab_size)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  sizes = [math.prod(leaf.shape) for _, leaf in flat]
  u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  leaves, offset = [], 0
  for (path, leaf), size in zip(flat, sizes):
    layer = path[0].key
    fan_in = math.prod(abstract[layer]['kernel'].shape[:-1])
    scale = 1.0 / math.sqrt(fan_in)
    if lecun:
      scale = math.sqrt(3.0) * scale if path[-1].key == 'kernel' else 0.0
    leaves.append(u[offset:offset + size].reshape(leaf.shape) * scale)
    offset += size
  return jax.tree_util.tree_unflatten(treedef, leaves)


@jax.jit
def log_probs(params: Params, images) -> Array:
  """Eval-mode log-probabilities `[N, C]` of inputs `[N, *image_shape]`
  (caption classifiers: ids `[N, 32]` or logits `[N, 32, V]`; the
  architecture follows from the parameter shapes, `arch_of`)."""
  return _module_of(params, images).apply({'params': params}, images)


@jax.jit
def features(params: Params, images) -> Array:
  """Eval-mode penultimate features (for FD_clf): `[N, 128]` for `ClfImg`
  and `ClfImgWide` and the species classifiers, `[N, 50]` for
  `DigitClf`."""
  return _module_of(params, images).apply(
      {'params': params}, images, return_features=True)
