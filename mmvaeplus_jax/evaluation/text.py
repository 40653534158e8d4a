"""Generated captions: decoder logits -> token ids -> text.

A text modality (CUB's `caption`, `models/cub.py`) has a 1-D event shape
`[L]` of int token ids; its decoder returns logits `[N, L, V]` of one
categorical per position. Two ways to read a caption out of them:

* `argmax_ids`: the most likely token at every position (the official
  code's `argmax` decoding, and what the caption classifiers and the colour
  metric read);
* `sample_ids`: one token drawn per position from softmax(logits / T).

`to_texts` turns ids into strings with the dataset's vocabulary
(`input.captions.decode`: up to the first `<eos>`, `<pad>` dropped).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.input import captions


def is_text(modality) -> bool:
  """Whether a modality holds token ids: a 1-D event shape `[L]`."""
  return len(tuple(modality.event_shape)) == 1


def text_names(model) -> list[str]:
  """The model's text modalities, in model order."""
  return [m.name for m in model.modalities if is_text(m)]


def argmax_ids(logits):
  """`[..., L, V]` logits -> `[..., L]` int32 ids, the argmax per position."""
  xp = np if isinstance(logits, np.ndarray) else jnp
  return xp.argmax(logits, axis=-1).astype(xp.int32)


def sample_ids(key, logits, temperature: float = 1.0):
  """`[..., L, V]` logits -> `[..., L]` int32 ids, each position drawn from
  softmax(logits / temperature) independently."""
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0, got {temperature}; use'
                     ' argmax_ids for the most likely tokens')
  return jax.random.categorical(key, jnp.asarray(logits) / temperature,
                                axis=-1).astype(jnp.int32)


def to_texts(ids, vocabulary: captions.Vocabulary) -> list[str]:
  """`[N, L]` token ids -> N strings (`captions.decode`)."""
  ids = np.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f'to_texts takes ids [N, L], got shape {ids.shape}')
  if ids.size and (ids.min() < 0 or ids.max() >= vocabulary.size):
    raise ValueError(
        f'token ids outside the vocabulary of {vocabulary.size} words'
        f' (range {ids.min()}..{ids.max()}): is it the dataset the model was'
        ' trained on?')
  return [captions.decode(row, vocabulary) for row in ids]


def mentions(ids, vocabulary: captions.Vocabulary,
             word_sets: Sequence[Sequence[str]]) -> np.ndarray:
  """Which captions mention which word sets: bool `[N, len(word_sets)]`.

  Caption n mentions set k when any token before its first `<eos>` is one of
  `word_sets[k]` (words outside the vocabulary can never match).
  """
  ids = np.asarray(ids)
  valid = np.arange(ids.shape[-1]) < captions.lengths(ids)[:, None] - (
      ids == captions.EOS_ID).any(-1)[:, None]
  out = np.zeros((ids.shape[0], len(word_sets)), bool)
  for k, words in enumerate(word_sets):
    wanted = [vocabulary.ids[w] for w in words if w in vocabulary.ids]
    if wanted:
      out[:, k] = (np.isin(ids, wanted) & valid).any(-1)
  return out
