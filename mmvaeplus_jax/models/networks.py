"""Per-modality networks and likelihoods as a model's shared machinery.

`NetworkVAE` holds what every model here shares: one encoder, decoder and
likelihood per modality (`base.Modality`), their parameters
(`{'encoders': {name: ...}, 'decoders': {name: ...}}`), `encode` (stacked
unimodal posteriors `[M, B, D]`), `decode` and the scaled log-likelihoods
of every target, with the two speed options (modalities with equal
networks as one vmapped call, rematerialised decoders). A model adds its
latents' priors and its objective: MMVAE+ (`mmvaeplus.py`) its auxiliary
priors and the mixture bound, the Gaussian baselines (`gaussian.py`) their
products of experts and ELBOs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import base


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkVAE(base.MultimodalVAE):
  """The networks of a multimodal VAE (see the module docstring).

  Attributes (besides `base.MultimodalVAE`'s):
    vmap_modalities: run modalities with equal networks as one vmapped call
      over stacked parameters (see `groups`); False (default) runs one call
      per modality. Same values either way. Off by default: XLA:CPU lowers
      the vmapped convolutions to grouped convolutions that ran 17x slower
      (20.2 s vs 1.21 s per demo step at B = 16, 2-core CPU, 2026-11-26);
      not yet measured on GPU.
    remat: rematerialise the decoders, so that memory does not grow with
      K: each decoder runs over the last sample axis (K in the objective)
      one slice at a time (`lax.map`, M * B latents per slice) with each
      slice under `jax.checkpoint`, so the backward pass recomputes one
      slice's activations at a time instead of keeping those of all
      M * K * B latents of all M decoders alive. Same values and gradients
      (up to float reassociation); costs an extra decoder forward pass and
      a sequential loop over K (width 1/8, B = 8, DReG on XLA:CPU: memory
      87-89 MiB at K = 10 and 20 instead of 579 and 1,086 MiB, steps 2.3-2.9x
      longer; bench/RESULTS.md, table 3). The loop matters: on XLA:CPU a
      bare `jax.checkpoint` around each decoder left the compiled step's
      temporary memory unchanged (three decoders: 381 MB with and without),
      while the same checkpoint inside `lax.map` cut it to 134 MB
      (2026-11-26). Encoders (B images each, independent of K) are not
      rematerialised.
  """

  vmap_modalities: bool = False
  remat: bool = False
  # BatchNorm mode of the networks that have it (`uses_batch_stats`):
  # False (default, what evaluation and generation use) normalises with the
  # running averages, True with the batch's statistics (the train step's
  # objective, through `train_mode()`; running averages are updated by
  # `update_batch_stats`, not here).
  bn_train: bool = False

  def init(self, key, batch: types.Batch) -> types.Params:
    """Initialises all networks on `batch` (only its shapes matter).

    Modalities with equal networks and event shapes are initialised by one
    `vmap`ped call over their keys, so the traced (and compiled) init holds
    each distinct architecture once, not M times.
    """
    self.check_batch(batch, values=False)  # only the shapes matter
    m = self.num_modalities
    enc_keys = jax.random.split(jax.random.fold_in(key, 0), m)
    dec_keys = jax.random.split(jax.random.fold_in(key, 1), m)
    u = jnp.zeros((1, self.dim_w + self.dim_z), self.dtype)
    groups: dict[Any, list[int]] = {}
    for i, mod in enumerate(self.modalities):
      sig = (mod.encoder, mod.decoder, tuple(mod.event_shape),
             jnp.asarray(batch[mod.name]).dtype)
      groups.setdefault(sig, []).append(i)
    params = {'encoders': {}, 'decoders': {}}
    for (enc, dec, _, _), idx in groups.items():
      x = jnp.asarray(batch[self.modalities[idx[0]].name][:1])
      ids = jnp.asarray(idx)
      enc_p = jax.vmap(lambda k: _variables(enc, enc.init(k, x)))(
          enc_keys[ids])
      dec_p = jax.vmap(lambda k: _variables(dec, dec.init(k, u)))(
          dec_keys[ids])
      for j, i in enumerate(idx):
        name = self.modalities[i].name
        params['encoders'][name] = jax.tree.map(lambda t: t[j], enc_p)
        params['decoders'][name] = jax.tree.map(lambda t: t[j], dec_p)
    # Same key order as the modalities, whatever the grouping.
    return {g: {n: params[g][n] for n in self.names} for g in params}

  def groups(self) -> tuple[tuple[int, ...], ...]:
    """Indices of modalities sharing encoder, decoder, likelihood and event
    shape: each group runs as one `vmap` over stacked parameters when
    `vmap_modalities` is set (one traced network per group, not per
    modality)."""
    if not self.vmap_modalities:
      return tuple((i,) for i in range(self.num_modalities))
    out: dict[Any, list[int]] = {}
    for i, m in enumerate(self.modalities):
      sig = (m.encoder, m.decoder, m.log_likelihood, tuple(m.event_shape))
      out.setdefault(sig, []).append(i)
    return tuple(tuple(v) for v in out.values())

  def _stacked(self, params, group: str, idx):
    names = [self.names[i] for i in idx]
    return jax.tree.map(lambda *t: jnp.stack(t),
                        *[params[group][n] for n in names])

  def encode(self, params, batch: types.Batch) -> types.Posteriors:
    """Runs the M encoders: stacked posteriors `[M, B, D]`."""
    self.check_batch(batch)
    outs = [None] * self.num_modalities
    for idx in self.groups():
      enc = self.modalities[idx[0]].encoder
      x = jnp.stack([batch[self.names[i]] for i in idx])  # [G, B, *event]
      res = jax.vmap(lambda p, x: self._apply(enc, p, x))(
          self._stacked(params, 'encoders', idx), x)
      for j, i in enumerate(idx):
        outs[i] = tuple(r[j] for r in res)
    loc_w, raw_w, loc_z, raw_z = (jnp.stack(t) for t in zip(*outs))
    if loc_w.shape[-1] != self.dim_w or loc_z.shape[-1] != self.dim_z:
      raise ValueError(
          f'encoders must return loc_w [B, {self.dim_w}] and loc_z'
          f' [B, {self.dim_z}], got {loc_w.shape[1:]} and {loc_z.shape[1:]}'
      )
    return types.Posteriors(loc_w, self.scale(raw_w), loc_z, self.scale(raw_z))

  def decode_log_likelihood(self, params, batch: types.Batch,
                            u: types.Array, present=None) -> types.Array:
    """sum_d lambda_d log p_theta_d(x_d | u[d]) with every decoder at once.

    Args:
      params: model params.
      batch: `{name: [B, *event]}`.
      u: `[M_d, *S, B, Dw + Dz]` latents decoded by target modality d
        (any sample axes S before the batch axis).
      present: optional `[M_d, B]` bool: the sum over the observed targets
        of each example only (absent ones removed by `where`).

    Returns:
      `[*S, B]`.
    """
    total = 0.0
    for idx in self.groups():
      mod = self.modalities[idx[0]]
      ud = u[jnp.asarray(idx)] if len(idx) < self.num_modalities else u
      x = jnp.stack([batch[self.names[i]] for i in idx])  # [G, B, *event]
      lam = jnp.asarray([self.modalities[i].likelihood_scale for i in idx],
                        self.dtype)

      one = self.modality_log_likelihood_fn(mod)
      ll = jax.vmap(one)(self._stacked(params, 'decoders', idx), ud, x)
      if present is not None:  # [G, *S, B]: absent targets contribute 0
        keep = present[jnp.asarray(idx)]  # [G, B]
        keep = keep.reshape(keep.shape[:1] + (1,) * (ll.ndim - 2)
                            + keep.shape[1:])
        ll = jnp.where(keep, ll, 0.0)
      total = total + jnp.tensordot(lam, ll, axes=1)
    return total

  def modality_log_likelihood_fn(self, mod: base.Modality):
    """`(decoder params, u [*S, B, D], x [B, *event]) -> [*S, B]`: modality
    `mod`'s unscaled log-likelihood of `x` under its decoder at latents
    `u` (rematerialised per sample slice when `remat`)."""

    def one(p, ui, xi):
      # Flatten with B as the major axis: a batch sharded over devices then
      # stays sharded in the decoder. Flattening [*S, B] with B minor made
      # XLA gather all M * K * B latents and run every decoder on the whole
      # batch on each device (seen in the partitioned HLO, 2 CPU devices).
      ub = jnp.moveaxis(ui, -2, 0)  # [B, *S, D]
      out = self._apply(mod.decoder, p, ub.reshape((-1, ub.shape[-1])))
      out = out.reshape(ub.shape[:-1] + out.shape[1:])  # [B, *S, *event]
      out = jnp.moveaxis(out, 0, ui.ndim - 2)  # [*S, B, *event]
      return mod.log_likelihood(xi, out)

    return _remat_over_last_sample_axis(one) if self.remat else one

  def decode(self, params, name: str, u: types.Array) -> types.Array:
    """Decodes `u [..., Dw + Dz]` with modality `name`: `[..., *event]`."""
    mod = self.modalities[self.names.index(name)]
    lead = u.shape[:-1]
    out = self._apply(mod.decoder, params['decoders'][name],
                      u.reshape((-1, u.shape[-1])))
    return out.reshape(lead + out.shape[1:])

  # ------------------------------------------------------------ BatchNorm
  #
  # A network with BatchNorm (a module with `uses_batch_stats = True`, e.g.
  # the CUB text networks) keeps its Flax variables `{'params': ...,
  # 'batch_stats': ...}` as its entry of `params['encoders' | 'decoders']`;
  # every other network keeps its bare params (the tree of a model without
  # BatchNorm is what it always was). The optimiser sees only
  # `trainable_params(params)`.

  @property
  def has_batch_stats(self) -> bool:
    return bool(self._batch_stats_entries())

  def _batch_stats_entries(self) -> tuple[tuple[str, str], ...]:
    out = []
    for mod in self.modalities:
      for group, net in (('encoders', mod.encoder), ('decoders', mod.decoder)):
        if _uses_batch_stats(net):
          out.append((group, mod.name))
    return tuple(out)

  def _apply(self, module, variables, x):
    """`module(x)` with its params (and running averages, in `bn_train`
    mode ignored: batch statistics; else used: eval mode)."""
    if not _uses_batch_stats(module):
      return module.apply({'params': variables}, x)
    if self.bn_train:
      out, _ = module.apply(variables, x, train=True, mutable=['batch_stats'])
      return out
    return module.apply(variables, x, train=False)

  def train_mode(self) -> 'NetworkVAE':
    """This model with BatchNorm in train mode (batch statistics)."""
    return dataclasses.replace(self, bn_train=True)

  def trainable_params(self, params):
    """`params` without the running averages (what the optimiser sees):
    `params` itself for a model without BatchNorm."""
    if not self.has_batch_stats:
      return params
    out = {g: dict(v) if g in ('encoders', 'decoders') else v
           for g, v in params.items()}
    for group, name in self._batch_stats_entries():
      out[group][name] = params[group][name]['params']
    return out

  def with_trainable(self, params, trainable):
    """`params` with its trainable part replaced by `trainable` (the
    running averages of `params` kept)."""
    if not self.has_batch_stats:
      return trainable
    out = {g: dict(v) if g in ('encoders', 'decoders') else v
           for g, v in trainable.items()}
    for group, name in self._batch_stats_entries():
      out[group][name] = {'params': trainable[group][name],
                          'batch_stats': params[group][name]['batch_stats']}
    return out

  def update_batch_stats(self, key, params, batch: types.Batch):
    """`params` with the running averages after one train-mode pass.

    Each BatchNorm encoder runs on its modality's batch (B rows); each
    BatchNorm decoder on u_m = [w_m, z_m] drawn once from every modality's
    unimodal posterior q_m (encoders in train mode), M * B rows. Every
    BatchNorm layer then moves its averages once, with PyTorch's momentum
    0.1 (`cub.BatchNorm`). The official code updates them at every network
    call of its forward pass (each decoder M times per step, on K * B
    rows each); one update per step from a K = 1 draw is this port's
    choice (docs/cub.md "Networks and recipes").

    Args:
      key: noise of the posterior draws.
      params: model params (with running averages).
      batch: `{name: [B, *event]}`.
    """
    out = {g: dict(v) if g in ('encoders', 'decoders') else v
           for g, v in params.items()}
    res = []
    for mod in self.modalities:
      v = params['encoders'][mod.name]
      if _uses_batch_stats(mod.encoder):
        r, upd = mod.encoder.apply(v, batch[mod.name], train=True,
                                   mutable=['batch_stats'])
        out['encoders'][mod.name] = {'params': v['params'],
                                     'batch_stats': upd['batch_stats']}
      else:
        r = mod.encoder.apply({'params': v}, batch[mod.name])
      res.append(r)
    loc_w, raw_w, loc_z, raw_z = (jnp.stack(t) for t in zip(*res))
    loc = jnp.concatenate([loc_w, loc_z], -1)  # [M, B, Dw + Dz]
    scale = jnp.concatenate([self.scale(raw_w), self.scale(raw_z)], -1)
    eps = distributions.noise(self.family, key, loc.shape)
    u = jax.lax.stop_gradient(loc + scale * eps).reshape((-1, loc.shape[-1]))
    for mod in self.modalities:
      if _uses_batch_stats(mod.decoder):
        v = params['decoders'][mod.name]
        _, upd = mod.decoder.apply(v, u, train=True, mutable=['batch_stats'])
        out['decoders'][mod.name] = {'params': v['params'],
                                     'batch_stats': upd['batch_stats']}
    return out


def apply_eval(module, variables, x):
  """`module(x)` in eval mode from its entry of `params['encoders' |
  'decoders']`: bare params, or for a network with BatchNorm `{'params',
  'batch_stats'}` (the running averages). For code that applies one network
  outside the model (e.g. `evaluation/frechet.py`)."""
  if not _uses_batch_stats(module):
    return module.apply({'params': variables}, x)
  return module.apply(variables, x, train=False)


def _uses_batch_stats(module) -> bool:
  return bool(getattr(module, 'uses_batch_stats', False))


def _variables(module, variables):
  """What `init` keeps of a module's Flax variables: its params, or for a
  module with BatchNorm `{'params', 'batch_stats'}`."""
  if _uses_batch_stats(module):
    return {'params': variables['params'],
            'batch_stats': variables['batch_stats']}
  return variables['params']


def _remat_over_last_sample_axis(fn):
  """`fn(p, u [*S, B, D], x) -> [*S, B]`, one slice of S's last axis at a time.

  The slices run in a `lax.map` and each is rematerialised
  (`jax.checkpoint`), so the backward pass keeps one slice's activations
  alive at a time (`NetworkVAE.remat`). Without sample axes S, the call is
  only checkpointed.
  """

  def wrapped(p, u, x):
    if u.ndim < 3:
      return jax.checkpoint(fn)(p, u, x)
    axis = u.ndim - 3  # the sample axis next to B
    slices = jnp.moveaxis(u, axis, 0)  # [S_last, *S_rest, B, D]
    out = jax.lax.map(jax.checkpoint(lambda ui: fn(p, ui, x)), slices)
    return jnp.moveaxis(out, 0, axis)  # [*S, B]

  return wrapped


def count_params(tree) -> int:
  """Number of scalars in a pytree."""
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
