"""Fréchet distances of generated images: the FID evaluator and its protocol.

`frechet_metrics(ctx, net, ...)` runs the official protocol
(official_reference.md section 9) with any per-modality feature network
`net` (pytorch-fid's Inception for FID, the coherence classifier for
`fd_clf`):

* images go through the official PNG path: decoder means are clamped to
  [0, 1], quantised to k / 255 (`fid.quantise_like_png`); real uint8 images
  become exactly k / 255 (`fid.uint8_to_unit`);
* real statistics per modality d: the first N test images of d, cached on
  disk (`fid.cached_statistics`, keyed by the images' hash and the network);
* unconditional, per modality d: N_u joint prior samples (one z ~ p(z)
  shared by all modalities, w_d ~ p(w) scaled by alpha), decoded by d,
  against the real set of d;
* conditional, per (source e, target d): for each of the N test inputs x_e,
  z ~ q_e(z | x_e) and w ~ p(w) (alpha) decoded by d; the diagonal e = d is
  the self-reconstruction from the full posterior sample [w_e, z_e] ~
  q_e(w, z | x_e), as the official `self_and_cross_modal_generation`. Per
  target: the mean over all M sources INCLUDING the diagonal (the official
  conditional FID, `.../with_self`) and over the M - 1 other sources
  (`.../cross_only`), then the mean over targets.

Only modalities with uint8 (pixel) test data are targets; every modality is
a source. For CUB: the image's real and unconditional
distances, and the caption -> image and image -> image conditional ones
(no distance of the caption); the means run over the image targets.

Optionally (`drop_last_partial_batch`, official) every set keeps only whole
batches of 128 images (9,984 of 10,000). Generation and features run in one
jitted function on fixed-size batches sharded over the mesh; sample i draws
its noise from `fold_in(key, i)`, so the numbers do not depend on the batch
size or the device count. Statistics and distances are float64 on the host.

Metric names, for prefix P ('fid' or 'fd_clf'): `P/uncond/<d>`,
`P/uncond/mean`, `P/cond/<e>-><d>`, `P/cond/<d>/with_self`,
`P/cond/<d>/cross_only`, `P/cond/mean/with_self` (the paper's conditional
FID), `P/cond/mean/cross_only`, and the set sizes `P/num_real`,
`P/num_unconditional`: an FD is biased upward at small N, so never compare
FDs computed at different N.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import fid
from mmvaeplus_jax.models import base
from mmvaeplus_jax.models import networks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A feature network for Fréchet distances.

  Attributes:
    prefix: metric prefix ('fid', 'fd_clf').
    apply: `(params, images float [B, H, W, 3] in [0, 1]) -> [B, D]`, a
      module-level (hashable) function, static under jit.
    params: `{modality name: params}` of the network each modality's images
      go through (the same object for all modalities for FID), replicated
      on the mesh.
    network_ids: `{modality name: id}` identifying those weights (keys of
      the real-statistics cache).
  """

  prefix: str
  apply: Callable[[Any, Array], Array]
  params: Mapping[str, Any]
  network_ids: Mapping[str, str]


# ---------------------------------------------------------- per-batch pieces
#
# Modalities enter as DYNAMIC indices and parameter subtrees, with the
# networks (Flax modules) static: one compilation serves every (source,
# target) pair of modalities with equal architectures, and every alpha.


def unconditional_images(key, model: base.MultimodalVAE, params, index,
                         *, target: str, alpha=1.0) -> Array:
  """Modality `target` of joint prior samples `index`: `[B, *event]` means.

  Sample i: one z ~ p(z) (shared by all modalities) and w_d ~ p(w) per
  modality d (scale alpha), from `fold_in(key, i)`; decoded by `target`.
  """
  d = model.names.index(target)
  return _uncond_decode(
      params['decoders'][target], key, d, index, model=model,
      decoder=model.modalities[d].decoder, alpha=alpha)


def _uncond_decode(dec_params, key, d, index, *, model, decoder, alpha):
  z, w = generation.unconditional_per_example(key, model, index, alpha=alpha)
  return networks.apply_eval(decoder, dec_params,
                             generation.concat_latents(w[d], z))


def conditional_images(key, model: base.MultimodalVAE, params, x_source,
                       index, *, source: str, target: str,
                       alpha=1.0) -> Array:
  """`target`'s generations from inputs `x_source [B, *event]`: `[B, *event]`.

  Example i: z_e ~ q(z | x_e) (`model.sample_shared`); w ~ p(w) (scale
  alpha) when source != target, else w_e ~ q_e(w | x_e) (the
  self-reconstruction); all from `fold_in(key, i)` (`generation.py`), the
  same z_e for every target of a source.
  """
  e, d = model.names.index(source), model.names.index(target)
  return _cond_decode(
      params['encoders'][source], params['decoders'][target], key, e, d,
      x_source, index, model=model, encoder=model.modalities[e].encoder,
      decoder=model.modalities[d].decoder, alpha=alpha)


def _cond_decode(enc_params, dec_params, key, e, d, x_source, index, *,
                 model, encoder, decoder, alpha):
  loc_w, raw_w, loc_z, raw_z = networks.apply_eval(encoder, enc_params,
                                                   x_source)
  u = generation.pair_latents_per_example(
      key, model, loc_w, model.scale(raw_w), loc_z, model.scale(raw_z), index,
      e, d, alpha=alpha)
  return networks.apply_eval(decoder, dec_params, u)


def _real_features(fparams, index, batch, *, apply):
  del index
  return apply(fparams, fid.uint8_to_unit(batch['x']))


def _uncond_features(dec_params, fparams, key, d, alpha, index, batch, *,
                     model, decoder, apply):
  del batch
  x = _uncond_decode(dec_params, key, d, index, model=model, decoder=decoder,
                     alpha=alpha)
  return apply(fparams, fid.quantise_like_png(x.astype(jnp.float32)))


def _source_input(x):
  """A source batch as the encoder takes it: uint8 images -> exactly k / 255
  (`fid.uint8_to_unit`), other inputs (caption token ids) unchanged."""
  return fid.uint8_to_unit(x) if x.dtype == jnp.uint8 else x


def _cond_features(enc_params, dec_params, fparams, key, e, d, alpha, index,
                   batch, *, model, encoder, decoder, apply):
  x = _cond_decode(enc_params, dec_params, key, e, d,
                   _source_input(batch['x']), index, model=model,
                   encoder=encoder, decoder=decoder, alpha=alpha)
  return apply(fparams, fid.quantise_like_png(x.astype(jnp.float32)))


# ----------------------------------------------------------------- protocol


def _count(n: int, available: int, drop_last: bool) -> int:
  n = available if n < 0 else min(n, available)
  return fid.official_count(n) if drop_last else n


def frechet_metrics(
    ctx: api.EvalContext,
    net: FeatureNet,
    *,
    num_real: int = -1,
    num_unconditional: int = -1,
    conditional: bool = True,
    alpha: float = 1.0,
    batch_size: int = 128,
    microbatch: int = 16,
    drop_last_partial_batch: bool = False,
    cache_dir: str | None = None,
    distance: Callable[..., float] = fid.frechet_distance,
) -> dict:
  """The unconditional and conditional Fréchet distances (module docstring).

  Args:
    ctx: the evaluation context (its key, data, params and mesh are used).
    net: the feature network.
    num_real: N real test images per modality, also the conditional inputs
      (-1: all of `ctx.data`).
    num_unconditional: N_u prior samples per modality (-1: N).
    conditional: also the M x M conditional distances.
    alpha: scale of p(w) for the generated images.
    batch_size: images per call over all devices (rounded up, see
      `api.map_batches`).
    microbatch: images per chunk of each device's loop; with the data and
      key, the only shape the numbers depend on (`api.map_batches`: the
      features do not depend on the mesh's device count or `batch_size`;
      a process with another XLA:CPU thread-pool size differs by ~5e-10
      relative in the distances, README "Evaluation").
    drop_last_partial_batch: keep whole batches of 128 only (official).
    cache_dir: real-statistics cache folder (None: no cache).
    distance: `(mu1, sigma1, mu2, sigma2) -> float`.

  Returns:
    Flat metrics (names in the module docstring).
  """
  model, mesh, p = ctx.model, ctx.mesh, net.prefix
  names = model.names
  mods = dict(zip(names, model.modalities))
  # Targets: the modalities whose test data are uint8 pixel levels (what
  # the PNG path and the feature networks read); every modality is a source
  # (CUB: caption -> image, image -> image; no distance of the token ids).
  targets = [d for d in names if np.asarray(ctx.data[d]).dtype == np.uint8]
  if not targets:
    raise ValueError(f'{p}: no modality has uint8 (pixel) data')
  n = _count(num_real, len(ctx.data['label']), drop_last_partial_batch)
  n_u = _count(n if num_unconditional < 0 else num_unconditional,
               10**12, drop_last_partial_batch)
  if n < 2 or n_u < 2:
    raise ValueError(f'{p}: need at least 2 images per set, got {n}, {n_u}')
  k_u, k_c = (jax.random.fold_in(ctx.key, i) for i in range(2))
  k_u, k_c = (parallel.replicate_key(mesh, k) for k in (k_u, k_c))
  alpha = parallel.replicate(mesh, np.float32(alpha))
  idx = {n: parallel.replicate(mesh, np.int32(i))
         for i, n in enumerate(names)}
  run = functools.partial(api.map_batches, mesh=mesh, batch_size=batch_size,
                          microbatch=microbatch)
  dc = ctx.config.data
  out: dict = {f'{p}/num_real': n, f'{p}/num_unconditional': n_u}

  def real_features(images, d):
    return run(_real_features, num=len(images), inputs={'x': images},
               args=(net.params[d],), static={'apply': net.apply})

  real = {}
  for d in targets:
    label = f'{p}_{dc.name}-{dc.config}_{dc.eval_split}_{d}_n{n}'
    feats = functools.partial(real_features, d=d)
    real[d] = fid.cached_statistics(
        feats, np.asarray(ctx.data[d][:n]), cache_dir=cache_dir, label=label,
        network_id=f'{net.network_ids[d]}|uint8/255')
    logging.info('%s: real statistics of %s (%d images) %s', p, d, n,
                 'from the cache' if real[d].cache_hit else 'computed')

  def fd(features, d):
    mu, sigma = fid.feature_statistics(features)
    return distance(mu, sigma, real[d].mu, real[d].sigma)

  unc = []
  for d in targets:
    feats = run(
        _uncond_features, num=n_u,
        args=(ctx.params['decoders'][d], net.params[d], k_u, idx[d], alpha),
        static={'model': model, 'decoder': mods[d].decoder,
                'apply': net.apply})
    out[f'{p}/uncond/{d}'] = fd(feats, d)
    unc.append(out[f'{p}/uncond/{d}'])
  out[f'{p}/uncond/mean'] = float(np.mean(unc))

  if conditional:
    m = len(names)
    matrix = np.full((m, m), np.nan)  # columns of non-image targets: NaN
    for e, src in enumerate(names):
      for d, tgt in enumerate(names):
        if tgt not in targets:
          continue
        feats = run(
            _cond_features, num=n, inputs={'x': ctx.data[src][:n]},
            args=(ctx.params['encoders'][src], ctx.params['decoders'][tgt],
                  net.params[tgt], k_c, idx[src], idx[tgt], alpha),
            static={'model': model, 'encoder': mods[src].encoder,
                    'decoder': mods[tgt].decoder, 'apply': net.apply})
        matrix[e, d] = fd(feats, tgt)
        out[f'{p}/cond/{src}->{tgt}'] = float(matrix[e, d])
    cols = [names.index(d) for d in targets]
    for tag, include in (('with_self', True), ('cross_only', False)):
      per_target, mean = fid.conditional_average(matrix, include_self=include)
      for d in cols:
        out[f'{p}/cond/{names[d]}/{tag}'] = float(per_target[d])
      out[f'{p}/cond/mean/{tag}'] = (
          mean if len(cols) == m else float(np.mean(per_target[cols])))
  return out


def params_digest(tree) -> str:
  """SHA-256 of a params pytree's paths, shapes, dtypes and values."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}|{leaf.shape}|'
                  f'{leaf.dtype.str}|'.encode())
    digest.update(memoryview(leaf).cast('B'))
  return digest.hexdigest()


# ---------------------------------------------------------------- evaluator


def _inception_apply(variables, images):
  return fid.inception_features(variables, images)


def stats_dir(config) -> str:
  """`config.evals.fid_stats_dir` or `fid.default_stats_dir()`."""
  return str(config.evals.fid_stats_dir or fid.default_stats_dir())


@api.register('fid')
def fid_metrics(ctx: api.EvalContext) -> dict:
  """FID (pytorch-fid 0.2.1's Inception and weights) by the official protocol.

  Config (`config.evals`): `inception_weights` (default
  `fid.default_weights_path()`), `fid_num_examples`, `fid_num_unconditional`,
  `fid_conditional`, `fid_batch_size`, `fid_microbatch`,
  `fid_drop_last_partial_batch`,
  `fid_stats_dir`, `alpha`. Without the weights file: skipped, with the
  loader's message (which names the download address).
  """
  ec = ctx.config.evals
  path = ec.inception_weights or str(fid.default_weights_path())
  try:
    variables = fid.load_inception_variables(path)
  except fid.InceptionWeightsError as e:
    return api.skip('fid', str(e))
  digest = fid.file_sha256(path)
  variables = parallel.replicate(ctx.mesh, variables)
  net = FeatureNet(
      prefix='fid', apply=_inception_apply,
      params={n: variables for n in ctx.model.names},
      network_ids={n: f'inception:{digest}' for n in ctx.model.names})
  return frechet_metrics(
      ctx, net, num_real=ec.fid_num_examples,
      num_unconditional=ec.fid_num_unconditional,
      conditional=ec.fid_conditional, alpha=ec.alpha,
      batch_size=ec.fid_batch_size, microbatch=ec.fid_microbatch,
      drop_last_partial_batch=ec.fid_drop_last_partial_batch,
      cache_dir=stats_dir(ctx.config))

