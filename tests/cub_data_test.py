"""Tests of the CUB captions (`input/captions.py`) and the TFDS builder
`cub_image_captions` (datasets/cub_image_captions/).

The `official` config is built from a tiny fixture of the MMVAE cub.zip
layout written into tmp_path (solid-colour images in ImageFolder trees and
caption files whose words encode their image); `cub23` from the real files
in ../shared/data/cub (beside the checkout), skipped when they are absent.
"""

import json
import pathlib
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmvaeplus_jax.input import builders
from mmvaeplus_jax.input import captions
from mmvaeplus_jax.input import errors
from mmvaeplus_jax.tools import prepare_data

# No float tolerance here: .ci/run's one-core rerun skips the module.
pytestmark = pytest.mark.not_in_rerun

cub = builders.cub_image_captions_dataset_builder
SHARED_CUB = (pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
              / 'cub')
SPECIALS = ['<exc>', '<pad>', '<eos>']


# --------------------------------------------------------------------------
# captions: the pure text functions.


def test_tokenize_keeps_case_and_one_sentence_per_line():
  assert captions.tokenize("the bird's Beak is black, and short.") == [
      'the', 'bird', "'s", 'Beak', 'is', 'black', ',', 'and', 'short', '.']
  # No sentence splitting: a line is one sentence (preserve_line=True).
  assert captions.tokenize('a red bird. it is small.') == [
      'a', 'red', 'bird.', 'it', 'is', 'small', '.']
  assert captions.split_lines('a .\nb .\n') == ['a .', 'b .']
  assert captions.split_lines('a .\nb .') == ['a .', 'b .']


def test_build_vocabulary_count_above_three_first_seen_order():
  tokens = ([['x', 'y']] * 4 + [['z', 'w']] * 3
            + [['v'] * 4, ['<pad>'] * 5])
  vocabulary = captions.build_vocabulary(tokens)
  # x, y: 4 times (kept); z, w: 3 (not); v: 4 in one caption (kept); a
  # word spelled like a special is not added again.
  assert list(vocabulary.words) == SPECIALS + ['x', 'y', 'v']
  assert vocabulary.ids == {'<exc>': 0, '<pad>': 1, '<eos>': 2, 'x': 3,
                            'y': 4, 'v': 5}
  assert captions.build_vocabulary(tokens, min_occurrences=2).words[3:] == (
      'x', 'y', 'z', 'w', 'v')


def test_encode_pads_ends_truncates_and_maps_unknown_words():
  vocabulary = captions.Vocabulary(tuple(SPECIALS + ['a', 'bird', '.']))
  ids = captions.encode('a red bird .', vocabulary)
  assert ids.dtype == np.int32 and ids.shape == (32,)
  np.testing.assert_array_equal(ids[:6], [3, 0, 4, 5, 2, 1])
  assert (ids[5:] == captions.PAD_ID).all()
  assert captions.lengths(ids) == 5  # 4 tokens + <eos>
  long = ['a'] * 40
  ids = captions.encode(long, vocabulary)
  np.testing.assert_array_equal(ids, [3] * 31 + [2])
  assert captions.lengths(ids) == 32
  np.testing.assert_array_equal(
      captions.encode(['a'] * 31, vocabulary), [3] * 31 + [2])
  np.testing.assert_array_equal(
      captions.lengths(np.stack([captions.encode('a', vocabulary),
                                 np.full(32, 3)])), [2, 32])


def test_decode_round_trip_and_specials():
  vocabulary = captions.Vocabulary(tuple(SPECIALS + ['a', 'bird', ',', '.']))
  line = 'a bird,a bird.'
  assert captions.decode(captions.encode(line, vocabulary), vocabulary) == (
      captions.normalise(line)) == 'a bird , a bird .'
  assert captions.decode(captions.encode('a cat .', vocabulary),
                         vocabulary) == 'a <exc> .'
  # Stops at the first <eos>, drops <pad>.
  assert captions.decode([3, 1, 4, 2, 3, 3], vocabulary) == 'a bird'


def test_vocabulary_json_is_mmvae_format(tmp_path):
  vocabulary = captions.Vocabulary(tuple(SPECIALS + ['the', 'bird']))
  obj = json.loads(vocabulary.to_json())
  assert obj == {'w2i': {'<exc>': 0, '<pad>': 1, '<eos>': 2, 'the': 3,
                         'bird': 4},
                 'i2w': {'0': '<exc>', '1': '<pad>', '2': '<eos>',
                         '3': 'the', '4': 'bird'}}
  path = tmp_path / 'cub.vocab'
  path.write_text(vocabulary.to_json())
  assert captions.load_vocabulary(path) == vocabulary
  assert captions.Vocabulary.from_object(list(vocabulary.words)) == vocabulary
  with pytest.raises(ValueError, match='starts with'):
    captions.Vocabulary(('the', '<exc>', '<pad>', '<eos>'))
  with pytest.raises(FileNotFoundError, match='metadata.json'):
    captions.load_vocabulary(tmp_path)


# --------------------------------------------------------------------------
# `official` on a fixture of the cub.zip layout.

# ImageFolder order: class folders sorted; within a class sorted(os.walk):
# the class folder's own files first, then its subfolders' (so z.png
# before sub/d.png, unlike a plain sort of the relative paths).
FIXTURE_IMAGES = {
    'train': ['002.Laysan_Albatross/a.png', '002.Laysan_Albatross/b.jpg',
              '003.Sooty_Albatross/z.png', '003.Sooty_Albatross/sub/d.png'],
    'test': ['001.Black_footed_Albatross/x.png',
             '001.Black_footed_Albatross/y.PNG'],
}
FIXTURE_SIZES = ((9, 7), (5, 12), (64, 64), (80, 50), (3, 3), (20, 11))
# The train vocabulary the fixture's captions must give (first-seen order;
# 'three' occurs 3 times: excluded; 'four' 4 times: kept).
FIXTURE_VOCABULARY = SPECIALS + [
    'the', 'bird', 'img0', 'is', 'red', '.', 'four', 'Bird', 'img1', 'long',
    'img2', 'img3']


def _colour(split, j):
  return (40 * j + 20, 200 - 60 * (split == 'test'), 30 + 50 * j)


def _train_tokens(i):
  tokens = ['the', 'bird', f'img{i // 10}', 'is', 'red']
  tokens += (['three'] if i < 3 else ['four'] if i < 7
             else ['Bird'] if i < 12 else ['long'] * 40 if i == 12 else [])
  return tokens + ['.']


def _test_tokens(i):
  return ['the', 'bird', f'img{i // 10}', 'testonly', 'is', 'blue', '.']


def _write_official(root, *, skip=()):
  """The cub.zip layout under root/cub; `skip` leaves out files/folders."""
  cub_dir = root / 'cub'
  cub_dir.mkdir(parents=True)
  sizes = iter(FIXTURE_SIZES)
  for split, files in FIXTURE_IMAGES.items():
    if split in skip:
      continue
    for j, rel in enumerate(files):
      path = cub_dir / split / rel
      path.parent.mkdir(parents=True, exist_ok=True)
      h, w = next(sizes)
      pixels = np.zeros((h, w, 3), np.uint8) + np.uint8(_colour(split, j))
      Image.fromarray(pixels).save(
          path, format='JPEG' if rel.endswith('.jpg') else 'PNG', quality=95)
    (cub_dir / split / files[0]).with_name('notes.txt').write_text('no')
  lines = {'train': [' '.join(_train_tokens(i)) for i in range(40)],
           'test': [' '.join(_test_tokens(i)) for i in range(20)]}
  for split, name in cub.CAPTION_FILES.items():
    if name not in skip:
      (cub_dir / name).write_text('\n'.join(lines[split]) + '\n')
  return root


def _sorted_by_line(data):
  order = np.argsort(data['caption_line'])
  return {k: v[order] for k, v in data.items()}


@pytest.fixture(scope='module', name='official')
def _official(tmp_path_factory):
  """The fixture built twice in two data dirs: (splits, splits, builder)."""
  root = tmp_path_factory.mktemp('cub_official')
  manual = _write_official(root / 'manual')
  out = []
  for run in ('a', 'b'):
    data_dir = root / f'data_{run}'
    if run == 'a':  # the command line, once
      prepare_data.main(['cub_image_captions/official', '--data_dir',
                         str(data_dir), '--manual_dir', str(manual)])
    else:
      builders.prepare('cub_image_captions/official', data_dir,
                       manual_dir=manual)
    out.append({s: builders.load_split(
        'cub_image_captions/official', s, data_dir) for s in cub.SPLITS})
  builder = builders.prepare('cub_image_captions/official', root / 'data_a')
  return out[0], out[1], builder


def test_official_alignment_caption_i_image_i_div_10(official):
  splits, _, _ = official
  vocabulary = captions.Vocabulary(tuple(FIXTURE_VOCABULARY))
  for split, files in FIXTURE_IMAGES.items():
    data = _sorted_by_line(splits[split])
    n = 10 * len(files)
    np.testing.assert_array_equal(data['caption_line'], np.arange(n))
    np.testing.assert_array_equal(data['image_index'], np.arange(n) // 10)
    assert data['image'].shape == (n, 64, 64, 3)
    assert data['image'].dtype == np.uint8
    for i in range(n):
      j = i // 10
      assert data['file_name'][i].decode() == files[j]
      assert data['label'][i] == int(files[j][:3]) - 1
      assert f'img{j}' in captions.decode(data['caption'][i], vocabulary)
      # Solid colours survive the squash (JPEG within its rounding).
      colour = np.array(_colour(split, j))
      assert np.abs(data['image'][i].astype(int) - colour).max() <= 3


def test_official_vocabulary_from_train_captions(official):
  _, _, builder = official
  vocabulary = captions.vocabulary_from_info(builder.info)
  assert list(vocabulary.words) == FIXTURE_VOCABULARY
  assert builder.info.metadata['vocabulary_size'] == len(FIXTURE_VOCABULARY)
  assert 'preserve_line=True' in builder.info.metadata['tokenizer']
  # The same list from the prepared directory's metadata.json.
  assert captions.load_vocabulary(builder.data_dir) == vocabulary


def test_official_padding_eos_truncation_and_unknown_words(official):
  splits, _, _ = official
  ids = {w: i for i, w in enumerate(FIXTURE_VOCABULARY)}
  train = _sorted_by_line(splits['train'])
  # Line 0: 'three' (3 occurrences) is out of the vocabulary.
  want = [ids[w] for w in ('the', 'bird', 'img0', 'is', 'red')]
  want += [0, ids['.'], 2] + [1] * 24
  np.testing.assert_array_equal(train['caption'][0], want)
  assert train['caption_length'][0] == 8
  # Line 12: 46 tokens -> the first 31 and <eos>, no padding.
  np.testing.assert_array_equal(
      train['caption'][12],
      [ids[w] for w in ('the', 'bird', 'img1', 'is', 'red')]
      + [ids['long']] * 26 + [2])
  assert train['caption_length'][12] == 32
  np.testing.assert_array_equal(
      train['caption_length'], captions.lengths(train['caption']))
  # Test captions use the train vocabulary: 'testonly', 'blue' -> <exc>.
  test = _sorted_by_line(splits['test'])
  np.testing.assert_array_equal(
      test['caption'][13, :8],
      [ids['the'], ids['bird'], ids['img1'], 0, ids['is'], 0, ids['.'], 2])


def test_official_build_is_deterministic(official):
  first, second, _ = official
  for split in cub.SPLITS:
    assert first[split].keys() == second[split].keys()
    for key in first[split]:
      np.testing.assert_array_equal(first[split][key], second[split][key])


def test_official_missing_files_give_one_error(tmp_path):
  manual = _write_official(
      tmp_path / 'manual', skip=('train', 'text_trainvalclasses.txt'))
  with pytest.raises(errors.InputFileError) as e:
    builders.prepare('cub_image_captions/official', tmp_path / 'data',
                     manual_dir=manual)
  message = str(e.value)
  for name in ('cub/text_trainvalclasses.txt', 'cub/train'):
    assert str(manual / name) in message
  assert str(manual / 'cub' / 'test') not in message.split('. ')[0]
  assert cub.CUB_ZIP_URL in message and 'dead' in message
  assert 'supply your own copy' in message


def test_official_without_manual_directory_says_where_data_comes_from(
    tmp_path):
  with pytest.raises(errors.InputFileError, match='cub.zip'):
    builders.prepare('cub_image_captions/official', tmp_path / 'data',
                     manual_dir=tmp_path / 'nothing')


def test_official_caption_count_must_match_images(tmp_path):
  manual = _write_official(tmp_path / 'manual')
  path = manual / 'cub' / 'text_testclasses.txt'
  path.write_text('\n'.join(path.read_text().splitlines()[:19]) + '\n')
  with pytest.raises(errors.InputFileError, match=r'19 caption lines.*2 '
                     r'images.*image i // 10'):
    cub.load_official(manual)


# --------------------------------------------------------------------------
# `cub23` on the real files (../shared/data/cub).

needs_cub = pytest.mark.skipif(
    not all((SHARED_CUB / n).is_file() for n in cub.CUB23_FILES),
    reason=f'needs the real CUB-23 files ({", ".join(cub.CUB23_FILES)}) in'
    f' {SHARED_CUB} (the shared data beside the checkout)')


@pytest.fixture(scope='module', name='cub23')
def _cub23(tmp_path_factory):
  """(splits, builder, caption lines, mapping rows) of the real CUB-23."""
  data_dir = tmp_path_factory.mktemp('cub23')
  builder = builders.prepare('cub_image_captions/cub23', data_dir,
                             manual_dir=SHARED_CUB.parent)
  splits = {s: _sorted_by_line(builders.load_split(
      'cub_image_captions/cub23', s, data_dir)) for s in cub.SPLITS}
  lines = captions.split_lines(
      (SHARED_CUB / cub.CUB23_CAPTIONS).read_text(encoding='utf-8'))
  rows = cub.cub23_rows(SHARED_CUB / cub.CUB23_MAPPING)
  return splits, builder, lines, rows


@needs_cub
def test_cub23_sizes_and_split(cub23):
  splits, builder, _, rows = cub23
  assert len(rows) == 1358
  assert {s: builder.info.splits[s].num_examples for s in cub.SPLITS} == {
      'train': 6900, 'test': 6680}
  images = {s: np.unique(splits[s]['file_name']) for s in cub.SPLITS}
  assert {s: len(v) for s, v in images.items()} == {'train': 690,
                                                   'test': 668}
  assert not set(images['train']) & set(images['test'])
  split_of = {r['cub_path']: r['cub_official_split'] for r in rows}
  for s in cub.SPLITS:
    assert {split_of[f.decode()] for f in images[s]} == {s}
    assert splits[s]['image'].shape[1:] == (64, 64, 3)
    assert splits[s]['image'].dtype == np.uint8
  labels = np.concatenate([splits[s]['label'] for s in cub.SPLITS])
  assert set(labels.tolist()) == set(range(23))
  assert builder.info.features['label'].names == list(cub.CUB23_CLASSES)


@needs_cub
def test_cub23_every_image_has_its_own_ten_captions(cub23):
  splits, builder, lines, rows = cub23
  first_line = {r['cub_path']: int(r['caption_first_line']) for r in rows}
  vocabulary = captions.vocabulary_from_info(builder.info)
  for s in cub.SPLITS:
    data = splits[s]
    files = [f.decode() for f in data['file_name']]
    for i, f in enumerate(files):
      assert first_line[f] <= data['caption_line'][i] < first_line[f] + 10
      assert data['label'][i] == cub.CUB23_CLASSES.index(f.split('/')[0])
    # Each image exactly once per caption line of its own 10.
    want = sorted(first_line[f] + c for f in set(files) for c in range(10))
    np.testing.assert_array_equal(data['caption_line'], want)
    # The stored ids are the encoding of the caption's own line.
    for i in range(0, len(files), 97):
      np.testing.assert_array_equal(
          data['caption'][i],
          captions.encode(lines[data['caption_line'][i]], vocabulary))
    # image_index: the position in the split, ImageFolder (CUB path) order.
    by_image = dict(zip(data['image_index'].tolist(), files))
    assert [by_image[k] for k in sorted(by_image)] == sorted(set(files))


@needs_cub
def test_cub23_vocabulary_is_from_its_train_captions(cub23):
  splits, builder, lines, _ = cub23
  vocabulary = captions.vocabulary_from_info(builder.info)
  train_lines = splits['train']['caption_line']  # sorted: file order
  assert vocabulary == captions.build_vocabulary(
      captions.tokenize(lines[i]) for i in train_lines)
  assert vocabulary.size == builder.info.metadata['vocabulary_size'] == 509


@needs_cub
def test_cub23_images_are_the_squashed_tar_members(cub23):
  splits, _, _, rows = cub23
  serizba = {r['cub_path']: r['serizba_path'] for r in rows}
  data = splits['test']
  i = 123
  with cub._Tar(SHARED_CUB / cub.CUB23_TAR,
                [serizba[data['file_name'][i].decode()]]) as read:
    np.testing.assert_array_equal(data['image'][i], read(0))
  with tarfile.open(SHARED_CUB / cub.CUB23_TAR) as tar:
    name = cub.CUB23_TAR_PREFIX + serizba[data['file_name'][i].decode()]
    with Image.open(tar.extractfile(name)) as image:
      assert image.size == (227, 227)
      want = np.asarray(image.convert('RGB').resize(
          (64, 64), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(data['image'][i], want)


def _check_round_trip(lines, vocabulary):
  """Tokenises `lines`; decode(encode(s)) == normalise(s) for those of <= 31
  in-vocabulary tokens. Returns (token lists, number checked)."""
  tokens = [captions.tokenize(line) for line in lines]
  assert all(t and t[-1] == '.' for t in tokens)  # one sentence each
  checked = 0
  for line, t in zip(lines, tokens):
    if len(t) <= 31 and all(w in vocabulary.ids for w in t):
      assert captions.decode(captions.encode(t, vocabulary),
                             vocabulary) == captions.normalise(line)
      checked += 1
  return tokens, checked


@needs_cub
def test_real_captions_round_trip_every_20th_line(cub23):
  _, builder, lines, _ = cub23
  vocabulary = captions.vocabulary_from_info(builder.info)
  tokens, checked = _check_round_trip(lines[::20], vocabulary)
  assert len(tokens) == 1467 and checked > 500
  long = next(t for t in tokens if len(t) > 31)  # keeps its first 31
  ids = captions.encode(long, vocabulary)
  assert ids[31] == captions.EOS_ID and captions.lengths(ids) == 32
  np.testing.assert_array_equal(ids[:31], captions.encode(
      long[:31], vocabulary)[:31])


@pytest.mark.slow  # ~13 s of tokenising beside other jobs
@needs_cub
def test_real_captions_all_29330_lines_tokenise_and_round_trip(cub23):
  _, builder, lines, _ = cub23
  vocabulary = captions.vocabulary_from_info(builder.info)
  assert len(lines) == 29330
  tokens, checked = _check_round_trip(lines, vocabulary)
  assert len(tokens) == 29330 and checked > 10000
