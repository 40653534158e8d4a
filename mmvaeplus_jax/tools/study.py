"""Run a study: train and evaluate its grid of runs, or report on them.

    python -m mmvaeplus_jax.tools.study --study=studies/polymnist_cpu.py:fig1 \
        --root=runs/study_fig1 [--set data.manual_dir=../shared/data ...]

Study definitions are Python files with `get_study(arg)`
(`experiments/records.py`); the runs are trained resumably
(`experiments/study.py`: finished runs are skipped, `--records DIR` keeps
their records where they outlive the machine, `--cells` / `--seeds` train
only some runs). The same command with `--report OUT_DIR` writes the
finished runs' figures and tables (`tables.md`: per cell mean +- std, per
run) and with `--rescore CLASSIFIER_DIR --tag NAME` re-scores their
coherence with another classifier set (`experiments/study_report.py`);
neither trains anything.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from mmvaeplus_jax.experiments import records as records_lib
from mmvaeplus_jax.experiments import study as study_lib
from mmvaeplus_jax.experiments import study_report
from mmvaeplus_jax.infra import parallel


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--study', required=True,
                      help='study file and argument, e.g. '
                      'studies/polymnist_cpu.py:fig1')
  parser.add_argument('--root', required=True, help='the study directory')
  parser.add_argument('--set', action='append', default=[],
                      help='key=value applied to every cell config')
  parser.add_argument('--report', default='',
                      help='write the figures and tables.md of the finished'
                      ' runs into this folder (study_report.write_figures,'
                      ' write_tables); trains nothing')
  parser.add_argument('--grid_file', default='',
                      help='with --report: the conditional grid copied per'
                      ' cell (default: cross_modal_<first modality>.png;'
                      ' e.g. cross_modal_m3.png)')
  parser.add_argument('--rescore', default='',
                      help='re-score the finished runs with this classifier'
                      ' folder (study_report.rescore, needs --tag); trains'
                      ' nothing')
  parser.add_argument('--cells', default='',
                      help='comma-separated cell names: train only their'
                      ' runs (default: every cell); the table still shows'
                      ' every finished run')
  parser.add_argument('--seeds', default='',
                      help='comma-separated seeds: train only their runs'
                      ' (default: every seed), e.g. --cells=A --seeds=2'
                      ' reproduces one run')
  parser.add_argument('--tag', default='',
                      help='name of the --rescore evaluation')
  parser.add_argument('--records', default='',
                      help='also keep every finished run\'s record in this'
                      ' folder (e.g. studies/records/<study> in a checkout,'
                      ' committed): runs recorded there are not retrained'
                      ' and count in the table on any machine')
  args = parser.parse_args(argv)
  if args.rescore and not args.tag:
    parser.error('--rescore needs --tag NAME')
  try:
    seeds = [int(s) for s in args.seeds.split(',') if s] or None
  except ValueError:
    parser.error(f'--seeds takes comma-separated integers, got {args.seeds!r}')
  parallel.configure_jax()
  study = records_lib.load_study(args.study, args.set)
  print(f'study {study.name}: {len(study.cells)} cells, up to'
        f' {len(study.seeds)} seeds, {study.num_runs()} runs ->'
        f' {os.path.abspath(args.root)}', flush=True)
  if args.report or args.rescore:
    if args.rescore:
      print(study_report.rescore(study, args.root, args.rescore, args.tag,
                                 log=lambda m: print(m, flush=True),
                                 records=args.records or None))
    if args.report:
      files = study_report.write_figures(study, args.root, args.report,
                                         grid_file=args.grid_file or None,
                                         records=args.records or None)
      files.append(study_report.write_tables(
          study, args.root, args.report, records=args.records or None))
      print(f'wrote {", ".join(files)} to {args.report}')
    return
  study_lib.run_study(study, args.root, log=lambda m: print(m, flush=True),
                      records=args.records or None,
                      cells=[c for c in args.cells.split(',') if c] or None,
                      seeds=seeds)
  with open(os.path.join(args.root, 'results.md')) as f:
    print(f.read())


if __name__ == '__main__':
  main(sys.argv[1:])
