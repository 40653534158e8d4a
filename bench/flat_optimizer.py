"""Study-scale step with the optimiser per parameter array vs on one flat vector.

    python bench/flat_optimizer.py [CELL]   # CELL: index into the pilot study

Compiles the trainer's step (`training/step.py:jit_train_step`) of the
`studies/polymnist_cpu.py:pilot` cell CELL (default 0: MMVAE+, dim_w 4,
width 1/8, M = 5, K = 1, B = 8) twice: as configured (optax's AMSGrad on
the 295 parameter arrays) and with the optimiser wrapped in
`optax.flatten` (one flat vector of all parameters); counts the compiled
entry computation's fusions / copies / convolutions / dots / custom calls,
then times 6 interleaved rounds of 20 steps each (after 3 warm-up steps per
round) and prints the median ms/step. Run it on a quiet machine.
"""

import os
import re
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'studies'))
import polymnist_cpu as p
from mmvaeplus_jax import models, train_state
from mmvaeplus_jax.infra import parallel
from mmvaeplus_jax.training import step as step_lib
cell = int(sys.argv[1]) if len(sys.argv) > 1 else 0
res = {}
for flat in (False, True):
  c = p.get_study('pilot').cells[cell].config
  model = models.get_model(c.model)
  tx = train_state.make_optimizer(c.optim)
  if flat:
    tx = optax.flatten(tx)
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  xs = [{n: rng.uniform(size=(8, 28, 28, 3)).astype(np.float32) for n in model.names} for _ in range(4)]
  state = jax.jit(lambda k, x: train_state.init_state(k, x, model=model, tx=tx))(jax.random.key(0), xs[0])
  fn = step_lib.jit_train_step(c, model, tx, mesh)
  hlo = fn.lower(state, xs[0], jax.random.key(1)).compile().as_text()
  entry = hlo[hlo.index('ENTRY'):]
  nops = sum(1 for l in entry.splitlines() if re.match(r'\s*(?:ROOT )?%?\S+ = \S+ (fusion|copy|convolution|dot|custom-call)\(', l))
  res[flat] = (fn, state, xs, nops)
key = jax.random.key(1)
times = {False: [], True: []}
for rep in range(6):
  for flat in (False, True):
    fn, state, xs, _ = res[flat]
    for i in range(3):
      state, m = fn(state, xs[i % 4], key); jax.block_until_ready(state)
    t = time.perf_counter()
    for i in range(20):
      state, m = fn(state, xs[i % 4], key)
    jax.block_until_ready(state)
    times[flat].append((time.perf_counter() - t) / 20 * 1000)
    res[flat] = (fn, state, xs, res[flat][3])
for flat in (False, True):
  print(f'flat={flat}: ops {res[flat][3]}, ms/step median {np.median(times[flat]):.1f} all {[round(t,1) for t in times[flat]]}')
