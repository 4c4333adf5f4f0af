"""Webdataset shards: name patterns, the per-host split and robust sample reading.

Shards follow the img2dataset layout: `00042.tar` holds `KEY.jpg`, `KEY.txt` (the caption) and
`KEY.json` for each sample, the members of one key adjacent. A web-scale stream always holds some
broken data, so nothing here raises on bad data: every skipped sample or shard is counted by reason
in a `SkipStats`, and every shard-level problem is logged once with the shard's path.

Skip reasons (`SkipStats.counts` keys):
  missing_shard     the shard does not exist.
  unreadable_shard  any other I/O failure, including a `pipe:` command exiting non-zero.
  truncated_shard   the tar ends inside a member or is not a tar; samples before that point are
                    kept, the sample being read is dropped. (A tar cut exactly between members
                    cannot be told from a complete one; its split sample shows up as `no_caption`
                    or `no_image`.)
  no_image          a key without a .jpg/.jpeg/.png/.webp member.
  empty_image       a zero-byte image.
  not_jpeg_or_png   image bytes that do not start with the JPEG or PNG signature.
  truncated_jpeg    a JPEG with no end-of-image marker.
  no_caption        a key without a .txt member.
  empty_caption     a caption that is empty or only whitespace.
The input pipeline adds `decode_error` for images that pass these checks but fail to decode.
"""
from collections.abc import Iterator, Sequence
import itertools
import re
import subprocess
import tarfile
import threading

from absl import logging

_IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
_CAPTION_EXTENSION = 'txt'
_JPEG_SOI = b'\xff\xd8'
_JPEG_EOI = b'\xff\xd9'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# webdataset's rule: the key is the member path up to the first dot of its file name.
_KEY_AND_EXTENSION = re.compile(r'^((?:.*/|)[^./]+)\.([^/]*)$')
_BRACE = re.compile(r'\{([^{}]*)\}')
_RANGE = re.compile(r'^(\d+)\.\.(\d+)$')


class SkipStats:
  """Thread-safe counts of skipped samples and shards by reason (see the module docstring)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: dict[str, int] = {}

  def add(self, reason: str, count: int = 1) -> None:
    with self._lock:
      self.counts[reason] = self.counts.get(reason, 0) + count

  def as_metrics(self) -> dict[str, int]:
    """Counts keyed `data/skipped/REASON`, plus their sum as `data/skipped/total`."""
    with self._lock:
      metrics = {f'data/skipped/{reason}': n for reason, n in sorted(self.counts.items())}
      metrics['data/skipped/total'] = sum(self.counts.values())
    return metrics


def expand_pattern(pattern: str | Sequence[str]) -> list[str]:
  """Expands shard patterns such as `cc12m/{00000..01242}.tar` into paths, in order.

  Supports numeric ranges (zero-padded when either end is written with a leading zero), comma
  lists `{a,b}`, several braces in one pattern (expanded as a product), and several patterns
  joined by `::` or given as a list. Braces must not nest. Nothing is listed on disk.
  """
  patterns = [pattern] if isinstance(pattern, str) else list(pattern)
  patterns = [p for group in patterns for p in group.split('::')]
  if not patterns or not all(p.strip() for p in patterns):
    raise ValueError(f'Empty shard pattern in {pattern!r}: give paths such as "dir/{{00000..00099}}.tar".')
  return [path for p in patterns for path in _expand_one(p.strip())]


def _expand_one(pattern: str) -> list[str]:
  literals = _BRACE.split(pattern)[::2]
  if any(c in literal for literal in literals for c in '{}'):
    raise ValueError(f'Unbalanced or nested braces in shard pattern {pattern!r}.')
  alternatives = [_expand_brace(body, pattern) for body in _BRACE.findall(pattern)]
  paths = []
  for choice in itertools.product(*alternatives):
    parts = [literals[0]]
    for value, literal in zip(choice, literals[1:]):
      parts += [value, literal]
    paths.append(''.join(parts))
  return paths


def _expand_brace(body: str, pattern: str) -> list[str]:
  match = _RANGE.match(body)
  if not match:
    return body.split(',')
  first, last = match.groups()
  if int(last) < int(first):
    raise ValueError(f'Descending range {{{body}}} in shard pattern {pattern!r}: write {{{last}..{first}}}.')
  padded = any(len(end) > 1 and end.startswith('0') for end in (first, last))
  width = max(len(first), len(last)) if padded else 0
  return [str(i).zfill(width) for i in range(int(first), int(last) + 1)]


def host_shards(shards: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """This host's disjoint share of `shards`: every `process_count`-th one from `process_index`."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, process_count={process_count}).')
  if len(shards) < process_count:
    raise ValueError(
        f'{len(shards)} shards cannot feed {process_count} hosts (host {process_index} would get '
        'none): use at least as many shards as hosts, e.g. re-shard the data more finely.')
  return list(shards[process_index::process_count])


def iterate_samples(shard_paths: Sequence[str], stats: SkipStats) -> Iterator[tuple[str, bytes, str]]:
  """Yields `(key, image_bytes, caption)` for every good sample of the shards, in order.

  Each tar is streamed, never seeked, so a path may be local, have a scheme (`gs://...`, read
  with `tf.io.gfile`) or be `pipe:COMMAND` (the command's stdout). Bad data is skipped and
  counted in `stats` (see the module docstring); nothing here raises on it.
  """
  if isinstance(shard_paths, str):
    raise TypeError(f'shard_paths must be a list of paths, not the string {shard_paths!r}: '
                    'use expand_pattern() for a pattern.')
  for path in shard_paths:
    try:
      stream = _open_shard(path)
      try:
        yield from _samples_in_tar(stream, stats)
      finally:
        stream.close()
    except FileNotFoundError as e:
      _skip_shard(stats, 'missing_shard', path, e)
    except (tarfile.TarError, EOFError) as e:
      _skip_shard(stats, 'truncated_shard', path, e)
    except OSError as e:
      _skip_shard(stats, 'unreadable_shard', path, e)


def _skip_shard(stats: SkipStats, reason: str, path: str, error: Exception) -> None:
  stats.add(reason)
  logging.warning('Skipping (rest of) shard %s: %s (%s: %s)', path, reason, type(error).__name__, error)


def _samples_in_tar(stream, stats: SkipStats) -> Iterator[tuple[str, bytes, str]]:
  with tarfile.open(fileobj=stream, mode='r|*') as tar:
    for key, group in itertools.groupby(_keyed_files(tar), key=lambda keyed: keyed[0]):
      members = {extension: tar.extractfile(member).read() for _, extension, member in group}
      image = next((members[e] for e in _IMAGE_EXTENSIONS if e in members), None)
      caption = members.get(_CAPTION_EXTENSION)
      caption = None if caption is None else caption.decode('utf-8', errors='replace').strip()
      reason = _skip_reason(image, caption)
      if reason:
        stats.add(reason)
      else:
        yield key, image, caption


def _keyed_files(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
  """(key, lower-case extension, member) of each file in a streamed tar, in order."""
  for member in tar:
    # A streaming TarFile keeps every header it has seen; drop them so memory stays flat.
    tar.members = []
    match = _KEY_AND_EXTENSION.match(member.name)
    if member.isfile() and match:
      key, extension = match.groups()
      yield key, extension.lower(), member


def _skip_reason(image: bytes | None, caption: str | None) -> str | None:
  if image is None:
    return 'no_image'
  if not image:
    return 'empty_image'
  if caption is None:
    return 'no_caption'
  if not caption:
    return 'empty_caption'
  if image.startswith(_PNG_SIGNATURE):
    return None
  if not image.startswith(_JPEG_SOI):
    return 'not_jpeg_or_png'
  # Any end-of-image marker after the start counts: some files carry trailing data after it.
  if image.find(_JPEG_EOI, len(_JPEG_SOI)) < 0:
    return 'truncated_jpeg'
  return None


def _open_shard(path: str):
  if path.startswith('pipe:'):
    return _PipeStream(path[len('pipe:'):])
  if '://' in path:
    return _GFileStream(path)
  return open(path, 'rb')


class _PipeStream:
  """A shell command's stdout; a command that fails is reported as an OSError on close."""

  def __init__(self, command: str):
    self._command = command
    self._process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
    self._at_end = False

  def read(self, size: int = -1) -> bytes:
    data = self._process.stdout.read(size)
    self._at_end |= not data and size != 0
    return data

  def close(self) -> None:
    if not self._at_end:  # Reading stopped early: the command's remaining output is not wanted.
      self._process.kill()
    self._process.stdout.close()
    status = self._process.wait()
    if self._at_end and status != 0:
      raise OSError(f'Command {self._command!r} exited with status {status}.')


class _GFileStream:
  """`tf.io.gfile.GFile` whose failures are the OSErrors that local files raise."""

  def __init__(self, path: str):
    import tensorflow as tf  # Lazy: only paths with a scheme need TensorFlow.
    self._errors = tf.errors
    self._file = tf.io.gfile.GFile(path, 'rb')

  def read(self, size: int = -1) -> bytes:
    try:
      return self._file.read(size)
    except self._errors.NotFoundError as e:
      raise FileNotFoundError(str(e)) from e
    except self._errors.OpError as e:
      raise OSError(str(e)) from e

  def close(self) -> None:
    self._file.close()
