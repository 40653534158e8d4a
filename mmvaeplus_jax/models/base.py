"""The one model interface: what the trainer, evaluators and figures call.

Every multimodal VAE here (MMVAE+, MMVAE, MVAE, MoPoE-VAE, MMJSD, DMVAE) is
a frozen, hashable dataclass (a static argument under `jax.jit`) over a
params pytree, with the same latent layout:

* a shared latent z `[Dz]`, and per modality an optional private latent
  w_m `[Dw]` (`dim_w = 0`: no private latents, as MMVAE, MVAE, MoPoE);
* modality d decodes u = [w_d, z] (private first, as the official code);
* encoders give unimodal posteriors q_m(w_m | x_m) q_m(z | x_m) in the
  model's `family` (`Posteriors`, stacked `[M, B, D]`);
* the fixed priors p(z), p(w) have loc 0 and scale `prior_scale(D)`.

What differs between models is (1) the training objective and (2) how the
shared posterior of a SUBSET of modalities is formed from the unimodal ones
(mixture of experts for MMVAE / MMVAE+ / MMJSD, product of experts with a
prior expert for MVAE / MoPoE / DMVAE). Both are methods below; everything
an evaluator needs is expressed through them, so an evaluator has no
model-specific branch and a new model is one new module.

Contract (`MultimodalVAE` subclasses implement the abstract methods):

    model.init(key, batch) -> params
    model.objective(key, params, batch, *, num_samples, beta, estimator,
                    mask=None, **options) -> [B]
        per-example surrogate: value = the model's bound, gradient = the
        chosen estimator's (maximise its mean). `estimator=None` picks
        `model.estimators[0]`; `options` are the names in
        `model.objective_options` (read from `config.objective`). `mask`:
        optional `[B, M]` bool, the observed modalities of each example
        (missing modalities, `check_mask`): example b's bound is the
        model's bound on its observed modalities alone (the absent ones'
        filler data reach no value and no gradient); None = all observed.
    model.objective_noise(key, num_samples, batch_size, **options) -> noise
    model.objective_on_noise(params, batch, noise, *, beta, estimator,
                             mask=None, **options) -> [B]
        the two halves of `objective` (same ops): a pytree of noise whose
        leaves have at most one batch axis of size B, and the surrogate on
        it. Per-example: rows of `batch` and of the noise's batch axes
        map to the same rows of the output (the trainer's microbatches,
        `training/microbatch.py`, rely on it).
    model.encode(params, batch) -> Posteriors            # unimodal, [M, B, D]
    model.decode(params, name, u [..., Dw + Dz]) -> [..., *event]
    model.sample_shared(post, subsets [S, M] bool, eps_choice [S, B],
                        eps [S, B, Dz]) -> z [S, B, Dz]
        one reparameterised sample of q(z | x_S) per subset S, from
        standardised noise (`distributions.noise(model.family, ...)`).

and inherits the generic pieces: `names`, `num_modalities`, `check_batch`,
`scale`, `prior_scale`, `latent_kinds`, `uniform_from_noise`, and
`joint_components` (the joint posterior as a mixture; override for PoE).

`sample_shared` receives posteriors stacked over all M modalities (entries
outside the subsets are never used).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import types

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Modality:
  """One modality: its networks, likelihood, event shape and scaling.

  Attributes:
    name: key of this modality in batches and params (e.g. 'm0').
    encoder: Linen module, `x [B, *event] -> (loc_w, raw_w, loc_z, raw_z)`
      (the w heads return `[B, 0]` when the model has no private latent).
    decoder: Linen module, `u [N, Dw + Dz] -> out [N, *event]`.
    log_likelihood: `(x [B, *event], out [..., B, *event]) -> [..., B]`.
    event_shape: shape of one example, e.g. (28, 28, 3).
    likelihood_scale: lambda_d multiplying this modality's log-likelihood.
  """

  name: str
  encoder: nn.Module
  decoder: nn.Module
  log_likelihood: Callable[[Array, Array], Array]
  event_shape: tuple[int, ...]
  likelihood_scale: float = 1.0


DTYPES = ('float32', 'float64')


def check_dtype(dtype, key: str = 'model.dtype') -> str:
  """Validates a model dtype name ('float32' or 'float64'); returns it.

  Raises:
    ValueError: naming `key`, for an unknown name, or for 'float64' while
      `jax_enable_x64` is off (JAX would silently compute in float32).
  """
  if dtype not in DTYPES:
    raise ValueError(f'{key} must be one of {DTYPES}, got {dtype!r}')
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError(
        f"{key}='float64' needs 64-bit JAX: call"
        " jax.config.update('jax_enable_x64', True) before building the model"
        ' (or set the environment variable JAX_ENABLE_X64=1, or use the'
        ' `jax.enable_x64()` context); without it arrays would silently be'
        ' float32')
  return dtype


def uniform_from_noise(family, eps) -> Array:
  """U(0, 1) values from standardised noise of `family`, by its CDF."""
  if family == 'normal':
    return jax.scipy.special.ndtr(eps)
  # Laplace(0, 1) CDF.
  return 0.5 + 0.5 * jnp.sign(eps) * -jnp.expm1(-jnp.abs(eps))


def subset_mask(subsets, num_modalities: int) -> np.ndarray:
  """`[S, M]` bool membership of index tuples (static, NumPy)."""
  out = np.zeros((len(subsets), num_modalities), bool)
  for i, s in enumerate(subsets):
    if not s:
      raise ValueError(f'subset {i} is empty; every subset needs a modality')
    out[i, list(s)] = True
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class MultimodalVAE:
  """Base of every model (see the module docstring for the contract).

  Attributes:
    modalities: the M modalities, in order.
    dim_w: private latent size per modality (0: no private latents).
    dim_z: shared latent size.
    family: 'laplace' or 'normal': posteriors and the fixed priors.
    eta: floor added to every scale (official 1e-20).
    dtype: 'float32' (default) or 'float64' (needs `jax_enable_x64`): the
      floating dtype of the params, noise, prior scales, densities and
      bound (`check_dtype`; the networks must be built in it too).
  """

  modalities: tuple[Modality, ...]
  dim_w: int
  dim_z: int
  family: distributions.Family = 'laplace'
  eta: float = 1e-20
  dtype: str = 'float32'

  # Estimators `objective` accepts, the default first.
  estimators = ('iwae',)
  # Extra keyword options of `objective` (names in `config.objective`).
  # A ClassVar, not a dataclass field: as a field, its default () was what
  # every instance held, whatever a subclass assigned.
  objective_options: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    if not self.modalities:
      raise ValueError('modalities must hold at least one Modality, got ()')
    names = [m.name for m in self.modalities]
    if len(set(names)) != len(names):
      raise ValueError(f'modality names must be unique, got {names}')
    if self.family not in distributions.FAMILIES:
      raise ValueError(
          f'family must be one of {distributions.FAMILIES}, got'
          f' {self.family!r}')
    check_dtype(self.dtype, 'dtype')
    if self.dim_w < 0 or self.dim_z < 1:
      raise ValueError(
          f'need dim_w >= 0 and dim_z >= 1, got dim_w={self.dim_w},'
          f' dim_z={self.dim_z}')

  # ---------------------------------------------------------------- generic

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.modalities)

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  @property
  def latent_kinds(self) -> tuple[str, ...]:
    """Representations latent classification scores: z (shared) always;
    w (private) and u = [w, z] when the model has private latents."""
    return ('u', 'w', 'z') if self.dim_w > 0 else ('z',)

  def scale(self, raw):
    return distributions.scale_from_raw(self.family, raw, self.eta)

  def prior_scale(self, dim: int):
    """Scale of the fixed priors p(z), p(w): the scale map at raw = 0."""
    return self.scale(jnp.zeros((dim,), self.dtype))

  def check_estimator(self, estimator):
    """Resolves `None` to the default estimator; raises on unknown ones."""
    if estimator is None:
      return self.estimators[0]
    if estimator not in self.estimators:
      raise ValueError(
          f'{type(self).__name__} supports estimators {self.estimators},'
          f' got {estimator!r}')
    return estimator

  def check_batch(self, batch: Batch, *, values: bool = True) -> int:
    """Validates a batch at trace time; returns the batch size B.

    Raises:
      ValueError: naming the offending modality and shape when the batch has
        missing or unknown modalities, mismatched batch sizes or a wrong event
        shape; on a concrete batch (outside jit) also for non-finite values
        and images that are not floats in [0, 1] (`check_values`), unless
        `values=False` (`init`, which reads only shapes).
    """
    if not isinstance(batch, Mapping):
      raise ValueError(
          f'batch must be a mapping from modality name to array, got'
          f' {type(batch).__name__}')
    missing = [n for n in self.names if n not in batch]
    extra = [n for n in batch if n not in self.names]
    if missing or extra:
      raise ValueError(
          f'batch must hold exactly the model\'s {self.num_modalities}'
          f' modalities {list(self.names)}; missing {missing}, unknown'
          f' {extra} (got keys {list(batch)})')
    sizes = {}
    for m in self.modalities:
      shape = tuple(np.shape(batch[m.name]))
      if shape[1:] != tuple(m.event_shape):
        raise ValueError(
            f'batch[{m.name!r}] must have shape'
            f' [B, {", ".join(map(str, m.event_shape))}], got {list(shape)}')
      sizes[m.name] = shape[0]
    if len(set(sizes.values())) != 1:
      raise ValueError(
          f'all modalities of a batch must have the same batch size B, got'
          f' {sizes}')
    if values:
      for m in self.modalities:
        check_values(m, batch[m.name])
    return next(iter(sizes.values()))

  def uniform_from_noise(self, eps) -> Array:
    return uniform_from_noise(self.family, eps)

  # Model state besides the parameters (BatchNorm running averages,
  # `networks.NetworkVAE`). A model without it keeps these defaults: no
  # state, and the optimiser sees the whole params tree.
  @property
  def has_batch_stats(self) -> bool:
    return False

  def trainable_params(self, params):
    """The part of `params` the optimiser updates (default: all)."""
    return params

  # ------------------------------------- abstract (objective: composed)

  def init(self, key, batch: Batch) -> Params:
    raise NotImplementedError

  def objective(self, key, params, batch: Batch, *, num_samples: int = 1,
                beta=1.0, estimator: str | None = None, mask=None,
                **options) -> Array:
    """The per-example surrogate `[B]` on noise drawn from `key`:
    `objective_on_noise(params, batch, objective_noise(key, K, B))`, the
    one composition the trainer's one-call and microbatched steps share."""
    b = self.check_batch(batch)
    noise = self.objective_noise(key, num_samples, b, **options)
    return self.objective_on_noise(params, batch, noise, beta=beta,
                                   estimator=estimator, mask=mask, **options)

  def objective_noise(self, key, num_samples: int, batch_size: int,
                      **options):
    raise NotImplementedError

  def objective_on_noise(self, params, batch: Batch, noise, *, beta=1.0,
                         estimator: str | None = None, mask=None,
                         **options) -> Array:
    raise NotImplementedError

  def check_mask(self, mask, batch_size: int):
    """`[B, M]` observed-modality mask -> `[M, B]` bool `present` (None
    stays None: every modality observed).

    Raises:
      ValueError: on a mask that is not `[B, M]`, or (concrete masks) one
        with an example that observes no modality.
    """
    if mask is None:
      return None
    want = (batch_size, self.num_modalities)
    if tuple(np.shape(mask)) != want:
      raise ValueError(
          f'mask must have shape [B, M] = {list(want)} (one column per'
          f' modality, in the order {list(self.names)}), got'
          f' {list(np.shape(mask))}')
    if not isinstance(mask, jax.core.Tracer):
      empty = np.flatnonzero(~np.asarray(mask, bool).any(axis=1))
      if empty.size:
        raise ValueError(
            f'mask rows {empty[:10].tolist()} observe no modality: every'
            ' example needs at least one (drop those examples)')
    return jnp.asarray(mask, bool).T

  def encode(self, params, batch: Batch) -> types.Posteriors:
    raise NotImplementedError

  def decode(self, params, name: str, u: Array) -> Array:
    raise NotImplementedError

  def sample_shared(self, post: types.Posteriors, subsets: np.ndarray,
                    eps_choice: Array, eps: Array) -> Array:
    raise NotImplementedError

  # ------------------------------------------------ overridable defaults

  def joint_components(self, post: types.Posteriors) -> tuple[Array, Array]:
    """q(z | x_1:M) as an equal-weight mixture of R components of `family`:
    (loc, scale) `[R, B, Dz]`. The importance-sampled log p(x) uses it as
    its proposal, stratified over the R components. Default: the M
    unimodal posteriors (mixture of experts, MMVAE / MMVAE+ / MMJSD); PoE
    models return their one joint product (R = 1), MoPoE its 2^M - 1
    subset products."""
    return post.loc_z, post.scale_z


def check_values(mod: Modality, x) -> None:
  """Values of one modality's concrete batch (a traced one is skipped: the
  check costs a host transfer, and under jit the shapes were checked).

  Raises:
    ValueError: naming the modality, when `x` holds NaN or infinite values,
      or when an image modality (event shape `(H, W, C)`) is not float or
      has values outside [0, 1] (e.g. uint8 or 0..255 floats: divide by 255).
  """
  if isinstance(x, jax.core.Tracer):
    return
  x = np.asarray(x)
  image = len(mod.event_shape) == 3
  if image and not np.issubdtype(x.dtype, np.floating):
    raise ValueError(
        f'batch[{mod.name!r}] has dtype {x.dtype}: images must be floats in'
        ' [0, 1] (for uint8 images use x.astype(np.float32) / 255)')
  if not np.issubdtype(x.dtype, np.floating):
    return
  bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
  if bad:
    raise ValueError(
        f'batch[{mod.name!r}] holds {bad} non-finite values (NaN or inf):'
        ' clean or drop those examples before computing the bound')
  if image and x.size and (x.min() < 0.0 or x.max() > 1.0):
    raise ValueError(
        f'batch[{mod.name!r}] has values in [{float(x.min()):.4g},'
        f' {float(x.max()):.4g}]: images must be in [0, 1] (for 0..255'
        ' images divide by 255)')


def mixture_sample_shared(post: types.Posteriors, subsets: np.ndarray, u: Array,
                          eps: Array) -> Array:
  """z ~ (1/|S|) sum_{m in S} q_m(z | x_m): a uniform member, then its sample.

  Args:
    post: unimodal posteriors, `loc_z`/`scale_z` `[M, B, Dz]`.
    subsets: `[S, M]` bool membership (static NumPy).
    u: `[S, B]` U(0, 1) values choosing the member (position floor(u |S|)
      in the sorted member list: a one-member subset always picks it).
    eps: `[S, B, Dz]` standardised noise of the chosen member's sample.

  Returns:
    `[S, B, Dz]`.
  """
  subsets = np.asarray(subsets, bool)
  m = subsets.shape[1]
  sizes = subsets.sum(1)  # [S]
  pos = jnp.floor(u * sizes[:, None])
  pos = jnp.clip(pos.astype(jnp.int32), 0, sizes[:, None] - 1)  # [S, B]
  table = np.array([list(np.flatnonzero(s)) + [int(np.flatnonzero(s)[0])]
                    * (m - int(s.sum())) for s in subsets])  # [S, M]
  choice = jnp.take_along_axis(jnp.asarray(table), pos, axis=1)  # [S, B]
  cols = jnp.arange(u.shape[1])[None, :]
  loc, scale = post.loc_z[choice, cols], post.scale_z[choice, cols]
  return loc + scale * eps
