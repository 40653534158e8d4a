"""pytorch-fid's FID Inception weights as Flax variables (torch-free).

`load_inception_variables(path)` reads the official
`pt_inception-2015-12-05-6726825d.pth` (`torch_pickle`, no torch), checks its
SHA-256 prefix, converts it to the variables of `inception.FIDInceptionV3`
once (`convert_state_dict`) and caches them as an `.npz` keyed by the file's
SHA-256. A missing or corrupt file raises `InceptionWeightsError`; there is
no fallback to random weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import pickle
import tempfile
from typing import Any, Mapping
import warnings
import zipfile

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.evaluation import inception
from mmvaeplus_jax.evaluation import torch_pickle

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}

FID_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
    + FID_WEIGHTS_FILENAME
)
# torch.hub naming convention: the file name ends in the first 8 hex digits of
# the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = '6726825d'

_CACHE_VERSION = 1  # bump when the converted layout changes


class InceptionWeightsError(RuntimeError):
  """The FID Inception weights file is missing, corrupt or not the right one."""


_BN_NAMES = {  # torch BatchNorm2d name -> (collection, Flax name)
    'weight': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{flat Flax variable path: shape} of `FIDInceptionV3` (470 entries)."""
  abstract = jax.eval_shape(
      inception.FIDInceptionV3().init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
  )
  flat = traverse_util.flatten_dict(abstract)
  return {k: tuple(v.shape) for k, v in flat.items()}


def _check_variables(flat: Mapping[tuple[str, ...], np.ndarray]) -> None:
  expected = _expected_shapes()
  missing = sorted('/'.join(k) for k in expected.keys() - flat.keys())
  extra = sorted('/'.join(k) for k in flat.keys() - expected.keys())
  wrong = sorted(
      f'{"/".join(k)}: {flat[k].shape} != {expected[k]}'
      for k in expected.keys() & flat.keys()
      if tuple(flat[k].shape) != expected[k]
  )
  if missing or extra or wrong:
    raise InceptionWeightsError(
        'the weights do not fit the FID InceptionV3: '
        f'{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} '
        f'unexpected (e.g. {extra[:3]}), {len(wrong)} with wrong shapes '
        f'(e.g. {wrong[:3]})'
    )


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> Variables:
  """pytorch-fid FID InceptionV3 state dict -> Flax variables (float32).

  `X.conv.weight` [O, I, kH, kW] -> `params/X/conv/kernel` [kH, kW, I, O];
  `X.bn.{weight,bias}` -> `params/X/bn/{scale,bias}`;
  `X.bn.{running_mean,running_var}` -> `batch_stats/X/bn/{mean,var}`;
  `fc.*` and `*.num_batches_tracked` are dropped. Every one of the 470
  variables must be present with the right shape, and nothing else
  (e.g. torchvision's `AuxLogits`) is accepted.

  Args:
    state_dict: {torch key: array}.

  Returns:
    {'params': ..., 'batch_stats': ...}, nested dicts of float32 numpy arrays.
  """
  flat = {}
  for key, value in state_dict.items():
    parts = key.split('.')
    if parts[0] == 'fc' or parts[-1] == 'num_batches_tracked':
      continue
    if len(parts) < 3:
      raise InceptionWeightsError(f'unexpected state-dict entry {key!r}')
    *module, layer, name = parts
    value = np.asarray(value, np.float32)
    if layer == 'conv' and name == 'weight' and value.ndim == 4:
      flat[('params', *module, 'conv', 'kernel')] = value.transpose(2, 3, 1, 0)
    elif layer == 'bn' and name in _BN_NAMES:
      collection, leaf = _BN_NAMES[name]
      flat[(collection, *module, 'bn', leaf)] = value
    else:
      raise InceptionWeightsError(f'unexpected state-dict entry {key!r}')
  _check_variables(flat)
  return traverse_util.unflatten_dict(flat)



def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
  """`$XDG_CACHE_HOME/mmvaeplus_jax` (default `~/.cache/mmvaeplus_jax`)."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
  return pathlib.Path(root).expanduser() / 'mmvaeplus_jax'


def _weights_error(path, expected: str, actual: str) -> InceptionWeightsError:
  return InceptionWeightsError(
      f'FID Inception weights {str(path)!r}: expected a file whose SHA-256 '
      f'starts with {expected!r}, got {actual}. Download the official '
      f'pytorch-fid weights ({FID_WEIGHTS_FILENAME}) from {FID_WEIGHTS_URL} '
      'and pass its path; FID is never computed with other (e.g. random) '
      'weights.'
  )


def load_inception_variables(
    path: str | os.PathLike,
    *,
    sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Variables:
  """Loads pytorch-fid's FID Inception weights as Flax variables, torch-free.

  The file's SHA-256 must start with `sha256_prefix`: for the official
  `pt_inception-2015-12-05-6726825d.pth` that is '6726825d', the 8 hex digits
  in its name (torch.hub's convention). The converted variables are cached as
  `<cache_dir>/fid_inception_v1_<sha256>.npz`, so later loads skip the
  unpickling and conversion (the source is still hashed).

  Args:
    path: the user-supplied `.pth` (download: `FID_WEIGHTS_URL`).
    sha256_prefix: expected leading hex digits (at least 8) of the SHA-256.
    cache_dir: where the converted `.npz` lives (default
      `default_cache_dir()`).
    use_cache: read/write the `.npz` cache.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays.

  Raises:
    InceptionWeightsError: the file is absent, its hash does not match, or
      its contents do not fit the FID InceptionV3.
  """
  path = pathlib.Path(path).expanduser()
  prefix = sha256_prefix.lower()
  if len(prefix) < 8 or any(c not in '0123456789abcdef' for c in prefix):
    raise ValueError(f'sha256_prefix must be >= 8 hex digits: {prefix!r}')
  if not path.is_file():
    raise _weights_error(path, prefix, 'no such file')
  digest = file_sha256(path)
  if not digest.startswith(prefix):
    raise _weights_error(path, prefix, f'sha256 {digest} (corrupt or wrong)')

  cache_file = None
  if use_cache:
    cache_dir = pathlib.Path(cache_dir or default_cache_dir()).expanduser()
    cache_file = cache_dir / f'fid_inception_v{_CACHE_VERSION}_{digest}.npz'
    if cache_file.is_file():
      try:
        with np.load(cache_file) as npz:
          flat = {tuple(k.split('/')): npz[k] for k in npz.files}
        _check_variables(flat)
        return traverse_util.unflatten_dict(flat)
      except (OSError, ValueError, KeyError, zipfile.BadZipFile,
              InceptionWeightsError) as e:
        warnings.warn(f'ignoring unreadable FID cache {cache_file}: {e}')

  try:
    state_dict = torch_pickle.read_torch_state_dict(path)
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError,
          IndexError, AttributeError, zipfile.BadZipFile) as e:
    raise InceptionWeightsError(
        f'cannot read FID Inception weights {str(path)!r}: {e}'
    ) from e
  variables = convert_state_dict(state_dict)

  if cache_file is not None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(variables, sep='/')
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix='.npz.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        np.savez(f, **flat)
      os.replace(tmp, cache_file)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise
  return variables


def default_weights_path() -> pathlib.Path:
  """`default_cache_dir() / FID_WEIGHTS_FILENAME`, where eval.py looks."""
  return default_cache_dir() / FID_WEIGHTS_FILENAME
