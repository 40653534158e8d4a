"""FID as pytorch-fid 0.2.1: features, Fréchet distance, statistics cache.

FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), with mu, S the
mean and (N - 1)-covariance of the 2048-d pool3 features of pytorch-fid's FID
InceptionV3 (`inception.FIDInceptionV3`) with the TF 2015-12-05 weights as
ported by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`).

* `load_inception_variables(path)`: the official `.pth` read WITHOUT torch
  and converted (`inception_weights.py`, `torch_pickle.py`; re-exported here
  with the other names callers use); never random weights.
* `make_feature_fn(variables, batch_size)`: a batched, jitted feature pass
  (images [N, H, W, 3] in [0, 1] -> [N, 2048]), optionally with the official
  MMVAE+ quirks (PNG quantisation; dropping the last partial batch of 128,
  i.e. 9,984 of 10,000 images); `inception_features`, its un-jitted body.
* `feature_statistics`, `frechet_distance`, `fid_from_features`: float64 on
  the host, as pytorch-fid's `calculate_frechet_distance`;
  `cached_statistics` (real-set statistics on disk), `conditional_average`.

Call the number "FID" only with the genuine weights (data.md section 8).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
from typing import Any, Callable
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from mmvaeplus_jax.evaluation import inception
from mmvaeplus_jax.evaluation.inception_weights import default_cache_dir
from mmvaeplus_jax.evaluation.inception_weights import default_weights_path
from mmvaeplus_jax.evaluation.inception_weights import FID_WEIGHTS_FILENAME
from mmvaeplus_jax.evaluation.inception_weights import FID_WEIGHTS_URL
from mmvaeplus_jax.evaluation.inception_weights import file_sha256
from mmvaeplus_jax.evaluation.inception_weights import InceptionWeightsError
from mmvaeplus_jax.evaluation.inception_weights import load_inception_variables
from mmvaeplus_jax.evaluation.inception_weights import Variables

__all__ = [  # (the second line: inception_weights)
    'OFFICIAL_BATCH_SIZE', 'Statistics', 'cached_statistics',
    'conditional_average', 'default_stats_dir', 'feature_statistics',
    'fid_from_features', 'frechet_distance', 'images_digest',
    'inception_features', 'make_feature_fn', 'official_count',
    'quantise_like_png', 'uint8_to_unit',
    'FID_WEIGHTS_FILENAME', 'FID_WEIGHTS_URL', 'InceptionWeightsError',
    'default_cache_dir', 'default_weights_path', 'file_sha256',
    'load_inception_variables',
]

Array = jax.Array

OFFICIAL_BATCH_SIZE = 128  # the official loop drops the last partial batch


# ---------------------------------------------------------------------------
# Features.
# ---------------------------------------------------------------------------

_MODEL = inception.FIDInceptionV3()


@jax.jit
def _inception_features(variables: Variables, images: Array) -> Array:
  """[B, H, W, 3] in [0, 1] -> [B, 2048] pool3 features."""
  return _MODEL.apply(variables, images)


@jax.jit
def quantise_like_png(images: Array) -> Array:
  """The official PNG round trip: clamp, x255, round to uint8, /255.

  As `torchvision.utils.save_image` (floor(255 x + 0.5) clamped to
  [0, 255], i.e. round half up) followed by reading the PNG and `ToTensor()`
  (k / 255, correctly rounded). The division is a table look-up because XLA
  may turn `k / 255` into a multiplication by 1/255, which is off by an ulp
  for about half of the levels.

  Args:
    images: [..., H, W, C] float.

  Returns:
    Same shape and dtype, on the grid k / 255.
  """
  levels = jnp.floor(jnp.clip(images * 255 + 0.5, 0, 255)).astype(jnp.int32)
  table = (np.arange(256) / 255).astype(images.dtype)  # exact k / 255
  return jnp.asarray(table)[levels]


def make_feature_fn(
    variables: Variables,
    batch_size: int = OFFICIAL_BATCH_SIZE,
    *,
    official_png_quantisation: bool = False,
    drop_last_partial_batch: bool = False,
) -> Callable[[Any], np.ndarray]:
  """A batched device feature pass: images [N, H, W, 3] -> [N', 2048].

  Every batch has exactly `batch_size` images, so one compilation serves all
  batches: the last partial batch is padded with zeros and the padding is
  dropped from the output (BatchNorm uses running statistics, so the padding
  does not change the other rows). By default all N images are used (N' = N).
  The computation dtype is that of `variables` (float32, or float64 under
  `jax.enable_x64`); convolutions and the resize run at full precision
  (`lax.Precision.HIGHEST`, no TF32 on GPUs).

  Args:
    variables: from `load_inception_variables`.
    batch_size: images per device call.
    official_png_quantisation: first clamp to [0, 1] and quantise to k / 255
      as the official code's PNG round trip does (`quantise_like_png`).
    drop_last_partial_batch: drop the remainder as the official loop does
      (with batch 128: 9,984 of 10,000 images, N' = 128 * (N // 128)).

  Returns:
    `feature_fn(images) -> np.ndarray [N', 2048]`, images float [N, H, W, 3]
    in [0, 1] (numpy or jax; any H, W, e.g. 28 x 28 for PolyMNIST).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  variables = jax.device_put(variables)
  kernel = variables['params']['Conv2d_1a_3x3']['conv']['kernel']
  dtype = kernel.dtype

  def feature_fn(images) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images [N, H, W, 3], got {images.shape}')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError(
          f'expected float images in [0, 1], got dtype {images.dtype}'
      )
    n = images.shape[0]
    if drop_last_partial_batch:
      n = (n // batch_size) * batch_size
    xp = jnp if isinstance(images, jax.Array) else np
    outputs = []
    with jax.default_matmul_precision('highest'):
      for start in range(0, n, batch_size):
        batch = images[start : min(start + batch_size, n)].astype(dtype)
        valid = batch.shape[0]
        if valid < batch_size:  # pad to the compiled shape
          pad = xp.zeros((batch_size - valid,) + batch.shape[1:], dtype)
          batch = xp.concatenate([batch, pad], axis=0)
        if official_png_quantisation:
          batch = quantise_like_png(batch)
        outputs.append(_inception_features(variables, batch)[:valid])
    if not outputs:
      return np.zeros((0, inception.FEATURE_DIM), dtype)
    return np.concatenate([np.asarray(o) for o in outputs], axis=0)

  return feature_fn


# ---------------------------------------------------------------------------
# Fréchet distance (float64, host).
# ---------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and (N - 1)-covariance [D, D] of features [N, D], float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'need features [N >= 2, D], got {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
  """scipy's sqrtm (no deprecated `disp`); flags a singular input."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', linalg.LinAlgWarning)
    root = linalg.sqrtm(a)
  singular = any(
      issubclass(w.category, linalg.LinAlgWarning)
      and 'singular' in str(w.message).lower()
      for w in caught
  )
  return root, singular


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

  d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2),
  as pytorch-fid 0.2.1's `calculate_frechet_distance`: `scipy.linalg.sqrtm`
  of the product; only when that is singular or not finite, `eps` I is added
  to both covariances and the root recomputed; a complex root whose diagonal
  has an imaginary part above 1e-3 raises, otherwise the real part is used.
  (scipy >= 1.16 returns finite values for some singular products where older
  versions gave inf/nan, so its "singular" warning also triggers the offset.)

  Args:
    mu1: [D] mean of set 1.
    sigma1: [D, D] covariance of set 1.
    mu2: [D] mean of set 2.
    sigma2: [D, D] covariance of set 2.
    eps: diagonal offset for a singular product.

  Returns:
    The squared Fréchet distance (a Python float; FID for pool3 statistics).

  Raises:
    ValueError: shape mismatch or a non-negligible imaginary component.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError('mean vectors / covariances have different shapes')
  if sigma1.shape != mu1.shape * 2:
    raise ValueError(f'covariance {sigma1.shape} does not fit mean {mu1.shape}')

  diff = mu1 - mu2
  covmean, singular = _sqrtm(sigma1.dot(sigma2))
  if singular or not np.isfinite(covmean).all():
    warnings.warn(
        f'FID: singular product of covariances; adding {eps} to the diagonal'
    )
    offset = np.eye(sigma1.shape[0]) * eps
    covmean, _ = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
          f'Imaginary component {np.max(np.abs(covmean.imag))} in sqrtm'
      )
    covmean = covmean.real
  return float(
      diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
      - 2 * np.trace(covmean)
  )


def fid_from_features(features1, features2) -> float:
  """Fréchet distance between the statistics of two feature sets [N, D]."""
  return frechet_distance(
      *feature_statistics(features1), *feature_statistics(features2)
  )


# ---------------------------------------------------------------------------
# Evaluation-pipeline pieces: device features, the real-statistics cache,
# the paper's conditional averaging.
# ---------------------------------------------------------------------------

_LEVELS = np.arange(256) / 255  # exact k / 255 (float64)



def default_stats_dir() -> pathlib.Path:
  """`default_cache_dir() / 'fid_stats'`: cached real-set statistics."""
  return default_cache_dir() / 'fid_stats'


def uint8_to_unit(images: Array, dtype=jnp.float32) -> Array:
  """uint8 images -> exactly k / 255 (as reading a PNG and `ToTensor()`).

  A table look-up, not a division: XLA may turn `/ 255` into a
  multiplication that is off by an ulp for about half of the levels.
  """
  return jnp.asarray(_LEVELS.astype(dtype))[images.astype(jnp.int32)]


def inception_features(variables: Variables, images: Array) -> Array:
  """Pure pool3 features `[B, 2048]` of images `[B, H, W, 3]` in [0, 1].

  The un-jitted body of `make_feature_fn`'s pass, to fuse into a larger jitted
  function (e.g. generate -> quantise -> features, sharded over a mesh).
  """
  dtype = variables['params']['Conv2d_1a_3x3']['conv']['kernel'].dtype
  with jax.default_matmul_precision('highest'):
    return _MODEL.apply(variables, images.astype(dtype))


def official_count(n: int, batch_size: int = OFFICIAL_BATCH_SIZE) -> int:
  """Images the official loop uses of `n`: whole batches of 128 (9,984 of
  10,000); all `n` when there is not even one whole batch."""
  return n - n % batch_size if n >= batch_size else n


def images_digest(images) -> str:
  """SHA-256 (hex) of an image array's shape, dtype and bytes."""
  images = np.ascontiguousarray(images)
  digest = hashlib.sha256(
      f'{images.shape}|{images.dtype.str}|'.encode('ascii'))
  digest.update(memoryview(images).cast('B'))
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Feature statistics of an image set.

  Attributes:
    mu: `[D]` float64 mean.
    sigma: `[D, D]` float64 (N - 1)-covariance.
    num: N, the number of images.
    cache_hit: read from the cache (not computed now).
    path: the cache file ('' when not cached).
  """

  mu: np.ndarray
  sigma: np.ndarray
  num: int
  cache_hit: bool = False
  path: str = ''


def _safe_label(label: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in label)


def cached_statistics(
    features_fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    *,
    cache_dir: str | os.PathLike | None,
    label: str,
    network_id: str,
) -> Statistics:
  """Statistics of `features_fn(images)`, cached as an `.npz` on disk.

  The file is `<cache_dir>/<label>_<key[:16]>.npz` with key = SHA-256 of
  (`network_id`, `images_digest(images)`): a changed dataset (any pixel),
  another number of images or other feature weights give another key, so
  stale statistics are never reused; the full key is stored in the file and
  checked on reading (an unreadable or mismatching file is recomputed and
  replaced).

  Args:
    features_fn: images `[N, ...]` -> features `[N, D]`.
    images: the real image set (e.g. uint8 `[N, 28, 28, 3]`).
    cache_dir: the cache folder; None disables the cache.
    label: readable file-name prefix, e.g.
      'fid_polymnist-rebuilt_test_m0_n9984'.
    network_id: identifies the feature network and its weights (e.g. the
      Inception file's SHA-256, or a hash of classifier params) and the image
      preprocessing.

  Returns:
    `Statistics` (float64).
  """
  key = hashlib.sha256(
      f'{network_id}|{images_digest(images)}'.encode()).hexdigest()
  path = None
  if cache_dir is not None:
    path = (pathlib.Path(cache_dir).expanduser()
            / f'{_safe_label(label)}_{key[:16]}.npz')
    if path.is_file():
      try:
        with np.load(path) as npz:
          if str(npz['key']) == key:
            return Statistics(npz['mu'], npz['sigma'], int(npz['num']),
                              cache_hit=True, path=str(path))
        warnings.warn(f'FID statistics cache {path} holds another key; '
                      'recomputing')
      except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        warnings.warn(f'ignoring unreadable FID statistics cache {path}: {e}')
  mu, sigma = feature_statistics(features_fn(images))
  stats = Statistics(mu, sigma, len(images), cache_hit=False,
                     path='' if path is None else str(path))
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.npz.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma, num=np.int64(len(images)),
                 key=np.str_(key), label=np.str_(label))
      os.replace(tmp, path)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise
  return stats


def conditional_average(matrix, *, include_self: bool
                        ) -> tuple[np.ndarray, float]:
  """The paper's averaging of a conditional FID matrix.

  Args:
    matrix: `[M, M]` FIDs, `[source e, target d]`; the diagonal is the
      self-reconstruction.
    include_self: True: per target d the mean over ALL M sources, diagonal
      included (the official code's conditional FID,
      official_reference.md section 9); False: over the M - 1 sources e != d
      (cross-modal only, the coherence-style average).

  Returns:
    (per-target means `[M]`, their mean over targets).
  """
  matrix = np.asarray(matrix, np.float64)
  m = matrix.shape[0]
  if matrix.shape != (m, m):
    raise ValueError(f'expected a square [M, M] matrix, got {matrix.shape}')
  if include_self:
    per_target = matrix.mean(axis=0)
  elif m > 1:
    off = ~np.eye(m, dtype=bool)
    per_target = np.array([matrix[off[:, d], d].mean() for d in range(m)])
  else:
    per_target = np.full((1,), np.nan)
  return per_target, float(per_target.mean())
