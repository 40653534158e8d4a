"""Training: state, pure steps, optimiser, checkpoints, writers, the loop."""
