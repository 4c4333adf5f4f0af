"""Tests for the embedded demo data: scenes, captions, shards, labelled splits and the cache."""
from collections import Counter
import io
import json
from pathlib import Path
import re
import socket
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest

from data_pipelines import demo_data, demo_scenes

TINY = demo_data.DemoDataConfig(num_train=40, num_eval=10, num_tune=6, samples_per_shard=20)
COLOUR_OR_TEXTURE_WORDS = {
    'red', 'orange', 'yellow', 'green', 'blue', 'purple', 'violet', 'pink', 'magenta', 'cyan', 'teal', 'lime',
    'maroon', 'brown', 'white', 'black', 'grey', 'gray', 'gold', 'dark', 'light', 'bright', 'colored', 'coloured',
    'striped', 'stripes', 'stripe', 'dotted', 'dots', 'spotted', 'checkered', 'checker', 'checked', 'plain', 'solid'}
NUMBER_WORDS = {'two': 2, 'three': 3, 'four': 4}


@pytest.fixture(scope='module')
def generated(tmp_path_factory) -> tuple[Path, demo_data.DemoDataPaths]:
  root = tmp_path_factory.mktemp('demo')
  return root, demo_data.ensure_demo_data(root, TINY)


def _files(directory: Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob('*')) if p.is_file()}


def _train_samples(paths: demo_data.DemoDataPaths) -> list[dict]:
  samples = []
  for shard in paths.train_shards:
    with tarfile.open(shard) as tar:
      for member in tar.getmembers():
        if member.name.endswith('.json'):
          samples.append(json.loads(tar.extractfile(member).read()))
  return samples


def _caption_counts(caption: str) -> Counter:
  """Categories named in a caption with their counts, read back independently of the generator."""
  singular = set(demo_scenes.CLASS_NAMES)
  plural = {c.plural: c.name for c in demo_scenes.CATEGORIES}
  words = re.findall(r'[a-z]+', caption)
  counts = Counter()
  for previous, word in zip(['', *words], words):
    if word in singular:
      assert previous == ('an' if word[0] in 'aeiou' else 'a'), caption
      counts[word] += 1
    elif word in plural:
      assert previous in NUMBER_WORDS, caption
      counts[plural[word]] += NUMBER_WORDS[previous]
  return counts


def _check_caption(caption: str, objects: list[str], background: str) -> None:
  assert _caption_counts(caption) == Counter(objects), caption
  words = set(re.findall(r'[a-z]+', caption))
  assert not words & COLOUR_OR_TEXTURE_WORDS, caption
  named_backgrounds = {b for b in demo_scenes.BACKGROUND_NAMES if b in words or b + 's' in words}
  assert named_backgrounds <= {background}, caption


def test_shards_hold_one_jpg_txt_json_triple_per_key(generated):
  _, paths = generated
  assert paths.train_shards == sorted(paths.train_shards) and len(paths.train_shards) == 2
  total = 0
  for shard_index, shard in enumerate(paths.train_shards):
    with tarfile.open(shard) as tar:
      members = tar.getmembers()
      assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in members)
      files = {m.name: tar.extractfile(m).read() for m in members}
    by_key = {}
    for name in files:
      key, extension = name.split('.')
      by_key.setdefault(key, set()).add(extension)
    for key, extensions in by_key.items():
      assert extensions == {'jpg', 'txt', 'json'}
      assert re.fullmatch(r'\d{9}', key) and int(key) // 10**4 == shard_index
      meta = json.loads(files[f'{key}.json'])
      assert meta['key'] == key and meta['status'] == 'success'
      assert meta['caption'] == files[f'{key}.txt'].decode()
      image = Image.open(io.BytesIO(files[f'{key}.jpg']))
      assert image.format == 'JPEG' and image.mode == 'RGB'
      assert image.size == (meta['width'], meta['height']) == (TINY.image_size, TINY.image_size)
    total += len(by_key)
  assert total == TINY.num_train


def test_train_captions_name_exactly_their_objects(generated):
  _, paths = generated
  for meta in _train_samples(paths):
    assert 1 <= len(meta['objects']) <= 4
    _check_caption(meta['caption'], meta['objects'], meta['background'])


def test_captions_on_many_scenes():
  rng = np.random.default_rng(1)
  captions, mentions = set(), 0
  for _ in range(600):
    categories = list(rng.integers(len(demo_scenes.CATEGORIES), size=rng.integers(1, 5)))
    background = int(rng.integers(len(demo_scenes.BACKGROUNDS)))
    caption = demo_scenes.make_caption(rng, categories, background)
    objects = [demo_scenes.CLASS_NAMES[c] for c in categories]
    _check_caption(caption, objects, demo_scenes.BACKGROUND_NAMES[background])
    words = set(re.findall(r'[a-z]+', caption))
    mentions += any(b in words or b + 's' in words for b in demo_scenes.BACKGROUND_NAMES)
    captions.add(caption)
  assert 0.4 < mentions / 600 < 0.6
  assert len(captions) > 400  # Varied sentences, not one template.


def test_held_out_pairs_never_in_train_and_in_every_eval_and_tune_image(generated):
  _, paths = generated
  expected = {(name, demo_scenes.BACKGROUND_NAMES[i % 6]) for i, name in enumerate(demo_scenes.CLASS_NAMES)}
  assert set(demo_scenes.HELD_OUT_PAIRS) == expected
  rng = np.random.default_rng(2)
  train = [*_train_samples(paths), *({'objects': s.objects, 'background': s.background}
                                     for s in (demo_scenes.make_scene(rng, 32) for _ in range(300)))]
  assert all((o, s['background']) not in expected for s in train for o in s['objects'])
  for split_dir in (paths.eval_dir, paths.tune_dir):
    for sample in json.loads((Path(split_dir) / 'meta.json').read_text())['samples']:
      assert any((o, sample['background']) in expected for o in sample['objects'])


def test_labels_show_every_listed_object(generated):
  _, paths = generated
  for split_dir in (paths.eval_dir, paths.tune_dir):
    split = demo_data.load_labelled_split(split_dir)
    samples = json.loads((Path(split_dir) / 'meta.json').read_text())['samples']
    for labels, sample in zip(split.labels, samples):
      expected = {split.class_names.index(o) for o in sample['objects']}
      assert set(np.unique(labels)) - {0} == expected
      _check_caption(sample['caption'], sample['objects'], sample['background'])


@pytest.mark.parametrize('size', [64, 96, 128])
def test_scene_statistics(size):
  rng = np.random.default_rng(3)
  scenes = [demo_scenes.make_scene(rng, size, held_out=i % 2 == 1) for i in range(120)]
  assert all(s.image.shape == (size, size, 3) and s.image.dtype == np.uint8 for s in scenes)
  assert all(s.labels.shape == (size, size) and s.labels.dtype == np.uint8 for s in scenes)
  assert 0.2 < np.mean([(s.labels > 0).mean() for s in scenes]) < 0.45
  for s in scenes:  # No object shrinks to a sliver under the ones drawn after it.
    visible = Counter(s.labels[s.labels > 0].tolist())
    assert all(visible[demo_scenes.CLASS_NAMES.index(o) + 1] > 0.4 * 0.1 * (0.3 * size)**2 for o in s.objects)


def test_objects_are_more_saturated_than_backgrounds():
  rng = np.random.default_rng(4)
  scenes = [demo_scenes.make_scene(rng, 48) for _ in range(60)]
  images = np.stack([s.image for s in scenes]).astype(np.float64)
  labels = np.stack([s.labels for s in scenes])
  top, bottom = images.max(-1), images.min(-1)
  saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1), 0)
  assert np.percentile(saturation[labels > 0], 1) > np.percentile(saturation[labels == 0], 99)
  assert set(s.background for s in scenes) == set(demo_scenes.BACKGROUND_NAMES)


def test_same_config_gives_identical_bytes(generated, tmp_path):
  root, paths = generated
  other = demo_data.ensure_demo_data(tmp_path, TINY)
  reference = Path(paths.eval_dir).parent
  assert Path(other.eval_dir).parent.name == reference.name
  assert _files(Path(other.eval_dir).parent) == _files(reference)


def test_cache_is_reused(generated, capsys):
  root, paths = generated
  directory = Path(paths.eval_dir).parent
  before = {p: p.stat().st_mtime_ns for p in directory.rglob('*')}
  assert demo_data.ensure_demo_data(root, TINY) == paths
  assert {p: p.stat().st_mtime_ns for p in directory.rglob('*')} == before
  assert 'generating' not in capsys.readouterr().out


def test_interrupted_generation_is_redone(tmp_path, generated):
  _, reference = generated
  expected = _files(Path(reference.eval_dir).parent)
  paths = demo_data.ensure_demo_data(tmp_path, TINY)
  directory = Path(paths.eval_dir).parent
  (directory / 'DONE').unlink()
  Path(paths.train_shards[1]).write_bytes(b'truncated')
  finished = subprocess.Popen([sys.executable, '-c', 'pass'])
  finished.wait()  # Its pid now names no process: a generation killed on this host.
  stale = tmp_path / f'.{directory.name}.tmp-{socket.gethostname()}-{finished.pid}'
  stale.mkdir()
  demo_data.ensure_demo_data(tmp_path, TINY)
  assert _files(directory) == expected
  assert not stale.exists()


def test_load_labelled_split(generated, tmp_path):
  _, paths = generated
  split = demo_data.load_labelled_split(paths.eval_dir)
  size = TINY.image_size
  assert split.images.shape == (TINY.num_eval, size, size, 3) and split.images.dtype == np.uint8
  assert split.labels.shape == (TINY.num_eval, size, size) and split.labels.dtype == np.uint8
  assert split.class_names == paths.class_names == ['background', *demo_scenes.CLASS_NAMES]
  assert split.keys == sorted(split.keys) and len(split.keys) == TINY.num_eval
  assert split.labels.max() < len(split.class_names)
  first_label = np.asarray(Image.open(Path(paths.eval_dir) / 'labels' / f'{split.keys[0]}.png'))
  np.testing.assert_array_equal(split.labels[0], first_label)
  with pytest.raises(FileNotFoundError, match=r'missing\.demo.*Delete'):
    demo_data.load_labelled_split(tmp_path / 'missing.demo' / 'eval')


def test_missing_label_file_is_named(generated, tmp_path):
  _, paths = generated
  copy = tmp_path / 'eval'
  copy.mkdir()
  for name, data in _files(Path(paths.eval_dir)).items():
    (copy / name).parent.mkdir(parents=True, exist_ok=True)
    (copy / name).write_bytes(data)
  (copy / 'labels' / '000000003.png').unlink()
  with pytest.raises(FileNotFoundError, match=r'000000003\.png.*Delete'):
    demo_data.load_labelled_split(copy)


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match='samples_per_shard'):
    demo_data.DemoDataConfig(samples_per_shard=20000)
  with pytest.raises(ValueError, match='image_size'):
    demo_data.DemoDataConfig(image_size=8)


def test_cli_prints_paths_and_captions(generated, capsys):
  root, paths = generated
  demo_data.main([f'--root={root}', '--num_train=40', '--num_eval=10', '--num_tune=6', '--samples_per_shard=20'])
  out = capsys.readouterr().out
  assert paths.eval_dir in out and 'captions:' in out


def test_demo_split_through_the_eval_dataset_registry(generated):
  from data_pipelines import eval_datasets
  _, paths = generated
  dataset = eval_datasets.load('demo', Path(paths.eval_dir).parent, 'eval')
  split = demo_data.load_labelled_split(paths.eval_dir)
  examples = list(dataset)
  assert len(dataset) == len(examples) == TINY.num_eval
  assert dataset.info.class_names == tuple(split.class_names) and dataset.info.background_index == 0
  assert [e.key for e in examples] == split.keys
  np.testing.assert_array_equal(np.stack([e.label for e in examples]), split.labels)
  np.testing.assert_array_equal(np.stack([e.image for e in examples]), split.images)
  with pytest.raises(ValueError, match="unknown evaluation dataset 'vocc'.*demo"):
    eval_datasets.load('vocc', '/nowhere')


def test_labelled_train_split_shows_the_train_shards_scenes(tmp_path):
  cfg = demo_data.DemoDataConfig(image_size=32, num_train=12, num_eval=2, num_tune=2, samples_per_shard=6)
  paths = demo_data.ensure_demo_data(tmp_path, cfg)
  split = demo_data.load_labelled_split(demo_data.ensure_labelled_train(paths, cfg, 8))
  assert split.labels.shape == (8, 32, 32) and split.class_names == demo_data.class_names()
  with tarfile.open(paths.train_shards[1]) as tar:  # Scene 6 is the first of the second shard.
    jpeg = tar.extractfile(sorted(m.name for m in tar.getmembers() if m.name.endswith('.jpg'))[0]).read()
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')), split.images[6])
  assert demo_data.ensure_labelled_train(paths, cfg, 8) == str(Path(paths.eval_dir).parent / 'train_labelled_8')
  with pytest.raises(ValueError, match='num_train'):
    demo_data.ensure_labelled_train(paths, cfg, 13)
