"""torch.save files written without torch, for tests (legacy and zip formats).

`write_pth(path, state_dict, fmt)` writes what `torch.save(state_dict)`
writes; `_Tensor` / `_Storage` / `_View` build tensors that share storages or
are views; `_TorchPickler` pickles them as torch does. Used by
`fid_test.py` (the Inception weights reader) and
`official_checkpoint_test.py` (official MMVAE+ checkpoints).
"""

import collections
import io
import pickle
import zipfile

import numpy as np


class _Global:
  """Pickled as the global `module.name` (e.g. torch.FloatStorage)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # save_reduce wants a callable
    raise NotImplementedError


_STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.int64): 'LongStorage',
}


class _Storage:

  def __init__(self, key, data):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
  """A tensor of `shape`/`stride` at `offset` into a `_Storage`."""

  def __init__(self, storage, shape, stride=None, offset=0, view=None):
    if stride is None:
      stride = np.ones(len(shape), np.int64)
      for i in range(len(shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * shape[i + 1]
    self.storage, self.shape, self.offset = storage, tuple(shape), offset
    self.stride, self.view = tuple(int(s) for s in stride), view

  def __reduce__(self):
    target = self.view if self.view is not None else self.storage
    return (
        _Global('torch._utils', '_rebuild_tensor_v2'),
        (target, self.offset, self.shape, self.stride, False,
         collections.OrderedDict()),
    )


class _View:
  """Legacy storage view: `numel` elements at `offset` into a storage."""

  def __init__(self, storage, key, offset, numel):
    self.storage, self.key = storage, key
    self.offset, self.numel = offset, numel


class _TorchPickler(pickle._Pickler):  # pure-Python pickler: save() hookable

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy, self.storages = legacy, {}

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
      return
    super().save(obj, save_persistent_id)

  def persistent_id(self, obj):
    if isinstance(obj, _View):
      root = obj.storage
      self.storages[root.key] = root
      st = _Global('torch', _STORAGE_NAMES[root.data.dtype])
      return ('storage', st, root.key, 'cpu', root.data.size,
              (obj.key, obj.offset, obj.numel))
    if isinstance(obj, _Storage):
      self.storages[obj.key] = obj
      st = _Global('torch', _STORAGE_NAMES[obj.data.dtype])
      pid = ('storage', st, obj.key, 'cpu', obj.data.size)
      return pid + (None,) if self.legacy else pid
    return None


def write_pth(path, state_dict, fmt='legacy'):
  """torch.save(state_dict) in torch's legacy (< 1.6) or zip format.

  Args:
    path: output file.
    state_dict: {key: np.ndarray or _Tensor}.
    fmt: 'legacy' or 'zip'.
  """
  tensors = collections.OrderedDict()
  for i, (k, v) in enumerate(state_dict.items()):
    if not isinstance(v, _Tensor):
      v = np.asarray(v)
      v = _Tensor(_Storage(str(i), v), v.shape)
    tensors[k] = v
  buf = io.BytesIO()
  pickler = _TorchPickler(buf, legacy=fmt == 'legacy')
  pickler.dump(tensors)
  storages = pickler.storages
  with open(path, 'wb') as f:
    if fmt == 'legacy':
      for header in (0x1950A86A20F9469CFC6C, 1001,
                     {'protocol_version': 1001, 'little_endian': True,
                      'type_sizes': {'short': 2, 'int': 4, 'long': 4}}):
        f.write(pickle.dumps(header, protocol=2))
      f.write(buf.getvalue())
      f.write(pickle.dumps(list(storages), protocol=2))
      for s in storages.values():
        f.write(int(s.data.size).to_bytes(8, 'little', signed=True))
        f.write(s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())
    else:
      with zipfile.ZipFile(f, 'w') as zf:
        zf.writestr('archive/data.pkl', buf.getvalue())
        zf.writestr('archive/byteorder', 'little')
        for key, s in storages.items():
          le = s.data.astype(s.data.dtype.newbyteorder('<'))
          zf.writestr(f'archive/data/{key}', le.tobytes())
        zf.writestr('archive/version', '3\n')
