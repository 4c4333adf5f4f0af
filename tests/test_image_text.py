"""Tests for the webdataset shard reader and the tf.data image-text pipeline on tiny shards."""
import io
import itertools
import subprocess
import tarfile

import numpy as np
from PIL import Image
import pytest

from data_pipelines import image_text
from data_pipelines import shards

CONTEXT_LENGTH = 16
WORDS = ('red', 'dog', 'on', 'a', 'beach', 'cat', 'sofa', 'two', 'birds')


def _smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
  small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def _encode(image: np.ndarray, fmt: str = 'JPEG') -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return buffer.getvalue()


def _caption(rng: np.random.Generator, key: str) -> bytes:
  return ' '.join([key, *rng.choice(WORDS, 3)]).encode()


def _text_fn(caption: str) -> np.ndarray:
  """Caption bytes as tokens, so a batch's tokens name the sample's key."""
  tokens = np.zeros([1, CONTEXT_LENGTH], np.int32)
  data = caption.encode()[:CONTEXT_LENGTH]
  tokens[0, :len(data)] = list(data)
  return tokens


def _key_of(tokens: np.ndarray) -> str:
  return bytes(tokens[tokens > 0].astype(np.uint8)).decode().split(' ')[0]


def _write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
  with tarfile.open(path, 'w') as tar:
    for key, members in samples:
      for extension, data in members.items():
        info = tarfile.TarInfo(f'{key}.{extension}')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _good_sample(rng: np.random.Generator, key: str, references: dict[str, np.ndarray]):
  """A webdataset sample; `references[key]` gets its image as PIL decodes it."""
  jpeg = _encode(_smooth_image(rng))
  references[key] = np.asarray(Image.open(io.BytesIO(jpeg)))
  return key, {'jpg': jpeg, 'txt': _caption(rng, key), 'json': b'{}'}


def _take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(iterator, count))


@pytest.fixture(scope='module')
def clean_shards(tmp_path_factory):
  """Five shards of 4, 0, 3, 5 and 2 good samples; returns (paths, {key: decoded image})."""
  rng = np.random.default_rng(0)
  directory = tmp_path_factory.mktemp('clean')
  references, paths = {}, []
  for shard, count in enumerate([4, 0, 3, 5, 2]):
    paths.append(str(directory / f'{shard:05d}.tar'))
    _write_shard(paths[-1], [_good_sample(rng, f'{shard:05d}{i:04d}', references) for i in range(count)])
  return paths, references


@pytest.mark.parametrize('pattern', [
    'cc12m/{00000..00011}.tar', 'x/{8..10}.tar', 'x/{08..10}.tar', 'x/{1..010}', 'gs://b/{a,bb}-{0..2}.tar',
    'plain.tar', 'a{,x}b'])
def test_expand_pattern_matches_bash(pattern):
  bash = subprocess.run(['bash', '-c', f'printf "%s\\n" {pattern}'], capture_output=True, text=True, check=True)
  assert shards.expand_pattern(pattern) == bash.stdout.split()


def test_expand_pattern_joins_patterns_and_rejects_bad_ones():
  assert shards.expand_pattern('a.tar::b/{0..1}.tar') == ['a.tar', 'b/0.tar', 'b/1.tar']
  assert shards.expand_pattern(['p{1,2}', 'q::r']) == ['p1', 'p2', 'q', 'r']
  for bad, message in [('{a{b}}', 'nested'), ('a}.tar', 'Unbalanced'), ('{3..1}', 'Descending'),
                       ('', 'Empty'), ('a::', 'Empty'), ([], 'Empty')]:
    with pytest.raises(ValueError, match=message):
      shards.expand_pattern(bad)


def test_host_shards_split_disjointly_and_name_counts_when_too_few():
  paths = [f'{i}.tar' for i in range(7)]
  splits = [shards.host_shards(paths, i, 3) for i in range(3)]
  assert sorted(sum(splits, [])) == sorted(paths)
  assert all(set(a).isdisjoint(b) for a, b in itertools.combinations(splits, 2))
  with pytest.raises(ValueError, match='7 shards cannot feed 8 hosts'):
    shards.host_shards(paths, 0, 8)
  with pytest.raises(ValueError, match='process_index=3'):
    shards.host_shards(paths, 3, 3)


def test_two_hosts_read_every_sample_exactly_once_per_epoch(clean_shards):
  paths, references = clean_shards
  host_keys = []
  for host in range(2):
    stats = shards.SkipStats()
    host_keys.append([key for key, _, _ in shards.iterate_samples(shards.host_shards(paths, host, 2), stats)])
    assert stats.counts == {}
    # The full pipeline delivers the same samples, each once in an epoch (batch_size=1 drops none).
    batches, _ = image_text.make_image_text_iterator(
        paths, batch_size=1, image_size=8, process_index=host, process_count=2, seed=host,
        text_fn=_text_fn, context_length=CONTEXT_LENGTH, with_keys=True)
    epoch = _take(batches, len(host_keys[-1]))
    assert sorted(b['key'][0].decode() for b in epoch) == sorted(host_keys[-1])
  assert set(host_keys[0]).isdisjoint(host_keys[1])
  assert sorted(host_keys[0] + host_keys[1]) == sorted(references)


def test_bad_samples_and_shards_are_counted_never_fatal(tmp_path):
  rng = np.random.default_rng(1)
  references = {}
  good = lambda key: _good_sample(rng, key, references)
  jpeg = _encode(_smooth_image(rng))
  grey = _smooth_image(rng)[..., 0]
  references['png'] = np.repeat(grey[..., None], 3, axis=-1)  # Grey PNG: channels fixed to 3.
  _write_shard(tmp_path / 'bad.tar', [
      good('g0'),
      ('noimage', {'txt': b'a dog', 'json': b'{}'}),
      ('zerobytes', {'jpg': b'', 'txt': b'a dog'}),
      ('gif', {'jpg': b'GIF89a' + rng.bytes(64), 'txt': b'a dog'}),
      ('truncated', {'jpg': jpeg[:len(jpeg) // 2], 'txt': b'a dog'}),
      ('corrupt', {'jpg': b'\xff\xd8\xff\xe0' + rng.bytes(300) + b'\xff\xd9', 'txt': b'a dog'}),
      ('emptycaption', {'jpg': jpeg, 'txt': b' \n\t'}),
      ('nocaption', {'jpg': jpeg, 'json': b'{}'}),
      ('png', {'png': _encode(grey, 'PNG'), 'txt': b'png a grey picture'}),
      good('g1'),
  ])
  _write_shard(tmp_path / 'cut.tar', [good('c0'), good('c1'), good('c2')])
  with tarfile.open(tmp_path / 'cut.tar') as tar:
    cut_at = tar.getmember('c1.jpg').offset_data + 100
  data = (tmp_path / 'cut.tar').read_bytes()
  (tmp_path / 'cut.tar').write_bytes(data[:cut_at])
  _write_shard(tmp_path / 'piped.tar', [good('p0')])
  paths = [str(tmp_path / 'bad.tar'), str(tmp_path / 'missing.tar'), str(tmp_path / 'cut.tar'),
           f'pipe:cat {tmp_path}/piped.tar', f'pipe:cat {tmp_path}/absent.tar 2>/dev/null']
  expected = {'no_image': 1, 'empty_image': 1, 'not_jpeg_or_png': 1, 'truncated_jpeg': 1, 'empty_caption': 1,
              'no_caption': 1, 'missing_shard': 1, 'truncated_shard': 1, 'unreadable_shard': 1}

  stats = shards.SkipStats()
  samples = list(shards.iterate_samples(paths, stats))
  assert [key for key, _, _ in samples] == ['g0', 'corrupt', 'png', 'g1', 'c0', 'p0']  # Only 'corrupt' fails later.
  assert stats.counts == expected
  assert stats.as_metrics()['data/skipped/total'] == sum(expected.values())

  batches, stats = image_text.make_image_text_iterator(
      paths, batch_size=1, image_size=32, shuffle_buffer=0, crop_scale=(1.0, 1.0), flip=False,
      text_fn=_text_fn, context_length=CONTEXT_LENGTH, with_keys=True)
  delivered = ['g0', 'png', 'g1', 'c0', 'p0']
  epoch = _take(batches, len(delivered) + 1)  # One more batch ends epoch 0.
  assert sorted(b['key'][0].decode() for b in epoch[:-1]) == sorted(delivered)
  assert stats.counts['decode_error'] == 1
  for batch in epoch[:-1]:  # Whole-image crop, same size, no flip: the decoded image itself.
    np.testing.assert_allclose(batch['image'][0], references[batch['key'][0].decode()], atol=1)


def _area_matrix(n: int, m: int) -> np.ndarray:
  """[m, n]: output pixel i averages input interval [i n/m, (i+1) n/m) weighted by overlap."""
  edges = np.arange(m + 1) * n / m
  left, right = edges[:-1, None], edges[1:, None]
  pixels = np.arange(n)[None, :]
  return np.clip(np.minimum(right, pixels + 1) - np.maximum(left, pixels), 0, None) * m / n


def _reference_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Exact area averaging (float64) when shrinking; PIL's bilinear when enlarging."""
  h, w = image.shape[:2]
  if max(h, w) > size:
    return np.einsum('ih,hwc,jw->ijc', _area_matrix(h, size), image.astype(np.float64), _area_matrix(w, size))
  channels = [Image.fromarray(image[..., c].astype(np.float32), 'F').resize((size, size), Image.BILINEAR)
              for c in range(image.shape[-1])]
  return np.stack([np.asarray(c) for c in channels], axis=-1)


@pytest.mark.parametrize('image_size', [16, 20, 48])
def test_whole_image_crop_is_resized_and_sometimes_flipped(clean_shards, image_size):
  paths, references = clean_shards
  batches, _ = image_text.make_image_text_iterator(
      paths, batch_size=7, image_size=image_size, crop_scale=(1.0, 1.0), seed=3,
      text_fn=_text_fn, context_length=CONTEXT_LENGTH)
  flipped = []
  for batch in _take(batches, 4):
    assert batch['image'].shape == (7, image_size, image_size, 3) and batch['image'].dtype == np.uint8
    assert batch['tokens'].shape == (7, CONTEXT_LENGTH) and batch['tokens'].dtype == np.int32
    for image, tokens in zip(batch['image'], batch['tokens']):
      expected = _reference_resize(references[_key_of(tokens)], image_size)
      errors = [np.abs(image - candidate).max() for candidate in (expected, expected[:, ::-1])]
      assert min(errors) <= 1, errors  # Rounding to uint8 only.
      flipped.append(errors[1] < errors[0])
  assert 0.2 < np.mean(flipped) < 0.8


def test_random_crops_vary_and_stay_within_the_source_range(clean_shards):
  paths, references = clean_shards
  batches, _ = image_text.make_image_text_iterator(
      paths, batch_size=2, image_size=24, crop_scale=(0.2, 0.5), text_fn=_text_fn, context_length=CONTEXT_LENGTH)
  views = {}
  for batch in _take(batches, 28):  # Four epochs of 14 samples.
    for image, tokens in zip(batch['image'], batch['tokens']):
      key = _key_of(tokens)
      source = references[key].reshape(-1, 3).astype(int)
      # Interpolation is convex; decoding only the crop window can move edge pixels by a level or two.
      assert np.all(image >= source.min(0) - 3) and np.all(image <= source.max(0) + 3)
      views.setdefault(key, []).append(image)
  assert all(len({v.tobytes() for v in crops}) > 1 for crops in views.values() if len(crops) > 1)


def test_same_seed_same_batches(clean_shards):
  paths, _ = clean_shards
  def run(seed):
    batches, _ = image_text.make_image_text_iterator(
        paths, batch_size=4, image_size=16, seed=seed, shuffle_buffer=8,
        text_fn=_text_fn, context_length=CONTEXT_LENGTH)
    return _take(batches, 7)  # Crosses two epoch boundaries.
  first, again, other = run(0), run(0), run(1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['tokens'], b['tokens'])
  assert any(not np.array_equal(a['tokens'], b['tokens']) for a, b in zip(first, other))


def test_epoch_without_a_batch_raises_naming_the_shards(tmp_path, clean_shards):
  batches, stats = image_text.make_image_text_iterator(
      [str(tmp_path / 'gone.tar')], batch_size=2, image_size=8, text_fn=_text_fn, context_length=CONTEXT_LENGTH)
  with pytest.raises(ValueError, match='gone.tar'):
    next(batches)
  assert stats.counts == {'missing_shard': 1}
  batches, _ = image_text.make_image_text_iterator(
      clean_shards[0][4], batch_size=3, image_size=8, text_fn=_text_fn, context_length=CONTEXT_LENGTH)
  with pytest.raises(ValueError, match='only 2 samples'):
    next(batches)


def test_bad_arguments_and_text_fn_errors_are_reported(clean_shards):
  paths, _ = clean_shards
  with pytest.raises(ValueError, match='crop_scale'):
    image_text.make_image_text_iterator(paths, batch_size=2, image_size=8, crop_scale=(0.0, 1.0), text_fn=_text_fn)
  batches, _ = image_text.make_image_text_iterator(
      paths, batch_size=2, image_size=8, text_fn=_text_fn, context_length=CONTEXT_LENGTH + 1)
  with pytest.raises(ValueError, match='context_length'):
    next(batches)


def test_caption_fn_rewrites_captions_and_counts_samples_left_without_text(clean_shards):
  paths, references = clean_shards
  dropped = {k for k in references if k.endswith(('0', '3'))}
  # Keeps the key (so tokens still name the sample) and drops the words; empties the dropped keys' text.
  caption_fn = lambda caption: '' if caption.split(' ')[0] in dropped else caption.split(' ')[0]
  batches, stats = image_text.make_image_text_iterator(
      paths, batch_size=1, image_size=8, seed=0, text_fn=_text_fn, caption_fn=caption_fn,
      context_length=CONTEXT_LENGTH, with_keys=True)
  epoch = _take(batches, len(references) - len(dropped))
  assert sorted(_key_of(b['tokens'][0]) for b in epoch) == sorted(set(references) - dropped)
  assert all(b['key'][0].decode() == _key_of(b['tokens'][0]) for b in epoch)
  assert stats.counts.get('no_text_after_cleaning', 0) >= len(dropped)  # Reading ahead may count more.


def test_resumed_reading_continues_after_the_finished_shards(tmp_path):
  rng = np.random.default_rng(4)
  references, paths = {}, []
  for shard in range(6):  # More samples than the reader's look-ahead, so an epoch is really in progress.
    paths.append(str(tmp_path / f'{shard:05d}.tar'))
    _write_shard(paths[-1], [_good_sample(rng, f'{shard:05d}{i:04d}', references) for i in range(48)])
  kwargs = dict(batch_size=8, image_size=8, seed=3, text_fn=_text_fn, context_length=CONTEXT_LENGTH,
                shuffle_buffer=0, prefetch=1, with_keys=True)
  position = image_text.ReadPosition()
  batches, _ = image_text.make_image_text_iterator(paths, position=position, **kwargs)
  _take(batches, 3)
  saved = image_text.ReadPosition(**vars(position))
  assert saved.epoch == 0 and 0 < saved.shards_done < len(paths)
  order = np.random.default_rng(np.random.SeedSequence([3, 0, 0]).generate_state(2)[0]).permutation(len(paths))
  finished = {k for i in order[:saved.shards_done] for k in references if k.startswith(f'{i:05d}')}
  resumed, _ = image_text.make_image_text_iterator(paths, position=saved, **kwargs)
  rest = [k.decode() for b in _take(resumed, (len(references) - len(finished)) // 8) for k in b['key']]
  assert not finished & set(rest)  # No finished shard is read again...
  assert sorted(rest) == sorted(set(references) - finished)  # ...and every other sample of the epoch is.


def test_several_texts_per_sample_give_token_rows_with_missing_ones_zero(clean_shards):
  paths, references = clean_shards
  def caption_fn(caption):
    key = caption.split(' ')[0]
    return ('', 'x', '') if key == '000000000' else (caption, f'{key} prompt', '')
  batches, stats = image_text.make_image_text_iterator(
      paths, batch_size=2, image_size=16, caption_fn=caption_fn, text_fn=_text_fn, context_length=CONTEXT_LENGTH,
      texts_per_sample=3)
  keys = []
  for batch in _take(batches, 6):
    assert batch['tokens'].shape == (2, 3, CONTEXT_LENGTH)
    for tokens in batch['tokens']:
      key = _key_of(tokens[0])
      keys.append(key)
      np.testing.assert_array_equal(tokens[1], _text_fn(f'{key} prompt')[0])
      assert not tokens[2].any()
  assert '000000000' not in keys and stats.counts['no_text_after_cleaning'] >= 1


def test_caption_fn_of_the_wrong_arity_is_named(clean_shards):
  paths, _ = clean_shards
  batches, _ = image_text.make_image_text_iterator(
      paths, batch_size=2, image_size=16, caption_fn=lambda c: (c, 'a'), text_fn=_text_fn,
      context_length=CONTEXT_LENGTH, texts_per_sample=3)
  with pytest.raises(ValueError, match='texts_per_sample=3'):
    _take(batches, 10)
