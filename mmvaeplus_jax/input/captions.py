"""CUB captions as token ids: tokenise, build the vocabulary, encode, decode.

Pure functions of strings and arrays (no files, except `load_vocabulary`),
used by the TFDS builder `cub_image_captions` (datasets/cub_image_captions/)
and by whatever turns ids back into text (docs/cub.md).

The rules are MMVAE's, matched line by line against iffsid/mmvae
`src/datasets.py` (`CUBSentences._create_vocab`, `_create_data`; commit
c75f0999) and the identical copy in srl-ethz/mmvaeplus
`mmvaeplus/dataset_CUB.py` (commit 77bae3ab):

* tokens: `nltk.word_tokenize`, with no lowercasing or other cleaning (the
  caption files are lowercase except for a handful of proper names, which
  stay as they are);
* vocabulary from the train captions only: the specials `<exc>` = 0 (out of
  vocabulary), `<pad>` = 1, `<eos>` = 2, then every word seen more than
  `min_occ = 3` times (count > 3, strictly), in the order words are first
  seen (their `OrderedCounter`; a `collections.Counter` keeps first-seen
  order too); a word spelled like a special is never added twice;
* a caption: its first `max_length - 1 = 31` tokens, then `<eos>`, then
  `<pad>` up to `max_length = 32`; every token not in the vocabulary maps to
  `<exc>`; the length counts `<eos>` (their `length`);
* stored as JSON `{"w2i": {word: id}, "i2w": {"id": word}}` (their
  `cub.vocab`; JSON makes the `i2w` keys strings).

One deliberate difference: MMVAE splits the whole caption file into
sentences with `nltk.sent_tokenize` (punkt data, a run-time download) and
then calls `word_tokenize(sentence)`. Here each caption line is one sentence,
`nltk.word_tokenize(line, preserve_line=True)`, which needs no NLTK data and
keeps caption i on line i even where a caption has two sentences or lacks a
final period (where punkt would shift MMVAE's caption-to-image alignment).
Every line of the real caption files is one sentence ending in '.', so the
tokens are the same (data.md section 4).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

EXC, PAD, EOS = '<exc>', '<pad>', '<eos>'
SPECIAL_TOKENS = (EXC, PAD, EOS)
EXC_ID, PAD_ID, EOS_ID = 0, 1, 2
MAX_LENGTH = 32  # MMVAE's max_sequence_length: 31 words + <eos>
MIN_OCCURRENCES = 3  # MMVAE's min_occ: a word is kept if seen > 3 times
# Key of the word list in a prepared dataset's `info.metadata`
# (metadata.json in the dataset's version directory).
METADATA_KEY = 'vocabulary'


@functools.cache
def _word_tokenize():
  # Imported on first use: `import nltk` takes ~2 s, and every import of
  # `input.builders` registers the CUB builder, which imports this module.
  from nltk import tokenize  # pylint: disable=g-import-not-at-top
  return tokenize.word_tokenize


def tokenize(line: str) -> list[str]:
  """The tokens of one caption line (one sentence), case kept.

  `nltk.word_tokenize(line, preserve_line=True)`: the Treebank-style word
  tokenizer on the whole line, no sentence splitting, no NLTK data needed.
  """
  return _word_tokenize()(line, preserve_line=True)


def normalise(line: str) -> str:
  """The caption as its tokens joined by single spaces (what `decode`
  returns for a caption of <= 31 in-vocabulary tokens)."""
  return ' '.join(tokenize(line))


def split_lines(text: str) -> list[str]:
  """The caption lines of a caption file's text: one caption per '\\n'
  line, a final newline ending the last line (no empty caption after it)."""
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  return lines


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token ids: `words[i]` is the token of id i (MMVAE's `i2w`).

  `words` starts with `SPECIAL_TOKENS` (`<exc>` 0, `<pad>` 1, `<eos>` 2)
  and holds each token once.
  """

  words: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, 'words', tuple(self.words))
    if self.words[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
      raise ValueError(
          f'a vocabulary starts with {SPECIAL_TOKENS}, got'
          f' {self.words[:len(SPECIAL_TOKENS)]}')
    if len(set(self.words)) != len(self.words):
      repeated = sorted(w for w, n in collections.Counter(self.words).items()
                        if n > 1)
      raise ValueError(f'repeated tokens in a vocabulary: {repeated[:10]}')

  @functools.cached_property
  def ids(self) -> dict[str, int]:
    """Token -> id (MMVAE's `w2i`)."""
    return {w: i for i, w in enumerate(self.words)}

  @property
  def size(self) -> int:
    return len(self.words)

  def __len__(self) -> int:
    return len(self.words)

  def to_json(self) -> str:
    """MMVAE's `cub.vocab` format: `{"w2i": {...}, "i2w": {"0": ...}}`."""
    return json.dumps(
        {'w2i': self.ids, 'i2w': {str(i): w for i, w in enumerate(self.words)}},
        ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> Vocabulary:
    """From `to_json`'s format (MMVAE's `cub.vocab` too) or a word list."""
    return cls.from_object(json.loads(text))

  @classmethod
  def from_object(cls, obj) -> Vocabulary:
    """From a word list, or a `{"i2w": {"id": word}, ...}` mapping."""
    if isinstance(obj, Mapping):
      i2w = obj['i2w']
      n = len(i2w)
      if sorted(int(i) for i in i2w) != list(range(n)):
        raise ValueError('i2w ids are not 0..n-1')
      words = [i2w[str(i)] if str(i) in i2w else i2w[i] for i in range(n)]
      vocabulary = cls(tuple(words))
      if 'w2i' in obj and dict(obj['w2i']) != vocabulary.ids:
        raise ValueError('w2i and i2w disagree')
      return vocabulary
    return cls(tuple(obj))


def build_vocabulary(
    token_lists: Iterable[Sequence[str]],
    *,
    min_occurrences: int = MIN_OCCURRENCES,
) -> Vocabulary:
  """MMVAE's vocabulary of the (train) captions' tokens.

  Args:
    token_lists: the tokens of each caption, in caption-file order (the
      order decides the ids).
    min_occurrences: a token is kept if it occurs MORE than this many times.

  Returns:
    `<exc>`, `<pad>`, `<eos>`, then the kept tokens in first-seen order.
  """
  counts = collections.Counter()  # keeps first-seen order (a dict)
  for tokens in token_lists:
    counts.update(tokens)
  kept = [w for w, n in counts.items()
          if n > min_occurrences and w not in SPECIAL_TOKENS]
  return Vocabulary(SPECIAL_TOKENS + tuple(kept))


def encode(
    caption: str | Sequence[str],
    vocabulary: Vocabulary,
    *,
    max_length: int = MAX_LENGTH,
) -> np.ndarray:
  """Token ids of one caption: int32 `[max_length]`.

  Args:
    caption: a caption line (tokenised with `tokenize`) or its tokens.
    vocabulary: the ids; tokens not in it map to `<exc>` (0).
    max_length: the first `max_length - 1` tokens, then `<eos>`, then
      `<pad>` to `max_length`.
  """
  tokens = tokenize(caption) if isinstance(caption, str) else list(caption)
  tokens = tokens[:max_length - 1] + [EOS]
  tokens += [PAD] * (max_length - len(tokens))
  ids = vocabulary.ids
  return np.asarray([ids.get(w, EXC_ID) for w in tokens], np.int32)


def lengths(ids: np.ndarray) -> np.ndarray:
  """Tokens up to and including the first `<eos>` of each row of `ids`
  `[..., L]` (MMVAE's `length`); L for a row without `<eos>`."""
  ids = np.asarray(ids)
  is_eos = ids == EOS_ID
  first = np.argmax(is_eos, axis=-1)
  return np.where(is_eos.any(axis=-1), first + 1, ids.shape[-1])


def decode(ids: Sequence[int] | np.ndarray, vocabulary: Vocabulary) -> str:
  """The text of token ids `[L]`: tokens before the first `<eos>`, `<pad>`
  dropped, `<exc>` kept as '<exc>', joined by single spaces.

  For a caption s of at most 31 tokens, all in the vocabulary,
  `decode(encode(s, v), v) == normalise(s)`.
  """
  words = []
  for i in np.asarray(ids).tolist():
    if i == EOS_ID:
      break
    if i != PAD_ID:
      words.append(vocabulary.words[i])
  return ' '.join(words)


def load_vocabulary(path: os.PathLike | str) -> Vocabulary:
  """The vocabulary of a prepared dataset or of a vocabulary JSON file.

  Args:
    path: a prepared dataset's version directory (e.g.
      `DATA_DIR/cub_image_captions/cub23/1.0.0`, whose metadata.json holds
      the word list under `METADATA_KEY`), or a JSON file in `to_json`'s
      format (MMVAE's `cub.vocab` too).

  Raises:
    FileNotFoundError: neither a dataset directory with metadata.json nor a
      file.
  """
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  if path.is_dir():
    metadata = path / 'metadata.json'
    if not metadata.is_file():
      raise FileNotFoundError(
          f'{metadata}: not found; {path} is not a prepared'
          ' cub_image_captions directory (prepare it with'
          ' `python -m mmvaeplus_jax.tools.prepare_data'
          ' cub_image_captions/<config>`)')
    return Vocabulary.from_object(
        json.loads(metadata.read_text())[METADATA_KEY])
  return Vocabulary.from_json(path.read_text())


def vocabulary_from_info(info) -> Vocabulary:
  """The vocabulary of a prepared dataset from its `builder.info`."""
  return Vocabulary.from_object(info.metadata[METADATA_KEY])
