# `python eval.py --workdir=DIR [--config=FILE[:ARG]]`: evaluates a training
# run. The program (flags, --help text) is mmvaeplus_jax/tools/evaluate.py,
# installed as the `mmvaeplus-eval` command; this file keeps `python eval.py`
# working in a source checkout, with the same flags, defaults and output.

from mmvaeplus_jax.tools import evaluate

if __name__ == '__main__':
  evaluate.run()
