"""examples/quickstart.ipynb: committed stripped, and executed end to end.

The fast tests check the committed file (valid nbformat, no outputs or
execution counts). The slow test runs every cell with nbclient in a
temporary working directory, with `MMVAEPLUS_NOTEBOOK_SMOKE=1` (60 training
steps, small evaluation sets), in a kernel that runs this interpreter, and
checks what the cells produced: the run's metrics with the coherence, the
evaluation's alpha sweep, the images shown inline and the functional API's
bound == surrogate check.
"""

import glob
import json
import os
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'examples' / 'quickstart.ipynb'
SMOKE_STEPS = 60  # the notebook's smoke num_steps
CELL_TIMEOUT_S = 900  # the training cell took 167 s on a loaded 2-core CPU


def _read_json():
  with open(NOTEBOOK, encoding='utf-8') as f:
    return json.load(f)


def test_committed_notebook_is_stripped():
  nb = _read_json()
  code = [c for c in nb['cells'] if c['cell_type'] == 'code']
  assert code, 'no code cells'
  for i, cell in enumerate(code):
    assert cell.get('outputs') == [], f'code cell {i} has outputs'
    assert cell.get('execution_count') is None, (
        f'code cell {i} has execution_count {cell.get("execution_count")}')
  assert nb['metadata']['kernelspec']['name'] == 'python3'


def test_committed_notebook_is_valid_nbformat():
  nbformat = pytest.importorskip(
      'nbformat', reason='nbformat is not installed (pip install -e ".[test]")')
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4


def _kernelspec(tmp_path) -> str:
  """A kernelspec that runs this interpreter (found through JUPYTER_PATH)."""
  name = 'mmvaeplus-notebook-test'
  spec_dir = tmp_path / 'jupyter' / 'kernels' / name
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'mmvaeplus_jax test kernel', 'language': 'python'}))
  return name


def _outputs(nb):
  """(stdout text of all cells, [mime types of displayed outputs])."""
  text, shown = [], []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.output_type == 'stream' and out.name == 'stdout':
        text.append(out.text)
      elif out.output_type in ('display_data', 'execute_result'):
        shown.extend(out.data)
  return ''.join(text), shown


@pytest.mark.slow
def test_notebook_executes_in_smoke_mode(data_dir, tmp_path, monkeypatch):
  nbclient = pytest.importorskip(
      'nbclient', reason='nbclient is not installed (pip install -e ".[test]")')
  pytest.importorskip(
      'ipykernel', reason='ipykernel is not installed (pip install -e ".[test]")')
  import nbformat  # pylint: disable=g-import-not-at-top
  from jupyter_client import kernelspec  # pylint: disable=g-import-not-at-top
  import mmvaeplus_jax  # pylint: disable=g-import-not-at-top

  kernel = _kernelspec(tmp_path)
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  assert kernelspec.KernelSpecManager().get_kernel_spec(
      kernel).argv[0] == sys.executable
  # The kernel inherits this environment: the smoke switch, the session's
  # prepared demo data and compilation cache (conftest), a private cache for
  # the Fréchet statistics, and one CPU device as `python train.py` has
  # (not conftest's 8 fake devices).
  monkeypatch.setenv('MMVAEPLUS_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  monkeypatch.setenv('XLA_FLAGS', re.sub(
      r'--xla_force_host_platform_device_count=\d+', '',
      os.environ.get('XLA_FLAGS', '')).strip())
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  cwd = tmp_path / 'cwd'
  cwd.mkdir()

  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel,
      resources={'metadata': {'path': str(cwd)}})
  try:
    client.execute()  # raises CellExecutionError on any failing cell
  finally:
    nbformat.write(nb, str(tmp_path / 'executed.ipynb'))  # for debugging
  stdout, shown = _outputs(nb)

  # The install cell found the package (this checkout's) and did nothing.
  package_dir = os.path.dirname(mmvaeplus_jax.__file__)
  assert f'from {package_dir}' in stdout, stdout[:500]
  assert 'smoke run: 60 steps' in stdout

  # Training: the run's metrics.json with the coherence of both directions.
  runs = glob.glob(str(cwd / 'runs' / 'demo-*'))
  assert len(runs) == 1, runs
  run = pathlib.Path(runs[0])
  metrics = json.loads((run / 'metrics.json').read_text())
  assert metrics['step'] == SMOKE_STEPS
  for pair in ('m3->m4', 'm4->m3', 'm3->m3', 'm4->m4'):
    assert 0.0 <= metrics[f'coherence/cond/{pair}'] <= 1.0, pair
  assert 'Cross-modal coherence on 200 test examples' in stdout

  # Evaluation: coherence and the alpha sweep, nothing skipped.
  ev = json.loads((run / 'eval' / str(SMOKE_STEPS) / 'metrics.json')
                  .read_text())
  assert ev['skipped'] == {}, ev['skipped']
  assert 0.0 <= ev['coherence/cond/mean'] <= 1.0
  assert 0.0 <= ev['coherence/uncond'] <= 1.0
  sweep = json.loads((run / 'eval' / str(SMOKE_STEPS) / 'alpha_sweep.json')
                     .read_text())
  assert sweep['alpha'] == [0.5, 1.0, 4.0]
  assert len(sweep['coherence/cond/mean']) == 3
  assert 'coherence/cond/mean: ' in stdout

  # Shown inline: the two sample grids and the alpha-sweep plot, and the
  # coherence and alpha-sweep tables.
  assert shown.count('image/png') >= 3, shown
  assert shown.count('text/html') >= 2, shown

  # Functional API: shapes printed and the bound == surrogate assertion ran.
  assert 'log weights lw (2, 10, 8) -> bound L (8,)' in stdout
  assert 'DReG gradient: global norm' in stdout
  assert 'checked: surrogate value == bound L for all 8 examples' in stdout
