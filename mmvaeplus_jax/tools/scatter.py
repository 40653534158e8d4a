"""Coherence vs FID across runs (Fig. 1 right), one point per run:

  python -m mmvaeplus_jax.tools.scatter --workdirs A B C --out fig.png \\
      [--coherence_key coherence/cond/mean --fid_key fid/cond/mean/with_self \\
       [--coherence_key ... --fid_key ...]] [--labels a b c]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

from mmvaeplus_jax.experiments import scatter


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mmvaeplus_jax.tools.scatter',
      description='Coherence vs FID, one point per run (Fig. 1 right).')
  sc = parser
  sc.add_argument('--workdirs', nargs='+', required=True)
  sc.add_argument('--out', required=True, help='output PNG')
  sc.add_argument('--coherence_key', action='append', default=None,
                  help='metric on the y axis (repeat for more panels;'
                  ' default coherence/cond/mean)')
  sc.add_argument('--fid_key', action='append', default=None,
                  help='metric on the x axis, paired with --coherence_key'
                  ' (default fid/cond/mean/with_self)')
  sc.add_argument('--labels', nargs='+', default=None)
  args = parser.parse_args(argv)
  try:
    panels = scatter.write_scatter(
        args.workdirs, args.out,
        coherence_keys=args.coherence_key or ['coherence/cond/mean'],
        fid_keys=args.fid_key or ['fid/cond/mean/with_self'],
        labels=args.labels)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f'error: {e.args[0] if e.args else e}', file=sys.stderr)
    return 1
  for ck, fk, points in panels:
    for p in points:
      print(f'{p.label}: step {p.step}, {ck}={p.coherence:.4g},'
            f' {fk}={p.fid:.4g}')
  print(f'written to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
