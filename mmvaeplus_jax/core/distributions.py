"""Log-densities, reparameterised samplers and scale maps, as pure functions.

Every log-density returns the log-probability *summed over the last axis*
(the event dimensions of a diagonal distribution), so a `[..., D]` input gives
a `[...]` output: per-example values, never reduced over samples or batch.

Shapes use the project glossary: `K` importance samples, `M` modalities,
`B` batch, `D` latent dimensions.

Reparameterisation follows the official PyTorch code so that both implementations
can be fed the same standardised noise:

* Laplace:  u ~ U(-1 + eps, 1),  x = loc - scale * sign(u) * log1p(-|u|)
* Normal:   e ~ N(0, 1),         x = loc + scale * e

The noise functions (`laplace_noise`, `normal_noise`) draw the standardised
variable; `reparameterise` maps it to a sample. Keeping the two apart lets a
caller fix the noise and differentiate through `loc` and `scale`.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

Family = Literal['laplace', 'normal']
FAMILIES = ('laplace', 'normal')

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def laplace_log_prob(x, loc, scale):
  """log Laplace(x; loc, scale), summed over the last axis.

  log p = -log(2 b) - |x - mu| / b.

  Args:
    x: `[..., D]` values.
    loc: `[..., D]` locations (broadcastable to `x`).
    scale: `[..., D]` positive scales b (broadcastable to `x`).

  Returns:
    `[...]` log-density.
  """
  per_dim = -jnp.log(2.0 * scale) - jnp.abs(x - loc) / scale
  return jnp.sum(per_dim, axis=-1)


def normal_log_prob(x, loc, scale):
  """log N(x; loc, scale^2), summed over the last axis. `scale` is the std.

  log p = -log(sigma) - log(2 pi) / 2 - (x - mu)^2 / (2 sigma^2).

  Args:
    x: `[..., D]` values.
    loc: `[..., D]` means (broadcastable to `x`).
    scale: `[..., D]` standard deviations (broadcastable to `x`).

  Returns:
    `[...]` log-density.
  """
  per_dim = (
      -jnp.log(scale) - _HALF_LOG_2PI - 0.5 * jnp.square((x - loc) / scale)
  )
  return jnp.sum(per_dim, axis=-1)


def log_prob(family: Family, x, loc, scale):
  """Dispatch to `laplace_log_prob` / `normal_log_prob` by family name."""
  if family == 'laplace':
    return laplace_log_prob(x, loc, scale)
  if family == 'normal':
    return normal_log_prob(x, loc, scale)
  raise ValueError(f'family must be one of {FAMILIES}, got {family!r}')


def laplace_noise(key, shape, dtype=jnp.float32):
  """Standard Laplace(0, 1) draws by PyTorch's inverse-CDF recipe.

  u ~ U(-1 + eps, 1) with eps the dtype's machine epsilon (so log1p(-|u|) is
  finite), e = -sign(u) log1p(-|u|).
  """
  eps = jnp.finfo(dtype).eps
  u = jax.random.uniform(key, shape, dtype, minval=-1.0 + eps, maxval=1.0)
  return -jnp.sign(u) * jnp.log1p(-jnp.abs(u))


def normal_noise(key, shape, dtype=jnp.float32):
  """Standard normal draws."""
  return jax.random.normal(key, shape, dtype)


def noise(family: Family, key, shape, dtype=jnp.float32):
  """Standardised noise of `family` (loc 0, scale 1)."""
  if family == 'laplace':
    return laplace_noise(key, shape, dtype)
  if family == 'normal':
    return normal_noise(key, shape, dtype)
  raise ValueError(f'family must be one of {FAMILIES}, got {family!r}')


def reparameterise(loc, scale, eps):
  """x = loc + scale * eps: a sample that is differentiable in loc and scale.

  Args:
    loc: `[B, D]` (or anything broadcastable against `eps`).
    scale: `[B, D]`.
    eps: `[K, B, D]` standardised noise.

  Returns:
    `[K, B, D]` samples.
  """
  return loc + scale * eps


def sample(family: Family, key, loc, scale, num_samples: int):
  """Draw `[num_samples, *loc.shape]` reparameterised samples."""
  shape = (num_samples,) + jnp.broadcast_shapes(loc.shape, scale.shape)
  return reparameterise(loc, scale, noise(family, key, shape, loc.dtype))


def laplace_scale(raw, eta: float = 1e-20):
  """The official Laplace scale map sigma = D * softmax(raw) + eta.

  The softmax runs over the last axis (the D latent dimensions of one
  sub-space), so the D scales always sum to D (+ D eta): learning can move
  scale between dimensions but never grow or shrink it overall
  (official_reference.md section 2, quirk 2).

  Args:
    raw: `[..., D]` unconstrained logits.
    eta: floor added to every scale (1e-20 in the 2024 code, 1e-6 in 2023).
  """
  d = raw.shape[-1]
  return d * jax.nn.softmax(raw, axis=-1) + eta


def normal_scale(raw, eta: float = 1e-20):
  """The official Normal scale map sigma = softplus(raw) + eta (a std)."""
  return jax.nn.softplus(raw) + eta


def scale_from_raw(family: Family, raw, eta: float = 1e-20):
  """Scale map of `family` (`laplace_scale` or `normal_scale`)."""
  if family == 'laplace':
    return laplace_scale(raw, eta)
  if family == 'normal':
    return normal_scale(raw, eta)
  raise ValueError(f'family must be one of {FAMILIES}, got {family!r}')


def laplace_image_log_likelihood(x, loc, scale):
  """Laplace log-likelihood of an image, summed over all pixels and channels.

  Args:
    x: `[B, H, W, C]` data.
    loc: `[..., B, H, W, C]` decoder means (leading sample axes broadcast).
    scale: a scalar (0.75 for PolyMNIST, 0.01 for CUB images) or an array
      broadcastable to `loc`.

  Returns:
    `[..., B]` log-likelihood.
  """
  per_px = -jnp.log(2.0 * scale) - jnp.abs(x - loc) / scale
  return jnp.sum(per_px, axis=(-3, -2, -1))


def one_hot_categorical_log_likelihood(x_one_hot, logits):
  """Log-likelihood of a one-hot token sequence, summed over positions.

  log p = sum_l sum_v x[l, v] log softmax(logits[l])_v. Padding positions are
  included, as in the official CUB text likelihood.

  Args:
    x_one_hot: `[B, L, V]` one-hot tokens.
    logits: `[..., B, L, V]` unnormalised log-probabilities.

  Returns:
    `[..., B]` log-likelihood.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(x_one_hot * log_p, axis=(-2, -1))
