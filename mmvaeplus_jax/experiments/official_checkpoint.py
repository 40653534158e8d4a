"""Official MMVAE+ PolyMNIST PyTorch checkpoints as runs of this package.

    run = import_run('model_250.rar', 'runs/official')  # eval.py, load_run

The official code (srl-ethz/mmvaeplus, `train_MMVAEplus_polyMNIST.py`) saves
`torch.save(model.state_dict())` files (`model_<epoch>.rar`, beside an
`args.json`). `convert_state_dict` maps such a state dict, read without torch
(`evaluation/torch_pickle.py`), to this package's params of the same model;
`import_run` writes a run directory (config.json + an orbax checkpoint) that
`eval.py --workdir` and `load_run` read. The key map, modality i
(`vaes.i.` -> `m<i>`), branch suffix s = 'w' for the private latent and 'u'
for the shared one ('z' in the 2023 release):

    enc.conv_img_s.{weight,bias}               encoders/m<i>/{w,z}/conv_in
    enc.resnet_s.{0,2,4}.conv_{0,1}.*          .../block_{0,1,2}/conv_{0,1}
    enc.resnet_s.{2,4}.conv_s.weight           .../block_{1,2}/shortcut
    enc.fc_mu_s.*, enc.fc_lv_s.*               .../loc, .../raw_scale
    dec.fc.*                                   decoders/m<i>/fc
    dec.resnet.{0,2,4}.*                       decoders/m<i>/block_{0,1,2}
    dec.conv_img.*                             decoders/m<i>/conv_out
    _pw_params_aux.1 [1, Dw]                   aux_prior/m<i> [Dw]

(`Sequential` indices 1 and 3 are the parameter-free AvgPool / Upsample
layers.) Conv weights OIHW -> HWIO, Linear weights (out, in) -> (in, out),
biases unchanged. Our networks flatten and reshape the two 12,544-wide
layers in PyTorch's C,H,W order themselves (`models/polymnist.py`), so those
matrices are only transposed. The encoders return the w head before the z
head (u = [w, z]), as the official code concatenates them; the decoders
read u = [w, z] in the same order.

Kept frozen in the official model and derived here, never stored: the loc of
each auxiliary prior (`vaes.i._pw_params_aux.0`) and the fixed priors p(z),
p(w) (`_pz_params`, `_pw_params`; the 2023 release's joint `_pu_params`),
loc 0 and scale map(0). Each of them, when present, must be zero, or
conversion stops: a nonzero one would be a model this package does not
express. The scale maps (Laplace D softmax + eta, Normal softplus + eta) are
the official ones (`core/distributions.py`); eta is 1e-20 as in the 2024 code
(the 2023 code used 1e-6: scales differ by 1e-6 absolute).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import hashlib
import json
import os
import pickle
import re
from typing import Any
import zipfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import train_state
from mmvaeplus_jax.configs import polymnist as polymnist_configs
from mmvaeplus_jax.evaluation import torch_pickle
from mmvaeplus_jax.experiments import runs
from mmvaeplus_jax.infra import checkpointing
from mmvaeplus_jax.infra import rundir

# The polymnist.py variant of the official 2024 run script (ELBO with the
# IWAE gradient, K = 1, beta 2.5, batch 128, 250 epochs, Adam amsgrad 1e-3,
# seed 2; full width, 5 modalities, Laplace, dim_w = dim_z = 32).
OFFICIAL_VARIANT = 'official2024'
RECORD_FILE = 'official_checkpoint.json'  # beside config.json: the source
ARGS_FILE = 'args.json'  # the official run's arguments, beside its .rar
BASE_CHANNELS = 64  # the official networks' nf (width 1)

# Our leaf names -> official ones, per layer kind.
_ENC_HEADS = {'loc': 'fc_mu', 'raw_scale': 'fc_lv'}
_CONV_NAMES = {'conv_0': 'conv_0', 'conv_1': 'conv_1', 'shortcut': 'conv_s'}
_LEAF_NAMES = {'kernel': 'weight', 'bias': 'bias'}


class OfficialCheckpointError(ValueError):
  """A state dict that is not the official MMVAE+ of the config."""


# ------------------------------------------------------------------ configs


# The official run's argparse names -> (config section, key, conversion).
_ARGS_TO_CONFIG = {
    'latent_dim_w': ('model', 'dim_w', int),
    'latent_dim_z': ('model', 'dim_z', int),
    'priorposterior': ('model', 'family', lambda v: _family(v)),
    'beta': ('objective', 'beta', float),
    'K': ('objective', 'num_samples', int),
    'batch_size': ('train', 'batch_size', int),
    'epochs': ('train', 'num_epochs', int),
    'seed': ('', 'seed', int),
}


def official_config(args: Mapping[str, Any] | None = None, *,
                    family: str | None = None):
  """The config of the official recipe (`polymnist.py:official2024`), with
  the settings of an official run's `args.json` applied when given
  (latent_dim_w / latent_dim_z, priorposterior, beta, K, batch_size,
  epochs, seed; `obj` 'elbo' and 'dreg' both train with the IWAE gradient,
  official_reference.md section 7.1, so the estimator stays 'iwae').

  Args:
    args: the official run's `args.json` (None: there is none).
    family: 'laplace' or 'normal', the latents' family. Required when
      `args` does not give `priorposterior`: the weights cannot tell (a
      Normal-trained file converted as Laplace loads and scores wrongly);
      checked against `args` when both give it.

  Raises:
    OfficialCheckpointError: no family from either, or the two disagree.
  """
  c = polymnist_configs.get_config(OFFICIAL_VARIANT)
  for arg, (section, key, convert) in _ARGS_TO_CONFIG.items():
    if args and arg in args:
      (c[section] if section else c)[key] = convert(args[arg])
  from_args = (_family(args['priorposterior'])
               if args and 'priorposterior' in args else None)
  if family is not None:
    family = _family(family)
    if from_args is not None and family != from_args:
      raise OfficialCheckpointError(
          f'family {family!r} but args.json says priorposterior'
          f' {args["priorposterior"]!r}: drop the family or fix args.json')
    c.model.family = family
  elif from_args is None:
    raise OfficialCheckpointError(
        'the latent family is unknown: no args.json with priorposterior'
        ' beside the checkpoint, and the weights of a Laplace and a Normal'
        ' run have the same shapes. Give it: --family laplace (the official'
        ' default) or --family normal (official_config(family=...), or a'
        ' config with --config)')
  return c


def _family(priorposterior) -> str:
  fam = str(priorposterior).lower()
  if fam not in ('laplace', 'normal'):
    raise OfficialCheckpointError(
        f'args.json: priorposterior {priorposterior!r} is neither Laplace'
        ' nor Normal')
  return fam


def read_official_args(pt_path) -> dict | None:
  """The official run's `args.json` beside `pt_path` (None if absent)."""
  path = os.path.join(os.path.dirname(os.path.abspath(
      os.path.expanduser(pt_path))), ARGS_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_official_args(args: Mapping[str, Any] | None, config) -> None:
  """Raises when the official run's arguments contradict `config.model`
  (latent sizes, family); logs a warning when beta or K differ (they
  change the reported bound, not the model)."""
  if not args:
    return
  m = config.model
  want = {'dim_w': args.get('latent_dim_w'), 'dim_z': args.get('latent_dim_z'),
          'family': (_family(args['priorposterior'])
                     if 'priorposterior' in args else None)}
  bad = [f'model.{k}={m[k]!r} but args.json says {v!r}'
         for k, v in want.items() if v is not None and m[k] != v]
  if bad:
    raise OfficialCheckpointError(
        'the config does not match the official run\'s args.json: '
        + '; '.join(bad) + ' (omit the config to take them from args.json)')
  for key, ours in (('beta', config.objective.beta),
                    ('K', config.objective.num_samples)):
    if key in args and float(args[key]) != float(ours):
      logging.warning('args.json has %s=%s, the config %s', key, args[key],
                      ours)


# --------------------------------------------------------------- key map


def _official_key(path: tuple[str, ...], index: int, z_suffix: str) -> str:
  """The official state-dict key of our parameter at `path` (modality
  `index`), e.g. ('encoders', 'm0', 'z', 'block_1', 'shortcut', 'kernel')
  -> 'vaes.0.enc.resnet_u.2.conv_s.weight'."""
  group = path[0]
  if group == 'aux_prior':
    return f'vaes.{index}._pw_params_aux.1'
  leaf = _LEAF_NAMES[path[-1]]
  if group == 'encoders':
    branch, layer = path[2], path[3]
    s = 'w' if branch == 'w' else z_suffix
    if layer == 'conv_in':
      return f'vaes.{index}.enc.conv_img_{s}.{leaf}'
    if layer in _ENC_HEADS:
      return f'vaes.{index}.enc.{_ENC_HEADS[layer]}_{s}.{leaf}'
    block = 2 * int(layer.split('_')[1])
    return (f'vaes.{index}.enc.resnet_{s}.{block}.'
            f'{_CONV_NAMES[path[4]]}.{leaf}')
  if group == 'decoders':
    layer = path[2]
    if layer == 'fc':
      return f'vaes.{index}.dec.fc.{leaf}'
    if layer == 'conv_out':
      return f'vaes.{index}.dec.conv_img.{leaf}'
    block = 2 * int(layer.split('_')[1])
    return f'vaes.{index}.dec.resnet.{block}.{_CONV_NAMES[path[3]]}.{leaf}'
  raise KeyError(f'no official key for parameter {"/".join(path)}')


def _to_ours(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Official layout -> ours: OIHW -> HWIO, (out, in) -> (in, out),
  [1, Dw] -> [Dw]."""
  if path[0] == 'aux_prior':
    return value.reshape(value.shape[-1:])
  if path[-1] == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if path[-1] == 'kernel' and value.ndim == 2:
    return value.T
  return value


def _official_shape(path: tuple[str, ...], shape) -> tuple[int, ...]:
  """The official shape of our parameter of `shape` at `path`."""
  shape = tuple(shape)
  if path[0] == 'aux_prior':
    return (1,) + shape
  if path[-1] == 'kernel' and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  if path[-1] == 'kernel' and len(shape) == 2:
    return shape[::-1]
  return shape


def _frozen_prior_keys(num_modalities: int) -> list[str]:
  """Keys of the official model's frozen parameters: all must be zero."""
  keys = [f'{p}.{j}' for p in ('_pz_params', '_pw_params', '_pu_params')
          for j in (0, 1)]
  for i in range(num_modalities):
    keys += [f'vaes.{i}._pw_params_aux.0', f'vaes.{i}._pu_params.0',
             f'vaes.{i}._pu_params.1']
  return keys


def _normalise_aliases(state_dict: Mapping[str, np.ndarray]) -> dict:
  """The 2023 release (and a mid-2024 revision) name the auxiliary prior
  `vaes.i._pw_params`: read it as `vaes.i._pw_params_aux`."""
  out = dict(state_dict)
  for key in list(out):
    m = re.fullmatch(r'(vaes\.\d+)\._pw_params\.(\d)', key)
    if m and f'{m[1]}._pw_params_aux.{m[2]}' not in out:
      out[f'{m[1]}._pw_params_aux.{m[2]}'] = out.pop(key)
  return out


def infer_model(state_dict: Mapping[str, np.ndarray]) -> dict:
  """What a state dict says about the model: `num_modalities`, `dim_w`,
  `dim_z`, `width` (channels / 64) and `release` ('2024': shared branch
  `*_u`, '2023': `*_z`); entries it cannot tell are absent."""
  out = {}
  idx = {int(m[1]) for k in state_dict
         if (m := re.match(r'vaes\.(\d+)\.', k))}
  if idx:
    out['num_modalities'] = max(idx) + 1
  for suffix, release in (('u', '2024'), ('z', '2023')):
    if f'vaes.0.enc.fc_mu_{suffix}.weight' in state_dict:
      out['release'] = release
      out['dim_z'] = int(state_dict[f'vaes.0.enc.fc_mu_{suffix}.weight']
                         .shape[0])
  if 'vaes.0.enc.fc_mu_w.weight' in state_dict:
    out['dim_w'] = int(state_dict['vaes.0.enc.fc_mu_w.weight'].shape[0])
  if 'vaes.0.enc.conv_img_w.weight' in state_dict:
    out['width'] = (state_dict['vaes.0.enc.conv_img_w.weight'].shape[0]
                    / BASE_CHANNELS)
  return out


def _z_suffix(state_dict, index: int) -> str:
  if f'vaes.{index}.enc.conv_img_z.weight' in state_dict and (
      f'vaes.{index}.enc.conv_img_u.weight' not in state_dict):
    return 'z'  # the 2023 release
  return 'u'


# ------------------------------------------------------------ conversion


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config):
  """The official PolyMNIST MMVAE+ state dict -> params of `config.model`.

  Args:
    state_dict: {official key: array} (`torch_pickle.read_torch_state_dict`
      of a `torch.save(model.state_dict())` file); any float dtype.
    config: a config whose `model` is the checkpoint's (MMVAE+ with private
      latents, modalities m0..m{M-1} = `vaes.0..M-1`).

  Returns:
    `{'encoders', 'decoders', 'aux_prior'}` of float32 NumPy arrays, the
    structure `model.init` returns.

  Raises:
    OfficialCheckpointError: naming the missing and unexpected keys, the
      shape mismatches (with what the file's shapes say about the model)
      and any nonzero frozen prior parameter.
  """
  model = train_state.model_of(config)
  m = model.num_modalities
  if model.dim_w < 1 or not hasattr(model, 'aux_prior_scale'):
    raise OfficialCheckpointError(
        f'official MMVAE+ checkpoints need an MMVAE+ config with a private'
        f' latent; got model {config.model.name!r} with dim_w={model.dim_w}')
  want_names = tuple(f'm{i}' for i in range(m))
  if model.names != want_names:
    raise OfficialCheckpointError(
        f'the official model decodes modalities m0..m{m - 1} as vaes.0..'
        f'{m - 1}; the config names {list(model.names)} (set'
        ' model.modalities to \'\')')
  sd = _normalise_aliases(state_dict)
  example = {n: np.zeros((1,) + tuple(mod.event_shape), np.float32)
             for n, mod in zip(model.names, model.modalities)}
  abstract = jax.eval_shape(model.init, jax.random.key(0), example)
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]

  table = []  # (our path, official key, our abstract leaf)
  for key_path, leaf in leaves:
    path = tuple(str(getattr(k, 'key', k)) for k in key_path)
    index = model.names.index(path[1])
    table.append((path, _official_key(path, index, _z_suffix(sd, index)),
                  leaf))
  frozen = _frozen_prior_keys(m)
  expected = {key for _, key, _ in table}
  missing = sorted(expected - sd.keys())
  unexpected = sorted(sd.keys() - expected - set(frozen))
  wrong = [f'{key}: {tuple(np.shape(sd[key]))}, expected'
           f' {_official_shape(path, leaf.shape)}'
           for path, key, leaf in table
           if key in sd and tuple(np.shape(sd[key]))
           != _official_shape(path, leaf.shape)]
  nonzero = [k for k in frozen if k in sd and np.any(np.asarray(sd[k]) != 0)]
  if missing or unexpected or wrong or nonzero:
    raise OfficialCheckpointError(_mismatch_message(
        missing, unexpected, wrong, nonzero, state_dict, config))

  params: dict = {}
  for path, key, leaf in table:
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(
        _to_ours(path, np.asarray(sd[key])), dtype=leaf.dtype)
  return params


def _mismatch_message(missing, unexpected, wrong, nonzero, state_dict,
                      config) -> str:
  parts = []
  for what, items in (('missing keys', missing),
                      ('unexpected keys', unexpected),
                      ('keys with the wrong shape', wrong)):
    if items:
      parts.append(f'{what} ({len(items)}): {", ".join(items[:4])}'
                   + (', ...' if len(items) > 4 else ''))
  if nonzero:
    parts.append(
        f'nonzero frozen prior parameter(s) {", ".join(nonzero[:4])}: this'
        ' package fixes p(z), p(w) and the auxiliary priors\' loc at loc 0,'
        ' scale map(0)')
  seen = infer_model(state_dict)
  mc = config.model
  differ = {k: v for k, v in seen.items()
            if k in mc and mc[k] != v}
  hint = ''
  if differ:
    hint = (' The file looks like ' + ', '.join(
        f'model.{k}={v!r}' for k, v in sorted(differ.items()))
            + ' (the config has ' + ', '.join(
                f'{k}={mc[k]!r}' for k in sorted(differ)) + ').')
  return ('not the official PolyMNIST MMVAE+ state dict of this config: '
          + '; '.join(parts) + '.' + hint)


# --------------------------------------------------------------- import


def read_state_dict(pt_path) -> dict[str, np.ndarray]:
  """`torch_pickle.read_torch_state_dict`, errors as
  `OfficialCheckpointError` naming the file."""
  path = os.path.abspath(os.path.expanduser(pt_path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  try:
    return torch_pickle.read_torch_state_dict(path)
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError,
          IndexError, AttributeError, zipfile.BadZipFile) as e:
    raise OfficialCheckpointError(
        f'cannot read {path} as a PyTorch state dict: {e}') from e


def official_epoch(pt_path) -> int | None:
  """The epoch in an official checkpoint's name (`model_<epoch>.rar`)."""
  m = re.fullmatch(r'model_(\d+)\.\w+', os.path.basename(str(pt_path)))
  return int(m[1]) if m else None


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      digest.update(chunk)
  return digest.hexdigest()


def import_run(pt_path, workdir, config=None, *, step: int = 0,
               family: str | None = None) -> runs.Run:
  """Writes an official checkpoint as a run directory of this package.

  `workdir` gets `config.json`, `checkpoints/<step>/` (a `TrainState`:
  the converted params, a fresh optimiser state, `step`, zero non-finite
  counters; what `train_state.restore_params` and `load_run` read) and
  `official_checkpoint.json` (source path, SHA-256, official epoch, key
  count). The official files record no optimiser steps, so the run's step
  is `step` (default 0), whatever the epoch; training on from this workdir
  restarts Adam from zero moments.

  Args:
    pt_path: the official `torch.save(model.state_dict())` file.
    workdir: the new run directory (refused if it holds a checkpoint).
    config: the run's config; None: `official_config` with the run's
      `args.json` beside `pt_path` applied (when there is one) and
      `family`. A given config is checked against that `args.json`.
    step: the checkpoint's step.
    family: the latents' family when `config` is None ('laplace' or
      'normal'); required without an `args.json` that gives it.

  Returns:
    The written run (`runs.Run`: workdir, config, model, params, step).
  """
  pt_path = os.path.abspath(os.path.expanduser(pt_path))
  args = read_official_args(pt_path)
  if config is None:
    config = official_config(args, family=family)
  else:
    check_official_args(args, config)
  state_dict = read_state_dict(pt_path)
  params = convert_state_dict(state_dict, config)
  model = train_state.model_of(config)

  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(
        f'{workdir} already holds checkpoints: import into a new directory')
  rundir.save_config(config, workdir)
  params = jax.tree.map(jnp.asarray, params)
  tx = train_state.make_optimizer(config.optim)
  zero = jnp.zeros((), jnp.int32)
  state = train_state.TrainState(
      step=jnp.asarray(step, jnp.int32), params=params,
      opt_state=tx.init(params), nonfinite_consecutive=zero,
      nonfinite_total=zero)
  checkpointing.quiet_orbax()
  manager = checkpointing.make_manager(ckpt_dir)
  checkpointing.save(manager, step, state)
  manager.wait_until_finished()
  record = collections.OrderedDict(
      source=pt_path, sha256=_sha256(pt_path), official_epoch=official_epoch(
          pt_path), step=int(step), num_keys=len(state_dict),
      release=infer_model(state_dict).get('release'),
      args_json=args is not None)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RECORD_FILE), 'w') as f:
      json.dump(record, f, indent=2)
  return runs.Run(workdir, config, model, params, int(step))
