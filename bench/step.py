"""Times the MMVAE+ train step: the trainer's own compiled program.

    python bench/step.py                                # the default case
    python bench/step.py --cases=official2024,dreg_k10_b16 --out=r.jsonl
    python bench/step.py --sweep=K --sweep_width=0.125 --out=r.jsonl
    python bench/step.py --sweep=models --out=r.jsonl   # one row per model
    python bench/step.py --cases=official2024 --compute_dtype=bfloat16

Each case builds the config of its recipe (`mmvaeplus_jax/configs/
polymnist.py`), the model (`models.get_model`), the optimiser and the step
exactly as the training shell does (`training/step.py:jit_train_step` over
`parallel.make_mesh()`: state replicated and donated, batch sharded on
'data'), then reports:

* compile time: `lower` and `compile` of the step, separately (the
  persistent compilation cache is off, so this is a real compilation);
* `--warmup` untimed steps, then `--steps` timed steps, each ended by
  `block_until_ready`: median ms/step with the interquartile range and
  min/max, steps/s and samples/s (from the median);
* peak memory: on GPU/TPU the devices' `memory_stats()['peak_bytes_in_use']`
  (max over the mesh); on CPU, which keeps no such statistic, the compiled
  step's `memory_analysis()` temp + argument + output bytes (labelled
  `xla:temp+arg+out`: what XLA allocates for one step, not a measured peak);
* FLOPs per step from `compiled.cost_analysis()` (XLA's count for the
  partitioned per-device program, times the number of devices), the achieved
  TFLOP/s and, with `--peak_tflops`, the fraction of that peak (none for
  `--remat`: XLA counts the body of its loop over K once);
* the jit cache size after all steps (1 = the step compiled once).

Input: synthetic uint8 images (uniform 0..255, fixed seed) of the right
shapes, converted to float32 [0, 1] as the input pipeline does, 4 different
global batches placed on the devices before timing, so the step time does
not include the input pipeline (`bench/epoch.py` times the whole loop).

Every case runs in its own subprocess (fresh peak-memory counters, a failed
or out-of-memory case does not stop the others, and the `devices` sweep can
set `XLA_FLAGS=--xla_force_host_platform_device_count=N`, which must be set
before JAX starts).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Named cases. Widths multiply the official channel counts (1.0 = official).
CASES = {
    'cpu_default': dict(
        recipe='official2024', width=0.25, batch_size=32,
        help='the 2024 recipe (K=1, IWAE gradient, beta 2.5, M=5) at width '
             '1/4 and B=32: a CPU-sized default (a few minutes on 2 cores)'),
    'official2024': dict(
        recipe='official2024', width=1.0, batch_size=128,
        help='the 2024 official run script: full width, M=5, K=1, B=128, '
             'IWAE gradient, beta 2.5'),
    'k1_b16': dict(
        recipe='official2024', width=1.0, batch_size=16,
        help='2024 recipe (K=1, IWAE gradient) at full width, B=16'),
    'k1_b64': dict(
        recipe='official2024', width=1.0, batch_size=64,
        help='2024 recipe (K=1, IWAE gradient) at full width, B=64'),
    'dreg_k10_b4': dict(
        recipe='paper_dreg', width=1.0, batch_size=4, num_samples=10,
        help='paper App. D recipe, full width, M=5, K=10, B=4, unbiased DReG'),
    'dreg_k10_b16': dict(
        recipe='paper_dreg', width=1.0, batch_size=16, num_samples=10,
        help='paper App. D recipe, full width, M=5, K=10, B=16, unbiased DReG '
             '(the setting of the official code\'s ~10 s/step on CPU)'),
    'dreg_k10_b128': dict(
        recipe='paper_dreg', width=1.0, batch_size=128, num_samples=10,
        help='paper App. D recipe, full width, M=5, K=10, B=128, unbiased '
             'DReG'),
    'smoke': dict(
        recipe='official2024', width=0.0625, batch_size=8, num_modalities=2,
        help='a tiny model (M=2, width 1/16, B=8) to check the tool runs'),
}

SWEEPS = {
    'K': 'K in 1,2,5,10,20 (paper_dreg recipe: DReG; M=5)',
    'M': 'M in 2,3,4,5 modalities (2024 recipe: K=1, IWAE)',
    'batch': 'batch size (2024 recipe); CPU 8..128, GPU 16..512',
    'models': 'every model (configs/polymnist.py paper_grid,model=<name>: '
              'each model\'s own K, estimator and latent sizes) at the sweep '
              'width and batch',
    'devices': 'number of devices (2024 recipe): CPU: 1,2,4,8 fake devices '
               '(XLA_FLAGS in a subprocess; they share the same cores, so '
               'this shows the partitioning overhead, not a speed-up); '
               'GPU/TPU: 1,2,4,.. real devices',
}


@dataclasses.dataclass
class Case:
  name: str
  recipe: str = 'official2024'  # configs/polymnist.py argument (variant,...)
  width: float = 1.0
  num_modalities: int = 5
  num_samples: int | None = None  # None: the recipe's K
  batch_size: int = 128
  estimator: str | None = None  # None: the recipe's estimator
  compute_dtype: str = 'float32'
  remat: bool = False
  vmap_modalities: bool = False
  conv_wgrad_chunk: int = -1  # -1 automatic per platform, 0 XLA's own
  conv_impl: str = 'xla'  # model.conv_impl: 'xla' or 'onednn' (CPU)
  microbatch_size: int = -1  # train.microbatch_size: -1 auto, 0 one call
  num_devices: int | None = None  # None: all devices
  fake_devices: int | None = None  # CPU: XLA_FLAGS device count
  sweep: str | None = None


def _help_epilog():
  lines = ['cases (--cases, comma separated; default cpu_default):']
  for name, c in CASES.items():
    lines.append(f'  {name:14s} {c["help"]}')
  lines.append('')
  lines.append('sweeps (--sweep, comma separated; width --sweep_width, batch '
               '--sweep_batch):')
  for name, h in SWEEPS.items():
    lines.append(f'  {name:14s} {h}')
  lines.append('')
  lines.append('modifiers for every case: --compute_dtype=bfloat16 (name '
               'suffix +bf16), --remat (+remat), --vmap_modalities (+vmap).')
  return '\n'.join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0] + ' Prints one table row per case.',
      epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--cases', default=None,
                 help='comma-separated named cases (below); default '
                      'cpu_default when no --sweep is given')
  p.add_argument('--sweep', default='',
                 help='comma-separated sweeps: K, M, batch, models, devices')
  p.add_argument('--sweep_width', type=float, default=None,
                 help='width of sweep cases (default: 0.125 on CPU, 1.0 '
                      'otherwise)')
  p.add_argument('--sweep_batch', type=int, default=None,
                 help='batch of the K, M and devices sweeps (default: 32 on '
                      'CPU, 128 otherwise)')
  p.add_argument('--sweep_values', default='',
                 help='override the swept values, e.g. 1,2,5 (one sweep only)')
  p.add_argument('--width', type=float, default=None,
                 help='override the width of the named cases')
  p.add_argument('--compute_dtype', default='float32',
                 choices=('float32', 'bfloat16'))
  p.add_argument('--remat', action='store_true',
                 help='model.remat=True (decoders rematerialised per sample)')
  p.add_argument('--vmap_modalities', action='store_true',
                 help='model.vmap_modalities=True (equal networks vmapped)')
  p.add_argument('--microbatch_size', type=int, default=-1,
                 help='train.microbatch_size: -1 automatic (CPU, full width: '
                      'at most 16 examples and 200 decoder rows per gradient '
                      'call, limits x 1/width), 0 '
                      'one call on the whole batch (name suffix +one_call), '
                      'n examples per call (+microN)')
  p.add_argument('--conv_wgrad_chunk', type=int, default=-1,
                 help='model.conv_wgrad_chunk: -1 automatic (8 rows on CPU),'
                      ' 0 XLA\'s own weight gradient (suffix +xla_wgrad),'
                      ' n rows (suffix +wgrad<n>)')
  p.add_argument('--conv_impl', default='xla',
                 choices=('xla', 'onednn', 'onednn_bf16'),
                 help="model.conv_impl: 'onednn' runs the convolutions as"
                      ' oneDNN custom calls (CPU; mmvaeplus_jax/infra/onednn.py;'
                      " name suffix +onednn), 'onednn_bf16' with bf16"
                      ' operands (+onednn_bf16)')
  p.add_argument('--profile', action='store_true',
                 help='after timing, trace one step and print/store the '
                      'per-op time by category (bench/op_profile.py)')
  p.add_argument('--steps', type=int, default=20, help='timed steps (>= 1)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
  p.add_argument('--compile_only', action='store_true',
                 help='compile, report FLOPs and XLA memory, run no step')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak TFLOP/s of one device, for the fraction of peak')
  p.add_argument('--out', default=None, help='append rows to this .jsonl')
  p.add_argument('--case_timeout', type=float, default=None,
                 help='seconds after which a case is stopped (reported as '
                      'timeout)')
  p.add_argument('--compilation_cache', default=None,
                 help='persistent compilation cache directory shared by the '
                      'cases (default: off). Programs already in it load '
                      'instead of compiling: use a fresh directory per run, '
                      'so each case\'s step (unique in a run) still compiles '
                      'while the shared init program compiles only once')
  p.add_argument('--deadline', type=float, default=None,
                 help='unix time after which no case starts and a running '
                      'case is stopped (scripts with a total time budget)')
  p.add_argument('--platform', default=None,
                 help='cpu / gpu / tpu: skips the JAX probe subprocess (with '
                      '--device_count and --device_kind)')
  p.add_argument('--device_count', type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument('--device_kind', default='?', help=argparse.SUPPRESS)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--note', default='', help='free text stored in each row')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error('--steps must be >= 1')
  return args


# ------------------------------------------------------------------ driver


def probe_platform():
  """(platform, device count, device kind) from a subprocess.

  The driver itself never starts a JAX backend: on a GPU that would reserve
  memory the per-case subprocesses need.
  """
  code = ('import jax; d = jax.devices(); '
          'print(jax.default_backend(), len(d), d[0].device_kind, sep="|")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True, env=_worker_env(None))
  plat, n, kind = out.stdout.strip().splitlines()[-1].split('|')
  return plat, int(n), kind


def build_cases(args, plat, num_devices):
  cpu = plat == 'cpu'
  width = args.sweep_width or (0.125 if cpu else 1.0)
  batch = args.sweep_batch or (32 if cpu else 128)
  cases = []
  names = args.cases
  if names is None and not args.sweep:
    names = 'cpu_default'
  for name in filter(None, (names or '').split(',')):
    if name not in CASES:
      raise SystemExit(f'unknown case {name!r}; known: {sorted(CASES)}')
    kw = {k: v for k, v in CASES[name].items() if k != 'help'}
    if args.width is not None:
      kw['width'] = args.width
    cases.append(Case(name=name, **kw))
  sweeps = list(filter(None, args.sweep.split(',')))
  custom = list(filter(None, args.sweep_values.split(',')))  # models: names
  ints = lambda: [int(v) for v in custom]
  if custom and len(sweeps) != 1:
    raise SystemExit('--sweep_values needs exactly one --sweep')
  for sweep in sweeps:
    if sweep == 'K':
      for k in ints() or (1, 2, 5, 10, 20):
        cases.append(Case(f'K={k}', recipe='paper_dreg', width=width,
                          batch_size=batch, num_samples=k, sweep='K'))
    elif sweep == 'M':
      for m in ints() or (2, 3, 4, 5):
        cases.append(Case(f'M={m}', width=width, batch_size=batch,
                          num_modalities=m, sweep='M'))
    elif sweep == 'batch':
      for b in ints() or ((8, 16, 32, 64, 128) if cpu
                          else (16, 32, 64, 128, 256, 512)):
        cases.append(Case(f'B={b}', width=width, batch_size=b,
                          sweep='batch'))
    elif sweep == 'models':
      from mmvaeplus_jax.configs import polymnist  # pylint: disable=g-import-not-at-top
      for m in custom or polymnist.MODELS:
        cases.append(Case(f'model={m}', recipe=f'paper_grid,model={m}',
                          width=width, batch_size=batch, sweep='models'))
    elif sweep == 'devices':
      if cpu:
        counts = ints() or (1, 2, 4, 8)
      else:
        counts = ints() or tuple(
            2**i for i in range(8) if 2**i <= num_devices)
      for n in counts:
        cases.append(Case(f'devices={n}', width=width, batch_size=batch,
                          num_devices=n, fake_devices=n if cpu else None,
                          sweep='devices'))
    else:
      raise SystemExit(f'unknown sweep {sweep!r}; known: {sorted(SWEEPS)}')
  for c in cases:
    c.compute_dtype = args.compute_dtype
    c.remat = args.remat
    c.vmap_modalities = args.vmap_modalities
    c.conv_wgrad_chunk = args.conv_wgrad_chunk
    c.conv_impl = args.conv_impl
    c.microbatch_size = args.microbatch_size
    if c.microbatch_size == 0:
      c.name += '+one_call'
    elif c.microbatch_size > 0:
      c.name += f'+micro{c.microbatch_size}'
    if c.conv_wgrad_chunk == 0:
      c.name += '+xla_wgrad'
    elif c.conv_wgrad_chunk > 0:
      c.name += f'+wgrad{c.conv_wgrad_chunk}'
    for flag, suffix in ((c.conv_impl != 'xla', '+' + c.conv_impl),
                         (c.compute_dtype == 'bfloat16', '+bf16'),
                         (c.remat, '+remat'), (c.vmap_modalities, '+vmap')):
      if flag:
        c.name += suffix
  return cases


def _worker_env(fake_devices):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      filter(None, [_REPO, env.get('PYTHONPATH', '')]))
  env.setdefault('PYTHONUNBUFFERED', '1')
  if fake_devices:
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    flags.append(f'--xla_force_host_platform_device_count={fake_devices}')
    env['XLA_FLAGS'] = ' '.join(flags)
    env['JAX_PLATFORMS'] = 'cpu'
  return env


_MARK = 'BENCH_ROW '


def run_case(case, args):
  """Runs one case in a subprocess; returns its row (or an error row)."""
  cmd = [sys.executable, os.path.abspath(__file__), '--worker',
         json.dumps(dataclasses.asdict(case)), '--steps', str(args.steps),
         '--warmup', str(args.warmup), '--seed', str(args.seed)]
  if args.compile_only:
    cmd.append('--compile_only')
  if args.profile:
    cmd.append('--profile')
  if args.compilation_cache:
    cmd += ['--compilation_cache', args.compilation_cache]
  if args.peak_tflops:
    cmd += ['--peak_tflops', str(args.peak_tflops)]
  t0 = time.time()
  timeout = args.case_timeout
  if args.deadline is not None:
    left = args.deadline - t0
    if left <= 0:
      return dict(dataclasses.asdict(case), case=case.name,
                  error='skipped: --deadline passed', wall_s=0.0)
    timeout = left if timeout is None else min(timeout, left)
  try:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                          env=_worker_env(case.fake_devices),
                          timeout=timeout, check=False)
    rows = [json.loads(l[len(_MARK):]) for l in proc.stdout.splitlines()
            if l.startswith(_MARK)]
    if rows:
      return rows[-1]
    error = f'worker exited with status {proc.returncode} and no result'
  except subprocess.TimeoutExpired:
    error = f'timeout after {timeout:.0f} s'
  return dict(dataclasses.asdict(case), case=case.name, error=error,
              wall_s=time.time() - t0)


COLUMNS = (
    ('case', 18, '{}'), ('device', 14, '{}'), ('ndev', 4, '{}'),
    ('samples/s', 10, '{:.1f}'), ('steps/s', 8, '{:.3f}'),
    ('ms/step', 10, '{:.1f}'), ('IQR ms', 15, '{}'), ('min-max ms', 15, '{}'),
    ('compile s', 12, '{}'), ('peak bytes', 22, '{}'),
    ('GFLOP/step', 10, '{:.1f}'), ('TFLOP/s', 8, '{:.3f}'),
    ('%peak', 6, '{}'),
)


def _cell(row, col):
  if col == 'case':
    return row['case']
  if 'error' in row:
    return '' if col != 'device' else 'ERROR'
  g = row.get
  vals = {
      'device': g('device_kind'), 'ndev': g('num_devices'),
      'samples/s': g('samples_per_s'), 'steps/s': g('steps_per_s'),
      'ms/step': g('ms_median'),
      'IQR ms': (f'{g("ms_p25"):.1f}-{g("ms_p75"):.1f}'
                 if g('ms_p25') is not None else None),
      'min-max ms': (f'{g("ms_min"):.1f}-{g("ms_max"):.1f}'
                     if g('ms_min') is not None else None),
      'compile s': (f'{g("compile_s"):.1f}' + (' cached' if g(
          'compile_cache_hit') else '') if g('compile_s') is not None
                    else None),
      'peak bytes': (f'{g("peak_bytes") / 2**20:,.0f} MiB '
                     f'{"(xla)" if g("peak_bytes_kind", "").startswith("xla") else "(dev)"}'
                     if g('peak_bytes') is not None else None),
      'GFLOP/step': (g('flops_per_step') / 1e9
                     if g('flops_per_step') is not None else None),
      'TFLOP/s': g('tflops_per_s'),
      '%peak': (f'{100 * g("frac_peak"):.1f}'
                if g('frac_peak') is not None else None),
  }
  return vals[col]


def format_row(row):
  cells = []
  for col, w, fmt in COLUMNS:
    v = _cell(row, col)
    s = '-' if v is None or v == '' else (fmt.format(v) if isinstance(
        v, (int, float)) and not isinstance(v, bool) else str(v))
    cells.append(s.rjust(w) if col != 'case' else s.ljust(w))
  line = ' '.join(cells)
  if 'error' in row:
    line += f'  {row["error"]}'
  return line


def header():
  return ' '.join(c.ljust(w) if c == 'case' else c.rjust(w)
                  for c, w, _ in COLUMNS)


def _portable(arg: str) -> str:
  """An argument as recorded in a row: an absolute path (alone or after
  `--flag=`) relative to the repository when inside it, else its file name,
  so rows carry no machine's paths."""
  flag, eq, value = arg.rpartition('=') if arg.startswith('-') else ('', '', arg)
  if not os.path.isabs(value):
    return arg
  rel = os.path.relpath(value, _REPO)
  value = os.path.basename(value) if rel.startswith('..') else rel
  return flag + eq + value


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    return worker(args)
  t_start = time.time()
  if args.platform:
    plat, ndev, kind = args.platform, args.device_count, args.device_kind
  else:
    plat, ndev, kind = probe_platform()
  cases = build_cases(args, plat, ndev)
  what = ('compile only' if args.compile_only else
          f'{args.warmup} warm-up + {args.steps} timed steps each')
  print(f'# {len(cases)} case(s) on {plat} ({ndev} x {kind}), {what}; '
        'input: synthetic uint8 images -> float32, pre-placed on device '
        '(input pipeline not timed); peak bytes: (dev) = device '
        'peak_bytes_in_use, (xla) = compiled temp+argument+output bytes',
        flush=True)
  print(header(), flush=True)
  command = ' '.join(shlex.quote(_portable(a)) for a in [
      'python', os.path.relpath(os.path.abspath(__file__), _REPO)]
                     + list(sys.argv[1:] if argv is None else argv))
  for case in cases:
    row = run_case(case, args)
    row.update(command=command, note=args.note)
    print(format_row(row), flush=True)
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'a') as f:
        f.write(json.dumps(row) + '\n')
  print(f'# total {time.time() - t_start:.0f} s', flush=True)
  return 0


# ------------------------------------------------------------------ worker


def _log(msg):
  print(f'[bench] {msg}', file=sys.stderr, flush=True)


def _flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  if not cost:
    return None
  f = cost.get('flops', 0.0)  # XLA leaves the count out when it is 0
  return float(f) if f is not None and f >= 0 else None


def _memory(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  return {k: int(getattr(m, f'{k}_size_in_bytes', 0) or 0)
          for k in ('temp', 'argument', 'output', 'alias',
                    'generated_code')}


def cache_hit_counter(jax):
  """A list that grows by one per persistent-compilation-cache hit."""
  hits = []

  def listener(event, **kwargs):
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      hits.append(event)

  try:
    jax.monitoring.register_event_listener(listener)
  except AttributeError:  # other JAX versions: hits stay unknown (0)
    pass
  return hits


def configure(jax, cache_dir=None):
  """The training shell's settings (`parallel.configure_jax`), with the
  persistent compilation cache off unless `cache_dir` is given."""
  settings = [('jax_threefry_partitionable', False)]
  if cache_dir:
    settings += [('jax_compilation_cache_dir', cache_dir),
                 ('jax_persistent_cache_min_compile_time_secs', 0.0)]
  else:
    settings += [('jax_enable_compilation_cache', False)]
  for name, value in settings:
    try:
      jax.config.update(name, value)
    except (AttributeError, KeyError, ValueError) as e:  # other JAX versions
      _log(f'could not set {name}={value}: {e}')


def worker(args):
  """Measures one case; prints its row (with 'error' if it failed)."""
  case = Case(**json.loads(args.worker))
  row = dict(dataclasses.asdict(case), case=case.name)
  try:
    _measure(args, case, row)
  except Exception as e:  # pylint: disable=broad-except
    # E.g. out of device memory: report it, keep what was measured.
    _log(f'{case.name}: {type(e).__name__}: {e}')
    row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
  print(_MARK + json.dumps(row), flush=True)
  return 0


def _measure(args, case, row):
  """Fills `row` step by step (compile, memory, FLOPs, then timings)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mmvaeplus_jax import models  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.infra import parallel  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.configs import polymnist  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.input import pipeline  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import microbatch as microbatch_lib  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from mmvaeplus_jax import train_state  # pylint: disable=g-import-not-at-top

  from mmvaeplus_jax.infra import xla_cpu  # pylint: disable=g-import-not-at-top

  configure(jax, args.compilation_cache)
  cache_hits = cache_hit_counter(jax)
  # Which XLA:CPU convolutions ran ($MMVAEPLUS_CPU_CONVOLUTIONS; xla_cpu.py).
  row['cpu_convolutions'] = xla_cpu.cpu_convolutions()

  config = polymnist.get_config(case.recipe)
  config.model.update(width=case.width, num_modalities=case.num_modalities,
                      compute_dtype=case.compute_dtype, remat=case.remat,
                      vmap_modalities=case.vmap_modalities,
                      conv_wgrad_chunk=case.conv_wgrad_chunk,
                      conv_impl=case.conv_impl)
  if case.num_samples is not None:
    config.objective.num_samples = case.num_samples
  if case.estimator is not None:
    config.objective.estimator = case.estimator
  config.train.batch_size = case.batch_size
  config.train.microbatch_size = case.microbatch_size
  model = models.get_model(config.model)
  tx = train_state.make_optimizer(config.optim)
  devices = jax.devices()
  if case.num_devices is not None:
    if case.num_devices > len(devices):
      raise SystemExit(f'{case.num_devices} devices asked, {len(devices)} '
                       'present')
    devices = devices[:case.num_devices]
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(case.batch_size, mesh)
  repl = parallel.replicated(mesh)
  b = case.batch_size
  rng = np.random.default_rng(args.seed)
  host_batches = [pipeline.to_model_inputs({
      m.name: rng.integers(0, 256, (b,) + tuple(m.event_shape),
                           dtype=np.uint8)
      for m in model.modalities}) for _ in range(4)]
  _log(f'{case.name}: width {case.width}, M={case.num_modalities}, '
       f'K={config.objective.num_samples}, B={b}, '
       f'{config.objective.estimator}, {case.compute_dtype}, '
       f'remat={case.remat}, vmap={case.vmap_modalities}, '
       f'{len(devices)} x {devices[0].device_kind}')

  # Shapes first, then the replicated state, as the training shell does.
  root = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(root)
  init_fn = lambda k, x: train_state.init_state(k, x, model=model, tx=tx)
  # One example suffices for the shapes; the same init program for every
  # batch size (a compilation cache then holds it once).
  t = time.perf_counter()
  state = jax.jit(init_fn, out_shardings=repl)(
      init_key, {n: x[:1] for n, x in host_batches[0].items()})
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  batches = [parallel.global_batch(mesh, hb) for hb in host_batches]
  train_fn = step_lib.jit_train_step(config, model, tx, mesh)

  # One program, or (microbatches, microbatch_lib.MicrobatchedTrainStep) the
  # step's programs with their calls per step: FLOPs add up over calls.
  t = time.perf_counter()
  if isinstance(train_fn, microbatch_lib.MicrobatchedTrainStep):
    parts = train_fn.lower_programs(state, batches[0], train_key)
  else:
    parts = [('train_step', train_fn.lower(state, batches[0], train_key), 1)]
  lower_s = time.perf_counter() - t
  hits_before = len(cache_hits)
  t = time.perf_counter()
  compiled_parts = [(name, lowered.compile(), calls)
                    for name, lowered, calls in parts]
  compile_s = time.perf_counter() - t
  # Memory and the per-op profile: the program with the most FLOPs per step
  # (microbatches: the gradient program).
  compiled = max(compiled_parts, key=lambda p: p[2] * (_flops(p[1]) or 0))[1]
  microbatch = (
      train_fn.size
      if isinstance(train_fn, microbatch_lib.MicrobatchedTrainStep) else 0)
  # A program already in the compilation cache (the same case earlier in the
  # run, e.g. M=5 of the M sweep = devices=1) loads instead of compiling.
  compile_cache_hit = len(cache_hits) > hits_before
  _log(f'{case.name}: lower {lower_s:.1f} s, compile {compile_s:.1f} s')
  part_flops = [_flops(c) for _, c, _ in compiled_parts]
  flops_dev = (None if any(f is None for f in part_flops) else
               sum(f * calls for f, (_, _, calls) in
                   zip(part_flops, compiled_parts)))
  flops_raw = flops_dev
  if case.remat:
    # XLA's cost analysis counts a while loop's body once, not once per
    # iteration, and remat decodes in a lax.map loop over K: no valid count.
    flops_dev = None
  flops = flops_dev * len(devices) if flops_dev is not None else None
  mem = _memory(compiled)

  row.update(
      date=datetime.datetime.now().isoformat(timespec='seconds'),
      host=platform.node(), platform=jax.default_backend(),
      device_kind=devices[0].device_kind, num_devices=len(devices),
      jax_version=jax.__version__,
      num_samples=config.objective.num_samples,
      estimator=config.objective.estimator, beta=config.objective.beta,
      data='synthetic uint8 -> float32, pre-placed on device',
      init_s=init_s, lower_s=lower_s, compile_s=compile_s,
      flops_per_step=flops, flops_per_device=flops_dev,
      flops_xla_raw=flops_raw, microbatch_size=microbatch,
      programs=[dict(name=n, calls=k, flops=f)
                for (n, _, k), f in zip(compiled_parts, part_flops)],
      xla_memory=mem, steps=0 if args.compile_only else args.steps,
      compilation_cache=bool(args.compilation_cache),
      compile_cache_hit=compile_cache_hit,
      warmup=args.warmup,
  )
  if mem:
    row['peak_bytes'] = mem['temp'] + mem['argument'] + mem['output']
    row['peak_bytes_kind'] = 'xla:temp+arg+out'

  if not args.compile_only:
    losses, times = [], []
    first_s = None
    for i in range(args.warmup + args.steps):
      batch = batches[i % len(batches)]
      t = time.perf_counter()
      state, metrics = train_fn(state, batch, train_key)
      jax.block_until_ready((state, metrics))
      dt = time.perf_counter() - t
      if i == 0:
        first_s = dt
      if i >= args.warmup:
        times.append(dt)
      losses.append(float(metrics['train/loss']))
    ms = np.asarray(times) * 1e3
    med = float(np.median(ms))
    row.update(
        first_step_s=first_s, ms_median=med,
        ms_p25=float(np.percentile(ms, 25)),
        ms_p75=float(np.percentile(ms, 75)),
        ms_min=float(ms.min()), ms_max=float(ms.max()), ms_all=ms.tolist(),
        steps_per_s=1e3 / med, samples_per_s=b * 1e3 / med,
        loss_first=losses[0], loss_last=losses[-1],
        loss_finite=bool(np.all(np.isfinite(losses))),
        jit_cache_size=(train_fn._cache_size()  # pylint: disable=protected-access
                        if hasattr(train_fn, '_cache_size') else None),
    )
    if flops is not None:
      row['tflops_per_s'] = flops / (med / 1e3) / 1e12
      if args.peak_tflops:
        row['frac_peak'] = row['tflops_per_s'] / (
            args.peak_tflops * len(devices))
    if args.profile:
      import op_profile  # pylint: disable=g-import-not-at-top
      rows = set()
      for n in {b, microbatch * len(devices)} - {0}:
        rows |= {n, n * config.objective.num_samples * case.num_modalities,
                 n * case.num_modalities}
      holder = [state]

      def one_step():  # the state is donated: thread it through
        holder[0], metrics = train_fn(holder[0], batches[0], train_key)
        return metrics

      by_cat, top = op_profile.profile_step(
          one_step, (),
          compiled.as_text(), {r // len(devices) for r in rows} | rows)
      row['profile'] = {k: {'ms': v[0], 'ops': v[1]} for k, v in by_cat.items()}
      row['profile_top'] = [dict(ms=t[0], op=t[1], category=t[2], desc=t[3])
                            for t in top[:20]]
      _log(f'{case.name}: per-op profile of one step\n'
           + op_profile.format_profile(by_cat, top))
    stats = [d.memory_stats() for d in devices]
    if all(stats) and all('peak_bytes_in_use' in s for s in stats):
      row['peak_bytes'] = max(int(s['peak_bytes_in_use']) for s in stats)
      row['peak_bytes_kind'] = 'device:peak_bytes_in_use'
      row['bytes_limit'] = int(stats[0].get('bytes_limit', 0)) or None


if __name__ == '__main__':
  sys.exit(main())
