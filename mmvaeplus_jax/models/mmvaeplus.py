"""The MMVAE+ model container: per-modality networks, auxiliary priors, shapes.

A model is a frozen, hashable description (safe as a static argument under
`jax.jit`) plus pure functions of a params pytree:

    params = {
      'encoders':  {name: encoder params},
      'decoders':  {name: decoder params},
      'aux_prior': {name: [Dw] scale logits psi_d (init 0)},  # if Dw > 0
    }

Any per-modality networks can be plugged in as long as they follow two small
contracts (Flax Linen modules):

* encoder: `x [B, *event] -> (loc_w [B, Dw], raw_w [B, Dw], loc_z [B, Dz],
  raw_z [B, Dz])`, raw values mapped to scales by the family's scale map;
* decoder: `u [N, Dw + Dz] -> likelihood parameters [N, *event]`, with
  u = [w, z] (private first, shared second, as in the official code);

plus a likelihood `log_likelihood(x [B, *event], out [..., B, *event]) ->
[..., B]` summed over the event dimensions.

The fixed priors p(z), p(w) have loc 0 and the scale the family's map gives
for raw = 0 (Laplace: 1; Normal: softplus(0) = 0.693), official quirk 3. The
auxiliary prior r_psi_d(w) has loc 0 (frozen) and scale map(psi_d).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.core import types
from mmvaeplus_jax.models import base
from mmvaeplus_jax.models import networks

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]


Modality = base.Modality


@dataclasses.dataclass(frozen=True, eq=False)
class MMVAEPlus(networks.NetworkVAE):
  """MMVAE+ with M modalities, private latents w_m and a shared latent z.

  Implements the model interface of `models/base.py`. With `dim_w = 0` it is
  MMVAE (Shi et al. 2019): one shared latent, the same stratified MoE bound
  (the private terms vanish: no w samples, densities or auxiliary priors).

  Attributes:
    modalities: the M modalities, in stratum order.
    dim_w: private latent size Dw.
    dim_z: shared latent size Dz.
    family: 'laplace' or 'normal': posteriors, priors and auxiliary priors.
    eta: floor added to every scale (official 1e-20).
  """

  estimators = ('iwae', 'dreg', 'dreg_mmvae')
  objective_options = ('cross_private',)

  def objective_noise(self, key, num_samples: int, batch_size: int,
                      **options):
    """The noise `objective` draws from `key` (`sample_noise`)."""
    del options  # cross_private does not change the noise
    return self.sample_noise(key, num_samples, batch_size)

  def objective_on_noise(self, params, batch: Batch, noise, *, beta=1.0,
                         estimator: str | None = None,
                         cross_private: str = 'aux', mask=None):
    """`estimators.objective` (the stratified MoE bound; its estimators) on
    given noise: `[B]` surrogate, value = the bound. With the noise of
    `objective_noise`, the ops of `estimators.sample_objective`. `mask`
    `[B, M]`: the observed modalities (`objectives` module docstring)."""
    return estimators.objective(
        self, params, batch, noise, beta=beta,
        estimator=self.check_estimator(estimator),
        cross_private=cross_private,
        present=(None if mask is None else
                 self.check_mask(mask, self.check_batch(batch))))

  def sample_shared(self, post: types.Posteriors, subsets, eps_choice, eps):
    """q(z | x_S) = the mixture of S's unimodal posteriors (MoE)."""
    return base.mixture_sample_shared(
        post, subsets, self.uniform_from_noise(eps_choice), eps)

  # ------------------------------------------------------------ parameters

  def init(self, key, batch: Batch) -> Params:
    """The networks (`NetworkVAE.init`) and the auxiliary priors' scale
    logits psi_d (zeros; none without private latents: zero-size arrays,
    which orbax cannot save)."""
    params = super().init(key, batch)
    if self.dim_w > 0:
      params['aux_prior'] = {mod.name: jnp.zeros((self.dim_w,), self.dtype)
                             for mod in self.modalities}
    return params

  # ---------------------------------------------------------------- pieces

  def aux_prior_scale(self, params) -> Array:
    """`[M, Dw]` scales of the learned auxiliary priors r_psi_d."""
    if self.dim_w == 0:
      return jnp.zeros((self.num_modalities, 0), self.dtype)
    psi = jnp.stack([params['aux_prior'][n] for n in self.names])
    return self.scale(psi)

  def sample_noise(self, key, num_samples: int, batch_size: int) -> types.Noise:
    """Draws the standardised noise of one K-sample objective evaluation."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
      raise ValueError(
          f'num_samples (K) must be an integer >= 1, got {num_samples!r}'
      )
    m, k, b = self.num_modalities, int(num_samples), int(batch_size)
    kw, kz, ka = jax.random.split(key, 3)
    noise = lambda key, shape: distributions.noise(self.family, key, shape,
                                                   self.dtype)
    return types.Noise(
        w=noise(kw, (m, k, b, self.dim_w)),
        z=noise(kz, (m, k, b, self.dim_z)),
        aux=noise(ka, (m, m, k, b, self.dim_w)),
    )

  def check_noise(self, noise: types.Noise, batch_size: int) -> int:
    """Validates noise shapes against the model and B; returns K."""
    m, b = self.num_modalities, batch_size
    k = noise.z.shape[1] if noise.z.ndim == 4 else None
    want = {
        'noise.w': (m, k, b, self.dim_w),
        'noise.z': (m, k, b, self.dim_z),
        'noise.aux': (m, m, k, b, self.dim_w),
    }
    got = {'noise.w': noise.w.shape, 'noise.z': noise.z.shape,
           'noise.aux': noise.aux.shape}
    for name, shape in want.items():
      if tuple(got[name]) != shape:
        raise ValueError(
            f'{name} must have shape [M={m}, K, B={b}, ...] = {list(shape)},'
            f' got {list(got[name])}'
        )
    if k is None or k < 1:
      raise ValueError(f'K must be >= 1, got noise.z shape {noise.z.shape}')
    return k
