"""Import an official MMVAE+ PolyMNIST PyTorch checkpoint as a run directory:

  python -m mmvaeplus_jax.tools.convert_official --pt model_250.rar \\
      --workdir runs/official [--family laplace|normal] \\
      [--config FILE[:ARG]] [--set key=value ...] [--step 0]

then `python eval.py --workdir runs/official` or
`mmvaeplus_jax.load_run('runs/official')`. No torch needed. Default config:
`polymnist.py:official2024` with the official run's `args.json` (beside the
file) applied; without an args.json, `--family` must say whether the
latents are Laplace or Normal (the weights cannot tell); `--config` takes a config file (a path, or a name in
mmvaeplus_jax/configs/, e.g. polymnist.py:official2024) and `--set`
overrides keys of either (e.g. `--set data.manual_dir=../shared/data`).
The key map and what is assumed: docs/official_checkpoints.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import importlib.util
import os
import sys

from mmvaeplus_jax import configs
from mmvaeplus_jax.experiments import official_checkpoint

CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))


def load_config(spec: str):
  """`FILE[:ARG]` (a path, or a file of mmvaeplus_jax/configs/) ->
  its `get_config(ARG)`."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    path = os.path.join(CONFIGS_DIR, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {spec.partition(":")[0]} not found')
  mod_spec = importlib.util.spec_from_file_location('_config_file', path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config, items: Sequence[str]):
  """`section.key=value` items set on `config` (typed as the old value)."""
  for item in items:
    key, sep, value = item.partition('=')
    section, _, name = key.rpartition('.')
    node = config
    for part in filter(None, section.split('.')):
      node = node.get(part) if node is not None else None
    if not sep or node is None or name not in node:
      raise ValueError(f'--set {item!r}: expected an existing key=value')
    old = node[name]
    node[name] = (value.lower() in ('1', 'true', 'yes')
                  if isinstance(old, bool) else type(old)(value))
  return config


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mmvaeplus_jax.tools.convert_official',
      description='Import an official MMVAE+ PolyMNIST PyTorch state dict'
      ' as a run directory (config.json + orbax checkpoint).')
  parser.add_argument('--pt', required=True,
                      help='the official torch.save(state_dict) file')
  parser.add_argument('--workdir', required=True, help='new run directory')
  parser.add_argument('--config', default=None,
                      help='FILE[:ARG] (default: polymnist.py:official2024'
                      ' with the run\'s args.json applied)')
  parser.add_argument('--family', choices=('laplace', 'normal'),
                      default=None,
                      help='latent family of the official run; required'
                      ' without --config and without an args.json beside'
                      ' the file (the weights cannot tell)')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=VALUE', help='config override (repeat)')
  parser.add_argument('--step', type=int, default=0,
                      help='checkpoint step of the run (default 0)')
  args = parser.parse_args(argv)
  try:
    if args.config:
      config = load_config(args.config)
    else:
      config = official_checkpoint.official_config(
          official_checkpoint.read_official_args(args.pt),
          family=args.family)
    apply_overrides(config, args.set)
    run = official_checkpoint.import_run(args.pt, args.workdir, config,
                                         step=args.step)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'imported {args.pt} as step {run.step} of {run.workdir}'
        f' ({run.config.model.name}, width {run.config.model.width},'
        f' {run.model.num_modalities} modalities); evaluate with'
        f' python eval.py --workdir={run.workdir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
