"""The embedded demo dataset: generated once, cached on disk, read like real data.

  python -m data_pipelines.demo_data --root=~/.cache/ovseg_jax/demo

Scenes come from `demo_scenes` (categories, backgrounds, held-out pairs and captions are described
there). Layout under `root/<hash of the config>/`:

  train/00000.tar ...   webdataset shards in the img2dataset layout: KEY.jpg, KEY.txt (caption),
                        KEY.json (img2dataset-like metadata plus `objects` and `background`).
  eval/, tune/          labelled splits: images/KEY.jpg, labels/KEY.png (mode 'L': 0 background,
                        i for class_names[i]), classes.txt ("background" first), meta.json.
  DONE                  written last.

With `panoptic=True` (`demo_panoptic`: several instances per category, backgrounds as stuff) the directory is in
COCO's panoptic layout instead: annotations/panoptic_{train,val,tune}2017.json, {split}2017/KEY.jpg and
panoptic_{split}2017/KEY.png (segment ids as RGB), read by `coco_panoptic.CocoPanoptic`; `val` is the eval split.
  train_labelled_N/     on request (`ensure_labelled_train`): the first N training scenes, the same as in
                        the shards, as a labelled split, for methods trained with pixel labels.

Training scenes never show a held-out (category, background) pair; every eval and tune scene shows
at least one. `tune` has the eval distribution with another seed: choose thresholds there, report
on `eval`. A split is generated in a temporary directory renamed into place when complete, so an
interrupted generation leaves no half-written cache. The same config always gives byte-identical
files (tar members carry mtime 0 and no owner).
"""
import argparse
from collections.abc import Sequence
import dataclasses
import hashlib
import io
import json
import math
import os
from pathlib import Path
import shutil
import socket
import tarfile
import time
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import coco_panoptic, demo_panoptic, demo_scenes

BACKGROUND_CLASS = 'background'
_DONE = 'DONE'
# Part of the cache key: bump when the scenes or the file layout change.
_FORMAT_VERSION = 1
_KEY_SAMPLE_DIGITS = 4  # img2dataset's keys: shard * 10**4 + index, 9 digits.
_SPLIT_STREAMS = {'train': 0, 'eval': 1, 'tune': 2, 'val': 1}


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
  image_size: int = 64
  num_train: int = 12000
  num_eval: int = 300
  num_tune: int = 150
  samples_per_shard: int = 1000
  seed: int = 0
  jpeg_quality: int = 92
  panoptic: bool = False
  palette: str = 'per_class'  # demo_scenes.PALETTES: 'shared' draws colours and textures from one pool.

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f'DemoDataConfig.image_size={self.image_size}: use at least 16 (default 64).')
    for name in ('num_train', 'num_eval', 'num_tune'):
      if getattr(self, name) < 1:
        raise ValueError(f'DemoDataConfig.{name}={getattr(self, name)}: use at least 1.')
    if not 1 <= self.samples_per_shard <= 10**_KEY_SAMPLE_DIGITS:
      raise ValueError(f'DemoDataConfig.samples_per_shard={self.samples_per_shard}: use 1..10000 '
                       '(keys are shard * 10**4 + index).')
    if not 1 <= self.jpeg_quality <= 95:
      raise ValueError(f'DemoDataConfig.jpeg_quality={self.jpeg_quality}: use 1..95.')
    if self.palette not in demo_scenes.PALETTES:
      raise ValueError(f'DemoDataConfig.palette={self.palette!r}: use one of {demo_scenes.PALETTES}.')


@dataclasses.dataclass(frozen=True)
class DemoDataPaths:
  train_shards: list[str]  # Sorted tar paths.
  eval_dir: str
  tune_dir: str
  class_names: list[str]  # "background" first, then the categories: the label map's ids.


@dataclasses.dataclass(frozen=True)
class LabelledSplit:
  images: np.ndarray  # uint8 [n, S, S, 3]
  labels: np.ndarray  # uint8 [n, S, S], ids into class_names.
  class_names: list[str]
  keys: list[str]


def class_names() -> list[str]:
  return [BACKGROUND_CLASS, *demo_scenes.CLASS_NAMES]


def cache_name(cfg: DemoDataConfig) -> str:
  """The cache directory name: a short hash of the config and the data format version (options added later are
  left out of the hash at their defaults, so caches made before them keep their names)."""
  fields = dataclasses.asdict(cfg)
  if not cfg.panoptic:
    del fields['panoptic']
  if cfg.palette == 'per_class':
    del fields['palette']
  spec = json.dumps({**fields, 'format_version': _FORMAT_VERSION}, sort_keys=True)
  return hashlib.sha256(spec.encode()).hexdigest()[:12]


def ensure_demo_data(root: str | os.PathLike, cfg: DemoDataConfig) -> DemoDataPaths:
  """Paths of the demo data for `cfg` under `root`, generated first unless a complete copy is cached."""
  root = Path(root).expanduser()
  final = root / cache_name(cfg)
  if not (final / _DONE).exists():
    _generate_atomically(root, final, cfg)
  num_shards = math.ceil(cfg.num_train / cfg.samples_per_shard)
  return DemoDataPaths(train_shards=[str(final / 'train' / f'{i:05d}.tar') for i in range(num_shards)],
                       eval_dir=str(final / 'eval'), tune_dir=str(final / 'tune'), class_names=class_names())


def ensure_for_config(data: Any, seed: int) -> DemoDataPaths:
  """The demo data of a training config's `data` section (image_size, num_train, num_eval, num_tune,
  demo_root, optionally palette) and seed, generated on first use."""
  return ensure_demo_data(Path(data.demo_root).expanduser(), _config_of(data, seed))


def labelled_train_for_config(data: Any, seed: int, count: int) -> str:
  """`ensure_labelled_train` for a training config's `data` section and seed."""
  return ensure_labelled_train(ensure_for_config(data, seed), _config_of(data, seed), count)


def panoptic_root_for_config(data: Any, seed: int) -> str:
  """The COCO-layout root of the panoptic demo scenes of a training config's `data` section, generated on first
  use (splits 'train', 'val', 'tune')."""
  cfg = dataclasses.replace(_config_of(data, seed), panoptic=True)
  final = Path(data.demo_root).expanduser() / cache_name(cfg)
  if not (final / _DONE).exists():
    _generate_atomically(final.parent, final, cfg)
  return str(final)


def _config_of(data: Any, seed: int) -> DemoDataConfig:
  return DemoDataConfig(image_size=data.image_size, num_train=data.num_train, num_eval=data.num_eval,
                        num_tune=data.num_tune, seed=seed, palette=getattr(data, 'palette', 'per_class'))


def _generate_atomically(root: Path, final: Path, cfg: DemoDataConfig) -> None:
  root.mkdir(parents=True, exist_ok=True)
  prefix = f'.{final.name}.tmp-{socket.gethostname()}-'
  for stale in root.glob(prefix + '*'):  # Left by generations killed on this host.
    if not _process_alive(int(stale.name.rsplit('-', 1)[1])):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = root / f'{prefix}{os.getpid()}'
  print(f'demo data: generating {cfg.num_train} train, {cfg.num_eval} eval and {cfg.num_tune} tune scenes '
        f'of {cfg.image_size}x{cfg.image_size} in {final} ...', end='', flush=True)
  start = time.perf_counter()
  try:
    if cfg.panoptic:
      for split, count in (('train', cfg.num_train), ('val', cfg.num_eval), ('tune', cfg.num_tune)):
        _write_panoptic(split, tmp, count, cfg)
    else:
      _write_train(tmp / 'train', cfg)
      _write_labelled('eval', tmp / 'eval', cfg.num_eval, cfg)
      _write_labelled('tune', tmp / 'tune', cfg.num_tune, cfg)
    (tmp / _DONE).write_text(json.dumps(dataclasses.asdict(cfg), sort_keys=True) + '\n')
    if (final / _DONE).exists():  # Another process finished the same data first.
      shutil.rmtree(tmp)
    else:
      shutil.rmtree(final, ignore_errors=True)  # An earlier, interrupted generation.
      os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f' done in {time.perf_counter() - start:.1f} s.', flush=True)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # Signal 0 only checks that the process exists.
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    pass
  return True


def _split_rng(cfg: DemoDataConfig, split: str) -> np.random.Generator:
  return np.random.default_rng([cfg.seed, _SPLIT_STREAMS[split], *([3] if cfg.panoptic else [])])


def _jpeg(image: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)  # mtime 0, uid/gid 0, no owner names: byte-identical archives.
  info.size = len(data)
  info.mode = 0o644
  tar.addfile(info, io.BytesIO(data))


def _write_train(directory: Path, cfg: DemoDataConfig) -> None:
  directory.mkdir(parents=True)
  rng = _split_rng(cfg, 'train')
  size = cfg.image_size
  for shard in range(math.ceil(cfg.num_train / cfg.samples_per_shard)):
    count = min(cfg.samples_per_shard, cfg.num_train - shard * cfg.samples_per_shard)
    with tarfile.open(directory / f'{shard:05d}.tar', 'w', format=tarfile.USTAR_FORMAT) as tar:
      for index in range(count):
        scene = demo_scenes.make_scene(rng, size, palette=cfg.palette)
        key = f'{shard * 10**_KEY_SAMPLE_DIGITS + index:09d}'
        meta = {'key': key, 'caption': scene.caption, 'status': 'success', 'error_message': None,
                'width': size, 'height': size, 'original_width': size, 'original_height': size,
                'objects': list(scene.objects), 'background': scene.background}
        _add_member(tar, f'{key}.jpg', _jpeg(scene.image, cfg.jpeg_quality))
        _add_member(tar, f'{key}.txt', scene.caption.encode())
        _add_member(tar, f'{key}.json', json.dumps(meta, sort_keys=True).encode())


def _write_labelled(split: str, directory: Path, count: int, cfg: DemoDataConfig) -> None:
  (directory / 'images').mkdir(parents=True)
  (directory / 'labels').mkdir()
  rng = _split_rng(cfg, split)
  samples = []
  for index in range(count):
    # The train stream without held-out pairs: exactly the scenes of the train shards, in order.
    scene = demo_scenes.make_scene(rng, cfg.image_size, held_out=split != 'train', palette=cfg.palette)
    key = f'{index:09d}'
    (directory / 'images' / f'{key}.jpg').write_bytes(_jpeg(scene.image, cfg.jpeg_quality))
    Image.fromarray(scene.labels).save(directory / 'labels' / f'{key}.png')
    samples.append({'key': key, 'caption': scene.caption, 'objects': list(scene.objects),
                    'background': scene.background})
  (directory / 'classes.txt').write_text('\n'.join(class_names()) + '\n')
  meta = {'split': split, 'image_size': cfg.image_size, 'class_names': class_names(), 'palette': cfg.palette,
          'backgrounds': list(demo_scenes.BACKGROUND_NAMES),
          'held_out_pairs': [list(pair) for pair in demo_scenes.HELD_OUT_PAIRS], 'samples': samples}
  (directory / 'meta.json').write_text(json.dumps(meta, indent=1, sort_keys=True) + '\n')


def _write_panoptic(split: str, root: Path, count: int, cfg: DemoDataConfig) -> None:
  """`count` panoptic scenes as a COCO panoptic split under `root`."""
  for name in (f'{split}2017', f'panoptic_{split}2017', 'annotations'):
    (root / name).mkdir(parents=True, exist_ok=True)
  rng = _split_rng(cfg, split)
  images, annotations = [], []
  for index in range(count):
    scene = demo_panoptic.make_panoptic_scene(rng, cfg.image_size)
    key = f'{index:012d}'
    (root / f'{split}2017' / f'{key}.jpg').write_bytes(_jpeg(scene.image, cfg.jpeg_quality))
    Image.fromarray(coco_panoptic.id2rgb(scene.segment_ids)).save(root / f'panoptic_{split}2017' / f'{key}.png')
    images.append({'id': index, 'file_name': f'{key}.jpg', 'width': cfg.image_size, 'height': cfg.image_size})
    annotations.append({'image_id': index, 'file_name': f'{key}.png', 'segments_info': scene.segments})
  spec = {'images': images, 'annotations': annotations, 'categories': demo_panoptic.categories()}
  (root / 'annotations' / f'panoptic_{split}2017.json').write_text(json.dumps(spec, sort_keys=True) + '\n')


def ensure_labelled_train(paths: DemoDataPaths, cfg: DemoDataConfig, count: int) -> str:
  """The directory of a labelled split of the first `count` training scenes (the pixel labels of the train
  shards' images), beside eval/ and tune/; generated atomically on first use."""
  if not 1 <= count <= cfg.num_train:
    raise ValueError(f'ensure_labelled_train: count={count}; use 1..{cfg.num_train} (num_train).')
  final = Path(paths.eval_dir).parent / f'train_labelled_{count}'
  if (final / 'meta.json').exists():
    return str(final)
  tmp = final.parent / f'.{final.name}.tmp-{socket.gethostname()}-{os.getpid()}'
  try:
    _write_labelled('train', tmp, count, cfg)
    if not (final / 'meta.json').exists():  # Otherwise another process finished the same split first.
      shutil.rmtree(final, ignore_errors=True)
      os.rename(tmp, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return str(final)


def load_labelled_split(split_dir: str | os.PathLike) -> LabelledSplit:
  """Images, label maps, class names and keys of a labelled demo split (`eval` or `tune`)."""
  split_dir = Path(split_dir).expanduser()

  def missing(what: str) -> FileNotFoundError:
    return FileNotFoundError(f'Demo split {split_dir} is incomplete: {what} is missing. Delete {split_dir.parent} '
                             'and run again to regenerate the demo data.')

  for name in ('meta.json', 'classes.txt'):
    if not (split_dir / name).is_file():
      raise missing(name)
  names = (split_dir / 'classes.txt').read_text().split()
  keys = [sample['key'] for sample in json.loads((split_dir / 'meta.json').read_text())['samples']]
  images, labels = [], []
  for key in keys:
    image_path, label_path = split_dir / 'images' / f'{key}.jpg', split_dir / 'labels' / f'{key}.png'
    for path in (image_path, label_path):
      if not path.is_file():
        raise missing(str(path.relative_to(split_dir)))
    images.append(np.asarray(Image.open(image_path).convert('RGB')))
    labels.append(np.asarray(Image.open(label_path)))
  if not keys:
    raise missing('every sample')
  return LabelledSplit(images=np.stack(images), labels=np.stack(labels), class_names=names, keys=keys)


def main(argv: Sequence[str] | None = None) -> None:
  defaults = DemoDataConfig()
  parser = argparse.ArgumentParser(description='Generates (or finds cached) demo data and shows a few captions.')
  parser.add_argument('--root', default='~/.cache/ovseg_jax/demo')
  for field in dataclasses.fields(DemoDataConfig):
    default = getattr(defaults, field.name)
    parser.add_argument(f'--{field.name}', type=type(default), default=default)
  args = vars(parser.parse_args(argv))
  root = args.pop('root')
  paths = ensure_demo_data(root, DemoDataConfig(**args))
  print(f'train: {len(paths.train_shards)} shards in {Path(paths.train_shards[0]).parent}')
  print(f'eval: {paths.eval_dir}\ntune: {paths.tune_dir}\nclasses: {", ".join(paths.class_names)}')
  with tarfile.open(paths.train_shards[0]) as tar:
    captions = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith('.txt')][:5]
  print('captions:\n  ' + '\n  '.join(captions))


if __name__ == '__main__':
  main()
