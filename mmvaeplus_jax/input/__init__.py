"""Input: dataset creation, TFDS builder registration and reading.

* `polymnist_data`: pure NumPy pieces of PolyMNIST (validated MNIST IDX
  reader, background loading, the published creation procedure
  `make_polymnist`, the offline demo inputs).
* `builders`: registers the TFDS builders kept in the top-level `datasets/`
  folder (loaded by file path, never `import datasets`) and `load_split`,
  which reads a prepared split into NumPy arrays.
"""
