"""Per-op time of one compiled step, from a JAX profiler trace.

`profile_step(fn, args, hlo_text)` runs `fn(*args)` once under
`jax.profiler.trace` (perfetto JSON, no TensorBoard needed), sums the
duration of every executed XLA op (thunk) by name, and classifies each op
from the compiled HLO: convolutions by output shape (`conv->act`, the
forward pass or the input gradient, whose output has the batch's rows;
`conv->weight`, the weight gradient, whose output is kernel-shaped),
`dot`, and other fusions (element-wise, reductions, copies). Used by
`bench/step.py --profile`.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

_INSTR = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\{?[\d,]*\}? '
                    r'(fusion|convolution|custom-call|dot|copy|transpose|'
                    r'reduce|add|multiply|select|broadcast|pad|slice|'
                    r'concatenate|dynamic-slice|dynamic-update-slice)\(')
_CONV = re.compile(r'= (\w+\[[\d,]*\])\S* convolution\((.*?)\), window=\{size=(\S+)')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')


def _computations(hlo: str):
  """name -> body text of each HLO computation."""
  out = {}
  for block in re.split(r'\n(?=\S)', hlo):
    m = re.match(r'(?:ENTRY )?%?([\w.\-]+)', block)
    if m:
      out[m.group(1)] = block
  return out


def classify(hlo: str, batch_rows: set[int]):
  """op name -> (category, description)."""
  comps = _computations(hlo)
  out = {}
  for line in hlo.split('\n'):
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, kind = m.groups()
    body = line
    calls = _CALLS.search(line)
    if calls and calls.group(1) in comps:
      body = comps[calls.group(1)]
    conv = _CONV.search(body)
    if conv:
      out_shape, window = conv.group(1), conv.group(3)
      dims = [int(d) for d in re.findall(r'\d+', out_shape.split('[')[1])]
      cat = 'conv->act' if dims and dims[0] in batch_rows else 'conv->weight'
      out[name] = (cat, f'{out_shape} window {window}')
    elif ' dot(' in body:
      out[name] = ('dot', shape)
    else:
      out[name] = ('other', f'{kind} {shape}')
  return out


def profile_step(fn, args, hlo: str, batch_rows: set[int]):
  """Runs `fn(*args)` once under the profiler; returns (by category, top ops).

  by category: {category: (ms, count)}; top ops: [(ms, name, category,
  description)] sorted by time.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # warm
  trace_dir = tempfile.mkdtemp(prefix='mmvaeplus_jax_profile_')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    jax.block_until_ready(fn(*args))
  path = glob.glob(f'{trace_dir}/**/*perfetto_trace.json.gz', recursive=True)[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  kinds = classify(hlo, batch_rows)
  per_op = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e and e['name'] in kinds:
      per_op[e['name']] += e['dur'] / 1e3
  by_cat = collections.defaultdict(lambda: [0.0, 0])
  for name, ms in per_op.items():
    by_cat[kinds[name][0]][0] += ms
    by_cat[kinds[name][0]][1] += 1
  top = sorted(((ms, n, *kinds[n]) for n, ms in per_op.items()), reverse=True)
  return {k: tuple(v) for k, v in by_cat.items()}, top


def format_profile(by_cat, top, num_top=12) -> str:
  total = sum(ms for ms, _ in by_cat.values()) or 1.0
  lines = [f'  op time {total:,.0f} ms (sum over executed ops)']
  for cat, (ms, n) in sorted(by_cat.items(), key=lambda kv: -kv[1][0]):
    lines.append(f'  {cat:13s} {ms:10,.0f} ms {100 * ms / total:5.1f} %  '
                 f'{n:5d} ops')
  lines.append('  top ops:')
  for ms, name, cat, desc in top[:num_top]:
    lines.append(f'  {ms:10,.1f} ms {100 * ms / total:5.1f} %  {cat:13s} '
                 f'{desc}  ({name})')
  return '\n'.join(lines)
