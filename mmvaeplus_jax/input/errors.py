"""The input floor's one error: a missing or corrupt input file.

Every reader of `input/` (MNIST IDX files, PolyMNIST backgrounds and
published PNGs, the offline demo inputs, SVHN) raises `InputFileError` with a
message naming the file, what is wrong with it and how to obtain a good one.
"""

from __future__ import annotations

import os


class InputFileError(ValueError):
  """A missing or corrupt input file; the message names it and its source."""


def file_error(
    path: os.PathLike | str, reason: str, hint: str) -> InputFileError:
  """`InputFileError('{path}: {reason}. {hint}')`, for `raise`."""
  return InputFileError(f'{path}: {reason}. {hint}')
