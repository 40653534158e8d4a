"""Linear latent classification (official_reference.md section 9).

For each modality m, one posterior sample u = [w, z] ~ q_m(w, z | x_m) per
example (w and z are the two halves of the same sample); a logistic
regression (sklearn, lbfgs, max_iter 1000, random_state 0, as the official
`train_clf_lr`) is fitted on the training split for each of u, w and z and
scored on the test split. `all` is the majority vote of the M z-classifiers
(ties go to the smallest digit, like the official `scipy.stats.mode`).

Difference from the official code: the official test accuracy is the mean of
per-batch accuracies (a last partial batch is over-weighted); here it is the
exact accuracy over the whole test split.

Randomness: example i of a split uses `fold_in(key_split, i)`, so the noise
does not depend on the batch size or the device count (batches are sharded
over a mesh, `api.map_batches`).

The 'latent_classification' evaluator (`evaluation.api`) fits on
`config.evals.latent_num_train` training examples (-1: the whole train split,
as the official code; otherwise a seeded random subset) and scores on the
evaluated test examples: metrics `latent/<name>/<u|w|z>`,
`latent/mean/<kind>`, `latent/all`, `latent/num_train`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model

from mmvaeplus_jax import generation
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.models import base

Params = Any
KINDS = ('u', 'w', 'z')
NUM_CLASSES = 10



def sample_latents(key, model: base.MultimodalVAE, params: Params,
                   batch: Mapping[str, jax.Array], index: jax.Array):
  """One posterior sample per example and modality.

  Args:
    key: example i uses `fold_in(key, index[i])`.
    model: the multimodal VAE (static under jit).
    params: its params.
    batch: `{name: [B, *event]}` (uint8 images are divided by 255).
    index: `[B]` example indices.

  Returns:
    (w `[M, B, Dw]`, z `[M, B, Dz]`); u is their concatenation.
  """
  post = model.encode(
      params, {n: api.to_float(jnp.asarray(batch[n])) for n in model.names})
  return generation.posterior_per_example(key, model, post, index)


def _latents_per_example(key, params, index, batch, *, model):
  """`sample_latents` with the example axis first: (w [B, M, Dw], z)."""
  w, z = sample_latents(key, model, params, batch, index)
  return jnp.swapaxes(w, 0, 1), jnp.swapaxes(z, 0, 1)


_latents_jit = jax.jit(_latents_per_example, static_argnames=('model',))


def latents(key, model: base.MultimodalVAE, params: Params,
            data: Mapping[str, np.ndarray], *, batch_size: int = 256,
            mesh: jax.sharding.Mesh | None = None
            ) -> dict[str, dict[str, np.ndarray]]:
  """`{name: {'u': [N, Dw+Dz], 'w': [N, Dw], 'z': [N, Dz]}}` for a split
  (the kinds of `model.latent_kinds`: only 'z' without private latents).

  Batches are sharded over `mesh` (default: one device); `params` must live
  on `mesh` (e.g. replicated) or be uncommitted. Example i's noise comes from
  `fold_in(key, i)`, whatever `batch_size` or the device count.
  """
  if mesh is None:
    mesh = parallel.make_mesh(jax.devices()[:1])
  n = len(data[model.names[0]])
  key = parallel.replicate_key(mesh, key)
  w, z = api.map_batches(
      functools.partial(_latents_jit, model=model), mesh, n,
      batch_size=batch_size, inputs={k: data[k] for k in model.names},
      args=(key, params))  # [N, M, D]
  reps = {name: {'u': np.concatenate([w[:, i], z[:, i]], -1), 'w': w[:, i],
                 'z': z[:, i]}
          for i, name in enumerate(model.names)}
  return {name: {k: r[k] for k in model.latent_kinds}
          for name, r in reps.items()}


def _kinds(reps: Mapping[str, np.ndarray]) -> list[str]:
  """The representation kinds present, in `KINDS` order."""
  return [k for k in KINDS if k in reps]


def fit(train_latents: Mapping[str, Mapping[str, np.ndarray]],
        labels: np.ndarray, *, max_iter: int = 1000
        ) -> dict[str, linear_model.LogisticRegression]:
  """One logistic regression per `'<name>/<kind>'` (the kinds present)."""
  clfs = {}
  for name, reps in train_latents.items():
    for kind in _kinds(reps):
      clf = linear_model.LogisticRegression(
          solver='lbfgs', max_iter=max_iter, random_state=0)
      clfs[f'{name}/{kind}'] = clf.fit(reps[kind], np.asarray(labels))
  return clfs


def majority_vote(preds: np.ndarray, num_classes: int = NUM_CLASSES
                  ) -> np.ndarray:
  """Most frequent class per column of `preds [M, N]`; ties -> smallest."""
  counts = np.stack([(preds == c).sum(0) for c in range(num_classes)])
  return np.argmax(counts, axis=0)  # first maximum = smallest class


def score(clfs: Mapping[str, linear_model.LogisticRegression],
          test_latents: Mapping[str, Mapping[str, np.ndarray]],
          labels: np.ndarray) -> dict[str, float]:
  """Test accuracies `'<name>/<u|w|z>'`, their means `'mean/<kind>'`, `'all'`.

  `all` is the majority vote of the per-modality z-classifiers.
  """
  labels = np.asarray(labels)
  out, z_preds = {}, []
  for name, reps in test_latents.items():
    for kind in _kinds(reps):
      pred = clfs[f'{name}/{kind}'].predict(reps[kind])
      out[f'{name}/{kind}'] = float(np.mean(pred == labels))
      if kind == 'z':
        z_preds.append(pred)
  for kind in _kinds(next(iter(test_latents.values()))):
    out[f'mean/{kind}'] = float(np.mean(
        [out[f'{n}/{kind}'] for n in test_latents]))
  num_classes = max(NUM_CLASSES, int(labels.max()) + 1)
  out['all'] = float(np.mean(
      majority_vote(np.stack(z_preds), num_classes) == labels))
  return out


def latent_classification(
    key,
    model: base.MultimodalVAE,
    params: Params,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    batch_size: int = 256,
    max_iter: int = 1000,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Fits on `train`, scores on `test` (both `{name: [N, ...], 'label'}`).

  Returns:
    `{'m0/u': acc, 'm0/w': ..., 'mean/z': ..., 'all': ...}`.
  """
  k_train, k_test = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  clfs = fit(latents(k_train, model, params, train, batch_size=batch_size,
                     mesh=mesh),
             train['label'], max_iter=max_iter)
  return score(clfs, latents(k_test, model, params, test,
                             batch_size=batch_size, mesh=mesh), test['label'])


def train_subset(num_train: int, size: int, seed: int) -> np.ndarray:
  """Sorted indices of `num_train` training examples (-1 or >= size: all),
  a seeded random subset (a split's file order may be sorted by class)."""
  if num_train < 0 or num_train >= size:
    return np.arange(size)
  return np.sort(np.random.default_rng([int(seed), 7]).choice(
      size, num_train, replace=False))


@api.register('latent_classification')
def latent_classification_metrics(ctx: api.EvalContext) -> dict:
  """Linear latent classification (u, w, z per modality; train -> test).

  Config (`config.evals`): `latent_num_train` training examples (-1: the
  whole train split, official), `latent_max_iter`, `batch_size`. Metric
  names `latent/<name>/<u|w|z>`, `latent/mean/<kind>`, `latent/all` (majority
  vote of the z-classifiers) and `latent/num_train`.
  """
  ec = ctx.config.evals
  idx = train_subset(ec.latent_num_train, len(ctx.train_source),
                     ctx.config.seed)
  train = ctx.train_source.read(idx)
  names = list(ctx.model.names) + ['label']
  acc = latent_classification(
      ctx.key, ctx.model, ctx.params, {k: train[k] for k in names},
      {k: ctx.data[k] for k in names}, batch_size=ec.batch_size,
      max_iter=ec.latent_max_iter, mesh=ctx.mesh)
  out = {f'latent/{k}': v for k, v in acc.items()}
  out['latent/num_train'] = len(idx)
  return out
