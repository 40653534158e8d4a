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
      # Missing modalities (input/pipeline.py:missing_mask): each modality
      # of each TRAIN example missing with this probability, independently
      # (an example left with none keeps one), drawn from missing_seed; the
      # batches carry the mask and the objectives use only what is
      # observed (models/base.py). Evaluation reads complete data. 0: none.
      missing_rate=0.0,
      missing_seed=0,
  ))
  c.model = ml_collections.ConfigDict(dict(
      name='polymnist_mmvaeplus',
      num_modalities=5,
      # Which PolyMNIST modalities, e.g. 'm1,m3' ('' = m0..m{M-1}); their
      # number must equal num_modalities.
      modalities='',
      dim_w=32,
      dim_z=32,
      width=1.0,  # channel multiplier (1.0 = the official networks)
      family='laplace',
      likelihood_scale=0.75,
      # 'float32' or 'bfloat16': compute dtype of the networks' Conv / Dense
      # (float32 master params; likelihoods, bound and optimiser in float32).
      compute_dtype='float32',
      # 'float32' (default) or 'float64' (PolyMNIST models; needs
      # jax.config.update('jax_enable_x64', True) or JAX_ENABLE_X64=1, and
      # compute_dtype 'float32'): params, networks, noise, priors, densities,
      # bound and gradients all in float64, for exact checks.
      dtype='float32',
      remat=False,  # decoders per K-slice, rematerialised: memory flat in K
      vmap_modalities=False,  # equal networks as one vmapped (grouped) call
      # Rows per slice of the convolutions' weight gradient (models/conv.py):
      # -1 = automatic (on CPU, where XLA's own is superlinear in the batch,
      # sized per layer shape; XLA's own on GPU/TPU), 0 = XLA's own, n > 0 =
      # n rows.
      conv_wgrad_chunk=-1,
      # 'xla' (default) or 'onednn': the convolutions as oneDNN custom calls
      # (CPU only, opt-in: pip install "mmvaeplus_jax[onednn]" and a C++
      # compiler; mmvaeplus_jax/infra/onednn.py). Same values up to float32
      # reassociation; faster than XLA:CPU's on the full-width networks
      # (bench/RESULTS.md).
      conv_impl='xla',
  ))
  c.objective = ml_collections.ConfigDict(dict(
      num_samples=1,  # K
      beta=2.5,
      # MMVAE+ / MMVAE: 'iwae' (what the official code trains with), 'dreg',
      # 'dreg_mmvae'; MVAE, MoPoE, MMJSD, DMVAE: 'elbo'.
      estimator='iwae',
      cross_private='aux',  # 'aux' (MMVAE+) or 'posterior' (MMVAE_f ablation)
      # MVAE only: random subsets of sizes 2..M-1 whose ELBOs join the joint
      # and unimodal ones at each step (0 = none; Wu & Goodman's sub-sampling).
      mvae_subsets=0,
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, amsgrad=True,
      # 'constant' (the official recipe) or 'cosine': the rate times a
      # cosine from 1 down to `final_lr_fraction` over `decay_steps` steps
      # (then constant), train_state.make_optimizer.
      schedule='constant', decay_steps=0, final_lr_fraction=0.0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=128,  # global batch, split over devices and hosts
      # S independent runs in one compiled program (training/loop.py:
      # train_runs): run r is the separate run with seed `seed + r` (its own
      # init, noise and data order), the train step vmapped over a leading
      # run axis of the state and of the batch [S, B, ...]; run r's outputs
      # (checkpoints, config.json, metrics.json) in <workdir>/run{r}, mean
      # and std across runs in <workdir>/metrics.json. 1: one run, no run
      # axis (the program of a plain run).
      num_runs=1,
      # With num_runs > 1: run r's objective.beta, comma-separated (one per
      # run, e.g. '0.5,1,2.5'); '' = objective.beta for every run.
      run_betas='',
      # With num_runs > 1: run r's optim.lr, comma-separated (one per run,
      # e.g. '3e-3,1e-3'); '' = optim.lr for every run.
      run_lrs='',
      # Examples per device per call of the gradient (the step sums the
      # calls' gradients: same noise, loss and gradient up to float32
      # reassociation; training/microbatch.py:resolve_microbatch): -1 automatic
      # (CPU: models.cpu_microbatch_limits, full-width PolyMNIST at most
      # 16 examples and 200 decoder rows per call; GPU/TPU one call), 0 one
      # call, n > 0 n examples.
      microbatch_size=-1,
      num_epochs=250,
      num_steps=-1,  # > 0 overrides num_epochs
      # > 0: each start of the run trains at most this many seconds (checked
      # every log_every_steps, compilation included), then saves a
      # checkpoint and ends like a finished run ('stopped_at_time_limit' in
      # its metrics; starting it again continues towards num_steps): runs
      # sized by a wall-clock budget (a GPU window, a Colab session).
      max_train_seconds=0.0,
      log_every_steps=50,
      eval_every_steps=1000,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      max_consecutive_nonfinite=20,
      eval_examples=1000,  # test examples for the eval bound
      grid_examples=8,  # columns of the sample grids
      # At the end of the run: the cross-modal (conditional) coherence of
      # evaluation.coherence, printed and written to metrics.json as
      # 'coherence/cond/<src>-><tgt>'. Its digit classifiers are loaded
      # from evals.classifier_dir if set, else trained here on the train
      # split (ClfImg, seconds per modality on a CPU) and saved to
      # <workdir>/classifiers for eval.py.
      final_coherence=False,
      final_coherence_examples=-1,  # test examples (-1: the whole split)
      final_coherence_clf_epochs=5,  # epochs of the in-run classifiers
      # their architecture (evaluation/classifiers.py); '': the default of
      # the image shape ('wide' for PolyMNIST, >= 98 % on rebuilt;
      # 'digit' for MNIST / SVHN); 'official': MoPoE's ClfImg (faster,
      # weaker)
      final_coherence_clf_arch='',
      # A learning curve (training.loop.curve_steps, evaluation/curve.py):
      # conditional coherence of every pair on curve_test_examples test
      # examples, scored with evals.classifier_dir, at the first step with
      # >= curve_start_examples * curve_factor**i examples seen and at the
      # last step; rows in <workdir>/curve.jsonl. 0: no curve.
      curve_start_examples=0,
      curve_factor=2.0,
      curve_test_examples=1000,
  ))
  c.evals = ml_collections.ConfigDict(dict(
      # eval.py's plug-ins (evaluation.api), comma-separated, run in order.
      evaluators=('bound,coherence,fid,fd_clf,latent_classification,'
                  'diversity,likelihood,figures,alpha_sweep'),
      num_examples=-1,  # test examples evaluated by eval.py (-1: all)
      batch_size=256,  # examples per device call (rounded to the devices)
      bound_num_samples=10,  # K of the reported test bound
      classifier_dir='',  # coherence classifiers (evaluation.classifiers)
      num_unconditional=10_000,  # prior samples for unconditional coherence
      all_subsets=False,  # also the MultiVae-style all-subsets coherence
      alpha=1.0,  # test-time scale of p(w) (official 1)
      grid_examples=8,
      # FID (pytorch-fid 0.2.1). '' = ~/.cache/mmvaeplus_jax/ (or
      # $XDG_CACHE_HOME/mmvaeplus_jax/) pt_inception-2015-12-05-6726825d.pth.
      inception_weights='',
      fid_stats_dir='',  # real-set statistics cache ('' = <cache>/fid_stats)
      fid_num_examples=-1,  # real images per modality = conditional inputs
      fid_num_unconditional=-1,  # prior samples per modality (-1: as real)
      fid_conditional=True,  # the M x M conditional FIDs (M^2 sets)
      fid_batch_size=128,  # images per call over all devices
      # Images per chunk of each device's loop: the numbers depend on it
      # (and on data and seed), not on the mesh's device count or
      # fid_batch_size (README "Evaluation": another XLA:CPU thread-pool
      # size changes the distances by ~5e-10 relative). Larger on GPUs.
      fid_microbatch=16,
      fid_drop_last_partial_batch=True,  # official: 9,984 of 10,000 images
      # FD_clf: the same protocol in the coherence classifiers' features.
      fd_clf_num_examples=-1,
      fd_clf_num_unconditional=-1,
      # Linear latent classification.
      latent_num_train=-1,  # training examples (-1: the whole split)
      latent_max_iter=1000,
      # Sample diversity (evaluation.diversity).
      diversity_num_examples=500,  # test inputs (-1: all evaluated)
      diversity_repeats=10,  # cross-modal samples per input and pair
      # Importance-sampled log p(x_1:M).
      likelihood_num_examples=1000,
      likelihood_num_samples=1000,  # K per mixture component (M K in all)
      likelihood_chunk=10,  # draws per component per step (memory)
      likelihood_batch_size=16,  # examples per device call
      # Figures (evaluation.figures): Figs. 1/6, 7, 8, 9, 10, 20.
      figures_samples=4,  # cross-modal samples per input
      figures_unconditional=16,  # joint prior samples (the paper shows 64)
      figures_source='',  # modality of the traversal/alpha figures ('' = first)
      figures_zoom=2,
      figures_chunk=128,  # latents per decoder call
      # samples.npz (evaluation/samples.py): the first N test inputs, S
      # cross-modal samples per (source, target) pair, U prior samples.
      samples_num_examples=100,  # N (-1: every evaluated example)
      samples_per_input=4,  # S
      samples_num_unconditional=100,  # U
      # Image-caption models (evaluation/caption_figures.py): test
      # examples of the caption <-> image figures, joint prior samples.
      captions_examples=8,
      captions_unconditional=8,
      traversal_steps=9,
      traversal_span=5.0,  # +- prior scales (paper: 5)
      traversal_quantiles=False,  # traverse prior quantiles instead
      alpha_grid=(0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0),  # Fig. 20
      alpha_grid_samples=2,
      # Alpha sweep (Fig. 19): coherence and FD_clf vs the p(w) scale.
      alpha_sweep=(0.5, 1.0, 2.0, 4.0, 8.0),
      alpha_sweep_fd_key='fd_clf/cond/mean/with_self',
  ))
  return c
