"""Evaluation: coherence, FID, latent classification, likelihood, figures."""
