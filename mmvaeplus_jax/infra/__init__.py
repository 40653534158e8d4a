"""Infrastructure: device mesh, checkpoints, writers, run directories, images
and the CPU backends. Imports nothing of the package above it."""
