"""Input: dataset creation, TFDS builder registration and reading.

* `polymnist_data`: pure NumPy pieces of PolyMNIST (background loading, the
  published creation procedure `make_polymnist`, the offline demo inputs);
  `polymnist_official` reads the published archive's PNGs.
* `mnist_files`: the validated MNIST IDX reader (PolyMNIST and MNIST-SVHN).
* `mnist_svhn_data`: the MNIST-SVHN pairs.
* `captions`: CUB caption tokens, vocabulary, encode / decode.
* `errors`: `InputFileError`, raised for a missing or corrupt input file.
* `builders`: registers the TFDS builders kept in the top-level `datasets/`
  folder (loaded by file path, never `import datasets`) and `load_split`,
  which reads a prepared split into NumPy arrays.
"""
