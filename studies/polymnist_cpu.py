"""The paper's PolyMNIST comparisons at CPU scale (study definitions).

    python -m mmvaeplus_jax.tools.study --study=studies/polymnist_cpu.py:fig1 \
        --root=runs/study_fig1 --set data.manual_dir=../shared/data

Studies (`get_study(arg)`, arg =
'NAME[,steps=N,seeds=S,width=W,batch=B,lr=LR,family=F]'):

* `fig1` (Fig. 1 / Fig. 11 analogue): MVAE, MMVAE, MoPoE-VAE and MMVAE+ at
  two beta values each from the paper's grids (MVAE / MoPoE {0.3, 1},
  MMVAE / MMVAE+ {1, 2.5});
* `fig2` (Fig. 2 analogue): MMJSD with private subspaces of 4, 16 and 32
  dimensions (shared 32) against MMVAE+ (private 32, shared 32; the recipe
  of fig1's `mmvaeplus_beta1`, so its records in studies/records/fig2 are
  copies of fig1's, marked `copied_from`, and fig2 is run with
  `--cells=mmjsd_w4,mmjsd_w16,mmjsd_w32`);
* `pilot` (issue 26, item 3: a recipe chosen the same way for every
  model): one seed, `steps` (default 8,000 of batch 8: 64k examples)
  per candidate, a learning curve (coherence at 8k, 16k, 32k, ... examples
  and at the end, `train.curve_start_examples`), and the same rule for
  every model: the best mean cross-modal coherence at the budget. The
  candidates: learning rates `PILOT_LRS` for every model and, for MMVAE+,
  private dimensions `PILOT_DIM_W` (the paper's 32 and small ones), beta 1,
  each model's latent sizes otherwise; the end-of-run evaluation is the
  conditional coherence on 2,000 test examples only. MMVAE+ cells come
  first (the headline run takes the winner);
* `headline` (issue 26, item 4: time to coherence): one MMVAE+ run
  (`dim_w`, default 4; `lr`), five modalities, sized by wall time
  (`train_s`, default 7,200 s, `train.max_train_seconds`: compilation and
  the curve's own evaluations included), a denser learning curve (8k
  examples, then x sqrt(2)), then the fig1 evaluators;
* `missing` (issue 29, item 1: missing modalities): MMVAE+ (dim_w 4) and
  MoPoE-VAE trained with each modality of each train example missing with
  probability `rate` (default 0.5, `data.missing_rate`, MCAR, at least
  one kept), the pilot's recipe otherwise (lr 3e-3, its budget, its curve
  and end-of-run coherence on the complete test set), one seed: compared
  with the pilot's fully observed cells `mmvaeplus_w4_lr0.003` and
  `mopoe_lr0.003`;
* `compare` (issue 26, item 5: the comparison again, at a budget where
  models learn): the fig1 analogue (MVAE, MoPoE-VAE, MMVAE, MMVAE+ at
  beta 1 and at the other beta of fig1's grid; MMVAE+ with the pilot's
  private size `dim_w`, default 4) and the fig2 analogue (MMJSD with 4 /
  16 / 32 private dimensions, and MMVAE+ with the paper's 32) in one
  study, every cell with the pilot's recipe (lr `lr`, default 3e-3, batch
  8, width 1/8) and the same budget (`steps`, default `COMPARE_STEPS`),
  seeds 0, 1, 2 for the beta-1 cells and seed 0 for the others (seed-major:
  a table with every cell first), a learning curve, the fig1 evaluators and
  `samples.npz` (kept in each run directory, not committed: `--cells=C
  --seeds=S` retrains and rewrites it);
* any of them with `schedule=cosine` (`optim.schedule`): the rate decays
  as a cosine to `final_lr` (a fraction, default 0) over `decay_steps`
  (default: the run's steps; give it for `headline`, sized by wall time);
* `tiny`: MMVAE+ and MMVAE, 2 seeds, a few steps on the offline `mini`
  data (the driver's test and a quick try).

The CPU recipe, the same for every model where it applies (stated in
docs/results.md next to the numbers): data `rebuilt` (set
`data.manual_dir`; m1's background is a substitute scan, see
../shared/data/PROVENANCE.md), all five modalities, channel width
`width` (default 1/8), K = 1 with each model's own default estimator
(MMVAE / MMVAE+: IWAE gradient = ELBO gradient at K = 1), the paper's
latent sizes (64 for MMVAE / MMVAE+, 512 for MVAE / MoPoE, 32 + private
for MMJSD), seeds 0, 1, 2, and, where the paper's recipe does not learn in
a CPU budget, the changes that made the 30-minute CPU runs learn
(docs/polymnist_rebuilt_cpu.md: the 2024 recipe at 1/8 width, Laplace
latents, batch 32, stayed at chance coherence after 4,668 steps; Normal
latents, lr 3e-3 and batch 8 learned):

* `family` (default 'normal'): the latent family of MMVAE / MMVAE+ (the
  paper's Laplace with `family=laplace`); MVAE, MoPoE and MMJSD are
  Gaussian in the paper already;
* `lr` (default 3e-3) for every model (the paper: 1e-3 MMVAE / MMVAE+ /
  MMJSD, 5e-4 MVAE / MoPoE);
* `batch` (default 8: more updates per CPU second) and `steps` (default
  4,000) for every model.
"""

import os

from mmvaeplus_jax.experiments import records
from mmvaeplus_jax.configs import common
from mmvaeplus_jax.configs import polymnist

# The study's coherence classifiers: `wide`, trained on `rebuilt` with
# `--seed 0`. Their classifiers.json (the recorded runs were scored with
# it: accuracies, command) is in the repository; the weights are built at
# run time into the same folder (PROVENANCE.md there has the command, about
# 25 CPU minutes; the study stops before training and names it when they
# are missing). `--set evals.classifier_dir=DIR` scores with another set.
CLASSIFIERS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'classifiers', 'rebuilt_wide_seed0')
# A second, independent set (`--seed 1`): every fig1 / fig2 run's coherence
# is also scored with it (record key `rescored/clf_seed1`).
RESCORE = (('clf_seed1', os.path.join(os.path.dirname(CLASSIFIERS),
                                      'rebuilt_wide_seed1')),)

METRICS = (
    'coherence/cond/mean', 'coherence/uncond', 'fd_clf/cond/mean/with_self',
    'fd_clf/uncond/mean', 'latent/mean/z', 'latent/mean/w', 'latent/mean/u',
    'diversity/cond/mean', 'diversity/ratio', 'eval/bound')


# Published values under the same protocol as a column of the report
# (../shared/docs/targets.md; all at full width and the paper's recipe, on
# the published PolyMNIST with the published classifiers). Conditional
# coherence per target (diagonal excluded) is read from the MMVAE+ paper's
# Fig. 2 (approximate: read from a figure); the paper's FIDs are Inception
# FIDs, not comparable with FD_clf. For MVAE, MoPoE and MMVAE the paper's
# Fig. 1 has no readable values; the MVTCAE paper's Table 1 has coherence
# for 1/2/3/4 inputs (all subsets), the protocol of this study's
# all-subsets column.
_FIG2 = 'Fig. 2, read from the figure'
PUBLISHED = {
    'fig1': (
        ('mvae_beta0.3', 'all subsets 0.29 / 0.42 / 0.48 / 0.52 (MVTCAE'
         ' Table 1, its beta)'),
        ('mvae_beta1', 'all subsets 0.29 / 0.42 / 0.48 / 0.52 (MVTCAE'
         ' Table 1, its beta)'),
        ('mopoe_beta0.3', 'all subsets 0.63 / 0.75 / 0.79 / 0.81 (MVTCAE'
         ' Table 1, its beta)'),
        ('mopoe_beta1', 'all subsets 0.63 / 0.75 / 0.79 / 0.81 (MVTCAE'
         ' Table 1, its beta)'),
        ('mmvae_beta1', 'all subsets 0.71 (MVTCAE Table 1)'),
        ('mmvae_beta2.5', 'all subsets 0.71 (MVTCAE Table 1, beta 1)'),
        ('mmvaeplus_beta1', f'cond. coherence ≈ 0.85 ({_FIG2})'),
        ('mmvaeplus_beta2.5', f'cond. coherence ≈ 0.89 ({_FIG2})'),
    ),
    'fig2': (
        ('mmjsd_w4', f'cond. coherence ≈ 0.69 ({_FIG2}, beta 1)'),
        ('mmjsd_w32', f'cond. coherence ≈ 0.32 ({_FIG2}, beta 1)'),
        ('mmvaeplus_w32', f'cond. coherence ≈ 0.85 ({_FIG2}, beta 1)'),
    ),
}

# compare's cells under fig1's / fig2's names (the same published settings).
PUBLISHED['compare'] = tuple(
    ({'mmvaeplus_beta1': 'mmvaeplus_w32_beta1',
      'mmvaeplus_w32': 'mmvaeplus_w32_beta1'}.get(n, n), t)
    for n, t in PUBLISHED['fig1'] + PUBLISHED['fig2']
    if n not in ('mmvaeplus_beta2.5', 'mmvaeplus_beta1'))

# The pilot's grid (`get_study('pilot')`).
PILOT_LRS = (3e-3, 1e-3)  # 3e-3 first: the 2-modality runs' rate
PILOT_DIM_W = (4, 8, 32)
PILOT_MODELS = ('mmvae', 'mopoe', 'mvae', 'mmjsd')  # after MMVAE+
# Learning-curve points: the first at 8k examples, then x2 to the end.
CURVE_START = 8000
# The compare study's budget per run, in steps of batch 8.
COMPARE_STEPS = 16_000


def _cell(name, model, beta, *, steps, width, batch, lr, family, dim_w=-1,
          data='rebuilt', seeds=None):
  arg = f'paper_grid,model={model},beta={beta},data={data}'
  if dim_w >= 0:
    arg += f',dim_w={dim_w}'
  c = polymnist.get_config(arg)
  c.model.width = width
  c.objective.num_samples = 1
  if model in ('mmvaeplus', 'mmvae'):
    c.objective.estimator = 'iwae'  # = the ELBO's gradient at K = 1
    c.model.family = family
  c.optim.lr = lr
  c.train.update(batch_size=batch, num_epochs=-1, num_steps=steps,
                 log_every_steps=max(1, steps // 10),
                 eval_every_steps=steps, checkpoint_every_steps=max(
                     1, steps // 4), eval_examples=1000)
  c.evals.update(
      evaluators=('bound,coherence,fd_clf,latent_classification,diversity,'
                  'figures'),
      num_examples=2000, num_unconditional=2000, latent_num_train=5000,
      fd_clf_num_examples=2000, fd_clf_num_unconditional=2000,
      bound_num_samples=10, all_subsets=True)
  if data == 'rebuilt':
    c.evals.classifier_dir = CLASSIFIERS
  return records.Cell(name, c, seeds)


def get_study(arg=None):
  a = common.parse_arg(arg, variant='fig1', steps=4000, seeds=3,
                       width=0.125, batch=8, lr=3e-3, family='normal',
                       dim_w=4, train_s=7200.0, rate=0.5,
                       schedule='constant', decay_steps=0, final_lr=0.0)
  seeds = tuple(range(a.seeds))
  kw = dict(steps=a.steps, width=a.width, batch=a.batch, lr=a.lr,
            family=a.family)
  if a.variant == 'fig1':
    cells = [_cell(f'{m}_beta{b:g}', m, b, **kw)
             for m, betas in (('mvae', (0.3, 1.0)), ('mopoe', (0.3, 1.0)),
                              ('mmvae', (1.0, 2.5)),
                              ('mmvaeplus', (1.0, 2.5)))
             for b in betas]
  elif a.variant == 'fig2':
    cells = [_cell(f'mmjsd_w{d}', 'mmjsd', 1.0, dim_w=d, **kw)
             for d in (4, 16, 32)]
    cells.append(_cell('mmvaeplus_w32', 'mmvaeplus', 1.0, dim_w=32, **kw))
  elif a.variant in ('pilot', 'missing'):
    if not (arg and 'steps=' in arg):
      kw['steps'] = 8000
    if a.variant == 'pilot':
      kw.pop('lr')
      cells = [_cell(f'mmvaeplus_w{d}_lr{lr:g}', 'mmvaeplus', 1.0, dim_w=d,
                     lr=lr, **kw)
               for lr in PILOT_LRS for d in PILOT_DIM_W]
      cells += [_cell(f'{m}_lr{lr:g}', m, 1.0, lr=lr, **kw)
                for m in PILOT_MODELS for lr in PILOT_LRS]
    else:
      if not 0.0 < a.rate < 1.0:
        raise ValueError(f'missing: rate must be in (0, 1), got {a.rate}')
      cells = [_cell(f'mmvaeplus_w4_missing{a.rate:g}', 'mmvaeplus', 1.0,
                     dim_w=4, **kw),
               _cell(f'mopoe_missing{a.rate:g}', 'mopoe', 1.0, **kw)]
      for cell in cells:
        cell.config.data.missing_rate = a.rate
    for cell in cells:
      cell.config.train.update(curve_start_examples=CURVE_START,
                               checkpoint_every_steps=1000)
      cell.config.evals.update(evaluators='coherence', all_subsets=False)
    seeds = seeds[:1] if a.seeds == 3 else seeds
  elif a.variant == 'compare':
    if not (arg and 'steps=' in arg):
      kw['steps'] = COMPARE_STEPS
    main = tuple(seeds)
    side = main[:1]
    cells = [_cell(f'{m}_beta{b:g}', m, b, seeds=main if b == 1 else side,
                   **kw)
             for m, betas in (('mvae', (1.0, 0.3)), ('mopoe', (1.0, 0.3)),
                              ('mmvae', (1.0, 2.5)))
             for b in betas]
    cells += [_cell(f'mmvaeplus_w{a.dim_w}_beta{b:g}', 'mmvaeplus', b,
                    dim_w=a.dim_w, seeds=main if b == 1 else side, **kw)
              for b in (1.0, 2.5)]
    cells += [_cell(f'mmjsd_w{d}', 'mmjsd', 1.0, dim_w=d, seeds=main, **kw)
              for d in (4, 16, 32)]
    if a.dim_w != 32:
      cells.append(_cell('mmvaeplus_w32_beta1', 'mmvaeplus', 1.0, dim_w=32,
                         seeds=main, **kw))
    for cell in cells:
      cell.config.train.update(curve_start_examples=CURVE_START,
                               log_every_steps=500)
      cell.config.evals.evaluators += ',samples'
  elif a.variant == 'headline':
    kw['steps'] = 10_000_000  # the wall-time limit ends it
    cells = [_cell(f'mmvaeplus_w{a.dim_w}', 'mmvaeplus', 1.0, dim_w=a.dim_w,
                   **kw)]
    cells[0].config.train.update(
        max_train_seconds=a.train_s, log_every_steps=250,
        checkpoint_every_steps=5000, eval_every_steps=10_000_000,
        curve_start_examples=CURVE_START, curve_factor=2 ** 0.5)
    seeds = seeds[:1] if a.seeds == 3 else seeds
  elif a.variant == 'tiny':
    kw = dict(steps=a.steps if arg and 'steps=' in arg else 4,
              width=0.0625, data='mini', batch=8, lr=1e-3, family='laplace')
    cells = [_cell('mmvaeplus', 'mmvaeplus', 1.0, dim_w=4, **kw),
             _cell('mmvae', 'mmvae', 1.0, **kw)]
    for cell in cells:
      cell.config.model.update(num_modalities=2, dim_z=4)
      cell.config.train.update(batch_size=8, eval_examples=16)
      cell.config.evals.update(
          evaluators='bound,coherence,grids', num_examples=32, batch_size=16,
          num_unconditional=32, bound_num_samples=2, all_subsets=False)
    seeds = seeds[:2] if a.seeds == 3 else seeds
  else:
    raise ValueError(
        f'unknown study {a.variant!r}: fig1, fig2, pilot, missing, headline,'
        ' compare or tiny')
  published = PUBLISHED.get(a.variant, ())
  if a.schedule != 'constant':
    if a.variant == 'headline' and a.decay_steps <= 0:
      raise ValueError('headline is sized by wall time: give decay_steps='
                       'N with schedule=' + a.schedule)
    named = []
    for cell in cells:  # decay over the run's steps unless told otherwise
      c = cell.config
      c.optim.update(schedule=a.schedule, final_lr_fraction=a.final_lr,
                     decay_steps=a.decay_steps or c.train.num_steps)
      named.append(records.Cell(f'{cell.name}_{a.schedule}', c, cell.seeds))
    cells = named
    published = tuple((f'{n}_{a.schedule}', t) for n, t in published)
  return records.Study(f'polymnist_cpu:{a.variant}', tuple(cells), seeds,
                       METRICS,
                       classifier_epochs=2 if a.variant == 'tiny' else None,
                       # compare: not rescored (fig1 measured the shift;
                       # a second set costs every new VM 15 minutes).
                       rescore=RESCORE if a.variant in ('fig1', 'fig2')
                       else (),
                       published=published)
