"""Evaluate a training run: `python eval.py --config=FILE[:ARG] --workdir=DIR`.

Restores the latest (or `--step`) checkpoint of DIR read-only, replicated
over the available devices, runs the evaluators named in
`--config.evals.evaluators` (default: bound, coherence, fid, fd_clf,
latent_classification, likelihood, figures; see `evaluation/runner.py`) and
writes DIR/eval/<step>/metrics.json (a `skipped` entry gives the reason for
everything that could not run), TensorBoard scalars under DIR/eval/ and the
figures (PNG) beside the metrics. The config is the run's own
(<workdir>/config.json, written by train.py) unless `--config` is given;
`--config.evals.x=...` overrides either.

* coherence and FD_clf need `--config.evals.classifier_dir=CLASSIFIERS`
  (trained with `python -m mmvaeplus_jax.tools.classifiers`);
* FID needs pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
  (`--config.evals.inception_weights=PATH`, default
  ~/.cache/mmvaeplus_jax/<that name>); without it FID is skipped with the
  download address. Real-set statistics are cached in
  ~/.cache/mmvaeplus_jax/fid_stats/ (`evals.fid_stats_dir`);
* the number of images, samples and examples of every metric are
  `evals.*` settings (`mmvaeplus_jax/configs/common.py`).
"""

# The program is mmvaeplus_jax/tools/evaluate.py (installed as the
# `mmvaeplus-eval` command); this file keeps `python eval.py` working in a
# source checkout, with the same flags, defaults and output.

from absl import app

from mmvaeplus_jax.tools import evaluate

if __name__ == '__main__':
  app.run(evaluate.main)
