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

Randomness: example i of a split uses `fold_in(key_split, i)`, so samples do
not depend on the batch size.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model

from mmvaeplus_jax import distributions
from mmvaeplus_jax.models import mmvaeplus

Params = Any
KINDS = ('u', 'w', 'z')
NUM_CLASSES = 10


def _to_float(x):
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


def sample_latents(key, model: mmvaeplus.MMVAEPlus, params: Params,
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
  m, dw, dz = model.num_modalities, model.dim_w, model.dim_z
  post = model.encode(
      params, {n: _to_float(jnp.asarray(batch[n])) for n in model.names})
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  eps = jax.vmap(lambda k: distributions.noise(
      model.family, k, (m, dw + dz)))(keys)  # [B, M, Dw + Dz]
  eps = jnp.swapaxes(eps, 0, 1)  # [M, B, Dw + Dz]
  w = post.loc_w + post.scale_w * eps[..., :dw]
  z = post.loc_z + post.scale_z * eps[..., dw:]
  return w, z


_sample_latents = jax.jit(sample_latents, static_argnames=('model',))


def latents(key, model: mmvaeplus.MMVAEPlus, params: Params,
            data: Mapping[str, np.ndarray], *, batch_size: int = 256
            ) -> dict[str, dict[str, np.ndarray]]:
  """`{name: {'u': [N, Dw+Dz], 'w': [N, Dw], 'z': [N, Dz]}}` for a split."""
  n = len(data[model.names[0]])
  batch_size = min(batch_size, n)
  ws, zs = [], []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    take = np.minimum(np.arange(start, start + batch_size), n - 1)  # pad
    w, z = _sample_latents(
        key, model, params, {k: np.asarray(data[k])[take] for k in model.names},
        jnp.asarray(take, jnp.int32))
    ws.append(np.asarray(w)[:, :stop - start])
    zs.append(np.asarray(z)[:, :stop - start])
  w, z = np.concatenate(ws, axis=1), np.concatenate(zs, axis=1)
  return {name: {'u': np.concatenate([w[i], z[i]], -1), 'w': w[i], 'z': z[i]}
          for i, name in enumerate(model.names)}


def fit(train_latents: Mapping[str, Mapping[str, np.ndarray]],
        labels: np.ndarray, *, max_iter: int = 1000
        ) -> dict[str, linear_model.LogisticRegression]:
  """One logistic regression per `'<name>/<u|w|z>'`."""
  clfs = {}
  for name, reps in train_latents.items():
    for kind in KINDS:
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
    for kind in KINDS:
      pred = clfs[f'{name}/{kind}'].predict(reps[kind])
      out[f'{name}/{kind}'] = float(np.mean(pred == labels))
      if kind == 'z':
        z_preds.append(pred)
  for kind in KINDS:
    out[f'mean/{kind}'] = float(np.mean(
        [out[f'{n}/{kind}'] for n in test_latents]))
  num_classes = max(NUM_CLASSES, int(labels.max()) + 1)
  out['all'] = float(np.mean(
      majority_vote(np.stack(z_preds), num_classes) == labels))
  return out


def latent_classification(
    key,
    model: mmvaeplus.MMVAEPlus,
    params: Params,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    batch_size: int = 256,
    max_iter: int = 1000,
) -> dict[str, float]:
  """Fits on `train`, scores on `test` (both `{name: [N, ...], 'label'}`).

  Returns:
    `{'m0/u': acc, 'm0/w': ..., 'mean/z': ..., 'all': ...}`.
  """
  k_train, k_test = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  clfs = fit(latents(k_train, model, params, train, batch_size=batch_size),
             train['label'], max_iter=max_iter)
  return score(clfs, latents(k_test, model, params, test,
                             batch_size=batch_size), test['label'])
