"""Conditional and unconditional coherence of a multimodal VAE.

Three quantities, each a pure, jittable per-example count function plus a
thin driver that runs it over the data with the evaluators' batcher
(`api.map_batches`: fixed-size batches sharded over a mesh, the last one
padded, the padding dropped) and divides exact integer sums, taken on the
host, at the end (results do not depend on the batch size):

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

Missing modalities: with `data['mask']` (`[N, M]` bool, True = observed,
`pipeline.MASK_KEY`) a source e (an input subset S) is scored only on the
examples that have it (all of S), its accuracies divided by that count;
targets need not be observed (the label is the example's). Without a mask
every example has every modality.

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
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.input import pipeline
from mmvaeplus_jax.models import base

Array = jax.Array
Params = Any
ClassifyFn = Callable[[Any, str, Array], Array]


def _classes(classify, clf_params, name, x, num_lead: int) -> Array:
  """Predicted classes of `x [*lead, *event]` (`num_lead` axes): `[*lead]`."""
  lead = x.shape[:num_lead]
  flat = x.reshape((-1,) + x.shape[num_lead:])
  scores = classify(clf_params, name, flat)
  return jnp.argmax(scores, axis=-1).reshape(lead)


# -------------------------------------------------------- per-example counts


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
  """Correct predictions of every (source, target) pair, per example.

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
    `[B, M, M]` int32, 1 where example b's decoding for `[source e, target
    d]` is classified as its label (0 for padding); the diagonal is the
    self-reconstruction from the full posterior sample.
  """
  batch = {n: api.to_float(jnp.asarray(batch[n])) for n in model.names}
  post = model.encode(params, batch)  # [M, B, D]
  valid = index >= 0  # [B]
  z, w_post, w_prior = generation.cross_modal_per_example(
      key, model, post, index, alpha=alpha)
  counts = []
  for d, name in enumerate(model.names):
    u = generation.target_latents(z, w_post, w_prior, d)  # [M(e), B, D]
    x = model.decode(params, name, u)  # [M, B, ..]
    hit = (_classes(classify, clf_params, name, x, 2) == labels) & valid
    counts.append(hit.T.astype(jnp.int32))  # [B, M(e)]
  return jnp.stack(counts, axis=-1)  # [B, M(e), M(d)]


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
  """All-subsets protocol counts per example (see the module docstring).

  Args: as `conditional_counts`.

  Returns:
    `[B, S, M]` int32, 1 where example b's decoding of target d from subset
    s (in `subsets(M)` order) is classified as its label; 0 where the target
    is in the subset (not evaluated) and for padding.
  """
  m = model.num_modalities
  subs = subsets(m)
  s_count = len(subs)
  member = np.array([[i in s for i in range(m)] for s in subs])  # [S, M]
  batch = {n: api.to_float(jnp.asarray(batch[n])) for n in model.names}
  post = model.encode(params, batch)  # [M, B, D]
  valid = index >= 0
  z, w = generation.subset_per_example(key, model, post, member, index,
                                       alpha=alpha)  # [S, B, Dz], [S, M, B, Dw]
  counts = jnp.zeros((index.shape[0], s_count, m), jnp.int32)
  for d, name in enumerate(model.names):
    rows = np.flatnonzero(~member[:, d])  # subsets without d
    u = jnp.concatenate([w[rows, d], z[rows]], -1)  # [R, B, Dw + Dz]
    x = model.decode(params, name, u)
    hit = (_classes(classify, clf_params, name, x, 2) == labels) & valid
    counts = counts.at[:, rows, d].set(hit.T.astype(jnp.int32))
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
  """Coherence of each joint prior sample of a batch of sample indices.

  Args:
    key: evaluation key; sample i uses `fold_in(key, index[i])`.
    model, params, classify, clf_params: as `conditional_counts`.
    index: `[B]` sample indices; negative entries mark padding.
    alpha: multiplies the scale of p(w).

  Returns:
    (`[B]` int32, 1 where sample b is coherent, and `[B, M, C]` int32, the
    one-hot predicted class of each modality, whose sum over samples is the
    histogram of each modality's predictions: a sampler that always draws
    the same digit is trivially coherent, the histogram shows it); 0 for
    padding.
  """
  valid = index >= 0
  z, w = generation.unconditional_per_example(key, model, index, alpha=alpha)
  preds, hists = [], []
  for d, name in enumerate(model.names):
    x = model.decode(params, name, jnp.concatenate([w[d], z], -1))  # [B, ..]
    scores = classify(clf_params, name, x)  # [B, C]
    pred = jnp.argmax(scores, axis=-1)
    preds.append(pred)
    one_hot = jax.nn.one_hot(pred, scores.shape[-1], dtype=jnp.int32)
    hists.append(one_hot * valid[:, None])  # [B, C]
  preds = jnp.stack(preds)  # [M, B]
  coherent = jnp.all(preds == preds[:1], axis=0) & valid
  return coherent.astype(jnp.int32), jnp.stack(hists, axis=1)


_STATIC = ('model', 'classify')
_conditional_counts = jax.jit(conditional_counts, static_argnames=_STATIC)
_subset_counts = jax.jit(subset_counts, static_argnames=_STATIC)
_unconditional_counts = jax.jit(unconditional_counts, static_argnames=_STATIC)


# ------------------------------------------------------------------ drivers


def _mesh(mesh):
  """`mesh`, or one device's mesh for None."""
  return parallel.make_mesh(jax.devices()[:1]) if mesh is None else mesh


def _on_mesh(mesh, key, *trees):
  """`key` and `trees` (params, classifier params) replicated on `mesh`,
  left as they are where they already are: the counts' jitted calls then
  see one device set, whatever the caller committed them to."""
  sharding = parallel.replicated(mesh)
  same = lambda x: getattr(x, 'sharding', None) == sharding
  if not same(key):
    key = parallel.replicate_key(mesh, key)
  return (key,) + tuple(
      jax.tree.map(lambda x: x if same(x) else jax.device_put(x, sharding), t)
      for t in trees)


def _map_counts(counts_fn, key, model, params, classify, clf_params, data,
                *, alpha, batch_size, mesh):
  """`counts_fn(key, model, params, classify, clf_params, inputs, labels,
  index, alpha)` over the examples of `data` in batches (`api.map_batches`
  on `mesh`, None: one device): its per-example outputs `[N, ...]`."""
  n = len(data['label'])
  if n == 0:
    raise ValueError('coherence needs at least one example, got 0')
  mesh = _mesh(mesh)
  key, params, clf_params = _on_mesh(mesh, key, params, clf_params)
  inputs = {k: data[k] for k in model.names}
  inputs['label'] = np.asarray(data['label']).astype(np.int32)
  return api.map_batches(
      lambda index, batch: counts_fn(
          key, model, params, classify, clf_params,
          {k: batch[k] for k in model.names}, batch['label'], index, alpha),
      mesh, n, batch_size=batch_size, inputs=inputs)


def _check_data(model, data):
  missing = [k for k in (*model.names, 'label') if k not in data]
  if missing:
    raise ValueError(
        f'data must hold {list(model.names)} and "label", missing {missing}'
        f' (got keys {list(data)})')


def _observed(model, data) -> np.ndarray:
  """`[N, M]` bool: which modalities each example has (`data['mask']`, the
  pipeline's `pipeline.MASK_KEY`; all True without one), validated by the
  objective's own rule (`model.check_mask`).

  Raises:
    ValueError: a mask that is not `[N, M]`, or an example with none.
  """
  n, m = len(data['label']), model.num_modalities
  mask = data.get(pipeline.MASK_KEY)
  if mask is None:
    return np.ones((n, m), bool)
  return np.asarray(model.check_mask(np.asarray(mask), n)).T


@dataclasses.dataclass(frozen=True)
class ConditionalCoherence:
  """Result of `conditional_coherence`.

  Attributes:
    names: modality names (rows: sources e, columns: targets d).
    correct: `[M, M]` correct counts.
    total: number of examples.
    matrix: `[M, M]` accuracies `correct / source_total[e]`; the diagonal
      is the self-reconstruction (official), excluded from the averages.
    per_target: `[M]` mean over the sources e != d of `matrix[e, d]`.
    mean: mean of `per_target` (the paper's conditional coherence).
  """

  names: tuple[str, ...]
  correct: np.ndarray
  total: int
  matrix: np.ndarray
  per_target: np.ndarray
  mean: float
  # `[M]`: examples that have source e (data['mask']; all `total` without).
  source_total: np.ndarray | None = None

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
      replicated on it, or uncommitted); None: one device (a one-device
      mesh).
  """
  _check_data(model, data)
  m = model.num_modalities
  observed = _observed(model, data)  # [N, M]
  hits = _map_counts(_conditional_counts, key, model, params, classify, clf_params,
                     data, alpha=alpha, batch_size=batch_size, mesh=mesh)
  # Source e is scored on the examples that have it (all, without a mask).
  hits = hits * observed[:, :, None]
  correct = hits.sum(axis=0, dtype=np.int64)  # [M, M]
  total = len(data['label'])
  source_total = observed.sum(axis=0)  # [M]
  if not source_total.all():
    raise ValueError(
        'conditional coherence: modality'
        f' {model.names[int(np.argmin(source_total))]!r} is observed in no'
        ' example of data["mask"], so nothing can be conditioned on it')
  matrix = correct / source_total[:, None]
  off = ~np.eye(m, dtype=bool)
  if m > 1:
    per_target = np.array(
        [matrix[off[:, d], d].mean() for d in range(m)])
  else:
    per_target = np.full((1,), np.nan)
  return ConditionalCoherence(
      names=model.names, correct=correct, total=total, matrix=matrix,
      per_target=per_target, mean=float(np.mean(per_target)),
      source_total=source_total)


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
  # `[S]`: examples that have every member of subset s (data['mask']; NaN
  # accuracies where none does).
  subset_total: np.ndarray | None = None

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
  observed = _observed(model, data)  # [N, M]
  hits = _map_counts(_subset_counts, key, model, params, classify, clf_params,
                     data, alpha=alpha, batch_size=batch_size, mesh=mesh)
  member = np.array([[i in s for i in range(m)] for s in subs])
  # Subset s is scored on the examples that have all its members.
  has = np.all(observed[:, None, :] | ~member[None], axis=-1)  # [N, S]
  hits = hits * has[:, :, None]
  correct = hits.sum(axis=0, dtype=np.int64)  # [S, M]
  total = len(data['label'])
  subset_total = has.sum(axis=0)  # [S]
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = np.where(member | (subset_total[:, None] == 0), np.nan,
                        correct / np.maximum(subset_total, 1)[:, None])
  per_subset = np.nanmean(accuracy, axis=1)
  sizes = np.array([len(s) for s in subs])
  per_size = {int(k): float(per_subset[sizes == k].mean())
              for k in range(1, m)}
  return SubsetCoherence(
      names=model.names, subsets=subs, correct=correct, total=total,
      accuracy=accuracy, per_subset=per_subset, per_size=per_size,
      subset_total=subset_total)


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
  mesh = _mesh(mesh)
  key, params, clf_params = _on_mesh(mesh, key, params, clf_params)
  per_sample, one_hot = api.map_batches(
      lambda index, batch: _unconditional_counts(
          key, model, params, classify, clf_params, index, alpha),
      mesh, num_samples, batch_size=batch_size)
  coherent = int(per_sample.sum(dtype=np.int64))
  hist = one_hot.sum(axis=0, dtype=np.int64)  # [M, C]
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
