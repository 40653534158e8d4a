"""Test configuration: 8 fake CPU devices before any JAX backend starts."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (
      _flags + ' --xla_force_host_platform_device_count=8'
  ).strip()

# Training-shell settings (see mmvaeplus_jax.infra.parallel.configure_jax), as env
# vars so subprocesses started by tests inherit them: the fast-compiling
# threefry on XLA:CPU and one compilation cache per test session, shared by
# the train.py subprocesses (they compile the same programs).
import tempfile  # pylint: disable=g-import-not-at-top

os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', 'false')
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix='mmvaeplus_jax_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ['MMVAEPLUS_TESTS_OWN_CACHE'] = _OWN_CACHE
elif (os.environ.get('PYTEST_XDIST_WORKER') and
      os.environ.get('MMVAEPLUS_TESTS_OWN_CACHE')
      == os.environ['JAX_COMPILATION_CACHE_DIR']):
  # A pytest-xdist worker (-n 2): its own folder of the session's cache.
  # JAX writes cache entries without a lock or an atomic rename, so two
  # processes compiling the same program at once could read a half-written
  # entry; one folder per worker keeps the sharing with the train.py
  # subprocesses that worker starts (the controller removes them all).
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      os.environ['JAX_COMPILATION_CACHE_DIR'],
      os.environ['PYTEST_XDIST_WORKER'])


# The opt-in XLA:CPU convolution setting, before any backend starts (the
# package applies it only where the shells call parallel.configure_jax).
from mmvaeplus_jax.infra import xla_cpu  # pylint: disable=g-import-not-at-top,g-bad-import-order

xla_cpu.configure()


def pytest_collection_modifyitems(config, items):
  """With MMVAEPLUS_TESTS_RERUN=1 (.ci/run's one-core rerun of the default
  suite), skip the tests marked `not_in_rerun`: those whose assertions do
  not depend on float rounding (control flow, file and field names, exact
  comparisons of a computation with itself), whole modules
  (`pytestmark`) or single heavy tests."""
  del config
  if os.environ.get('MMVAEPLUS_TESTS_RERUN') != '1':
    return
  import pytest  # pylint: disable=g-import-not-at-top
  skip = pytest.mark.skip(reason='not_in_rerun: no rounding-dependent check')
  for item in items:
    if 'not_in_rerun' in item.keywords:
      item.add_marker(skip)


import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir with the offline `mini` demo data (~5 s, once)."""
  from mmvaeplus_jax.input import builders  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp('tfds')
  builders.prepare('mini', d)
  return str(d)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE is not None:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
