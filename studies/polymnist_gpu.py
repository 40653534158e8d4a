"""The PolyMNIST study at full width on one GPU, sized by wall time.

    bash studies/gpu_study.sh          # on the GPU machine (see its header)

or directly:

    python -m mmvaeplus_jax.tools.study --study=studies/polymnist_gpu.py:2024 \
        --root=runs/gpu_study --set data.manual_dir=../shared/data

Study argument 'NAME[,train_s=S,models=A+B,seeds=N,eval_n=E]':

* `2024`: the official July 2024 recipe (`configs/polymnist.py:official2024`:
  full width, K = 1, IWAE gradient = the ELBO's at K = 1, beta 2.5, batch
  128, Adam(amsgrad) 1e-3, Laplace latents, 32 + 32 dims) for each model
  of `models` (default `mmvaeplus+mmvae`: MMVAE+ and MMVAE with one 64-dim
  shared latent, otherwise the same), each trained for at most `train_s`
  seconds of wall time (`train.max_train_seconds`, compilation included;
  default 180), then evaluated like the CPU study
  (`studies/polymnist_cpu.py`: same evaluators, same metrics, same kept
  classifiers) on `eval_n` test examples (default 10,000: the whole split).
  The number of steps a run reached is in its record (`train.step`); runs
  stopped by the clock are not reproducible step for step, only by their
  step count.
* `smoke`: the same pipeline with a 1/16-width model for 20 s on `mini`
  data: checks the script on a CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import polymnist_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

from mmvaeplus_jax.experiments import records  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax.configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmvaeplus_jax.configs import polymnist  # pylint: disable=g-import-not-at-top,wrong-import-position


def _cell(model, *, train_s, eval_n, smoke):
  c = polymnist.get_config(f'official2024,model={model}')
  c.train.update(num_epochs=250, max_train_seconds=float(train_s),
                 log_every_steps=50, eval_every_steps=10**9,
                 checkpoint_every_steps=10**9, eval_examples=1000)
  c.evals.update(
      evaluators=('bound,coherence,fd_clf,latent_classification,diversity,'
                  'figures'),
      num_examples=eval_n, num_unconditional=eval_n,
      latent_num_train=10000, fd_clf_num_examples=eval_n,
      fd_clf_num_unconditional=eval_n, bound_num_samples=10,
      all_subsets=True, batch_size=500)
  c.evals.classifier_dir = polymnist_cpu.CLASSIFIERS
  if smoke:
    c.data.config = 'mini'
    c.model.update(width=0.0625, num_modalities=2)
    c.train.update(batch_size=16, log_every_steps=5, eval_examples=64)
    c.evals.update(num_examples=64, num_unconditional=64, latent_num_train=200,
                   fd_clf_num_examples=64, fd_clf_num_unconditional=64,
                   bound_num_samples=2, all_subsets=False, batch_size=32,
                   evaluators='bound,coherence,fd_clf,figures')
    c.evals.classifier_dir = ''  # the study trains small ones on `mini`
  return records.Cell(model, c)


def get_study(arg=None):
  a = common.parse_arg(arg, variant='2024', train_s=180.0,
                       models='mmvaeplus+mmvae', seeds=1, eval_n=10000)
  smoke = a.variant == 'smoke'
  if a.variant not in ('2024', 'smoke'):
    raise ValueError(f'unknown study {a.variant!r}: 2024 or smoke')
  train_s = 20.0 if smoke and 'train_s=' not in (arg or '') else a.train_s
  cells = tuple(_cell(m, train_s=train_s, eval_n=a.eval_n, smoke=smoke)
                for m in a.models.split('+'))
  return records.Study(f'polymnist_gpu:{a.variant}', cells,
                       tuple(range(a.seeds)), polymnist_cpu.METRICS,
                       classifier_epochs=1 if smoke else None)
