# `python train.py [--config=FILE[:ARG]] [--workdir=DIR]`: trains a
# multimodal VAE (without flags, the offline demo). The program (flags, --help
# text) is mmvaeplus_jax/tools/train.py, installed as the `mmvaeplus-train`
# command; this file keeps `python train.py` working in a source checkout,
# with the same flags, defaults and output.

from mmvaeplus_jax.tools import train

# tests/fault_driver.py imports this file and runs `app.run(train.main)`.
main = train.main

if __name__ == '__main__':
  train.run()
