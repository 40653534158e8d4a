"""The baselines (MMVAE, MVAE, MoPoE-VAE, MMJSD, DMVAE) against their
objectives written out in NumPy, plus short training runs.

Each K = 1 bound is recomputed here from the raw encoder outputs (the scale
map, products, KLs and likelihoods in float64 NumPy; only the networks run
in JAX) on the model's own noise. Tolerance: the bound is a float32 sum of
T terms (pixels of M images, latent dims); pairwise summation errs by at
most log2(T) u sum_i |t_i|, and the latents, rounded to float32 before the
decoder, move each decoder output by a few u relative; we allow
TOL = 64 u sum_i |t_i| (log2(T) <= 16, times 4 for the latent rounding),
about 0.05 nats here, and check that the KL part of each bound is far
larger than that, so dropping or mis-weighting a KL term cannot pass.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from mmvaeplus_jax.core import aggregation
from mmvaeplus_jax import models
from mmvaeplus_jax.configs import polymnist as polymnist_config
from mmvaeplus_jax.input import builders
from mmvaeplus_jax.models import mmvaeplus
from mmvaeplus_jax.models import networks
from mmvaeplus_jax.models import polymnist

U32 = 2.0 ** -24
M, B, DZ, DW, WIDTH = 3, 4, 4, 2, 0.0625
BETA = 0.7


@pytest.fixture(scope='module')
def images(data_dir):
  train = builders.load_split('mini', 'train', data_dir)
  return {f'm{i}': np.asarray(train[f'm{i}'][:8], np.float32) / 255.0
          for i in range(M)}


@functools.lru_cache(maxsize=None)
def _model(kind):
  dw = 0 if kind in ('mvae', 'mopoe') else DW
  return polymnist.make_gaussian_model(
      kind, num_modalities=M, width=WIDTH, dim_w=dw, dim_z=DZ,
      conv_wgrad_chunk=0)


def _raw(model, params, batch):
  """float64 (loc_w, sd_w, loc_z, sd_z) `[M, B, D]` from the encoders'
  log-variance heads, the scale map written out: sd = exp(raw / 2)."""
  outs = [model.modalities[i].encoder.apply(
      {'params': params['encoders'][n]}, batch[n])
          for i, n in enumerate(model.names)]
  lw, rw, lz, rz = (np.stack([np.float64(o[j]) for o in outs])
                    for j in range(4))
  return lw, np.exp(rw / 2), lz, np.exp(rz / 2)


def _ll(model, params, batch, d, u):
  """Laplace(0.75) log-likelihood of x_d, NumPy, and its |terms| sum."""
  name = model.names[d]
  mean = np.float64(model.decode(params, name, jnp.asarray(u, jnp.float32)))
  x = np.float64(batch[name])
  t = -np.log(2 * 0.75) - np.abs(x - mean) / 0.75
  return t.sum(axis=(-3, -2, -1)), np.abs(t).sum(axis=(-3, -2, -1))


def _poe(lz, sz, members, prior):
  prec = (1.0 if prior else 0.0) + sum(1 / sz[i] ** 2 for i in members)
  mu = sum(lz[i] / sz[i] ** 2 for i in members) / prec
  return mu, 1 / np.sqrt(prec)


def _kl(mu, sd, pmu=0.0, psd=1.0):
  t = np.log(psd / sd) + (sd ** 2 + (mu - pmu) ** 2) / (2 * psd ** 2) - 0.5
  return t.sum(-1), np.abs(t).sum(-1)


def _check(got, want, terms, kl_part):
  tol = 64 * U32 * terms
  np.testing.assert_array_less(np.abs(np.float64(got) - want), tol)
  # The test can see the regulariser: it is far above the tolerance.
  assert np.all(np.abs(kl_part) > 20 * tol), (kl_part, tol)


def _shift_posteriors(params):
  """Moves the freshly initialised posteriors away from the prior (loc
  biases +-1 per modality, log-variance biases -1), so that the KL terms are
  O(10) nats, not O(0.1), and far above the tolerance."""
  params = jax.tree.map(lambda x: x, params)
  for i, enc in enumerate(params['encoders'].values()):
    for branch in enc:  # 'z', and 'w' when there are private latents
      head = enc[branch]
      head['loc']['bias'] = head['loc']['bias'] + (-1.0) ** i * (1 + 0.5 * i)
      head['raw_scale']['bias'] = head['raw_scale']['bias'] - 1.0
  return params


def _setup(kind, images, key=0, **noise_options):
  model = _model(kind)
  batch = {n: images[n][:B] for n in model.names}
  params = _shift_posteriors(model.init(jax.random.key(key), batch))
  noise = model.sample_noise(jax.random.key(key + 1), 1, B, **noise_options)
  return model, batch, params, jax.tree.map(np.asarray, noise)


@pytest.mark.slow  # ~26 s (MoPoE's reference test below stays default)
def test_mvae_k1_bound_is_sum_of_subset_elbos(images):
  model, batch, params, noise = _setup('mvae', images, mvae_subsets=1)
  got = jax.jit(functools.partial(model.bound, beta=BETA))(
      params, batch, noise)
  _, _, lz, sz = _raw(model, params, batch)
  subsets = [list(range(M))] + [[d] for d in range(M)] + [
      list(np.flatnonzero(noise['subsets'][0]))]
  assert 2 <= len(subsets[-1]) <= M - 1
  want, terms, kls = 0.0, 0.0, 0.0
  for s, members in enumerate(subsets):
    mu, sd = _poe(lz, sz, members, prior=True)
    z = mu + sd * noise['z'][s, 0]
    for d in members:  # only the subset's own modalities
      ll, t = _ll(model, params, batch, d, z)
      want, terms = want + ll, terms + t
    kl, t = _kl(mu, sd)
    want, terms, kls = want - BETA * kl, terms + t, kls + BETA * kl
  _check(got, want, terms, kls)


def test_mopoe_k1_bound_mixture_recon_subset_average_kl(images):
  model, batch, params, noise = _setup('mopoe', images)
  got = jax.jit(functools.partial(model.bound, beta=BETA))(
      params, batch, noise)
  _, _, lz, sz = _raw(model, params, batch)
  subsets = [list(np.flatnonzero(r)) for r in aggregation.all_subsets(M)]
  assert len(subsets) == 7
  want, terms = np.zeros(B), np.zeros(B)
  kls = np.zeros(B)
  params_s = [_poe(lz, sz, s, prior=len(s) == M) for s in subsets]
  for b in range(B):
    s = int(np.floor(noise['choice'][0, b] * len(subsets)))
    mu, sd = params_s[s]
    z = mu[b] + sd[b] * noise['z'][0, b]
    for d in range(M):
      ll, t = _ll(model, params, {k: v[b:b + 1] for k, v in batch.items()},
                  d, z[None])
      want[b] += ll[0]
      terms[b] += t[0]
  for mu, sd in params_s:
    kl, t = _kl(mu, sd)
    kls += BETA * kl / len(subsets)
    terms += t / len(subsets)
  _check(got, want - kls, terms, kls)


def test_mmjsd_k1_bound_moe_recon_js_dynamic_prior(images):
  model, batch, params, noise = _setup('mmjsd', images)
  got = jax.jit(functools.partial(model.bound, beta=BETA))(
      params, batch, noise)
  lw, sw, lz, sz = _raw(model, params, batch)
  want, terms = np.zeros(B), np.zeros(B)
  c = np.floor(noise['choice'][0] * M).astype(int)  # [B]
  z = lz[c, np.arange(B)] + sz[c, np.arange(B)] * noise['z'][0]
  for d in range(M):
    w = lw[d] + sw[d] * noise['w'][d, 0]
    ll, t = _ll(model, params, batch, d, np.concatenate([w, z], -1))
    want, terms = want + ll, terms + t
  # JS over [q_1..q_M, N(0, I)], weights 1/(M+1), f their weighted product.
  e_l = np.concatenate([lz, np.zeros_like(lz[:1])])
  e_s = np.concatenate([sz, np.ones_like(sz[:1])])
  prec = np.mean(1 / e_s ** 2, axis=0)
  f_mu, f_sd = np.mean(e_l / e_s ** 2, axis=0) / prec, 1 / np.sqrt(prec)
  reg = np.zeros(B)
  for k in range(M + 1):
    kl, t = _kl(e_l[k], e_s[k], f_mu, f_sd)
    reg, terms = reg + kl / (M + 1), terms + t / (M + 1)
  for d in range(M):
    kl, t = _kl(lw[d], sw[d])
    reg, terms = reg + kl, terms + t
  _check(got, want - BETA * reg, terms, BETA * reg)


def test_dmvae_k1_bound_joint_and_cross_elbos(images):
  model, batch, params, noise = _setup('dmvae', images)
  got = jax.jit(functools.partial(model.bound, beta=BETA))(
      params, batch, noise)
  lw, sw, lz, sz = _raw(model, params, batch)
  shared = [_poe(lz, sz, range(M), prior=True)] + [
      (lz[m], sz[m]) for m in range(M)]  # unimodal: no prior expert
  kl_w = sum(_kl(lw[d], sw[d])[0] for d in range(M))
  want, terms, kls = 0.0, 0.0, 0.0
  for e, (mu, sd) in enumerate(shared):
    z = mu + sd * noise['z'][e, 0]
    for d in range(M):
      w = lw[d] + sw[d] * noise['w'][e, d, 0]
      ll, t = _ll(model, params, batch, d, np.concatenate([w, z], -1))
      want, terms = want + ll, terms + t
    kl, t = _kl(mu, sd)
    want = want - BETA * (kl + kl_w)
    kls = kls + BETA * (kl + kl_w)
    terms = terms + t + sum(_kl(lw[d], sw[d])[1] for d in range(M))
  _check(got, want, terms, kls)


def test_mmvae_equals_hand_written_stratified_moe_bound(images):
  """MMVAE = MMVAE+ with dim_w = 0: the stratified MoE IW bound with z only.

  Reference on the model's own Laplace noise: lw[r, k] =
  sum_d log p(x_d | z_rk) + beta (log p(z_rk) - log (1/M) sum_m q_m(z_rk)),
  L = (1/M) sum_r log (1/K) sum_k exp lw[r, k]; Laplace scales
  Dz softmax(raw) (+ 1e-20), prior Laplace(0, 1).
  """
  config = polymnist_config.get_config('smoke,model=mmvae')
  config.model.update(num_modalities=M, width=WIDTH, dim_z=DZ,
                      conv_wgrad_chunk=0)
  model = models.get_model(config.model)
  assert model.dim_w == 0 and model.family == 'laplace'
  batch = {n: images[n][:B] for n in model.names}
  params = _shift_posteriors(model.init(jax.random.key(3), batch))
  k = 3
  key = jax.random.key(4)
  got = jax.jit(lambda p: model.objective(
      key, p, batch, num_samples=k, beta=BETA, estimator='iwae'))(params)
  eps = np.float64(model.sample_noise(key, k, B).z)  # [M, K, B, Dz]
  outs = [model.modalities[i].encoder.apply(
      {'params': params['encoders'][n]}, batch[n])
          for i, n in enumerate(model.names)]
  lz = np.stack([np.float64(o[2]) for o in outs])
  sz = DZ * special.softmax(np.stack([np.float64(o[3]) for o in outs]),
                            axis=-1) + 1e-20
  z = lz[:, None] + sz[:, None] * eps  # [M_r, K, B, Dz]
  lap = lambda x, mu, b: (-np.log(2 * b) - np.abs(x - mu) / b)
  lw, terms = np.zeros((M, k, B)), np.zeros((M, k, B))
  for d in range(M):
    ll, t = _ll(model, params, batch, d, z)
    lw, terms = lw + ll, terms + t
  log_pz = lap(z, 0.0, 1.0).sum(-1)
  comps = lap(z[:, None], lz[None, :, None], sz[None, :, None]).sum(-1)
  log_q = special.logsumexp(comps, axis=1) - np.log(M)  # [M_r, K, B]
  reg = BETA * (log_pz - log_q)
  lw = lw + reg
  want = np.mean(special.logsumexp(lw, axis=1) - np.log(k), axis=0)
  terms = terms.max(axis=(0, 1)) + np.abs(reg).max(axis=(0, 1))
  _check(got, want, terms, np.abs(reg).mean(axis=(0, 1)))


@pytest.mark.parametrize('kind', ['mvae', 'mopoe', 'dmvae'])
def test_poe_sample_shared_is_the_models_product(kind, images):
  model, batch, params, _ = _setup(kind, images)
  post = model.encode(params, batch)
  subsets = aggregation.all_subsets(M)
  eps = np.random.default_rng(0).normal(size=(len(subsets), B, DZ))
  z = model.sample_shared(post, subsets, np.zeros((len(subsets), B)),
                          jnp.asarray(eps, jnp.float32))
  _, _, lz, sz = _raw(model, params, batch)
  for s, row in enumerate(subsets):
    members = list(np.flatnonzero(row))
    prior = {'mvae': True, 'mopoe': len(members) == M,
             'dmvae': len(members) >= 2}[kind]
    mu, sd = _poe(lz, sz, members, prior)
    want = mu + sd * eps[s]
    err = np.linalg.norm(np.float64(z[s]) - want)
    assert err <= 8 * (M + 3) * U32 * np.linalg.norm(np.abs(mu) + sd * np.abs(
        eps[s])), (kind, s, err)


def test_mmjsd_sample_shared_is_a_unimodal_member(images):
  model, batch, params, _ = _setup('mmjsd', images)
  post = model.encode(params, batch)
  subsets = np.array([[True, False, True]])
  u = np.array([[0.1, 0.6, 0.4, 0.9]])  # member floor(u * 2): 0, 1, 0, 1
  z = model.sample_shared(post, subsets, jax.scipy.special.ndtri(u),
                          np.zeros((1, B, DZ), np.float32))
  want = np.asarray(post.loc_z)[[0, 2, 0, 2], np.arange(B)]
  np.testing.assert_array_equal(np.asarray(z[0]), want)


def test_smoke_config_builds_every_model():
  for name in polymnist_config.MODELS:
    c = polymnist_config.get_config(f'smoke,model={name}')
    model = models.get_model(c.model)
    assert c.model.name == f'polymnist_{name}'
    assert model.check_estimator(c.objective.estimator)
    assert all(k in c.objective for k in model.objective_options)
  grid = polymnist_config.get_config('paper_grid,model=mopoe,beta=0.3')
  assert (grid.model.dim_z, grid.optim.lr, grid.objective.beta) == (
      512, 5e-4, 0.3)
  grid = polymnist_config.get_config('paper_grid,model=mmvaeplus,dim_w=8')
  assert (grid.model.dim_w, grid.model.dim_z) == (8, 56)


@pytest.fixture(scope='module')
def mini_train(data_dir):
  """The first 512 examples of the offline `mini` train split, m0 and m1."""
  train = builders.load_split('mini', 'train', data_dir)
  return {n: np.asarray(train[n][:512], np.float32) / 255.0
          for n in ('m0', 'm1')}


@pytest.mark.slow  # ~20-30 s each (compilation); CI runs the slow tests too
@pytest.mark.parametrize('kind', ['mmvaeplus', 'mmvae', 'mvae', 'mopoe',
                                  'mmjsd', 'dmvae'])
def test_training_on_mini_decreases_the_loss(kind, mini_train):
  """300 Adam steps on minibatches of 8 from 512 real `mini` examples
  (M = 2, each model's own estimator): every loss finite, and the mean loss
  of the last 30 steps at least 10 % below that of the first 30."""
  if kind in ('mmvaeplus', 'mmvae'):
    model = polymnist.make_mmvaeplus(
        num_modalities=2, width=WIDTH, dim_w=DW if kind == 'mmvaeplus' else 0,
        dim_z=DZ, conv_wgrad_chunk=0)
    est = 'iwae'
  else:
    model = polymnist.make_gaussian_model(
        kind, num_modalities=2, width=WIDTH, dim_z=DZ, conv_wgrad_chunk=0,
        dim_w=0 if kind in ('mvae', 'mopoe') else DW)
    est = 'elbo'
  params = model.init(jax.random.key(0),
                      {n: v[:1] for n, v in mini_train.items()})
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, key, batch):
    loss, g = jax.value_and_grad(lambda p: -jnp.mean(model.objective(
        key, p, batch, num_samples=1, beta=1.0, estimator=est)))(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  opt = tx.init(params)
  order = np.random.default_rng(0).permutation(512)
  losses = []
  for i in range(300):
    idx = order[(8 * i) % 512:(8 * i) % 512 + 8]
    batch = {n: jnp.asarray(v[idx]) for n, v in mini_train.items()}
    params, opt, loss = step(params, opt, jax.random.key(i), batch)
    losses.append(float(loss))
  losses = np.array(losses)
  assert np.all(np.isfinite(losses)), losses
  first, last = losses[:30].mean(), losses[-30:].mean()
  assert last < first - 0.1 * abs(first), (kind, first, last)


def test_k_samples_average_the_reconstruction_term(images):
  """With K samples the ELBO's expectation is the K-sample mean: the K = 2
  bound is the mean of the two K = 1 bounds on the noise's slices (same
  analytic KL). Tolerance: one extra float32 mean over values of size
  sum |t| (as _check)."""
  model, batch, params, _ = _setup('mmjsd', images)
  noise = jax.tree.map(np.asarray,
                       model.sample_noise(jax.random.key(9), 2, B))
  f = jax.jit(functools.partial(model.bound, beta=BETA))
  k_axis = {'choice': 0, 'z': 0, 'w': 1}
  halves = [f(params, batch, {n: np.take(v, [i], axis=k_axis[n])
                              for n, v in noise.items()}) for i in (0, 1)]
  two = f(params, batch, noise)
  want = (np.float64(halves[0]) + np.float64(halves[1])) / 2
  np.testing.assert_array_less(np.abs(np.float64(two) - want),
                               64 * U32 * np.abs(want))
  assert np.all(np.abs(np.float64(halves[0]) - np.float64(halves[1]))
                > 64 * U32 * np.abs(want))  # the two samples differ
  with pytest.raises(ValueError, match="supports estimators \\('elbo',\\)"):
    model.objective(jax.random.key(0), params, batch, estimator='iwae')


@pytest.mark.parametrize('kind', ['mvae', 'mopoe', 'mmjsd', 'dmvae'])
def test_a_baseline_is_not_an_mmvaeplus(kind):
  """The Gaussian baselines share MMVAE+'s networks (`NetworkVAE`), not its
  auxiliary priors: no `aux_prior` params, not an `MMVAEPlus`."""
  model = polymnist.make_gaussian_model(
      kind, num_modalities=2, dim_w=0 if kind in ('mvae', 'mopoe') else 4,
      dim_z=4, width=0.0625)
  assert isinstance(model, networks.NetworkVAE)
  assert not isinstance(model, mmvaeplus.MMVAEPlus)
  batch = {n: np.zeros((1, 28, 28, 3), np.float32) for n in model.names}
  params = jax.eval_shape(model.init, jax.random.key(0), batch)
  assert sorted(params) == ['decoders', 'encoders']
