"""Command-line programs: `mmvaeplus-train` (train.py), `mmvaeplus-eval`
(eval.py), and `python -m mmvaeplus_jax.tools.<name>` for study, scatter,
classifiers, prepare_data and convert_official. Each parses flags and calls one library
function."""

import sys

from absl import app
from absl import flags


def own_key_flags(module_name: str) -> None:
  """absl's --help lists the key flags of the main program only
  (`sys.argv[0]`: train.py, mmvaeplus-train, ...): make the flags defined
  by `module_name` its key flags."""
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main, doc: str) -> None:
  """`app.run(main)`, with `doc` as the --help text when the program that
  was started (a console script, a thin wrapper) has no docstring."""
  main_module = sys.modules['__main__']
  if not main_module.__doc__:
    main_module.__doc__ = doc
  app.run(main)
