"""Array types and the two pytrees the maths is written on.

Shape letters: K importance samples, M modalities, B batch, Dz shared latent,
Dw private latent (may be 0), `*event` one example of a modality.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]  # {modality name: [B, *event]}


@flax.struct.dataclass
class Posteriors:
  """Stacked unimodal posteriors q_phi_m(w | x_m) q_phi_m(z | x_m)."""

  loc_w: Array  # [M, B, Dw]  (Dw may be 0)
  scale_w: Array  # [M, B, Dw]
  loc_z: Array  # [M, B, Dz]
  scale_z: Array  # [M, B, Dz]


@flax.struct.dataclass
class Noise:
  """Standardised noise for one evaluation of the K-sample objective.

  Samples are `loc + scale * noise` (see `distributions.reparameterise`), so the
  objective is a deterministic, differentiable function of params and noise.
  """

  w: Array  # [M, K, B, Dw]  own private posterior of each stratum r
  z: Array  # [M, K, B, Dz]  shared posterior of each stratum r
  aux: Array  # [M, M, K, B, Dw]  [source r, target d]: w~_{r->d} ~ r_psi_d
