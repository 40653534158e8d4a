"""Importing official MMVAE+ PolyMNIST PyTorch checkpoints, without torch.

A state dict in the official key names and shapes (srl-ethz/mmvaeplus 2024:
`resnet_polyMNIST.py`, `vae_polyMNIST_single_modality.py`,
`mmvaeplus_polyMNIST.py`) is built here from NumPy arrays with PyTorch's
default initialisation, written as torch.save writes a state dict (zip
format, `_metadata` included; the pickler of `torch_files.py`), imported with
`official_checkpoint.import_run`, and checked against a NumPy float64
re-implementation of the official forward pass and K = 1 objective.

Tolerances (eps32 = 2^-23 = 2u, u = 2^-24 the unit roundoff):

* networks: relative Frobenius error over the whole output (all modalities
  and examples) <= n * eps32, n = the sum of the reduction lengths (fan-ins)
  of the layers on the path (plus D for the softmax of a scale head). This
  is the probabilistic rounding bound of an inner product of length n_l
  (~ sqrt(n_l) u relative to sum |w x|, which exceeds |w . x| by at most
  ~ sqrt(n_l) for random signs: n_l u relative per layer), summed over the
  layers at first order (unit gain per layer). A layout error is O(1).
* likelihood part of the log-weights, per (stratum r, example b):
  |d| <= eps32 [(n_dec + 2) sum_d sqrt(N) ||mu_{r->d,b}||_2 / 0.75
  + n_sum sum |ll terms|]: the decoder bound above turned into an l1 bound
  on the means (||dmu||_1 <= sqrt(N) ||dmu||_2), each pixel term's
  sensitivity 1/0.75 to its mean, plus the worst case of a float32 sum of
  n_sum = M N terms. Compared as the norm of the [M, B] errors against the
  norm of the bounds.
* prior/posterior bracket (from the log-weights at beta = 1 minus beta = 0,
  one compiled program, so the likelihood part cancels bit for bit):
  eps32 [|lw_0| + |lw_1| + (Dz + M + 4) S], S the sum over every density
  term of (|x| + |mu|) / sigma + |log 2 sigma| (what each term's rounding
  scales with), the first two for the two roundings of lw. The bracket's
  reference uses our encoders' posteriors (upcast to float64), which the
  network check compares with NumPy's; everything else (latents, cross
  latents from the target's auxiliary prior, decoders, densities, mixture,
  beta, means over strata) is NumPy's own.
* the bound (`model.objective_on_noise`, beta 2.5): the mean over strata of
  the two bounds above (beta times the second).
"""

import collections
import io
import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import mmvaeplus_jax
from mmvaeplus_jax.core import objectives
from mmvaeplus_jax.experiments import official_checkpoint
from mmvaeplus_jax.tools import convert_official
import torch_files  # a torch.save pickler (torch-free)

REPO = pathlib.Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)
ETA = 1e-20
LIK_SCALE = 0.75
M, B = 5, 3  # the official 5 modalities; examples


# ---------------------------------------------------------------------------
# The official state dict (key names, shapes, order, PyTorch default init).
# ---------------------------------------------------------------------------


def official_state_dict(seed, *, nf=64, dim_w=32, dim_z=32,
                        num_modalities=M):
  """{key: float32 array} of `PolyMNIST_5modalities(...).state_dict()` with
  nf channels (64 = the official networks), random weights."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()

  def uniform(key, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    sd[key] = rng.uniform(-bound, bound, shape).astype(np.float32)

  def conv(key, cout, cin, k, bias=True):
    uniform(f'{key}.weight', (cout, cin, k, k), cin * k * k)
    if bias:
      uniform(f'{key}.bias', (cout,), cin * k * k)

  def linear(key, cout, cin):
    uniform(f'{key}.weight', (cout, cin), cin)
    uniform(f'{key}.bias', (cout,), cin)

  def block(key, fin, fout):
    fh = min(fin, fout)
    conv(f'{key}.conv_0', fh, fin, 3)
    conv(f'{key}.conv_1', fout, fh, 3)
    if fin != fout:
      conv(f'{key}.conv_s', fout, fin, 1, bias=False)

  flat = 4 * nf * 7 * 7
  for i in range(num_modalities):
    v = f'vaes.{i}'
    for s, dim in (('w', dim_w), ('u', dim_z)):
      conv(f'{v}.enc.conv_img_{s}', nf, 3, 3)
      block(f'{v}.enc.resnet_{s}.0', nf, nf)
      block(f'{v}.enc.resnet_{s}.2', nf, 2 * nf)
      block(f'{v}.enc.resnet_{s}.4', 2 * nf, 4 * nf)
      linear(f'{v}.enc.fc_mu_{s}', dim, flat)
      linear(f'{v}.enc.fc_lv_{s}', dim, flat)
    linear(f'{v}.dec.fc', flat, dim_w + dim_z)
    block(f'{v}.dec.resnet.0', 4 * nf, 2 * nf)
    block(f'{v}.dec.resnet.2', 2 * nf, nf)
    block(f'{v}.dec.resnet.4', nf, nf)
    conv(f'{v}.dec.conv_img', 3, nf, 3)
    sd[f'{v}._pw_params_aux.0'] = np.zeros((1, dim_w), np.float32)
    # psi_d, learned: random so that the auxiliary priors' map is tested.
    sd[f'{v}._pw_params_aux.1'] = rng.normal(
        0, 0.7, (1, dim_w)).astype(np.float32)
  for name, dim in (('_pz_params', dim_z), ('_pw_params', dim_w)):
    for j in (0, 1):
      sd[f'{name}.{j}'] = np.zeros((1, dim), np.float32)
  return sd


def write_pt(path, state_dict):
  """torch.save(state_dict) (zip format, torch >= 1.6), torch-free: the
  tensors and the `_metadata` attribute torch's state_dict carries."""
  tensors = collections.OrderedDict(
      (k, torch_files._Tensor(torch_files._Storage(str(i), v), v.shape))
      for i, (k, v) in enumerate(state_dict.items()))
  tensors._metadata = collections.OrderedDict(
      [('', {'version': 1}), ('vaes', {'version': 1}),
       ('vaes.0.enc', {'version': 1})])
  buf = io.BytesIO()
  pickler = torch_files._TorchPickler(buf, legacy=False)
  pickler.dump(tensors)
  name = pathlib.Path(path).stem
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr(f'{name}/data.pkl', buf.getvalue())
    zf.writestr(f'{name}/byteorder', 'little')
    for key, s in pickler.storages.items():
      zf.writestr(f'{name}/data/{key}', s.data.astype('<f4').tobytes())
    zf.writestr(f'{name}/version', '3\n')


# ---------------------------------------------------------------------------
# NumPy float64 re-implementation of the official forward pass (NCHW).
# ---------------------------------------------------------------------------


def np_conv(x, w, b=None):
  """Conv2d, stride 1, padding k // 2: x [N, C, H, W], w [O, C, k, k]."""
  k = w.shape[-1]
  p = k // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
  out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [N, H, W, O]
  out = out.transpose(0, 3, 1, 2)
  return out if b is None else out + b[None, :, None, None]


def np_lrelu(x):
  return np.where(x > 0, x, 0.2 * x)


def np_avg_pool(x):
  """AvgPool2d(3, stride 2, padding 1), count_include_pad=True."""
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
  return win[:, :, ::2, ::2].sum(axis=(-2, -1)) / 9.0


def np_upsample(x):  # nn.Upsample(scale_factor=2), mode 'nearest'
  return x.repeat(2, axis=2).repeat(2, axis=3)


def np_block(p, key, x):
  dx = np_conv(np_lrelu(x), p[f'{key}.conv_0.weight'], p[f'{key}.conv_0.bias'])
  dx = np_conv(np_lrelu(dx), p[f'{key}.conv_1.weight'],
               p[f'{key}.conv_1.bias'])
  xs = (np_conv(x, p[f'{key}.conv_s.weight'])
        if f'{key}.conv_s.weight' in p else x)
  return xs + 0.1 * dx


def np_softmax_scale(lv):  # F.softmax(lv, -1) * D + eta
  e = np.exp(lv - lv.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True) * lv.shape[-1] + ETA


def np_encoder(p, i, x):
  """Enc.forward: x [N, 3, 28, 28] -> (mu_w, scale_w, mu_z, scale_z)."""
  out = []
  for s in ('w', 'u'):
    e = f'vaes.{i}.enc'
    h = np_conv(x, p[f'{e}.conv_img_{s}.weight'], p[f'{e}.conv_img_{s}.bias'])
    h = np_block(p, f'{e}.resnet_{s}.0', h)
    h = np_avg_pool(h)
    h = np_block(p, f'{e}.resnet_{s}.2', h)
    h = np_avg_pool(h)
    h = np_block(p, f'{e}.resnet_{s}.4', h)
    h = h.reshape(h.shape[0], -1)  # out.view(N, nf0 * 7 * 7): C, H, W
    mu = h @ p[f'{e}.fc_mu_{s}.weight'].T + p[f'{e}.fc_mu_{s}.bias']
    lv = h @ p[f'{e}.fc_lv_{s}.weight'].T + p[f'{e}.fc_lv_{s}.bias']
    out += [mu, np_softmax_scale(lv)]
  return tuple(out)


def np_decoder(p, i, u):
  """Dec.forward: u [N, Dw + Dz] -> mean [N, 3, 28, 28]."""
  d = f'vaes.{i}.dec'
  h = u @ p[f'{d}.fc.weight'].T + p[f'{d}.fc.bias']
  h = h.reshape(u.shape[0], -1, 7, 7)
  h = np_upsample(np_block(p, f'{d}.resnet.0', h))
  h = np_upsample(np_block(p, f'{d}.resnet.2', h))
  h = np_block(p, f'{d}.resnet.4', h)
  return np_conv(np_lrelu(h), p[f'{d}.conv_img.weight'],
                 p[f'{d}.conv_img.bias'])


def np_laplace_terms(x, loc, scale):
  """Per-dimension log Laplace(x; loc, scale) and its rounding scale."""
  terms = -np.log(2 * scale) - np.abs(x - loc) / scale
  size = (np.abs(x) + np.abs(loc)) / scale + np.abs(np.log(2 * scale))
  return terms, size


def path_lengths(nf, dim_w, dim_z):
  """Sums of the fan-ins along the encoder (with its widest head's
  softmax) and decoder paths (module docstring)."""
  def block(fin, fout):
    return 9 * fin + 9 * min(fin, fout) + (fin if fin != fout else 0)
  enc = (27 + block(nf, nf) + block(nf, 2 * nf) + block(2 * nf, 4 * nf)
         + 4 * nf * 49 + max(dim_w, dim_z))
  dec = ((dim_w + dim_z) + block(4 * nf, 2 * nf) + block(2 * nf, nf)
         + block(nf, nf) + 9 * nf)
  return enc, dec


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------------------
# One imported checkpoint per width, shared by the tests.
# ---------------------------------------------------------------------------


def _config(width):
  config = official_checkpoint.official_config(family='laplace')
  config.model.width = width
  return config


@pytest.fixture(scope='module', params=[
    0.125, pytest.param(1.0, marks=pytest.mark.slow)])
def case(request, tmp_path_factory):
  width = request.param
  nf = max(1, round(64 * width))
  root = tmp_path_factory.mktemp(f'official_w{nf}')
  sd = official_state_dict(0, nf=nf)
  pt = root / 'model_25.rar'  # the official file name: epoch 25
  write_pt(pt, sd)
  t0 = time.perf_counter()
  run = official_checkpoint.import_run(str(pt), str(root / 'run'),
                                       _config(width))
  print(f'\nimport_run (width {width}): {time.perf_counter() - t0:.1f} s')
  rng = np.random.default_rng(1)
  batch = {f'm{i}': rng.uniform(0, 1, (B, 28, 28, 3)).astype(np.float32)
           for i in range(M)}
  sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
  return {'width': width, 'nf': nf, 'sd': sd, 'sd64': sd64, 'pt': pt,
          'run': run, 'batch': batch}


def test_load_run_returns_the_converted_params(case):
  run = case['run']
  want = official_checkpoint.convert_state_dict(case['sd'], run.config)
  loaded = mmvaeplus_jax.load_run(run.workdir)
  assert loaded.step == run.step == 0
  assert loaded.config.to_dict() == run.config.to_dict()
  for tree in (run.params, loaded.params):
    assert jax.tree.structure(tree) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(tree), jax.tree.leaves(want)):
      assert np.asarray(g).dtype == np.float32
      np.testing.assert_array_equal(np.asarray(g), w)
  record = json.loads((pathlib.Path(run.workdir)
                       / official_checkpoint.RECORD_FILE).read_text())
  assert record['official_epoch'] == 25 and record['step'] == 0
  assert record['release'] == '2024'
  assert record['num_keys'] == len(case['sd'])
  # The aux-prior logits are psi itself ([1, Dw] -> [Dw]).
  np.testing.assert_array_equal(want['aux_prior']['m3'],
                                case['sd']['vaes.3._pw_params_aux.1'][0])


def test_networks_match_the_official_forward_pass(case):
  run, sd64, batch = case['run'], case['sd64'], case['batch']
  model, params = run.model, run.params
  n_enc, n_dec = path_lengths(case['nf'], 32, 32)
  post = jax.jit(model.encode)(params, batch)
  ref = [np_encoder(sd64, i, batch[f'm{i}'].astype(np.float64)
                    .transpose(0, 3, 1, 2)) for i in range(M)]
  names = ('loc_w', 'scale_w', 'loc_z', 'scale_z')
  for j, field in enumerate(names):
    want = np.stack([r[j] for r in ref])  # [M, B, D]
    err = rel_err(getattr(post, field), want)
    print(f'{field}: rel Frobenius error {err:.2e} (bound'
          f' {n_enc * EPS32:.2e})')
    assert err <= n_enc * EPS32, field

  rng = np.random.default_rng(2)
  u = rng.laplace(size=(M, 4 * B, 64)).astype(np.float32)  # [M_d, N, Dw+Dz]

  @jax.jit
  def decode_all(params, u):
    return jnp.stack([model.decode(params, f'm{d}', u[d]) for d in range(M)])

  got = decode_all(params, u)  # [M, N, 28, 28, 3]
  want = np.stack([np_decoder(sd64, d, u[d].astype(np.float64))
                   for d in range(M)]).transpose(0, 1, 3, 4, 2)
  err = rel_err(got, want)
  print(f'decoder means: rel Frobenius error {err:.2e} (bound'
        f' {n_dec * EPS32:.2e})')
  assert err <= n_dec * EPS32


def _np_log_weights(case, post, noise, x):
  """The official `_m_elbo` log-weights at K = 1, split as (likelihood part
  [M, B], bracket [M, B]) with their error bounds (module docstring)."""
  sd64 = case['sd64']
  n_dec = path_lengths(case['nf'], 32, 32)[1]
  loc_w, scale_w, loc_z, scale_z = (np.asarray(getattr(post, f), np.float64)
                                    for f in ('loc_w', 'scale_w', 'loc_z',
                                              'scale_z'))
  eps_w = np.asarray(noise.w, np.float64)[:, 0]  # [M, B, Dw]
  eps_z = np.asarray(noise.z, np.float64)[:, 0]
  eps_aux = np.asarray(noise.aux, np.float64)[:, :, 0]  # [M_r, M_d, B, Dw]
  w = loc_w + scale_w * eps_w  # rsample: loc + scale * eps
  z = loc_z + scale_z * eps_z
  # r_psi_d: loc pw_params_aux[0] = 0, scale softmax(psi_d) Dw + eta.
  aux_scale = np.stack([np_softmax_scale(sd64[f'vaes.{d}._pw_params_aux.1'])[0]
                        for d in range(M)])  # [M_d, Dw]
  rec = np.zeros((M, B))
  rec_tol = np.zeros((M, B))
  n_pix = 28 * 28 * 3
  for d in range(M):
    # Stratum r decodes [w_r, z_r] on the diagonal, [w~_{r->d}, z_r] with
    # w~ ~ r_psi_d (the decoded modality's auxiliary prior) elsewhere.
    u = np.stack([np.concatenate(
        [w[r] if r == d else aux_scale[d] * eps_aux[r, d], z[r]], -1)
                  for r in range(M)])  # [M_r, B, 64]
    mu = np_decoder(sd64, d, u.reshape(M * B, -1)).transpose(0, 2, 3, 1)
    mu = mu.reshape(M, B, 28, 28, 3)
    ll = (-np.log(2 * LIK_SCALE)
          - np.abs(x[f'm{d}'][None].astype(np.float64) - mu) / LIK_SCALE)
    rec += ll.sum(axis=(2, 3, 4))
    rec_tol += ((n_dec + 2) * np.sqrt(n_pix)
                * np.linalg.norm(mu.reshape(M, B, -1), axis=-1) / LIK_SCALE
                + M * n_pix * np.abs(ll).sum(axis=(2, 3, 4)))
  # p(z), p(w): loc 0, scale softmax(0) D + eta = 1 (+1e-20).
  lpz, s_pz = np_laplace_terms(z, 0.0, 1.0 + ETA)
  lpw, s_pw = np_laplace_terms(w, 0.0, 1.0 + ETA)
  lqw, s_qw = np_laplace_terms(w, loc_w, scale_w)
  comp, s_comp = np_laplace_terms(z[:, None], loc_z[None], scale_z[None])
  lqz = special.logsumexp(comp.sum(-1), axis=1) - np.log(M)  # mixture of M
  bracket = lpz.sum(-1) + lpw.sum(-1) - lqz - lqw.sum(-1)
  size = (s_pz.sum(-1) + s_pw.sum(-1) + s_qw.sum(-1)
          + s_comp.sum(axis=(1, 3)))
  return rec, rec_tol * EPS32, bracket, size


def test_bound_matches_the_official_elbo(case):
  run, batch = case['run'], case['batch']
  model, params = run.model, run.params
  beta = 2.5
  noise = model.sample_noise(jax.random.key(3), 1, B)

  @jax.jit  # one program for every beta: the likelihood part's bits agree
  def ours(params, beta):
    lw = objectives.log_weights(model, params, batch, noise, beta=beta)
    bound = model.objective_on_noise(params, batch, noise, beta=beta,
                                     estimator='iwae')
    return lw[:, 0], bound

  (lw0, bound0), (lw1, _), (_, bound) = (
      jax.tree.map(lambda a: np.asarray(a, np.float64), ours(params, b))
      for b in (0.0, 1.0, beta))
  assert np.all(np.isfinite(bound))

  post = jax.jit(model.encode)(params, batch)
  rec, rec_tol, bracket, size = _np_log_weights(case, post, noise, batch)
  size_tol = EPS32 * (model.dim_z + M + 4) * size  # [M, B]

  def check(what, got, want, tol):
    err, tol = np.linalg.norm(got - want), np.linalg.norm(tol)
    print(f'{what}: |err| {err:.3g}, bound {tol:.3g}, |value|'
          f' {np.linalg.norm(want):.3g}')
    assert err <= tol, what

  # Per stratum r and example: lw[r] = likelihood part + beta * bracket.
  check('likelihood part [M, B]', lw0, rec, rec_tol)
  check('prior/posterior bracket [M, B]', lw1 - lw0, bracket,
        size_tol + EPS32 * (np.abs(lw0) + np.abs(lw1)))
  # The objective: (1/M) sum_r log (1/K) sum_k exp(lw[r, k]), K = 1.
  check('bound at beta 0 [B]', bound0, rec.mean(0), rec_tol.mean(0))
  check(f'bound(beta {beta}) - bound(0) [B]', bound - bound0,
        beta * bracket.mean(0), beta * size_tol.mean(0)
        + EPS32 * (M + 1) * (np.abs(bound) + np.abs(bound0)))
  want = np.mean(rec + beta * bracket, axis=0)  # [B]
  check(f'bound at beta {beta} [B]', bound, want,
        np.mean(rec_tol + beta * size_tol, axis=0)
        + EPS32 * (M + 1) * np.abs(bound))
  # m_elbo's loss is minus the bound summed over the batch.
  print(f'official loss {-np.sum(want):.8g}, ours {-np.sum(bound):.8g}')


@pytest.mark.slow  # eval.py in a subprocess: start-up and compilation
def test_eval_py_evaluates_the_imported_run(case, data_dir):
  if case['width'] != 0.125:
    pytest.skip('the eval.py check runs on the reduced model only')
  workdir = case['run'].workdir
  cmd = [sys.executable, str(REPO / 'eval.py'), f'--workdir={workdir}',
         '--config.data.config=mini', f'--config.data.data_dir={data_dir}',
         '--config.evals.evaluators=bound', '--config.evals.num_examples=8',
         '--config.evals.batch_size=8', '--config.evals.bound_num_samples=1']
  out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((pathlib.Path(workdir) / 'eval' / '0'
                        / 'metrics.json').read_text())
  assert np.isfinite(metrics['eval/bound'])


# ---------------------------------------------------------------------------
# Errors, aliases, the command line (no network is run).
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def small():
  return official_state_dict(4, nf=8), _config(0.125)


def _raises(sd, config, *patterns):
  with pytest.raises(official_checkpoint.OfficialCheckpointError) as e:
    official_checkpoint.convert_state_dict(sd, config)
  for p in patterns:
    assert p in str(e.value), (p, str(e.value))


def test_missing_unexpected_and_misshaped_keys_are_named(small):
  sd, config = small
  bad = dict(sd)
  del bad['vaes.2.dec.conv_img.bias']
  _raises(bad, config, 'missing keys (1): vaes.2.dec.conv_img.bias')
  bad = dict(sd, **{'vaes.0.enc.extra.weight': np.zeros(3, np.float32)})
  _raises(bad, config, 'unexpected keys (1): vaes.0.enc.extra.weight')
  bad = dict(sd)
  bad['vaes.1.enc.fc_mu_w.weight'] = np.zeros((16, 1568), np.float32)
  _raises(bad, config, 'wrong shape (1): vaes.1.enc.fc_mu_w.weight:'
          ' (16, 1568), expected (32, 1568)')
  bad['vaes.1.enc.conv_img_w.weight'] = np.zeros((8, 3, 3, 3), np.float32)
  _raises(bad, _config(1.0), 'model.width=0.125', 'width=1.0')
  # A frozen prior parameter this package does not store must be zero.
  bad = dict(sd, **{'_pz_params.1': np.ones((1, 32), np.float32)})
  _raises(bad, config, 'nonzero frozen prior parameter(s) _pz_params.1')
  # Another number of modalities: the extra VAE is named, with a hint.
  config4 = _config(0.125)
  config4.model.num_modalities = 4
  _raises(sd, config4, 'unexpected keys (', 'vaes.4.', 'num_modalities=5')


def test_2023_release_names_convert_to_the_same_params(small):
  sd, config = small
  old = collections.OrderedDict()
  for k, v in sd.items():
    if k.startswith(('_pz_params', '_pw_params')):
      continue  # 2023: one joint fixed prior _pu_params instead
    k = k.replace('_u.', '_z.').replace('_pw_params_aux', '_pw_params')
    old[k] = v
  for j in (0, 1):
    old[f'_pu_params.{j}'] = np.zeros((1, 64), np.float32)
    for i in range(M):
      old[f'vaes.{i}._pu_params.{j}'] = np.zeros((1, 64), np.float32)
  assert official_checkpoint.infer_model(old)['release'] == '2023'
  want = official_checkpoint.convert_state_dict(sd, config)
  got = official_checkpoint.convert_state_dict(old, config)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)


def test_args_json_sets_or_checks_the_config(tmp_path, small):
  sd, config = small
  args = {'latent_dim_w': 32, 'latent_dim_z': 32, 'priorposterior': 'Normal',
          'beta': 1.0, 'K': 10, 'obj': 'dreg', 'seed': 1}
  c = official_checkpoint.official_config(args)
  assert c.model.family == 'normal' and c.objective.beta == 1.0
  assert official_checkpoint.official_config(
      args, family='normal').model.family == 'normal'
  with pytest.raises(official_checkpoint.OfficialCheckpointError,
                     match="family 'laplace' but args.json says"):
    official_checkpoint.official_config(args, family='laplace')
  with pytest.raises(official_checkpoint.OfficialCheckpointError,
                     match='the latent family is unknown'):
    official_checkpoint.official_config({'beta': 1.0})
  assert c.objective.num_samples == 10 and c.objective.estimator == 'iwae'
  write_pt(tmp_path / 'model_5.rar', sd)
  (tmp_path / 'args.json').write_text(json.dumps(args))
  with pytest.raises(official_checkpoint.OfficialCheckpointError,
                     match="model.family='laplace' but args.json says"):
    official_checkpoint.import_run(str(tmp_path / 'model_5.rar'),
                                   str(tmp_path / 'run'), config)


def test_command_line(tmp_path, small, capsys):
  sd, _ = small
  pt = tmp_path / 'model_7.rar'
  write_pt(pt, sd)
  workdir = tmp_path / 'run'
  argv = ['--pt', str(pt), '--workdir', str(workdir),
          '--config', 'polymnist.py:official2024', '--set', 'model.width=0.125',
          '--step', '3']
  assert convert_official.main(argv) == 0
  assert 'as step 3 of' in capsys.readouterr().out
  loaded = mmvaeplus_jax.load_run(str(workdir))
  assert loaded.step == 3 and loaded.config.model.width == 0.125
  want = official_checkpoint.convert_state_dict(sd, loaded.config)
  for g, w in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), w)
  # A second import into the same run, a full-width config for the reduced
  # file, a file that is not a state dict: one line on stderr, exit 1.
  assert convert_official.main(argv) == 1
  assert 'already holds checkpoints' in capsys.readouterr().err
  # No config and no args.json: the family must be given.
  assert convert_official.main(
      argv[:2] + ['--workdir', str(tmp_path / 'y')]) == 1
  assert '--family laplace' in capsys.readouterr().err
  assert convert_official.main(
      argv[:2] + ['--workdir', str(tmp_path / 'y'), '--family', 'laplace',
                  '--set', 'model.width=0.125', '--set', 'model.dim_w=16']) == 1
  err = capsys.readouterr().err
  assert 'wrong shape' in err and 'model.dim_w=32' in err, err
  assert not (tmp_path / 'y').exists()  # nothing written
  (tmp_path / 'junk.rar').write_bytes(b'not a pickle')
  assert convert_official.main(['--pt', str(tmp_path / 'junk.rar'),
                                '--workdir', str(tmp_path / 'x'),
                                '--family', 'normal']) == 1
  assert 'cannot read' in capsys.readouterr().err
