"""Samples anyone can score: `samples.npz` of a checkpoint's generations.

Evaluator `samples` (`evaluation.api`; not in the default list: add it to
`evals.evaluators`) writes `<workdir>/eval/<step>/samples.npz` with

* `conditional` uint8 `[N, M_source, M_target, S, H, W, C]`: for each of
  the first N = `evals.samples_num_examples` evaluated test inputs, S =
  `evals.samples_per_input` generations of every target from every source:
  z ~ q(z | x_source) (the model's posterior given that modality alone),
  w ~ p_alpha(w) (the fixed prior scaled by `evals.alpha`, also on the
  diagonal), decoded by the target;
* `unconditional` uint8 `[U, M, H, W, C]`: U =
  `evals.samples_num_unconditional` joint prior samples (one z ~ p(z)
  shared by the modalities, w_d ~ p_alpha(w) each);
* `labels` int32 `[N]` (the inputs' digits), `index` int32 `[N]` (their
  positions in the evaluated test split), `names` (the modalities, in axis
  order), `alpha`, `step`.

Images are the decoders' means clamped to [0, 1] and rounded to uint8
(`plotting.to_uint8`); modalities of different shapes share a common RGB
canvas. The latents come from `generation.cross_modal_latents` and
`generation.unconditional_latents` with the evaluator's key, so the file is
a deterministic function of the checkpoint, the data and `config.seed`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from mmvaeplus_jax import generation
from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import figures
from mmvaeplus_jax.infra import plotting

FILE = 'samples.npz'


def sample_arrays(key, model, params, data, *, num_examples: int,
                  num_samples: int, num_unconditional: int, alpha: float = 1.0,
                  chunk: int = 128) -> dict[str, np.ndarray]:
  """The arrays of `samples.npz` (module docstring) for `data`
  (`{name: [n, *event], 'label': [n]}`); `num_examples=-1`: all n."""
  n = len(data['label'])
  num = n if num_examples < 0 else min(int(num_examples), n)
  if num < 1 or num_samples < 1 or num_unconditional < 1:
    raise ValueError(
        f'samples need at least one input, sample and prior sample; got'
        f' {num} inputs (of {n}), samples_per_input={num_samples},'
        f' samples_num_unconditional={num_unconditional}')
  k_cond, k_unc = jax.random.split(key)
  post = figures.encode(model, params, {k: data[k][:num] for k in model.names})
  u = generation.cross_modal_latents(k_cond, model, post, num_samples,
                                     alpha=alpha)  # [M_s, M_t, S, N, D]
  x = figures.decode_latents(model, params, np.swapaxes(np.asarray(u), 0, 1),
                             chunk=chunk)  # [M_t, M_s, S, N, H, W, C]
  cond = np.transpose(x, (3, 1, 0, 2, 4, 5, 6))  # [N, M_s, M_t, S, H, W, C]
  u = generation.unconditional_latents(k_unc, model, num_unconditional,
                                       alpha=alpha)  # [M, U, D]
  unc = np.swapaxes(figures.decode_latents(model, params, u, chunk=chunk),
                    0, 1)  # [U, M, H, W, C]
  return {
      'conditional': plotting.to_uint8(cond),
      'unconditional': plotting.to_uint8(unc),
      'labels': np.asarray(data['label'][:num], np.int32),
      'index': np.arange(num, dtype=np.int32),
      'names': np.asarray(model.names),
      'alpha': np.float32(alpha),
  }


@api.register('samples')
def samples_evaluator(ctx: api.EvalContext) -> dict:
  """Writes `samples.npz` in `ctx.out_dir` (module docstring)."""
  skipped = api.skip_unless_images(ctx, 'samples', 'captions')
  if skipped:
    return skipped
  ec = ctx.config.evals
  arrays = sample_arrays(
      ctx.key, ctx.model, ctx.params, ctx.data,
      num_examples=int(ec.samples_num_examples),
      num_samples=int(ec.samples_per_input),
      num_unconditional=int(ec.samples_num_unconditional),
      alpha=float(ec.alpha), chunk=int(ec.figures_chunk))
  if jax.process_index() == 0:
    np.savez_compressed(os.path.join(ctx.out_dir, FILE), step=ctx.step,
                        **arrays)
  return {'samples/files': [FILE]}
