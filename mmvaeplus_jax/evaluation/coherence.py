"""Conditional and unconditional coherence of a multimodal VAE.

Three quantities, each a pure, jittable per-batch count function plus a thin
driver that loops over batches and divides exact integer sums at the end
(results do not depend on the batch size; the last batch is padded and
masked):

* `conditional_coherence`: the MMVAE+ paper's number (App. C.2) and the
  official code's `cross_coherence` (official_reference.md section 9). For
  source e and target d != e, decode u = [w, z_e] with decoder d, where
  w ~ p(w) is the FIXED prior (loc 0, scale `alpha * model.prior_scale(Dw)`;
  alpha is the paper's test-time scaling of Fig. 19, commented out in the
  official code, so alpha = 1 there and by default here) and
  z_e ~ q(z | x_e) one sample of the model's posterior given modality e
  alone (`model.sample_shared`; for MMVAE+ q_e itself); the raw decoder
  output (the Laplace mean, not clamped) goes to classifier d and its argmax
  is compared with the label. The diagonal follows the official
  `self_and_cross_modal_generation_forward`: it is the self-reconstruction
  from the full posterior sample u_e = [w_e, z_e] ~ q_e(w, z | x_e) (same
  z_e as the row's cross-modal entries); it is reported but EXCLUDED from the
  averages. Per target d: mean over the M - 1 sources e != d; overall: mean
  over the M targets. Plain (not class-balanced) accuracy.
* `subset_coherence`: the all-subsets protocol of MoPoE / MVTCAE / MultiVae.
  For every nonempty proper subset S of the modalities, z is drawn from the
  model's subset posterior q(z | x_S) (`model.sample_shared`: for MoE models
  the mixture of S's unimodal posteriors, a uniformly random member of S per
  example, then one sample of its q(z | x); for PoE models the product of
  S's experts and the prior expert), and every target d not in S is
  decoded with w ~ p(w) and classified. Reported per subset size k: the mean
  over subsets of size k of the mean accuracy over their targets. THIS IS A
  DIFFERENT QUANTITY from the per-target number above (targets.md section
  1): it averages over input subsets, MultiVae uses class-balanced accuracy
  and MoPoE also scores targets inside S. Only the size-1 figure estimates
  the same thing as `conditional_coherence(...).mean` (the mean of all
  off-diagonal entries, since every target has M - 1 sources); never put the
  two protocols in one column.
* `unconditional_coherence`: N joint prior samples, one z ~ p(z) shared by
  all modalities and w_d ~ p(w) drawn independently per modality; decode all
  M, classify; a sample is coherent when all M predicted digits agree.

Randomness: every example (or prior sample) i gets its own key
`fold_in(key, i)`, from which one standardised noise vector is drawn and
split into the pieces it needs, so the numbers are a function of (key,
data) alone, not of the batch size or order.
(Batched float arithmetic can still differ in the last bit between batch
sizes on some backends; an argmax exactly on a tie could then flip.)

The classifier is a plug-in: `classify(clf_params, name, x [N, *event]) ->
scores [N, C]` (log-probs or logits; only the argmax is used), e.g.
`evaluation.classifiers.classify` with `clf_params = {name: ClfImg params}`.
It must be hashable (a module-level function), as it is a static argument.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import distributions
from mmvaeplus_jax import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.models import base

Array = jax.Array
Params = Any
ClassifyFn = Callable[[Any, str, Array], Array]


def _to_float(x):
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


def _example_keys(key, index) -> Array:
  """`[B]` keys `fold_in(key, index[i])`."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _example_noise(family, keys, *shapes) -> list[Array]:
  """Standardised noise `[B, *shape]` for each shape, one draw per example.

  Row i of every output comes from one `distributions.noise` call on
  `keys[i]` (one draw, then split: compiling a threefry call per output
  would cost seconds on CPU).
  """
  sizes = [math.prod(s) for s in shapes]
  flat = jax.vmap(
      lambda k: distributions.noise(family, k, (sum(sizes),)))(keys)
  parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=1)
  return [p.reshape((keys.shape[0],) + tuple(s))
          for p, s in zip(parts, shapes)]


def _classes(classify, clf_params, name, x, num_lead: int) -> Array:
  """Predicted classes of `x [*lead, *event]` (`num_lead` axes): `[*lead]`."""
  lead = x.shape[:num_lead]
  flat = x.reshape((-1,) + x.shape[num_lead:])
  scores = classify(clf_params, name, flat)
  return jnp.argmax(scores, axis=-1).reshape(lead)


# ----------------------------------------------------------- per-batch counts


def conditional_counts(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    batch: Mapping[str, Array],
    labels: Array,
    index: Array,
    alpha: float = 1.0,
) -> Array:
  """Correct predictions of every (source, target) pair on one batch.

  Args:
    key: evaluation key; example i uses `fold_in(key, index[i])`.
    model: the multimodal VAE (static under jit).
    params: its params.
    classify: `(clf_params, name, x [N, *event]) -> scores [N, C]`.
    clf_params: the classifiers' params.
    batch: `{name: [B, *event]}` inputs (uint8 images are divided by 255).
    labels: `[B]` int labels.
    index: `[B]` int example indices; negative entries mark padding.
    alpha: multiplies the scale of the fixed prior p(w) (official 1).

  Returns:
    `[M, M]` int32 counts, `[source e, target d]`; the diagonal counts the
    self-reconstructions from the full posterior sample.
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  batch = {n: _to_float(jnp.asarray(batch[n])) for n in model.names}
  post = model.encode(params, batch)  # [M, B, D]
  keys = _example_keys(key, index)
  valid = index >= 0  # [B]
  # Per example: z_e ~ q_e(z|x_e), w_e ~ q_e(w|x_e) (diagonal), w ~ p(w) for
  # every (source e, target d).
  eps_z, eps_wq, eps_wp = _example_noise(
      model.family, keys, (m, dz), (m, dw), (m, m, dw))  # [B, ...]
  # z_e ~ q(z | x_e), the model's posterior of the one-modality subset {e}.
  z = model.sample_shared(
      post, np.eye(m, dtype=bool), jnp.zeros((m, index.shape[0])),
      jnp.swapaxes(eps_z, 0, 1))  # [M(e), B, Dz]
  w_post = post.loc_w + post.scale_w * jnp.swapaxes(eps_wq, 0, 1)
  w_prior = (alpha * model.prior_scale(dw)) * jnp.transpose(
      eps_wp, (1, 2, 0, 3))  # [M(e), M(d), B, Dw]
  counts = []
  for d, name in enumerate(model.names):
    w = w_prior[:, d].at[d].set(w_post[d])  # [M(e), B, Dw]
    x = model.decode(params, name, jnp.concatenate([w, z], -1))  # [M, B, ..]
    hit = (_classes(classify, clf_params, name, x, 2) == labels) & valid
    counts.append(jnp.sum(hit, axis=1, dtype=jnp.int32))  # [M(e)]
  return jnp.stack(counts, axis=1)


def subsets(num_modalities: int) -> tuple[tuple[int, ...], ...]:
  """Nonempty proper subsets of range(M), by size then lexicographically."""
  return tuple(
      s for k in range(1, num_modalities)
      for s in itertools.combinations(range(num_modalities), k))


def subset_counts(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    batch: Mapping[str, Array],
    labels: Array,
    index: Array,
    alpha: float = 1.0,
) -> Array:
  """All-subsets protocol counts on one batch (see the module docstring).

  Args: as `conditional_counts`.

  Returns:
    `[S, M]` int32 correct counts, subsets in `subsets(M)` order; zero where
    the target is in the subset (not evaluated).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  subs = subsets(m)
  s_count = len(subs)
  member = np.array([[i in s for i in range(m)] for s in subs])  # [S, M]
  batch = {n: _to_float(jnp.asarray(batch[n])) for n in model.names}
  post = model.encode(params, batch)  # [M, B, D]
  keys = _example_keys(key, index)
  valid = index >= 0
  # Per example and subset: the mixture component, z, and w ~ p(w) per target.
  eps_c, eps_z, eps_w = _example_noise(
      model.family, keys, (s_count,), (s_count, dz), (s_count, m, dw))
  # z ~ q(z | x_S), the model's subset posterior (a mixture of S's unimodal
  # posteriors for MoE models: a uniform member, then its sample).
  z = model.sample_shared(post, member, eps_c.T,
                          jnp.swapaxes(eps_z, 0, 1))  # [S, B, Dz]
  w = (alpha * model.prior_scale(dw)) * jnp.transpose(
      eps_w, (1, 2, 0, 3))  # [S, M(d), B, Dw]
  counts = jnp.zeros((s_count, m), jnp.int32)
  for d, name in enumerate(model.names):
    rows = np.flatnonzero(~member[:, d])  # subsets without d
    u = jnp.concatenate([w[rows, d], z[rows]], -1)  # [R, B, Dw + Dz]
    x = model.decode(params, name, u)
    hit = (_classes(classify, clf_params, name, x, 2) == labels) & valid
    counts = counts.at[rows, d].set(jnp.sum(hit, axis=1, dtype=jnp.int32))
  return counts


def unconditional_counts(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    index: Array,
    alpha: float = 1.0,
) -> tuple[Array, Array]:
  """Coherent joint prior samples in one batch of sample indices.

  Args:
    key: evaluation key; sample i uses `fold_in(key, index[i])`.
    model, params, classify, clf_params: as `conditional_counts`.
    index: `[B]` sample indices; negative entries mark padding.
    alpha: multiplies the scale of p(w).

  Returns:
    (number of coherent samples (int32 scalar), `[M, C]` int32 histogram of
    each modality's predicted classes: a sampler that always draws the same
    digit is trivially coherent, the histogram shows it).
  """
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  keys = _example_keys(key, index)
  valid = index >= 0
  eps_z, eps_w = _example_noise(model.family, keys, (dz,), (m, dw))
  z = model.prior_scale(dz) * eps_z  # [B, Dz], shared
  w = (alpha * model.prior_scale(dw)) * jnp.swapaxes(eps_w, 0, 1)  # [M, B, Dw]
  preds, hists = [], []
  for d, name in enumerate(model.names):
    x = model.decode(params, name, jnp.concatenate([w[d], z], -1))  # [B, ..]
    scores = classify(clf_params, name, x)  # [B, C]
    pred = jnp.argmax(scores, axis=-1)
    preds.append(pred)
    one_hot = jax.nn.one_hot(pred, scores.shape[-1], dtype=jnp.int32)
    hists.append(jnp.sum(one_hot * valid[:, None], axis=0))
  preds = jnp.stack(preds)  # [M, B]
  coherent = jnp.all(preds == preds[:1], axis=0) & valid
  return jnp.sum(coherent, dtype=jnp.int32), jnp.stack(hists)


_STATIC = ('model', 'classify')
_conditional_counts = jax.jit(conditional_counts, static_argnames=_STATIC)
_subset_counts = jax.jit(subset_counts, static_argnames=_STATIC)
_unconditional_counts = jax.jit(unconditional_counts, static_argnames=_STATIC)


# ------------------------------------------------------------------ drivers


def _batches(
    data: Mapping[str, np.ndarray], names: Sequence[str], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
  """Fixed-size batches `(inputs, labels [B], index [B])`, last one padded.

  Padding repeats the last example and gets index -1 (masked out).
  """
  n = len(data['label'])
  if n == 0:
    raise ValueError('coherence needs at least one example, got 0')
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = batch_size - (stop - start)
    take = np.concatenate([np.arange(start, stop),
                           np.full(pad, stop - 1, np.int64)])
    index = np.concatenate([np.arange(start, stop),
                            np.full(pad, -1, np.int64)]).astype(np.int32)
    yield ({k: np.asarray(data[k])[take] for k in names},
           np.asarray(data['label'])[take].astype(np.int32), index)


def _batch_size(batch_size: int, n: int, mesh) -> int:
  """`min(batch_size, n)`, rounded up to a multiple of the mesh's devices."""
  if mesh is None:
    return max(1, min(int(batch_size), n))
  return api.global_batch_size(mesh, batch_size, n)


def _place(mesh, tree):
  """Host arrays (the same on every host) sharded over the batch axis of
  `mesh`; unchanged without a mesh."""
  if mesh is None:
    return tree
  sharding = parallel.data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          x.shape, sharding, lambda i, x=x: x[i]), tree)


def _check_data(model, data):
  missing = [k for k in (*model.names, 'label') if k not in data]
  if missing:
    raise ValueError(
        f'data must hold {list(model.names)} and "label", missing {missing}'
        f' (got keys {list(data)})')


@dataclasses.dataclass(frozen=True)
class ConditionalCoherence:
  """Result of `conditional_coherence`.

  Attributes:
    names: modality names (rows: sources e, columns: targets d).
    correct: `[M, M]` correct counts.
    total: number of examples.
    matrix: `[M, M]` accuracies `correct / total`; the diagonal is the
      self-reconstruction (official), excluded from the averages.
    per_target: `[M]` mean over the sources e != d of `matrix[e, d]`.
    mean: mean of `per_target` (the paper's conditional coherence).
  """

  names: tuple[str, ...]
  correct: np.ndarray
  total: int
  matrix: np.ndarray
  per_target: np.ndarray
  mean: float

  def metrics(self, prefix: str = 'coherence/cond') -> dict[str, float]:
    out = {}
    for e, src in enumerate(self.names):
      for d, tgt in enumerate(self.names):
        out[f'{prefix}/{src}->{tgt}'] = float(self.matrix[e, d])
    for d, tgt in enumerate(self.names):
      out[f'{prefix}/{tgt}'] = float(self.per_target[d])
    out[f'{prefix}/mean'] = self.mean
    return out


def conditional_coherence(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    data: Mapping[str, np.ndarray],
    *,
    batch_size: int = 256,
    alpha: float = 1.0,
    mesh: jax.sharding.Mesh | None = None,
) -> ConditionalCoherence:
  """The paper's conditional coherence over a whole split (module docstring).

  Args:
    key: evaluation key (example i uses `fold_in(key, i)`).
    model: the multimodal VAE.
    params: its params.
    classify: `(clf_params, name, x [N, *event]) -> scores [N, C]`.
    clf_params: the classifiers' params.
    data: `{name: [N, *event], 'label': [N]}` (e.g. `builders.load_split`).
    batch_size: examples per jitted call (does not change the result).
    alpha: multiplies the scale of the fixed prior p(w) (official 1).
    mesh: shard every batch over this mesh's 'data' axis (params and key
      replicated on it); None: one device.
  """
  _check_data(model, data)
  m = model.num_modalities
  correct = np.zeros((m, m), np.int64)
  batch_size = _batch_size(batch_size, len(data['label']), mesh)
  for batch in _batches(data, model.names, batch_size):
    inputs, labels, index = _place(mesh, batch)
    correct += np.asarray(_conditional_counts(
        key, model, params, classify, clf_params, inputs, labels, index,
        alpha))
  total = len(data['label'])
  matrix = correct / total
  off = ~np.eye(m, dtype=bool)
  if m > 1:
    per_target = np.array(
        [matrix[off[:, d], d].mean() for d in range(m)])
  else:
    per_target = np.full((1,), np.nan)
  return ConditionalCoherence(
      names=model.names, correct=correct, total=total, matrix=matrix,
      per_target=per_target, mean=float(np.mean(per_target)))


@dataclasses.dataclass(frozen=True)
class SubsetCoherence:
  """Result of `subset_coherence` (all-subsets protocol, NOT per-target).

  Attributes:
    names: modality names.
    subsets: the S input subsets (tuples of modality indices).
    correct: `[S, M]` correct counts (0 where the target is in the subset).
    total: number of examples.
    accuracy: `[S, M]` accuracies, NaN where the target is in the subset.
    per_subset: `[S]` mean accuracy over the targets outside each subset.
    per_size: `{k: mean of per_subset over the subsets of size k}`.
  """

  names: tuple[str, ...]
  subsets: tuple[tuple[int, ...], ...]
  correct: np.ndarray
  total: int
  accuracy: np.ndarray
  per_subset: np.ndarray
  per_size: dict[int, float]

  def metrics(self, prefix: str = 'coherence/subsets') -> dict[str, float]:
    out = {}
    for s, sub in enumerate(self.subsets):
      label = '+'.join(self.names[i] for i in sub)
      out[f'{prefix}/{label}'] = float(self.per_subset[s])
    for k, v in self.per_size.items():
      out[f'{prefix}/size{k}'] = v
    return out


def subset_coherence(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    data: Mapping[str, np.ndarray],
    *,
    batch_size: int = 256,
    alpha: float = 1.0,
    mesh: jax.sharding.Mesh | None = None,
) -> SubsetCoherence:
  """All-subsets coherence (MoPoE/MultiVae style; module docstring).

  Args: as `conditional_coherence`.
  """
  _check_data(model, data)
  m = model.num_modalities
  if m < 2:
    raise ValueError('subset coherence needs at least 2 modalities')
  subs = subsets(m)
  correct = np.zeros((len(subs), m), np.int64)
  batch_size = _batch_size(batch_size, len(data['label']), mesh)
  for batch in _batches(data, model.names, batch_size):
    inputs, labels, index = _place(mesh, batch)
    correct += np.asarray(_subset_counts(
        key, model, params, classify, clf_params, inputs, labels, index,
        alpha))
  total = len(data['label'])
  member = np.array([[i in s for i in range(m)] for s in subs])
  accuracy = np.where(member, np.nan, correct / total)
  per_subset = np.nanmean(accuracy, axis=1)
  sizes = np.array([len(s) for s in subs])
  per_size = {int(k): float(per_subset[sizes == k].mean())
              for k in range(1, m)}
  return SubsetCoherence(
      names=model.names, subsets=subs, correct=correct, total=total,
      accuracy=accuracy, per_subset=per_subset, per_size=per_size)


@dataclasses.dataclass(frozen=True)
class UnconditionalCoherence:
  """Result of `unconditional_coherence`.

  Attributes:
    coherent: number of samples on which all M classifiers agree.
    total: number of prior samples N.
    value: coherent / total.
    class_counts: `[M, C]` histogram of each modality's predicted digits.
  """

  coherent: int
  total: int
  value: float
  class_counts: np.ndarray


def unconditional_coherence(
    key,
    model: base.MultimodalVAE,
    params: Params,
    classify: ClassifyFn,
    clf_params: Any,
    *,
    num_samples: int = 10_000,
    batch_size: int = 256,
    alpha: float = 1.0,
    mesh: jax.sharding.Mesh | None = None,
) -> UnconditionalCoherence:
  """Fraction of joint prior samples whose M decoded digits all agree.

  Args:
    key: evaluation key (sample i uses `fold_in(key, i)`).
    model, params, classify, clf_params: as `conditional_coherence`.
    num_samples: N (official 10,000).
    batch_size: samples per jitted call (does not change the result).
    alpha: multiplies the scale of p(w) (official 1).
    mesh: as `conditional_coherence`.
  """
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  batch_size = _batch_size(batch_size, num_samples, mesh)
  coherent, hist = 0, None
  for start in range(0, num_samples, batch_size):
    index = np.arange(start, start + batch_size)
    index = np.where(index < num_samples, index, -1).astype(np.int32)
    c, h = _unconditional_counts(
        key, model, params, classify, clf_params, _place(mesh, index), alpha)
    coherent += int(c)
    hist = np.asarray(h, np.int64) + (0 if hist is None else hist)
  return UnconditionalCoherence(
      coherent=coherent, total=num_samples, value=coherent / num_samples,
      class_counts=hist)


class CoherenceEvaluator:
  """Plug-in evaluator: `CoherenceEvaluator(...).run(params) -> metrics`.

  Metric names: `coherence/cond/<src>-><tgt>`, `coherence/cond/<tgt>`,
  `coherence/cond/mean`, `coherence/uncond` and, with `all_subsets`,
  `coherence/subsets/<m0+m1>` and `coherence/subsets/size<k>`.
  """

  def __init__(
      self,
      model: base.MultimodalVAE,
      classify: ClassifyFn,
      clf_params: Any,
      data: Mapping[str, np.ndarray],
      *,
      key,
      batch_size: int = 256,
      num_unconditional: int = 10_000,
      alpha: float = 1.0,
      all_subsets: bool = False,
      mesh: jax.sharding.Mesh | None = None,
  ):
    self.model, self.classify, self.clf_params = model, classify, clf_params
    self.data, self.key, self.batch_size = data, key, batch_size
    self.num_unconditional, self.alpha = num_unconditional, alpha
    self.all_subsets, self.mesh = all_subsets, mesh

  def run(self, params: Params) -> dict[str, float]:
    kc, ku, ks = (jax.random.fold_in(self.key, i) for i in range(3))
    args = (self.model, params, self.classify, self.clf_params)
    out = conditional_coherence(
        kc, *args, self.data, batch_size=self.batch_size,
        alpha=self.alpha, mesh=self.mesh).metrics()
    if self.num_unconditional:
      out['coherence/uncond'] = unconditional_coherence(
          ku, *args, num_samples=self.num_unconditional,
          batch_size=self.batch_size, alpha=self.alpha, mesh=self.mesh).value
    if self.all_subsets:
      out.update(subset_coherence(
          ks, *args, self.data, batch_size=self.batch_size,
          alpha=self.alpha, mesh=self.mesh).metrics())
    return out
