"""FD_clf: the Fréchet distance in the coherence classifiers' feature space.

The FID protocol of `evaluation.frechet` (unconditional per modality,
conditional per (source, target) with the paper's averaging, with and
without the self-reconstruction diagonal; PNG-quantised images) with
modality d's coherence classifier (`classifier_nets.ClfImg`, the 128-d
penultimate activations, `classifiers.features`) in place of Inception.
About four orders of magnitude cheaper than FID, so it runs on a CPU, but it
is NOT FID: it is blind to much of the background and style the digit
classifier ignores, and its values are on another scale. Metrics are named
`fd_clf/...`; report N (`fd_clf/num_real`, `fd_clf/num_unconditional`) with
them (data.md section 8).
"""

from __future__ import annotations

from mmvaeplus_jax.evaluation import api
from mmvaeplus_jax.evaluation import classifiers
from mmvaeplus_jax.evaluation import frechet

NO_CLASSIFIERS = (
    'no classifiers: set --config.evals.classifier_dir to a folder made by'
    ' `python -m mmvaeplus_jax.tools.classifiers`')


def _clf_apply(clf_params, images):
  """A classifier's features `[B, 128]`."""
  return classifiers.features(clf_params, images)


def feature_net(ctx: api.EvalContext) -> frechet.FeatureNet:
  """The classifiers of `ctx` as a `frechet.FeatureNet` (needs classifiers)."""
  clf_params, _ = ctx.classifiers
  return frechet.FeatureNet(
      prefix='fd_clf', apply=_clf_apply, params=clf_params,
      network_ids={n: 'clfimg:' + frechet.params_digest(clf_params[n])
                   for n in ctx.model.names})


def fd_clf_metrics(ctx: api.EvalContext, *, alpha: float = 1.0) -> dict:
  """`fd_clf/...` metrics at test-time p(w) scale `alpha`.

  Config (`config.evals`): `fd_clf_num_examples`, `fd_clf_num_unconditional`,
  `fid_batch_size`, `fid_microbatch`, `fid_drop_last_partial_batch`,
  `fid_stats_dir`. Returns
  `{'skipped': {'fd_clf': reason}}` without classifiers. Real statistics are
  cached, so calling this for several alphas (the alpha sweep) computes them
  once.
  """
  if ctx.classifiers is None:
    return api.skip('fd_clf', NO_CLASSIFIERS)
  ec = ctx.config.evals
  return frechet.frechet_metrics(
      ctx, feature_net(ctx), num_real=ec.fd_clf_num_examples,
      num_unconditional=ec.fd_clf_num_unconditional, conditional=True,
      alpha=alpha, batch_size=ec.fid_batch_size,
      microbatch=ec.fid_microbatch,
      drop_last_partial_batch=ec.fid_drop_last_partial_batch,
      cache_dir=frechet.stats_dir(ctx.config))


@api.register('fd_clf')
def evaluate(ctx: api.EvalContext) -> dict:
  """The 'fd_clf' evaluator: `fd_clf_metrics` at `config.evals.alpha`."""
  return fd_clf_metrics(ctx, alpha=ctx.config.evals.alpha)
