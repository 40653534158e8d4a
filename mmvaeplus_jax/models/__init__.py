"""Models: the MMVAE+ container and per-dataset networks."""
