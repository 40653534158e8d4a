"""Scaling curves from `bench/step.py --out` rows: time and memory vs K, M,
batch and devices.

    python bench/plot.py results.jsonl [more.jsonl ...] --out scaling.png
    python bench/plot.py results.jsonl epoch.jsonl --markdown   # tables

One column per sweep found in the rows (K, M, batch, devices), two rows:
median ms/step (bars: interquartile range) and peak bytes (MiB; device peak
on GPU, XLA's temp + argument + output bytes on CPU, as labelled in the
legend). One line per (device kind, width, dtype, remat) group; when a
point was measured several times, the last row wins. Rows with errors are
skipped.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

SWEEP_X = {
    'K': ('num_samples', 'K (importance samples)'),
    'M': ('num_modalities', 'M (modalities)'),
    'batch': ('batch_size', 'global batch B'),
    'devices': ('num_devices', 'devices'),
}


def load(paths):
  rows = []
  for path in paths:
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r.get('sweep') in SWEEP_X and 'error' not in r]


def curves(rows):
  """{sweep: {group label: {x: row}}}, the last row of each point winning."""
  out = {}
  for r in rows:
    x = r[SWEEP_X[r['sweep']][0]]
    mem = 'xla' if str(r.get('peak_bytes_kind', '')).startswith('xla') else 'dev'
    label = (f'{r.get("device_kind")} w={r.get("width")} '
             f'{r.get("compute_dtype", "float32")}'
             f'{" remat" if r.get("remat") else ""}'
             f'{" vmap" if r.get("vmap_modalities") else ""} '
             f'B={r.get("batch_size") if r["sweep"] != "batch" else "x"} '
             f'[mem {mem}]')
    out.setdefault(r['sweep'], {}).setdefault(label, {})[x] = r
  return out


def plot(rows, path):
  data = curves(rows)
  sweeps = [s for s in SWEEP_X if s in data]
  if not sweeps:
    raise SystemExit('no sweep rows (rows with "sweep" and no "error")')
  fig, axes = plt.subplots(2, len(sweeps), figsize=(4.2 * len(sweeps), 7),
                           squeeze=False)
  labels = sorted({l for s in sweeps for l in data[s]})
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  color = {l: cycle[i % len(cycle)] for i, l in enumerate(labels)}
  for j, sweep in enumerate(sweeps):
    ax_t, ax_m = axes[0, j], axes[1, j]
    for label, points in sorted(data[sweep].items()):
      xs = sorted(points)
      t = [points[x].get('ms_median') for x in xs]
      if any(v is not None for v in t):
        keep = [i for i, v in enumerate(t) if v is not None]
        lo = [t[i] - points[xs[i]]['ms_p25'] for i in keep]
        hi = [points[xs[i]]['ms_p75'] - t[i] for i in keep]
        ax_t.errorbar([xs[i] for i in keep], [t[i] for i in keep],
                      yerr=[lo, hi], marker='o', capsize=3, label=label,
                      color=color[label])
      mem = [points[x].get('peak_bytes') for x in xs]
      keep = [i for i, v in enumerate(mem) if v is not None]
      ax_m.plot([xs[i] for i in keep], [mem[i] / 2**20 for i in keep],
                marker='s', label=label, color=color[label])
    for ax, ylabel in ((ax_t, 'ms / step (median, IQR)'),
                       (ax_m, 'peak MiB')):
      ax.set_xlabel(SWEEP_X[sweep][1])
      ax.set_ylabel(ylabel)
      ax.grid(alpha=0.3)
      if sweep in ('K', 'batch', 'devices'):
        ax.set_xscale('log', base=2)
      xs = sorted({x for pts in data[sweep].values() for x in pts})
      ax.set_xticks(xs)
      ax.set_xticklabels([str(x) for x in xs])
      ax.minorticks_off()
      ax.set_yscale('log')
    ax_t.set_title(f'train step vs {sweep}')
  legend = {}
  for ax in axes.flat:  # each label once, from whichever panel has it
    for h, l in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(l, h)
  fig.legend(list(legend.values()), list(legend), loc='lower center', ncol=2,
             fontsize=8)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  print(f'wrote {path} ({", ".join(sweeps)})')


def _fmt(v, spec):
  return '-' if v is None else format(v, spec)


def markdown(paths):
  """Markdown tables of all rows (step rows, then epoch rows), for pasting."""
  rows = []
  for path in paths:
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  out = [('| case | device | ndev | width | M | K | B | est. | dtype | '
          'samples/s | steps/s | ms/step median (IQR; min-max) [n] | '
          'compile s | peak MiB | GFLOP/step | TFLOP/s |'),
         '|' + '---|' * 16]
  for r in rows:
    if 'steps_per_epoch' in r:
      continue
    g = r.get
    if 'error' in r:
      out.append(f'| {r["case"]} | ERROR: {r["error"]} |' + ' |' * 14)
      continue
    mem = g('peak_bytes')
    kind = 'xla' if str(g('peak_bytes_kind', '')).startswith('xla') else 'dev'
    t = ('-' if g('ms_median') is None else
         f'{g("ms_median"):,.1f} ({g("ms_p25"):,.1f}-{g("ms_p75"):,.1f}; '
         f'{g("ms_min"):,.1f}-{g("ms_max"):,.1f}) [{g("steps")}]')
    out.append(
        f'| {r["case"]} | {g("device_kind")} | {g("num_devices")} | '
        f'{g("width")} | {g("num_modalities")} | {g("num_samples")} | '
        f'{g("batch_size")} | {g("estimator")} | {g("compute_dtype")} | '
        f'{_fmt(g("samples_per_s"), ",.1f")} | {_fmt(g("steps_per_s"), ".3f")}'
        f' | {t} | {_fmt(g("compile_s"), ".1f")}'
        f'{" (cached)" if g("compile_cache_hit") else ""} | '
        f'{"-" if mem is None else f"{mem / 2**20:,.0f} ({kind})"} | '
        f'{_fmt((g("flops_per_step") or 0) / 1e9 or None, ",.1f")} | '
        f'{_fmt(g("tflops_per_s"), ".4f")} |')
  epochs = [r for r in rows if 'steps_per_epoch' in r]
  if epochs:
    out += ['', ('| run | device | width | B | steps | first step s | '
                 'steps/s | samples/s | epoch s (steady) | '
                 'recipe h (extrapolated) |'),
            '|' + '---|' * 10]
    for r in epochs:
      g = r.get
      out.append(
          f'| {r["case"]} | {g("device_kind")} | {g("width")} | '
          f'{g("batch_size")} | {g("steps")} | {_fmt(g("first_step_s"), ".1f")}'
          f' | {_fmt(g("steps_per_s"), ".3f")} | '
          f'{_fmt(g("samples_per_s"), ",.1f")} | '
          f'{_fmt(g("epoch_s_steady"), ",.1f")} | '
          f'{_fmt(g("recipe_hours_extrapolated"), ",.2f")} |')
  return '\n'.join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('jsonl', nargs='+',
                 help='row files from bench/step.py / bench/epoch.py --out')
  p.add_argument('--out', default='bench/scaling.png', help='PNG to write')
  p.add_argument('--markdown', action='store_true',
                 help='print every row as markdown tables instead of plotting')
  args = p.parse_args(argv)
  if args.markdown:
    print(markdown(args.jsonl))
    return 0
  plot(load(args.jsonl), args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
