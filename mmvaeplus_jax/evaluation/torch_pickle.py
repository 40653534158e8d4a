"""Reading a PyTorch state dict (`torch.save` file) without torch.

`read_torch_state_dict(path) -> {key: np.ndarray}` reads both the zip format
(torch >= 1.6: `<name>/data.pkl` + `<name>/data/<key>` raw storages) and the
legacy non-zip format (magic, protocol, sys_info, pickle, storage keys, raw
data). The pickle goes through a restricted unpickler that only rebuilds
tensors and `collections.OrderedDict`; any other global raises
`pickle.UnpicklingError`, so a malicious file cannot run code. Used for
pytorch-fid's Inception weights (`inception_weights.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import pickle
from typing import Any, Callable, Mapping
import zipfile

import numpy as np


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

