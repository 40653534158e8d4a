"""Train a multimodal VAE: `python train.py [--config=FILE[:ARG]] [--workdir=DIR]`.

Without flags it trains the offline demo (reduced-width MMVAE+ on the `mini`
PolyMNIST-style demo data; a few minutes on a laptop CPU) into a new
directory under runs/ and prints it. Overrides: `--config.optim.lr=5e-4`.
Same workdir = resume. Multi-host: `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or nothing on a cluster JAX auto-detects).
"""

# The program is mmvaeplus_jax/tools/train.py (installed as the
# `mmvaeplus-train` command); this file keeps `python train.py` working in a
# source checkout, with the same flags, defaults and output.

from absl import app

from mmvaeplus_jax.tools import train

# tests/fault_driver.py imports this file and runs `app.run(train.main)`.
main = train.main

if __name__ == '__main__':
  app.run(train.main)
