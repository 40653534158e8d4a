"""FID as pytorch-fid 0.2.1: torch-free weights loader, features, Fréchet.

FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), with mu, S the
mean and (N - 1)-covariance of the 2048-d pool3 features of pytorch-fid's FID
InceptionV3 (`inception.FIDInceptionV3`) with the TF 2015-12-05 weights as
ported by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`).

Pieces:

* `load_inception_variables(path)`: reads the official `.pth` WITHOUT torch
  (a restricted unpickler that only rebuilds numpy arrays), checks its SHA-256
  prefix, converts it to Flax variables once and caches them as an `.npz`
  keyed by the file's SHA-256. A missing or corrupt file raises
  `InceptionWeightsError`; there is no fallback to random weights.
* `make_feature_fn(variables, batch_size)`: a batched, jitted feature pass
  (images [N, H, W, 3] in [0, 1] -> [N, 2048]), optionally with the official
  MMVAE+ quirks (PNG quantisation; dropping the last partial batch of 128,
  i.e. 9,984 of 10,000 images).
* `feature_statistics`, `frechet_distance`, `fid_from_features`: float64 on
  the host, as pytorch-fid's `calculate_frechet_distance`.

Call the number "FID" only with the genuine weights (data.md section 8).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import pathlib
import pickle
import tempfile
from typing import Any, Callable, Mapping
import warnings
import zipfile

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from mmvaeplus_jax.evaluation import inception

Array = jax.Array
Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}

FID_WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
    + FID_WEIGHTS_FILENAME
)
# torch.hub naming convention: the file name ends in the first 8 hex digits of
# the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = '6726825d'
OFFICIAL_BATCH_SIZE = 128  # the official loop drops the last partial batch

_CACHE_VERSION = 1  # bump when the converted layout changes


class InceptionWeightsError(RuntimeError):
  """The FID Inception weights file is missing, corrupt or not the right one."""


# ---------------------------------------------------------------------------
# Reading a PyTorch .pth without torch.
# ---------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'DoubleStorage': np.float64,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a `torch.<X>Storage` class named in the pickle."""

  name: str

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(eq=False)
class _Storage:
  """A typed storage: `numel` elements of `dtype`, filled once read."""

  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None  # [numel], little-endian


@dataclasses.dataclass(eq=False)
class _StorageView:
  """Legacy format: a view of `numel` elements at `offset` into a root."""

  root: _Storage
  offset: int
  numel: int


@dataclasses.dataclass(eq=False)
class _TensorRef:
  """What `torch._utils._rebuild_tensor_v2` would have built (lazy)."""

  storage: _Storage | _StorageView
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False,
    backward_hooks=None, metadata=None,
):
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch', 'Size'): tuple,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): (
        _rebuild_parameter_with_state
    ),
    **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that knows tensors and OrderedDicts and refuses all else."""

  def __init__(self, file, persistent_load: Callable[[Any], Any] | None):
    super().__init__(file)
    self._persistent_load = persistent_load

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to unpickle the global {module}.{name}: only tensors, '
          'storages and OrderedDicts of a PyTorch state dict are allowed'
      ) from None

  def persistent_load(self, pid):
    if self._persistent_load is None:
      raise pickle.UnpicklingError('unexpected persistent id in this pickle')
    return self._persistent_load(pid)


def _storage_type_of(obj) -> _StorageType:
  if not isinstance(obj, _StorageType):
    raise pickle.UnpicklingError(f'unsupported storage type {obj!r}')
  return obj


def _as_str(x) -> str:
  return x.decode('ascii') if isinstance(x, bytes) else str(x)


def _read_zip(path: pathlib.Path) -> Any:
  """torch >= 1.6 format: `<name>/data.pkl` + `<name>/data/<key>` records."""
  with zipfile.ZipFile(path) as zf:
    pkl_names = [n for n in zf.namelist() if n.endswith('data.pkl')]
    if len(pkl_names) != 1:
      raise pickle.UnpicklingError(f'expected one data.pkl, got {pkl_names}')
    prefix = pkl_names[0][: -len('data.pkl')]
    byteorder = '<'
    if prefix + 'byteorder' in zf.namelist():
      order = zf.read(prefix + 'byteorder').decode('ascii').strip()
      byteorder = {'little': '<', 'big': '>'}[order]
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if _as_str(pid[0]) != 'storage' or len(pid) != 5:
        raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
      storage_type, key, _, numel = pid[1:]
      key = _as_str(key)
      if key not in storages:
        dtype = _storage_type_of(storage_type).dtype
        raw = zf.read(f'{prefix}data/{key}')
        nbytes = int(numel) * dtype.itemsize
        if len(raw) < nbytes:
          raise pickle.UnpicklingError(f'storage {key} is truncated')
        data = np.frombuffer(raw, dtype.newbyteorder(byteorder), int(numel))
        storages[key] = _Storage(dtype, int(numel), data)
      return storages[key]

    with zf.open(pkl_names[0]) as f:
      return _RestrictedUnpickler(f, persistent_load).load()


def _read_legacy(path: pathlib.Path) -> Any:
  """torch < 1.6 format: magic, protocol, sys_info, pickle, keys, raw data."""
  with open(path, 'rb') as f:
    if _RestrictedUnpickler(f, None).load() != _LEGACY_MAGIC:
      raise pickle.UnpicklingError('not a PyTorch file (bad magic number)')
    if _RestrictedUnpickler(f, None).load() != _LEGACY_PROTOCOL:
      raise pickle.UnpicklingError('unsupported legacy protocol version')
    sys_info = _RestrictedUnpickler(f, None).load()
    byteorder = '<' if sys_info.get('little_endian', True) else '>'
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if _as_str(pid[0]) != 'storage' or len(pid) != 6:
        raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
      storage_type, root_key, _, numel, view_metadata = pid[1:]
      root_key = _as_str(root_key)
      if root_key not in storages:
        storages[root_key] = _Storage(
            _storage_type_of(storage_type).dtype, int(numel)
        )
      root = storages[root_key]
      if view_metadata is None:
        return root
      _, offset, view_numel = view_metadata
      return _StorageView(root, int(offset), int(view_numel))

    result = _RestrictedUnpickler(f, persistent_load).load()
    keys = _RestrictedUnpickler(f, None).load()
    for key in keys:
      storage = storages[_as_str(key)]
      numel = int.from_bytes(f.read(8), 'little', signed=True)
      if numel != storage.numel:
        raise pickle.UnpicklingError(f'storage {key}: size mismatch')
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise pickle.UnpicklingError(f'storage {key} is truncated')
      storage.data = np.frombuffer(raw, storage.dtype.newbyteorder(byteorder))
  return result


def _materialise(ref: _TensorRef) -> np.ndarray:
  """Copies a (possibly strided) tensor out of its storage, bounds-checked."""
  storage, base, limit = ref.storage, 0, None
  if isinstance(storage, _StorageView):
    base, limit = storage.offset, storage.numel
    storage = storage.root
  if storage.data is None:
    raise pickle.UnpicklingError('tensor refers to a storage with no data')
  flat = storage.data[base:]
  flat = flat[:limit] if limit is not None else flat
  shape, stride = ref.shape, ref.stride
  native = storage.dtype.newbyteorder('=')
  if len(shape) != len(stride) or min(shape + stride, default=0) < 0:
    raise pickle.UnpicklingError(f'bad tensor shape/stride {shape} {stride}')
  if 0 in shape:
    return np.zeros(shape, native)
  last = ref.offset + sum((d - 1) * s for d, s in zip(shape, stride))
  if ref.offset < 0 or last >= flat.size:
    raise pickle.UnpicklingError('tensor extends past its storage')
  view = np.lib.stride_tricks.as_strided(
      flat[ref.offset :], shape,
      tuple(s * flat.itemsize for s in stride), writeable=False,
  )
  return np.array(view, dtype=native, order='C', copy=True)


def _materialise_tree(obj: Any) -> Any:
  if isinstance(obj, _TensorRef):
    return _materialise(obj)
  if isinstance(obj, Mapping):
    return type(obj)((k, _materialise_tree(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise_tree(v) for v in obj)
  return obj


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`torch.save` file) into numpy, torch-free.

  Both the zip format (torch >= 1.6: `data.pkl` + `data/<key>` raw
  little-endian storages) and the legacy non-zip format are read. The pickle
  goes through a restricted unpickler that only rebuilds tensors
  (`torch._utils._rebuild_tensor_v2` and friends on `torch.<X>Storage`) and
  `collections.OrderedDict`; any other global raises
  `pickle.UnpicklingError`, so a malicious file cannot run code.

  Args:
    path: the `.pth` file.

  Returns:
    {state-dict key: array} (a copy, native byte order, C order).
  """
  path = pathlib.Path(path)
  if zipfile.is_zipfile(path):
    result = _read_zip(path)
  else:
    result = _read_legacy(path)
  result = _materialise_tree(result)
  if not isinstance(result, Mapping) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray)
      for k, v in result.items()
  ):
    raise pickle.UnpicklingError(f'{path} does not hold a flat state dict')
  return dict(result)


# ---------------------------------------------------------------------------
# Converting to Flax variables.
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Loading the official weights (checksum, cache).
# ---------------------------------------------------------------------------


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
    state_dict = read_torch_state_dict(path)
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


def default_weights_path() -> pathlib.Path:
  """`default_cache_dir() / FID_WEIGHTS_FILENAME`, where eval.py looks."""
  return default_cache_dir() / FID_WEIGHTS_FILENAME


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
