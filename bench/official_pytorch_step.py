"""Times one training step of the official MMVAE+ PyTorch code on CPU.

The reference for `bench/step.py`: the same step, done by the authors' own
code. That code is NOT part of this repository: pass a checkout (or copy) of
srl-ethz/mmvaeplus with `--official_dir` (the repository root or its `src/`).
Run it in a virtualenv that has torch and numpy only, e.g.

    python3 -m venv torchvenv
    torchvenv/bin/pip install torch==2.13.0 numpy
    torchvenv/bin/python bench/official_pytorch_step.py \
        --official_dir=/path/to/mmvaeplus --K=1 --B=128 --obj=elbo

What is timed is the body of `train()` in the official
`src/train_MMVAEplus_polyMNIST.py`, on tensors already in memory:

    optimizer.zero_grad()
    loss = -objective(model, data, K=args.K)
    loss.backward()
    optimizer.step()
    b_loss += loss.item()

with everything built as that script builds it: `args` with its argparse
defaults (latent_dim_w = latent_dim_z = 32, Laplace prior/posterior,
beta 2.5, seed 2, llik_scaling 0. (unused by the model)), plus --K, --obj and
--B as batch size, and no_cuda=True; the model `models.
MMVAEplus_PolyMNIST_5modalities(args)` (5 modalities, the official ResNet
encoders/decoders at full width; the official code has no width setting);
`optim.Adam(trainable params, lr=1e-3, amsgrad=True)`; the objective
`getattr(objectives, 'm_' + args.obj)`: 'elbo' (m_elbo, the IWAE bound, which
for K=1 is the ELBO: the 2024 run script `commands/run_polyMNIST_experiment.sh`
uses --obj "elbo" --K 1 --batch-size 128) or 'dreg' (m_dreg, DReG, the
paper's K=10 setting).

Input: synthetic uint8 images, uniform 0..255 (fixed seed), shape
[B, 3, 28, 28] per modality, converted to float32 in [0, 1] as the official
loader's `ToTensor()` does; 4 different batches are made before timing and
used in turn, so the time does not include data loading.

Deviations from the train script, none of which touches the step:
* no data set, loader, wandb, classifiers, logging or checkpoint directory;
* the official `models/__init__.py` also imports the CUB model (which needs
  files and packages not needed here), so the `models` package is made here
  with the official `models/` folder as its path and only the PolyMNIST model
  imported from it (the same class the train script gets);
* modules that the official files import at the top but that the train step
  never calls (torchvision's `save_image`/`make_grid`/`transforms`,
  `datasets_PolyMNIST`, matplotlib, scipy) are replaced by stand-ins that
  raise if called, when they are not installed; the JSON line lists them.

Prints one JSON line (also appended to --out if given): torch version,
threads, K, B, obj, per-step ms (median, min, max, mean and all of them),
samples/s at the median, the last loss, parameter count, date, host, CPU
model name and the load average at start and end.

Run it on an otherwise idle machine: when another process keeps a core busy,
torch's OpenMP threads wait on each other and a step gets many times slower
(seen on 2 cores with another benchmark running: B=2, K=1 took ~0.85 s/step
with --threads=1 but 2-26 s/step with --threads=2).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _find_src(official_dir: str) -> str:
  """The official `src/` folder, from the repository root or `src/` itself."""
  if not official_dir:
    sys.exit('error: --official_dir is required: a checkout of '
             'srl-ethz/mmvaeplus (its root or its src/ folder); the official '
             'code is not part of this repository.')
  if not os.path.isdir(official_dir):
    sys.exit(f'error: --official_dir {official_dir!r} is not a directory.')
  for cand in (os.path.join(official_dir, 'src'), official_dir):
    if os.path.isfile(os.path.join(cand, 'models', 'mmvaeplus_polyMNIST.py')):
      return os.path.abspath(cand)
  sys.exit(f'error: no models/mmvaeplus_polyMNIST.py under {official_dir!r} '
           'or its src/: is it a checkout of srl-ethz/mmvaeplus?')


def _raiser(name):
  def f(*args, **kwargs):
    raise RuntimeError(f'{name} is a stand-in of official_pytorch_step.py and '
                       'is not used by the train step')
  return f


def _stub(name: str, **attrs) -> types.ModuleType:
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


def _install_stand_ins(src: str) -> list[str]:
  """Stand-ins for imports the step never uses, where they are missing."""
  stubbed = []
  if importlib.util.find_spec('torchvision') is None:
    tv = _stub('torchvision')
    tv.utils = _stub('torchvision.utils', save_image=_raiser('save_image'),
                     make_grid=_raiser('make_grid'))
    tv.transforms = _stub('torchvision.transforms',
                          ToTensor=_raiser('ToTensor'))
    stubbed.append('torchvision')
  if importlib.util.find_spec('matplotlib') is None:
    mpl = _stub('matplotlib')
    mpl.pyplot = _stub('matplotlib.pyplot')
    stubbed.append('matplotlib')
  if importlib.util.find_spec('scipy') is None:
    sp = _stub('scipy')
    sp.optimize = _stub('scipy.optimize', linear_sum_assignment=_raiser(
        'linear_sum_assignment'))
    stubbed.append('scipy')
  # The PolyMNIST data set class: the official one where it imports here.
  try:
    if not os.path.isfile(os.path.join(src, 'datasets_PolyMNIST.py')):
      raise ImportError('not in the checkout')
    importlib.import_module('datasets_PolyMNIST')
  except Exception:  # pylint: disable=broad-except
    sys.modules.pop('datasets_PolyMNIST', None)
    _stub('datasets_PolyMNIST', PolyMNISTDataset=_raiser('PolyMNISTDataset'))
    stubbed.append('datasets_PolyMNIST')
  return stubbed


def _import_official(src: str):
  """(models-like namespace, objectives module, stubbed names)."""
  sys.path.insert(0, src)
  stubbed = _install_stand_ins(src)
  # The package `models` without running its __init__ (which imports CUB).
  pkg = types.ModuleType('models')
  pkg.__path__ = [os.path.join(src, 'models')]
  pkg.__file__ = os.path.join(src, 'models', '__init__.py')
  sys.modules['models'] = pkg
  pm = importlib.import_module('models.mmvaeplus_polyMNIST')
  # As in models/__init__.py.
  pkg.MMVAEplus_PolyMNIST_5modalities = pm.PolyMNIST_5modalities
  objectives = importlib.import_module('objectives')
  return pkg, objectives, stubbed


def _official_args(K: int, obj: str, batch_size: int) -> argparse.Namespace:
  """train_MMVAEplus_polyMNIST.py's args: its argparse defaults + overrides."""
  args = argparse.Namespace(
      experiment='', obj=obj, K=K, llik_scaling=0., batch_size=batch_size,
      epochs=250, latent_dim_w=32, latent_dim_z=32, print_freq=50,
      no_cuda=True, seed=2, beta=2.5, datadir='./data',
      outputdir='../outputs',
      inception_path='./data/pt_inception-2015-12-05-6726825d.pth',
      pretrained_clfs_dir_path='./data/trained_clfs_polyMNIST',
      priorposterior='Laplace')
  args.latent_dim_u = args.latent_dim_w + args.latent_dim_z
  return args


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--official_dir', default='',
                 help='checkout of srl-ethz/mmvaeplus (root or src/); '
                      'required')
  p.add_argument('--K', type=int, default=1, help='number of samples')
  p.add_argument('--B', type=int, default=128, help='batch size')
  p.add_argument('--obj', default=None, choices=['elbo', 'dreg'],
                 help="official objective name (m_<obj>); default 'elbo' "
                      "for K=1 (the 2024 recipe), 'dreg' otherwise")
  p.add_argument('--steps', type=int, default=10, help='timed steps')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps')
  p.add_argument('--threads', type=int, default=2,
                 help='torch.set_num_threads')
  p.add_argument('--seed', type=int, default=2,
                 help='torch/numpy seed (train script default 2)')
  p.add_argument('--official_rev', default='',
                 help='optional: commit of the official code, recorded')
  p.add_argument('--out', default='', help='append the JSON line here too')
  a = p.parse_args(argv)
  if a.obj is None:
    a.obj = 'elbo' if a.K == 1 else 'dreg'
  src = _find_src(a.official_dir)

  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import optim  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(a.threads)
  models, objectives, stubbed = _import_official(src)

  args = _official_args(a.K, a.obj, a.B)
  args.seed = a.seed
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)
  args.cuda = not args.no_cuda and torch.cuda.is_available()
  device = torch.device('cuda' if args.cuda else 'cpu')

  modelC = getattr(models, 'MMVAEplus_PolyMNIST_5modalities')
  model = modelC(args).to(device)
  optimizer = optim.Adam(filter(lambda p: p.requires_grad, model.parameters()),
                         lr=1e-3, amsgrad=True)
  objective = getattr(objectives,
                      ('m_' if hasattr(model, 'vaes') else '') + args.obj)
  n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

  # Synthetic uint8 PolyMNIST-shaped batches -> float32 [0, 1] (ToTensor).
  gen = torch.Generator().manual_seed(1234)
  n_mod = len(model.vaes)
  batches = [[(torch.randint(0, 256, (a.B, 3, 28, 28), dtype=torch.uint8,
                             generator=gen).float() / 255.).to(device)
              for _ in range(n_mod)] for _ in range(4)]

  loadavg_start = os.getloadavg()
  model.train()
  b_loss = 0.
  times = []
  loss_value = float('nan')
  for i in range(a.warmup + a.steps):
    data = batches[i % len(batches)]
    t0 = time.perf_counter()
    optimizer.zero_grad()
    loss = -objective(model, data, K=args.K)
    loss.backward()
    optimizer.step()
    loss_value = loss.item()
    b_loss += loss_value
    dt = time.perf_counter() - t0
    if i >= a.warmup:
      times.append(dt * 1e3)

  row = dict(
      bench='official_pytorch_step',
      torch=torch.__version__,
      threads=torch.get_num_threads(),
      interop_threads=torch.get_num_interop_threads(),
      K=a.K, B=a.B, obj=a.obj, objective='m_' + a.obj,
      modalities=n_mod, latent_dim_w=args.latent_dim_w,
      latent_dim_z=args.latent_dim_z, priorposterior=args.priorposterior,
      beta=args.beta, optimizer='Adam(lr=1e-3, amsgrad=True)',
      trainable_params=n_params,
      steps=a.steps, warmup=a.warmup,
      ms_median=statistics.median(times) if times else None,
      ms_min=min(times) if times else None,
      ms_max=max(times) if times else None,
      ms_mean=statistics.fmean(times) if times else None,
      ms_all=[round(t, 3) for t in times],
      samples_per_s=(a.B / (statistics.median(times) / 1e3)
                     if times else None),
      last_loss=loss_value,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      host=platform.node(), cpu_model=_cpu_model(),
      cpu_count=os.cpu_count(), python=platform.python_version(),
      loadavg_start=[round(x, 2) for x in loadavg_start],
      loadavg_end=[round(x, 2) for x in os.getloadavg()],
      official_rev=a.official_rev,
      stand_ins=stubbed)
  line = json.dumps(row)
  print(line, flush=True)
  if a.out:
    with open(a.out, 'a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  main()
