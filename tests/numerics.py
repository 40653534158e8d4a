"""Tree comparisons with tolerances derived from a stated error bound (not a
test module).

float32 results that differ only by the order of their sums (another XLA:CPU
thread count, another device count, remat, vmapped vs looped modalities) obey
|a - b| <= c * n * u * sum_i |t_i| elementwise, u = 2**-24 the float32 unit
roundoff, n the length of the longest reduction and t_i its terms. An
elementwise relative tolerance is not implied by that bound: an element whose
terms cancel (a bias gradient summed over a batch, a 4-element leaf) can have
a relative error of any size. What the bound does give is a bound on a whole
tree, relative to the tree's own scale:

* `assert_rel_l2`: ||a - b||_2 <= tol * ||b||_2 over all leaves at once.
* `assert_close_to_scale`: max |a - b| <= tol * max |b| over all leaves at
  once (the tree's global maximum, not each element's).

Each caller names its `tol` with the bound it comes from.
"""

import jax
import numpy as np

U32 = 2.0 ** -24  # float32 unit roundoff


def flat(tree):
  """All leaves, raveled and concatenated, as float64."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(tree)])


def rel_l2(a, b):
  """||a - b||_2 / ||b||_2 over whole trees (b the reference)."""
  x, y = flat(a), flat(b)
  assert x.shape == y.shape, (x.shape, y.shape)
  return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def assert_rel_l2(a, b, tol, what=''):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  err = rel_l2(a, b)
  assert np.isfinite(err) and err <= tol, (
      f'{what}: relative L2 difference {err:.3g} > {tol:.3g}')
  return err


def assert_close_to_scale(a, b, tol, what=''):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  x, y = flat(a), flat(b)
  scale = float(np.abs(y).max())
  err = float(np.abs(x - y).max())
  assert np.isfinite(err) and err <= tol * scale, (
      f'{what}: max |a - b| = {err:.3g} > {tol:.3g} * max |b| = '
      f'{tol * scale:.3g}')
  return err / scale
