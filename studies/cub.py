"""CUB Image-Captions studies (issue 28, item 4).

    python -m mmvaeplus_jax.tools.study --study=studies/cub.py:cub23 \
        --root=runs/cub23_study --set data.manual_dir=../shared/data

Study argument 'NAME[,steps=N,seeds=S,models=A+B,width=W,train_s=T]':

* `cub23` (the CPU result): `models` (default `mmvaeplus+mmvae`; `mopoe`
  and `mvae` also take their paper settings) on the offline CUB-23 pairs,
  the `configs/cub.py:cub23` recipe (the paper's CUB recipe with width 1/8
  of every channel count, K = 1, batch 16), `steps` (default 9,000: 144k
  pairs, about 21 epochs of cub23's 6,900 train pairs), seeds 0 and 1; then
  the CUB evaluators on 2,000 test pairs: species coherence and FD_clf with
  the kept species classifiers (`CLASSIFIERS`), colour coherence, latent
  classification, the test bound, the caption figures (caption -> image
  grid, image -> caption table, traversals, alpha grid).
* `paper` (for a GPU): the paper's recipe (`configs/cub.py:paper`, full
  width, K = 10, DReG, batch 32) on the same cub23 data (the official
  cub.zip layout is used instead with `--set data.config=official` and its
  manual directory), each run limited to `train_s` seconds of wall time
  (default 1,800; `train.max_train_seconds`, compilation included), the
  same evaluators and classifiers.
* `tiny`: MMVAE+ and MMVAE, 2 seeds, a few steps of the `smoke` model on
  cub23 (the driver on real CUB data, quickly).

CUB-23 is real CUB Image-Captions data but not the paper's split (23 of
the 50 test classes, CUB's own image split inside them): every number is a
CUB-23 number (docs/cub.md).
"""

import os

from mmvaeplus_jax.configs import common
from mmvaeplus_jax.configs import cub
from mmvaeplus_jax.experiments import records

# The kept species classifiers (classifiers.json and PROVENANCE.md in the
# repository; the checkpoints are built at run time with the command in
# PROVENANCE.md, about 5 CPU minutes; the study stops before training and
# names it while they are missing).
CLASSIFIERS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'classifiers', 'cub23_species_seed0')

METRICS = (
    'coherence/cond/caption->image', 'coherence/cond/image->caption',
    'colour/caption->image', 'colour/image->caption', 'colour/real',
    'fd_clf/cond/caption->image', 'fd_clf/uncond/image', 'latent/mean/z',
    'eval/bound')


def _cell(model, variant, *, steps, width, train_s):
  c = cub.get_config(f'{variant},model={model}')
  if variant == 'paper':
    c.data.config = 'cub23'
    c.model.vocab_size = cub.VOCABULARY_SIZES['cub23']
    c.train.update(num_epochs=-1, num_steps=10_000_000,
                   max_train_seconds=train_s, log_every_steps=100,
                   checkpoint_every_steps=2000, eval_every_steps=10_000_000)
  else:
    c.model.width = width
    c.train.update(num_steps=steps, log_every_steps=max(1, steps // 20),
                   eval_every_steps=steps,
                   checkpoint_every_steps=max(1, min(1000, steps // 4)))
  c.evals.update(
      evaluators=('bound,coherence,fd_clf,latent_classification,colour,'
                  'captions'),
      classifier_dir=CLASSIFIERS, num_examples=2000,
      num_unconditional=2000, fd_clf_num_examples=2000,
      fd_clf_num_unconditional=2000, latent_num_train=2000,
      bound_num_samples=10)
  return records.Cell(model, c)


def get_study(arg=None):
  a = common.parse_arg(arg, variant='cub23', steps=9000, seeds=2,
                       models='mmvaeplus+mmvae', width=0.125, train_s=1800.0)
  kinds = tuple(a.models.split('+'))
  unknown = [m for m in kinds if m not in cub.MODELS]
  if unknown:
    raise ValueError(f'unknown models {unknown}: use {cub.MODELS}')
  kw = dict(steps=a.steps, width=a.width, train_s=a.train_s)
  if a.variant in ('cub23', 'paper'):
    cells = [_cell(m, a.variant, **kw) for m in kinds]
  elif a.variant == 'tiny':
    cells = [_cell(m, 'smoke', **dict(kw, steps=a.steps if 'steps=' in (
        arg or '') else 4, width=1 / 32)) for m in ('mmvaeplus', 'mmvae')]
    for cell in cells:
      cell.config.data.config = 'cub23'
      cell.config.model.vocab_size = cub.VOCABULARY_SIZES['cub23']
      cell.config.train.update(batch_size=8, eval_examples=16)
      cell.config.evals.update(
          evaluators='bound,coherence,colour,captions', num_examples=64,
          batch_size=16, num_unconditional=32, bound_num_samples=2,
          captions_examples=2, captions_unconditional=2, alpha_grid=(0.5, 2.0),
          alpha_grid_samples=2, figures_samples=2)
  else:
    raise ValueError(f'unknown study {a.variant!r}: cub23, paper or tiny')
  return records.Study(f'cub:{a.variant}', tuple(cells),
                       tuple(range(a.seeds)), METRICS)
