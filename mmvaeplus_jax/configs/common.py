"""Shared config helpers: variant parsing and the config skeleton."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses 'variant,key=value,...' into a ConfigDict over `defaults`.

  A bare word sets `variant`; `key=value` pairs override defaults, with the
  value converted to the type of the default. Unknown keys raise ValueError.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for part in filter(None, (arg or '').split(',')):
    if '=' not in part:
      out.variant = part
      continue
    key, value = part.split('=', 1)
    if key not in defaults:
      raise ValueError(
          f'unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}'
      )
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(default)(value)
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every key a training config may set; variants override values only."""
  c = ml_collections.ConfigDict()
  c.seed = 2
  c.data = ml_collections.ConfigDict(dict(
      name='polymnist',
      config='mini',  # 'mini' (offline demo), 'rebuilt', 'official'
      data_dir='~/tensorflow_datasets',
      manual_dir='',  # inputs of 'rebuilt' / 'official' (e.g. ../shared/data)
      in_memory=True,  # read whole splits into host RAM (else random access)
      train_split='train',
      eval_split='test',
      prefetch=2,  # batches prepared ahead by a background thread
  ))
  c.model = ml_collections.ConfigDict(dict(
      name='polymnist_mmvaeplus',
      num_modalities=5,
      dim_w=32,
      dim_z=32,
      width=1.0,  # channel multiplier (1.0 = the official networks)
      family='laplace',
      likelihood_scale=0.75,
  ))
  c.objective = ml_collections.ConfigDict(dict(
      num_samples=1,  # K
      beta=2.5,
      estimator='iwae',  # 'iwae' (what the official code trains with), 'dreg', 'dreg_mmvae'
      cross_private='aux',  # 'aux' (MMVAE+) or 'posterior' (MMVAE_f ablation)
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, amsgrad=True,
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=128,  # global batch, split over devices and hosts
      num_epochs=250,
      num_steps=-1,  # > 0 overrides num_epochs
      log_every_steps=50,
      eval_every_steps=1000,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      max_consecutive_nonfinite=20,
      eval_examples=1000,  # test examples for the eval bound
      grid_examples=8,  # columns of the sample grids
  ))
  c.evals = ml_collections.ConfigDict(dict(
      num_examples=-1,  # test examples evaluated by eval.py (-1: all)
      batch_size=256,
      bound_num_samples=10,  # K of the reported test bound
      classifier_dir='',  # coherence classifiers (evaluation.classifiers)
      num_unconditional=10_000,  # prior samples for unconditional coherence
      all_subsets=False,  # also the MultiVae-style all-subsets coherence
      alpha=1.0,  # test-time scale of p(w) (official 1)
      grid_examples=8,
  ))
  return c
