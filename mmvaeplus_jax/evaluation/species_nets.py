"""Species classifiers of CUB Image-Captions (coherence on CUB runs).

Two architectures, dispatched to by `classifier_nets` (their names are in
its `ARCHITECTURES`); the class count `C` (23 for `cub23`) and, for
captions, the vocabulary size `V` are module attributes taken from the data
and read back from the parameter shapes (`num_classes_of`,
`vocab_size_of`):

* 'species_image' (`SpeciesImageClf`), images `[N, 64, 64, 3]` (uint8 or
  float), NHWC, 3x3 convolutions, 'same' padding:

    per-image standardisation -> Conv(3->32, s2) -> ReLU
    -> Conv(32->64, s2) -> ReLU -> Conv(64->128, s2) -> ReLU
    -> Conv(128->128, s2) -> ReLU -> global average pool (128)
    -> Dropout -> Dense(128->128) -> ReLU (features) -> Dropout
    -> Dense(128->C) -> log_softmax

* 'species_caption' (`CaptionClf`), captions of `MAX_LENGTH` = 32 tokens,
  either int ids `[N, 32]` (real data) or float logits `[N, 32, V]` (the
  CUB caption decoder's output). Logits are decoded by ARGMAX per position
  (`to_ids`); in both cases every token after the first `<eos>` is replaced
  by `<pad>` (`truncate_after_eos`: real captions are unchanged, generated
  ones are read as the text they decode to); then:

    one-hot (V) -> Dense(V->64) (an embedding) -> Conv1D(64->128, 3) -> ReLU
    -> Conv1D(128->128, 3) -> ReLU -> max over positions (128)
    -> Dropout -> Dense(128->128) -> ReLU (features) -> Dropout
    -> Dense(128->C) -> log_softmax

  Ids outside `[0, V)` cannot be checked under jit: their one-hot row is
  all zeros (keep ids from the classifier's vocabulary).

Both: LeCun-uniform kernels, zero biases (`classifier_nets.init`);
`features` are the 128-d penultimate ReLU output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.input import captions
from mmvaeplus_jax.models import conv as conv_lib

Array = jax.Array

IMAGE_SHAPE = (64, 64, 3)
CAPTION_SHAPE = (captions.MAX_LENGTH,)  # int ids
FEATURE_DIM = 128
IMAGE_CONVS = ((3, 32, 2), (3, 64, 2), (3, 128, 2), (3, 128, 2))
EMBED_DIM = 64
TEXT_CONVS = ((3, 128), (3, 128))  # (kernel width, channels)
DROPOUT = 0.25
# Architecture name -> input shape of one example (ids for captions).
INPUT_SHAPES = {'species_image': IMAGE_SHAPE,
                'species_caption': CAPTION_SHAPE}


def _standardize(x) -> Array:
  """Per-image standardisation (`[N, H, W, C]` -> float32, same shape)."""
  x = api.to_float(jnp.asarray(x))
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.maximum(std, 1.0 / 255.0)


def _head(h, num_classes, train, dropout_rate, return_features):
  """Dropout -> Dense(128) -> ReLU [features] -> Dropout -> Dense(C) ->
  log_softmax (`[N, D]` -> `[N, 128]` or `[N, C]`)."""
  h = nn.Dropout(dropout_rate, deterministic=not train)(h)
  h = nn.relu(nn.Dense(FEATURE_DIM, name='fc_0')(h))
  if return_features:
    return h
  h = nn.Dropout(dropout_rate, deterministic=not train)(h)
  return jax.nn.log_softmax(nn.Dense(num_classes, name='fc_1')(h), axis=-1)


class SpeciesImageClf(nn.Module):
  """Bird species from a 64x64 image (module docstring)."""

  num_classes: int
  dropout_rate: float = DROPOUT

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """`[N, 64, 64, 3]` -> `[N, C]` log-probs (or `[N, 128]` features)."""
    h = _standardize(x)
    conv_fn = conv_lib.make_conv_general_dilated(
        conv_lib.resolve_wgrad_chunk(conv_lib.AUTO))
    for i, (k, c, s) in enumerate(IMAGE_CONVS):
      pad = (k - 1) // 2
      h = nn.relu(nn.Conv(c, (k, k), strides=(s, s),
                          padding=((pad, pad), (pad, pad)),
                          conv_general_dilated=conv_fn, name=f'conv_{i}')(h))
    h = jnp.mean(h, axis=(1, 2))  # [N, 128]
    return _head(h, self.num_classes, train, self.dropout_rate,
                 return_features)


def truncate_after_eos(ids) -> Array:
  """`[N, L]` int ids -> same, every token after the first `<eos>` set to
  `<pad>` (the `<eos>` itself is kept)."""
  ids = jnp.asarray(ids, jnp.int32)
  is_eos = ids == captions.EOS_ID
  after = (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0  # strictly after
  return jnp.where(after, captions.PAD_ID, ids)


def to_ids(x, vocab_size: int) -> Array:
  """Captions as int ids `[N, L]`: int ids `[N, L]` as they are, float
  logits `[N, L, V]` by argmax over the vocabulary.

  Raises:
    ValueError: any other shape or dtype (names the two accepted forms).
  """
  x = jnp.asarray(x)
  if x.ndim == 2 and jnp.issubdtype(x.dtype, jnp.integer):
    return x.astype(jnp.int32)
  if (x.ndim == 3 and jnp.issubdtype(x.dtype, jnp.floating)
      and x.shape[-1] == vocab_size):
    return jnp.argmax(x, axis=-1).astype(jnp.int32)
  raise ValueError(
      f'caption classifier (vocabulary {vocab_size}) takes int ids [N, L] or'
      f' float logits [N, L, {vocab_size}], got {x.dtype} {list(x.shape)}')


class CaptionClf(nn.Module):
  """Bird species from a caption (module docstring)."""

  num_classes: int
  vocab_size: int
  dropout_rate: float = DROPOUT

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """`[N, 32]` ids or `[N, 32, V]` logits -> `[N, C]` log-probs (or
    `[N, 128]` features)."""
    ids = truncate_after_eos(to_ids(x, self.vocab_size))
    h = jax.nn.one_hot(ids, self.vocab_size)  # [N, L, V]
    h = nn.Dense(EMBED_DIM, name='embed')(h)  # [N, L, 64]
    for i, (k, c) in enumerate(TEXT_CONVS):
      h = nn.relu(nn.Conv(c, (k,), padding='SAME', name=f'conv_{i}')(h))
    h = jnp.max(h, axis=1)  # [N, 128]
    return _head(h, self.num_classes, train, self.dropout_rate,
                 return_features)


def module(arch: str, num_classes: int, vocab_size: int | None = None
           ) -> nn.Module:
  """The module of species architecture `arch` with `num_classes` classes
  (and, for 'species_caption', vocabulary `vocab_size`).

  Raises:
    ValueError: unknown name, or a missing / non-positive size.
  """
  if arch not in INPUT_SHAPES:
    raise ValueError(f'unknown species classifier {arch!r}; choose one of'
                     f' {list(INPUT_SHAPES)}')
  if not num_classes or num_classes < 2:
    raise ValueError(f'{arch} needs num_classes >= 2 (the labels of the'
                     f' data), got {num_classes}')
  if arch == 'species_image':
    return SpeciesImageClf(int(num_classes))
  if not vocab_size or vocab_size < 4:
    raise ValueError(f'species_caption needs the vocabulary size of the data'
                     f' (vocab_size >= 4), got {vocab_size}')
  return CaptionClf(int(num_classes), int(vocab_size))


def example_input(arch: str) -> Array:
  """A `[1, *input shape]` zero input (int ids for captions) for `init`."""
  dtype = jnp.int32 if arch == 'species_caption' else jnp.float32
  return jnp.zeros((1,) + INPUT_SHAPES[arch], dtype)


def arch_of_keys(params) -> str | None:
  """The species architecture whose top-level layer names `params` has, or
  None (a digit classifier)."""
  keys = set(params)
  if keys == {'embed', 'fc_0', 'fc_1'} | {f'conv_{i}'
                                         for i in range(len(TEXT_CONVS))}:
    return 'species_caption'
  if keys == {'fc_0', 'fc_1'} | {f'conv_{i}' for i in range(len(IMAGE_CONVS))}:
    return 'species_image'
  return None


def check_input(arch: str, vocab_size: int | None, x) -> None:
  """Raises ValueError naming the expected input when `x` does not fit."""
  shape = tuple(x.shape[1:])
  if arch == 'species_image':
    if shape != IMAGE_SHAPE:
      raise ValueError(f'species_image classifier takes images'
                       f' [N, {", ".join(map(str, IMAGE_SHAPE))}], got'
                       f' {list(x.shape)}')
    return
  ok = ((len(shape) == 1 and jnp.issubdtype(x.dtype, jnp.integer))
        or (len(shape) == 2 and shape[-1] == vocab_size
            and jnp.issubdtype(x.dtype, jnp.floating)))
  if not ok or shape[0] != CAPTION_SHAPE[0]:
    raise ValueError(
        f'species_caption classifier (vocabulary {vocab_size}) takes int ids'
        f' [N, {CAPTION_SHAPE[0]}] or float logits [N, {CAPTION_SHAPE[0]},'
        f' {vocab_size}], got {x.dtype} {list(x.shape)}')
