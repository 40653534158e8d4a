"""Digit classifiers for coherence: architectures, training, storage.

One classifier per modality. Each architecture has a name (`MODULES`) and
serves one image shape (`ARCHITECTURES`); `classify(clf_params, name, x)`,
`log_probs` and `features` pick the module statically from the parameter
shapes (`arch_of`), so they need no per-dataset branch:

* `[28, 28, 3]` (PolyMNIST): 'wide' (`ClfImgWide`, the default for newly
  trained classifiers) or 'official' (`ClfImg`, the architecture of the
  official pretrained weights), both below;
* `[28, 28, 1]` (MNIST) and `[32, 32, 3]` (SVHN): 'digit' (`DigitClf`),
  the MNIST / SVHN classifiers of MMVAE (iffsid/mmvae `src/report/helper.py`,
  `MNIST_Classifier` / `SVHN_Classifier`, used by `analyse_ms.py`) that
  DMVAE reuses (seqam-lab/DMVAE `mnist_svhn/classifier.py`):

    Conv(C->10, 5) -> MaxPool 2 -> ReLU -> Conv(10->20, 5) -> Dropout2d(0.5)
    -> MaxPool 2 -> ReLU -> flatten in C,H,W order (320 MNIST / 500 SVHN)
    -> Linear(->50) -> ReLU -> Dropout(0.5) -> Linear(50->10) -> log_softmax

  (valid convolutions; `features` returns the 50-d penultimate ReLU
  output). Their pretrained weights are not available offline either.
  Measured: the MNIST `DigitClf` trained on the real MNIST train set
  (../shared/data, 60,000 digits; Adam 1e-3, batch 128, seed 0, 2 epochs,
  145 s on the shared 2-core CPU) reaches 96.9 % test accuracy (t10k); the
  SVHN one is untested on real data (SVHN is not available offline).

PolyMNIST has two architectures.

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
section 1), so the project trains its own and must report their test
accuracy with every coherence number. Trained with its recipe (`RECIPES`:
Adam 1e-3, batch 128, 15 epochs; `--arch official`) on `rebuilt`, seed 0:
test accuracy m0..m4 = 93.3 / 97.8 / 97.8 / 95.0 / 92.4 % (mean 95.3 %;
749 s on the 2-core CPU, 2026-11-26). The small network with heavy dropout
is the limit (m4 plateaus near 92 % by epoch 10 at lr 1e-3 or 3e-3).

'wide' (`ClfImgWide`, the default for newly trained PolyMNIST
classifiers), in NHWC, 3x3 convolutions with 'same' padding:

  per-image standardisation (`standardize`)
  -> Conv(3->32, s2) -> ReLU -> Conv(32->64, s2) -> ReLU
  -> Conv(64->64, s1) -> ReLU -> flatten in C,H,W order (3136)
  -> Dropout(0.25) -> Linear(3136->128) -> ReLU -> Dropout(0.25)
  -> Linear(128->10) -> log_softmax

(460k parameters; `features` are the 128-d penultimate ReLU output, as for
`ClfImg`; LeCun-uniform kernels, zero biases). PolyMNIST draws each digit
in the inverted colour of its background crop, so on mid-grey crops (m4's
shingles, m0's sky) it is nearly invisible; standardising each image
restores its contrast. Recipe (`RECIPES['wide']`): Adam with a one-cycle
cosine schedule peaking at 3e-3, batch 128, 14 epochs, each training batch
translated by a random whole-pixel shift in [-2, 2]^2 (`random_translate`,
edges replicated, keys from the step key). Its convolutions use the
batch-sliced weight gradient of `models/conv.py` on CPU (same values). On
m4 (exploratory runs, 5 epochs, other jobs sharing the CPU): 97.3 % without
the standardisation, 97.9 % with it; a 5x5 first convolution with dropout
0.1 gave 97.0 %, two convolutions (no 64->64) 94 % after 4 of 6 epochs.
Measured on `rebuilt` m0 (full train set, key of `--seed 0`; 2-core AMD
EPYC CPU shared with other jobs, 2026-12-03): 97.81 % after 8 epochs (607
s, `--epochs 8`), 98.11 % after 14 epochs (687 s: 37-85 s per epoch, by
the load). The whole set with the recipe (the command below, `--seed 0`,
commit fd3d467, 2026-12-03 17:27-18:18 UTC, the CPU shared with a test
run): m0..m4 = 98.11 / 99.26 / 99.30 / 98.72 / 98.43 % (mean 98.76 %),
2,892 s (785 / 594 / 537 / 477 / 477 s per modality). m0 and m4 are the
hard modalities (the official `ClfImg`: 93.3 and 92.4 %).

Command line (`--arch official` for `ClfImg`; `--epochs`, `--lr`,
`--lr_schedule`, `--max_shift`, `--batch_size` override the recipe):

  python -m mmvaeplus_jax.evaluation.classifiers --dataset rebuilt \
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR [--seed S]

writes `CLF_DIR/<modality>/` (one orbax checkpoint each) and
`CLF_DIR/classifiers.json` (modalities, image shapes, architectures, test
accuracies, training config and time). Coherence is capped by the
classifiers' accuracy: always report it beside it.

MNIST-SVHN (`mnist_svhn` builder): train on `mnist_svhn/dm1` (or dm30; with
an `<name>_index` feature each distinct source item is used once, see
`distinct_items`):

  python -m mmvaeplus_jax.evaluation.classifiers --dataset mnist_svhn/dm1 \
      --data_dir DIR --manual_dir DIR_WITH_MNIST_AND_SVHN --out CLF_DIR

`classifiers.json` records each modality's image shape (`image_shapes`) and
architecture name (`archs`); files without `image_shapes` (written before)
are PolyMNIST `ClfImg`s, files without `archs` hold the first architecture
of their shape (`ARCHITECTURES`: 'official' for PolyMNIST), as before. An
unknown name (`--arch`, `arch=`, or in `classifiers.json`) raises one
ValueError that lists the names.

All inputs are images `[N, *image_shape]`, uint8 (divided by 255 here) or
float (used as they are, e.g. unclamped decoder means).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mmvaeplus_jax.models import conv as conv_lib
from mmvaeplus_jax.models import polymnist

Array = jax.Array
Params = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 3)
FEATURE_DIM = 128
METADATA_FILE = 'classifiers.json'
# The 'wide' PolyMNIST classifier (ClfImgWide) and its recipe.
# (kernel size, channels, stride) of the convolutions ('same' padding).
WIDE_CONVS = ((3, 32, 2), (3, 64, 2), (3, 64, 1))
WIDE_DROPOUT = 0.25
WIDE_STANDARDIZE = True  # per-image standardisation of the input
WIDE_EPOCHS = 14
WIDE_LR = 3e-3
WIDE_MAX_SHIFT = 2
TRAIN_COMMAND = (
    'python -m mmvaeplus_jax.evaluation.classifiers --dataset rebuilt'
    ' --data_dir DATA_DIR --manual_dir ../shared/data --out {out}'
)


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
  """uint8 images -> float32 in [0, 1]; float images unchanged."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images


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


def shift_images(images, shifts) -> Array:
  """Translates each image by whole pixels, edges replicated.

  `out[n, i, j] = images[n, clip(i - dy_n), clip(j - dx_n)]` (clip to the
  image), so a positive `dy` moves the content down and a positive `dx`
  moves it right; shift 0 is the identity.

  Args:
    images: `[N, H, W, C]` (any dtype; kept).
    shifts: `[N, 2]` integer (dy, dx) per image.

  Returns:
    `[N, H, W, C]` shifted images.
  """
  images = jnp.asarray(images)
  shifts = jnp.asarray(shifts, jnp.int32)
  _, h, w, _ = images.shape
  rows = jnp.clip(jnp.arange(h)[None] - shifts[:, :1], 0, h - 1)  # [N, H]
  cols = jnp.clip(jnp.arange(w)[None] - shifts[:, 1:], 0, w - 1)  # [N, W]
  out = jnp.take_along_axis(images, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(out, cols[:, None, :, None], axis=2)


def random_translate(key, images, max_shift: int) -> Array:
  """Random translations by up to `max_shift` pixels (uniform integers in
  `[-max_shift, max_shift]` per image and axis; `shift_images`).

  Args:
    key: PRNG key (the only source of randomness).
    images: `[N, H, W, C]`.
    max_shift: largest shift in pixels (0: images unchanged).

  Returns:
    `[N, H, W, C]` shifted images, same dtype.
  """
  if max_shift < 0:
    raise ValueError(f'max_shift must be >= 0, got {max_shift}')
  if max_shift == 0:
    return jnp.asarray(images)
  shifts = jax.random.randint(key, (images.shape[0], 2), -max_shift,
                              max_shift + 1)
  return shift_images(images, shifts)


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
}
# What newly trained classifiers use (`train_classifier` with arch=None).
DEFAULT_ARCH = {IMAGE_SHAPE: 'wide', (28, 28, 1): 'digit',
                (32, 32, 3): 'digit'}
# Training recipe per architecture (defaults of `train_classifier`,
# `train_and_evaluate` and the command line): epochs, Adam learning rate
# (peak of a one-cycle cosine schedule or constant), batch size, random
# translation of up to `max_shift` pixels.
RECIPES = {
    'official': dict(epochs=15, lr=1e-3, lr_schedule='constant',
                     batch_size=128, max_shift=0),
    'wide': dict(epochs=WIDE_EPOCHS, lr=WIDE_LR, lr_schedule='onecycle',
                 batch_size=128, max_shift=WIDE_MAX_SHIFT),
    'digit': dict(epochs=15, lr=1e-3, lr_schedule='constant',
                  batch_size=128, max_shift=0),
}
LR_SCHEDULES = ('constant', 'onecycle')


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


def module_for(image_shape, arch: str | None = None) -> nn.Module:
  """The classifier module for images of `image_shape` (`[H, W, C]`):
  architecture `arch`, by default the first listed for the shape (the
  official one for PolyMNIST)."""
  image_shape = tuple(int(d) for d in image_shape)
  if arch is None and image_shape in ARCHITECTURES:
    arch = ARCHITECTURES[image_shape][0]
  return MODULES[check_arch(arch, image_shape)]


@functools.lru_cache(maxsize=None)
def _abstract_params(image_shape=IMAGE_SHAPE, arch: str | None = None):
  """ShapeDtypeStructs of the params (tracing only, nothing compiles)."""
  image_shape = tuple(image_shape)
  return jax.eval_shape(
      lambda: module_for(image_shape, arch).init(
          jax.random.key(0), jnp.zeros((1,) + image_shape))['params'])


def _shapes(tree):
  shapes = jax.tree.map(lambda x: tuple(x.shape), tree)
  return jax.tree.structure(shapes), jax.tree.leaves(shapes)


def architecture_of(params: Params) -> tuple[tuple[int, ...], str]:
  """(image shape, architecture name) that `params` belong to (static: from
  the parameter shapes alone, so it works under `jax.jit`)."""
  got = _shapes(params)
  for image_shape, archs in ARCHITECTURES.items():
    for arch in archs:
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


def _module_of(params: Params, images) -> nn.Module:
  """The module of `params`, checked against the images' shape."""
  check_arch(None, images.shape[1:])  # a known image shape
  image_shape, arch = architecture_of(params)
  if tuple(images.shape[1:]) != image_shape:
    raise ValueError(
        f'classifier of {arch!r} for images {list(image_shape)} got images'
        f' of shape {list(images.shape)}')
  return MODULES[arch]


@functools.partial(jax.jit, static_argnames=('image_shape', 'arch'))
def init(key, image_shape=IMAGE_SHAPE, arch: str | None = None) -> Params:
  """Fresh params of classifier `arch` for `image_shape` (default: the first
  architecture of the shape, PolyMNIST's official `ClfImg`).

  'official' and 'digit': PyTorch's default initialisation, every kernel
  and bias of a layer U(+-1/sqrt(fan_in)) (fan_in = kh kw c_in for a conv,
  d_in for a dense layer). 'wide': LeCun-uniform kernels U(+-sqrt(3 /
  fan_in)) (variance 1 / fan_in, Flax's default scale) and zero biases.
  These are the distributions the modules' own initialisers give; drawn
  here with a single random call, because Flax's per-parameter key
  derivation takes ~10 s to compile on CPU.
  """
  image_shape = tuple(image_shape)
  check_arch(None, image_shape)  # a known shape
  arch = check_arch(arch or ARCHITECTURES[image_shape][0], image_shape)
  lecun = arch == 'wide'
  abstract = _abstract_params(tuple(image_shape), arch)
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
  """Eval-mode log-probabilities `[N, 10]` of images `[N, *image_shape]`
  (the architecture follows from the parameter shapes, `arch_of`)."""
  return _module_of(params, images).apply({'params': params}, images)


@jax.jit
def features(params: Params, images) -> Array:
  """Eval-mode penultimate features (for FD_clf): `[N, 128]` for `ClfImg`
  and `ClfImgWide`, `[N, 50]` for `DigitClf`."""
  return _module_of(params, images).apply(
      {'params': params}, images, return_features=True)


def classify(clf_params: Mapping[str, Params], name: str, images) -> Array:
  """Log-probs `[N, 10]` of modality `name`'s classifier.

  The `classify(clf_params, name, x)` contract of `evaluation.coherence`:
  `clf_params` is `{modality name: params}` (see `load_classifiers`); the
  architecture follows from each modality's parameter shapes.
  """
  return log_probs(clf_params[name], images)


# ------------------------------------------------------------------ training


def _loss(params, images, labels, dropout_key):
  lp = MODULES[arch_of(params)].apply(
      {'params': params}, images, train=True, rngs={'dropout': dropout_key})
  return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))


def _optimizer(lr: float, lr_schedule: str, total_steps: int):
  """Adam with a constant rate or a one-cycle cosine schedule (warm-up over
  the first 30 % of `total_steps` to `lr`, then cosine decay)."""
  if lr_schedule == 'constant':
    return optax.adam(lr)
  if lr_schedule == 'onecycle':
    return optax.adam(optax.cosine_onecycle_schedule(max(total_steps, 1), lr))
  raise ValueError(f'unknown lr_schedule {lr_schedule!r}; choose one of'
                   f' {list(LR_SCHEDULES)}')


@functools.partial(
    jax.jit, static_argnames=('lr', 'lr_schedule', 'total_steps',
                              'max_shift'))
def _train_step(params, opt_state, images, labels, idx, key, *, lr,
                lr_schedule, total_steps, max_shift):
  """One Adam step on the examples `idx [batch]` of the whole training set,
  randomly translated by up to `max_shift` pixels.

  (A Python loop of jitted steps: on XLA:CPU a `lax.scan` over the steps runs
  the convolutions about 5x slower.)
  """
  x = images[idx]
  dropout_key = key  # as before translations (the official recipe)
  if max_shift:
    shift_key, dropout_key = jax.random.split(key)
    x = random_translate(shift_key, x, max_shift)
  loss, grads = jax.value_and_grad(_loss)(params, x, labels[idx], dropout_key)
  updates, opt_state = _optimizer(lr, lr_schedule, total_steps).update(
      grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def recipe(arch: str, **overrides) -> dict[str, Any]:
  """`RECIPES[arch]` with the non-None `overrides` applied."""
  if arch not in RECIPES:
    raise ValueError(f'unknown classifier architecture {arch!r}; choose one'
                     f' of {list(RECIPES)}')
  out = dict(RECIPES[arch])
  unknown = set(overrides) - set(out)
  if unknown:
    raise ValueError(f'unknown recipe fields {sorted(unknown)}')
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


def train_classifier(
    key,
    images,
    labels,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    arch: str | None = None,
    lr_schedule: str | None = None,
    max_shift: int | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Params:
  """Trains one classifier with Adam; deterministic for a key.

  Each epoch draws a permutation from `fold_in(key, epoch)` and takes
  `N // batch_size` steps (the last partial batch is dropped); dropout and
  translation keys come from the same epoch key and the step index. Every
  option left None takes the value of `RECIPES[arch]`.

  Args:
    key: PRNG key (init, permutations, dropout).
    images: `[N, *image_shape]` uint8 or float in [0, 1], a shape of
      `ARCHITECTURES`.
    labels: `[N]` integer digit labels.
    epochs: number of passes over the data.
    batch_size: examples per Adam step (capped at N).
    lr: Adam learning rate (the peak of the one-cycle schedule).
    arch: architecture name (`ARCHITECTURES[image shape]`); None:
      `DEFAULT_ARCH` of the image shape ('wide' for PolyMNIST).
    lr_schedule: 'constant' or 'onecycle' (`_optimizer`).
    max_shift: random translation of the training images, in pixels
      (`random_translate`; 0: none).
    on_epoch_end: optional `(epoch, mean train loss)` hook for logging.

  Returns:
    Trained params.
  """
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  if (images.ndim != 4 or tuple(images.shape[1:]) not in ARCHITECTURES
      or labels.shape != images.shape[:1]):
    raise ValueError(
        f'images must be [N, H, W, C] with [H, W, C] in'
        f' {[list(s) for s in ARCHITECTURES]} and labels [N], got'
        f' {list(images.shape)} and {list(labels.shape)}')
  arch = check_arch(arch, images.shape[1:])
  r = recipe(arch, epochs=epochs, batch_size=batch_size, lr=lr,
             lr_schedule=lr_schedule, max_shift=max_shift)
  epochs, lr, max_shift = int(r['epochs']), float(r['lr']), int(r['max_shift'])
  batch_size = int(min(r['batch_size'], images.shape[0]))
  steps = images.shape[0] // batch_size
  opts = dict(lr=lr, lr_schedule=str(r['lr_schedule']),
              total_steps=epochs * steps, max_shift=max_shift)
  init_key, loop_key = jax.random.split(key)
  params = init(init_key, tuple(images.shape[1:]), arch)
  opt_state = _optimizer(lr, opts['lr_schedule'], epochs * steps).init(params)
  for epoch in range(epochs):
    epoch_key = jax.random.fold_in(loop_key, epoch)
    perm = jax.random.permutation(jax.random.fold_in(epoch_key, 0),
                                  images.shape[0])
    perm = perm[:steps * batch_size].reshape((steps, batch_size))
    drop_key = jax.random.fold_in(epoch_key, 1)
    losses = []
    for i in range(steps):
      params, opt_state, loss = _train_step(
          params, opt_state, images, labels, perm[i],
          jax.random.fold_in(drop_key, i), **opts)
      losses.append(loss)
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(jnp.mean(jnp.stack(losses))))
  return params


@jax.jit
def _correct(params, images, labels, mask):
  pred = jnp.argmax(log_probs(params, images), axis=-1)
  return jnp.sum((pred == labels) & mask)


def accuracy(params: Params, images, labels, *, batch_size: int = 1000
             ) -> float:
  """Eval-mode accuracy (exact count over all N examples).

  Args:
    params: classifier params.
    images: `[N, *image_shape]` uint8 or float.
    labels: `[N]` integer labels.
    batch_size: examples per jitted call (the last batch is padded).
  """
  images, labels = np.asarray(images), np.asarray(labels, np.int32)
  n = len(labels)
  if n == 0:
    raise ValueError('accuracy needs at least one example, got 0')
  batch_size = min(batch_size, n)
  correct = 0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    valid = len(y)
    if valid < batch_size:  # pad to keep one compiled shape
      pad = batch_size - valid
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
    mask = np.arange(batch_size) < valid
    correct += int(_correct(params, x, y, mask))
  return correct / n


# ------------------------------------------------------------------ storage


def save_classifiers(
    directory: os.PathLike | str,
    clf_params: Mapping[str, Params],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes one orbax checkpoint per modality and `classifiers.json`.

  Args:
    directory: output folder (created; existing checkpoints are replaced).
    clf_params: `{modality name: classifier params}`.
    metadata: JSON-serialisable extras (test accuracies, training config),
      stored beside the modality list and each modality's image shape and
      architecture name (`archs`).
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    for name, params in clf_params.items():
      ckptr.save(directory / name, params, force=True)
    ckptr.wait_until_finished()
  meta = {'modalities': list(clf_params),
          'image_shapes': {n: list(image_shape_of(p))
                           for n, p in clf_params.items()},
          'archs': {n: arch_of(p) for n, p in clf_params.items()}}
  meta.update(dict(metadata or {}))
  (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + '\n')


def load_classifiers(
    directory: os.PathLike | str,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Params], dict[str, Any]]:
  """Reads classifiers written by `save_classifiers` / `main`.

  Args:
    directory: the folder given as `--out` when training.
    names: modalities to load (default: all listed in `classifiers.json`).

  Returns:
    (`{name: params}`, metadata dict from `classifiers.json`).

  Raises:
    FileNotFoundError: the folder, its `classifiers.json` or a requested
      modality's checkpoint is missing; the message names the folder and the
      command that trains the classifiers.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  meta_path = directory / METADATA_FILE
  hint = ('Train them with:\n  ' + TRAIN_COMMAND.format(out=directory))
  if not meta_path.is_file():
    raise FileNotFoundError(
        f'No coherence classifiers in {directory} ({METADATA_FILE} not'
        f' found). {hint}')
  meta = json.loads(meta_path.read_text())
  names = list(meta['modalities'] if names is None else names)
  missing = [n for n in names if not (directory / n).is_dir()]
  if missing:
    raise FileNotFoundError(
        f'No coherence classifier checkpoint for modalities {missing} in'
        f' {directory} (it holds {meta["modalities"]}). {hint}')
  # Files without image_shapes predate them: PolyMNIST ClfImgs; files
  # without archs predate them: the first architecture of the shape.
  shapes = meta.get('image_shapes', {})
  archs = meta.get('archs', {})
  targets = {}
  for n in names:
    shape = tuple(shapes.get(n, IMAGE_SHAPE))
    arch = archs.get(n)
    targets[n] = _abstract_params(
        shape, check_arch(arch, shape) if arch is not None else None)
  with ocp.StandardCheckpointer() as ckptr:
    params = {n: ckptr.restore(directory / n, targets[n]) for n in names}
  return params, meta


# ---------------------------------------------------------------- command line


def distinct_items(split: Mapping[str, np.ndarray], name: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of modality `name`: each distinct source item once
  (first occurrence, in stored order) when the split has an `<name>_index`
  feature, else all examples."""
  index = split.get(f'{name}_index')
  if index is None:
    return split[name], split['label']
  _, first = np.unique(np.asarray(index), return_index=True)
  first = np.sort(first)
  return np.asarray(split[name])[first], np.asarray(split['label'])[first]


def image_names(split: Mapping[str, np.ndarray]) -> list[str]:
  """The image features of a split (`[N, H, W, C]`), sorted."""
  return sorted(k for k, v in split.items() if np.ndim(v) == 4)


def train_and_evaluate(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    arch: str | None = None,
    lr_schedule: str | None = None,
    max_shift: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Params], dict[str, float]]:
  """Trains one classifier per modality; returns params and test accuracy.

  Modality i uses key `fold_in(key(seed), i)`. Splits with an
  `<name>_index` feature (MNIST-SVHN's pairs, which repeat each source item
  30 times) train and test on each distinct item once (`distinct_items`).
  `arch` (None: `DEFAULT_ARCH` of each modality's image shape) and the
  options left None follow `train_classifier` (`RECIPES[arch]`).
  """
  key = jax.random.key(seed)
  clf_params, accs = {}, {}
  for i, name in enumerate(names):
    start = time.time()
    train_x, train_y = distinct_items(train, name)
    test_x, test_y = distinct_items(test, name)
    name_arch = check_arch(arch, np.shape(train_x)[1:])
    name_epochs = recipe(name_arch, epochs=epochs)['epochs']
    clf_params[name] = train_classifier(
        jax.random.fold_in(key, i), train_x, train_y,
        epochs=epochs, batch_size=batch_size, lr=lr, arch=name_arch,
        lr_schedule=lr_schedule, max_shift=max_shift,
        on_epoch_end=lambda e, l, n=name, t=name_epochs: log(
            f'  {n} epoch {e + 1}/{t}: train loss {l:.4f}'))
    accs[name] = accuracy(clf_params[name], test_x, test_y)
    log(f'{name}: test accuracy {accs[name]:.4f}'
        f' ({time.time() - start:.1f} s)')
  return clf_params, accs


def main(argv: Sequence[str] | None = None) -> None:
  """Trains and stores the coherence classifiers of a dataset."""
  parser = argparse.ArgumentParser(
      description='Train one digit classifier per image modality (PolyMNIST '
      'ClfImgWide or ClfImg, MNIST / SVHN DigitClf) on the train split; '
      'store them with their test accuracies.')
  parser.add_argument('--dataset', default='mini',
                      help='PolyMNIST config (mini, rebuilt, official) or a'
                      ' full name such as mnist_svhn/dm1')
  parser.add_argument('--data_dir', required=True,
                      help='TFDS data directory')
  parser.add_argument('--manual_dir', default=None,
                      help='inputs of rebuilt / official (../shared/data)')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--arch', default=None,
                      help="PolyMNIST: 'wide' (default) or 'official'"
                      " (ClfImg); MNIST / SVHN: 'digit'")
  parser.add_argument('--epochs', type=int, default=None,
                      help='default: the recipe of the architecture'
                      ' (RECIPES; official 15, wide %d)' % WIDE_EPOCHS)
  parser.add_argument('--batch_size', type=int, default=None)
  parser.add_argument('--lr', type=float, default=None)
  parser.add_argument('--lr_schedule', default=None, choices=LR_SCHEDULES)
  parser.add_argument('--max_shift', type=int, default=None,
                      help='random translation in pixels (augmentation)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  # Imported here: TFDS is only needed by the command line.
  from mmvaeplus_jax.input import builders  # pylint: disable=g-import-not-at-top

  start = time.time()
  train = builders.load_split(args.dataset, 'train', args.data_dir,
                              manual_dir=args.manual_dir)
  test = builders.load_split(args.dataset, 'test', args.data_dir,
                             manual_dir=args.manual_dir)
  names = image_names(train)
  # The recipe of the first modality's architecture (the same for all: one
  # dataset's image modalities share a shape family); unknown names fail
  # here, before any training.
  arch = check_arch(args.arch, np.shape(train[names[0]])[1:])
  for name in names[1:]:
    check_arch(args.arch, np.shape(train[name])[1:])
  r = recipe(arch, epochs=args.epochs, batch_size=args.batch_size,
             lr=args.lr, lr_schedule=args.lr_schedule,
             max_shift=args.max_shift)
  print(f'Loaded {args.dataset}: train {len(train["label"])}, test'
        f' {len(test["label"])} ({time.time() - start:.1f} s)')
  train_start = time.time()
  clf_params, accs = train_and_evaluate(
      train, test, names, seed=args.seed, epochs=args.epochs,
      batch_size=args.batch_size, lr=args.lr, arch=args.arch,
      lr_schedule=args.lr_schedule, max_shift=args.max_shift)
  train_seconds = time.time() - train_start
  metadata = {
      'test_accuracy': accs,
      'mean_test_accuracy': float(np.mean(list(accs.values()))),
      'config': {
          'dataset': args.dataset, 'arch': arch, 'epochs': r['epochs'],
          'batch_size': r['batch_size'], 'lr': r['lr'],
          'lr_schedule': r['lr_schedule'], 'max_shift': r['max_shift'],
          'seed': args.seed, 'optimizer': 'adam',
          'train_seconds': round(train_seconds, 1),
          'num_train': int(len(train['label'])),
          'num_test': int(len(test['label'])),
          # Distinct items each classifier saw (< num_train for MNIST-SVHN,
          # whose pairs repeat items; see distinct_items).
          'num_train_items': {n: int(len(distinct_items(train, n)[1]))
                              for n in names},
      },
  }
  save_classifiers(args.out, clf_params, metadata=metadata)
  print(f'Mean test accuracy {metadata["mean_test_accuracy"]:.4f}; saved to'
        f' {pathlib.Path(args.out).absolute()} ({time.time() - start:.1f} s)')


if __name__ == '__main__':
  main()
