"""The wheel holds what an installed package needs, without a checkout.

The TFDS builders (top-level datasets/, shipped as mmvaeplus_jax/datasets/),
the configs, the oneDNN source and the console scripts' targets; and
`mmvaeplus_jax.input.builders` finds its builder files. (.ci/wheel_check.sh
installs the wheel in a fresh virtualenv and trains and evaluates with it.)
"""

import configparser
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

from packaging.requirements import Requirement
import pytest

from mmvaeplus_jax.input import builders

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

try:
  import tomllib  # pylint: disable=g-import-not-at-top
except ModuleNotFoundError:  # Python 3.10
  tomllib = pytest.importorskip('tomli')

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())
SCRIPTS = {'mmvaeplus-train': 'mmvaeplus_jax.tools.train:run',
           'mmvaeplus-eval': 'mmvaeplus_jax.tools.evaluate:run'}


def _source_files():
  """The checkout's files as a clone has them, plus new files git does not
  ignore (no build/, *.egg-info, __pycache__, .venv)."""
  try:
    out = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=REPO, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    pytest.skip(f'needs a git checkout to copy the source cleanly ({e})')
  files = [f for f in out.decode().split('\0') if f]
  return [f for f in files if (REPO / f).is_file()]  # not deleted ones


def _clean_copy(dest):
  """Copies the source to `dest`: setuptools builds in the source tree and
  packs whatever is in build/lib, so a stale build/ in a checkout (modules
  since moved) would reach the wheel."""
  for f in _source_files():
    (dest / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / f, dest / f)
  return dest


def _require_build_backend():
  for spec in PYPROJECT['build-system']['requires']:
    req = Requirement(spec)
    try:
      version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
      version = None
    if version is None or not req.specifier.contains(version,
                                                     prereleases=True):
      pytest.skip(f'building with --no-build-isolation needs {spec} (have'
                  f' {version}): pip install -e ".[test]"')


def _expected_packages():
  """Every folder of mmvaeplus_jax/ (native/ too) and the builder folders
  of datasets/ (mapped to mmvaeplus_jax.datasets)."""
  root = REPO / 'mmvaeplus_jax'
  names = {'mmvaeplus_jax'}
  for d in root.rglob('*'):
    parts = d.relative_to(root).parts
    if d.is_dir() and '__pycache__' not in parts:
      names.add('.'.join(('mmvaeplus_jax',) + parts))
  names.add('mmvaeplus_jax.datasets')
  for d in (REPO / 'datasets').iterdir():
    if d.is_dir() and d.name != '__pycache__':
      names.add(f'mmvaeplus_jax.datasets.{d.name}')
  return names


def test_pyproject_lists_every_package_and_maps_datasets():
  setuptools = PYPROJECT['tool']['setuptools']
  listed = set(setuptools['packages'])
  expected = _expected_packages()
  assert not expected - listed, (
      f'folders missing from [tool.setuptools] packages in pyproject.toml'
      f' (they would not be in the wheel): {sorted(expected - listed)}')
  assert not listed - expected, (
      f'[tool.setuptools] packages lists folders that do not exist:'
      f' {sorted(listed - expected)}')
  assert setuptools['package-dir'] == {'mmvaeplus_jax.datasets': 'datasets'}
  assert PYPROJECT['project']['scripts'] == SCRIPTS


def test_builders_resolve_to_existing_files():
  installed = builders.INSTALLED_DATASETS_DIR
  want = (installed if installed.is_dir()
          else builders.CHECKOUT_DATASETS_DIR)
  assert builders.DATASETS_DIR == want
  package = pathlib.Path(builders.__file__).resolve().parents[1]
  if package == REPO / 'mmvaeplus_jax':  # tests run on the checkout
    assert builders.DATASETS_DIR == REPO / 'datasets'
  for name, relative in builders.BUILDER_FILES.items():
    path = builders.builder_path(name)
    assert path == builders.DATASETS_DIR / relative and path.is_file()
  for module in (builders.polymnist_dataset_builder,
                 builders.mnist_svhn_dataset_builder):
    assert pathlib.Path(module.__file__).resolve().is_relative_to(
        builders.DATASETS_DIR)


def test_missing_builder_is_one_clear_error(monkeypatch):
  monkeypatch.setitem(builders.BUILDER_FILES, 'nothing', 'nothing/b.py')
  with pytest.raises(ImportError) as e:
    builders.builder_path('nothing')
  message = str(e.value)
  assert str(builders.DATASETS_DIR / 'nothing' / 'b.py') in message
  assert 'fix: ' in message


def test_wheel_holds_builders_configs_native_and_scripts(tmp_path):
  _require_build_backend()
  src = _clean_copy(tmp_path / 'src')
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
       '--no-build-isolation', '--quiet', '-w', str(tmp_path / 'dist'),
       str(src)], capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (wheel,) = (tmp_path / 'dist').glob('mmvaeplus_jax-*.whl')
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    (entry_points,) = [n for n in names
                       if n.endswith('.dist-info/entry_points.txt')]
    scripts = configparser.ConfigParser()
    scripts.read_string(z.read(entry_points).decode())
  for name in ('datasets/polymnist/polymnist_dataset_builder.py',
               'datasets/mnist_svhn/mnist_svhn_dataset_builder.py',
               'native/onednn_conv.cc', 'configs/polymnist.py',
               'tools/train.py', 'tools/evaluate.py'):
    assert f'mmvaeplus_jax/{name}' in names, f'{name} not in {wheel.name}'
  # Every file of the builder folders (dummy_data/, checksums.tsv, ...) and
  # every module of the package; no top-level datasets/ (Hugging Face's).
  for path in (src / 'datasets').rglob('*'):
    if path.is_file():
      rel = path.relative_to(src / 'datasets').as_posix()
      assert f'mmvaeplus_jax/datasets/{rel}' in names, rel
  for path in (src / 'mmvaeplus_jax').rglob('*.py'):
    assert path.relative_to(src).as_posix() in names, path
  assert not [n for n in names if n.startswith('datasets/')]
  assert dict(scripts['console_scripts']) == SCRIPTS


def test_console_script_targets_import(tmp_path):
  """Each target in its own process: both define --config and --workdir
  (9 s on the quiet 2-core machine, 22 s beside a test run)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = {}
  for script, target in SCRIPTS.items():
    module, attr = target.split(':')
    code = (f'import importlib; m = importlib.import_module({module!r});'
            f' assert callable(m.{attr}) and callable(m.main);'
            ' print(m.__file__)')
    procs[script] = subprocess.Popen(
        [sys.executable, '-c', code], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for script, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f'{script}: {err[-3000:]}'
    assert out.strip().endswith('.py')
