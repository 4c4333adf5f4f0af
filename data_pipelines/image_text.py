"""Training batches of (augmented image, caption tokens) from webdataset shards, via tf.data.

Each host reads only its own shards (`shards.host_shards`). Per epoch: the host's shard order is
shuffled with a seed derived from (seed, epoch, host); samples are streamed from the tars by a
Python generator that also tokenises the captions, shuffled in a buffer, then decoded and
augmented in parallel: Inception-style random resized crop (area fraction `crop_scale`, aspect
ratio 3/4..4/3, whole image if no crop fits), resize to `image_size` (area averaging when shrinking, PIL's
BOX filter; bilinear when enlarging), random horizontal flip. Epochs repeat forever.

Augmentation randomness is stateless, keyed by (epoch seed, sample number), so a seed fixes every
crop and flip; `deterministic=True` (the default: its cost was within measurement noise) also fixes
the batch order.

Resume: the iterator keeps a `ReadPosition` (epoch, shards of that epoch read to the end) that a trainer
saves with each checkpoint; an iterator started from it continues the same epoch's shard order after the
finished shards. A shard still being read when the checkpoint was taken is read again from its start, and
samples still waiting in the shuffle buffer or prefetch (at most `shuffle_buffer` plus a few batches) are
not revisited in that epoch: on 26M pairs a handful of repeats or misses, instead of replaying an epoch.

Skipped data is counted in the returned `SkipStats` (reasons in `shards`'s docstring) plus
`decode_error`: images that pass the structural checks but fail to decode in TF. Those are dropped
by `ignore_errors` and counted once per epoch, at its end, as samples emitted by the generator
minus samples that reached the batches. Each epoch's last, partial batch is dropped.
"""
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import functools
import itertools

from absl import logging
import numpy as np
import tensorflow as tf

from data_pipelines import pseudo_mask_shards
from data_pipelines import shards as shards_lib
from data_pipelines import tf_options

_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_JPEG_SOI = b'\xff\xd8'
# Samples per generator step: tf.data pays a high fixed cost per element of a Python generator.
_GENERATOR_CHUNK = 64

@dataclasses.dataclass
class ReadPosition:
  """Where a host's reading stands: its epoch and how many of that epoch's shards it has read to the end."""
  epoch: int = 0
  shards_done: int = 0


# Hosts feed accelerators through JAX: TF must never claim their memory.
try:
  for _device_type in ('GPU', 'TPU'):
    tf.config.set_visible_devices([], _device_type)
except RuntimeError as _error:  # TF set up its devices before this import; too late to hide them.
  logging.warning('TensorFlow may hold accelerator memory: %s', _error)


def make_image_text_iterator(
    shards: str | Sequence[str],
    *,
    batch_size: int,
    image_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    start_epoch: int = 0,
    shuffle_buffer: int = 1000,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
    text_fn: Callable[[str], np.ndarray] | None = None,
    caption_fn: Callable[[str], str | tuple[str, ...]] | None = None,
    context_length: int = 77,
    texts_per_sample: int = 1,
    num_parallel_calls: int | None = None,
    prefetch: int = 2,
    deterministic: bool = True,
    with_keys: bool = False,
    position: ReadPosition | None = None,
    stats: shards_lib.SkipStats | None = None,
    pseudo_mask_grid: tuple[int, int] | None = None,
) -> tuple[Iterator[dict[str, np.ndarray]], shards_lib.SkipStats]:
  """Endless host batches `{'image': uint8 [b, S, S, 3], 'tokens': int32 [b, L]}` (or [b, T, L] with T =
  `texts_per_sample` > 1) and their skip counts.

  Args:
    shards: shard pattern(s), see `shards.expand_pattern`; this host reads its share only.
    batch_size: per-host batch size b.
    image_size: output side S.
    process_index: this host's index (`jax.process_index()`).
    process_count: number of hosts (`jax.process_count()`).
    seed: fixes shard order, shuffle, crops and flips.
    start_epoch: first epoch number (to resume at an epoch boundary).
    shuffle_buffer: samples in the shuffle buffer; 0 or 1 keeps the stream order.
    crop_scale: (min, max) area fraction of the random crop.
    flip: randomly mirror half of the images left-right.
    text_fn: caption -> int32 tokens [L] or [1, L]; defaults to the CLIP tokenizer.
    caption_fn: caption -> the text to tokenise (e.g. `captions.training_text`), or a tuple of
      `texts_per_sample` texts whose first is the caption (`captions.make_caption_fn`); samples whose
      (first) text is empty are skipped and counted as 'no_text_after_cleaning'; other empty texts of a
      tuple become all-zero token rows (no SOT), which mark them missing.
    context_length: L.
    texts_per_sample: T, the length of `caption_fn`'s tuples (1: one text, tokens [b, L]).
    num_parallel_calls: parallel decodes; None: one per CPU core (`tf_options.parallel_calls`).
    prefetch: batches prepared ahead.
    deterministic: keep the batch order fixed by the seed; False lets a slow decode be overtaken.
    with_keys: add 'key': the samples' webdataset keys (bytes objects), e.g. for debugging.
    position: where to start (overrides `start_epoch`); updated in place while reading, for checkpoints.
    stats: counts to add the skips to (shared by the sources of a mixture); a new one by default.
    pseudo_mask_grid: (h, w): also read each shard's stored pseudo masks (`pseudo_mask_shards`) and add
      'pseudo_labels' uint8 [b, h, w], the stored cluster map under the sample's crop window, flipped with it
      (each output cell takes the stored cell holding its centre). Samples without one are skipped and counted
      as 'no_pseudo_mask'; a shard without a companion file stops the run with the command that writes them.

  Returns:
    The batch iterator, and the `SkipStats` it updates while running.

  Raises (while iterating):
    ValueError if a whole epoch yields less than one batch, naming this host's shards; any error
    of `text_fn`, at the end of the epoch it happened in.
  """
  if batch_size < 1 or image_size < 1 or context_length < 1:
    raise ValueError(f'batch_size={batch_size}, image_size={image_size} and context_length={context_length} '
                     'must all be positive.')
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f'crop_scale={crop_scale} must be (min, max) area fractions with 0 < min <= max <= 1.')
  host_shards = shards_lib.host_shards(shards_lib.expand_pattern(shards), process_index, process_count)
  if text_fn is None:
    from data_pipelines import tokenizer  # Lazy: it loads the BPE vocabulary.
    text_fn = functools.partial(tokenizer.tokenize, context_length=context_length)
  stats = shards_lib.SkipStats() if stats is None else stats
  token_shape = [context_length] if texts_per_sample == 1 else [texts_per_sample, context_length]
  signature = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
               tf.TensorSpec([None, *token_shape], tf.int32), tf.TensorSpec([None], tf.int64))
  if pseudo_mask_grid is not None:
    signature += (tf.TensorSpec([None], tf.string),)
  options = tf_options.pipeline_options(deterministic)
  num_parallel_calls = num_parallel_calls or tf_options.parallel_calls()

  def tokens_of(caption: str) -> np.ndarray:
    tokens = np.asarray(text_fn(caption), np.int32)
    if tokens.size != context_length:
      raise ValueError(f'text_fn returned shape {tokens.shape} for caption {caption!r}; '
                       f'expected [{context_length}] or [1, {context_length}] (context_length).')
    return tokens.reshape(context_length)

  def sample_tokens(text: str | tuple[str, ...]) -> np.ndarray:
    if texts_per_sample == 1:
      return tokens_of(text)
    if isinstance(text, str) or len(text) != texts_per_sample:
      raise ValueError(f'caption_fn returned {text!r}; expected a tuple of texts_per_sample={texts_per_sample} '
                       'texts.')
    return np.stack([tokens_of(t) if t else np.zeros(context_length, np.int32) for t in text])

  def batches() -> Iterator[dict[str, np.ndarray]]:
    first_epoch = position.epoch if position is not None else start_epoch
    for epoch in itertools.count(first_epoch):
      shard_seed, sample_seed = np.random.SeedSequence([seed, epoch, process_index]).generate_state(2)
      epoch_shards = [host_shards[i] for i in np.random.default_rng(shard_seed).permutation(len(host_shards))]
      skip = position.shards_done if position is not None and epoch == first_epoch else 0
      if position is not None:
        position.epoch, position.shards_done = epoch, skip
      emitted, failures = 0, []

      def shard_by_shard():
        for done, shard in enumerate(epoch_shards[skip:], skip + 1):
          samples = shards_lib.iterate_samples([shard], stats)
          yield from samples if pseudo_mask_grid is None else _with_stored_masks(samples, shard, stats)
          if position is not None:
            position.shards_done = done

      def chunks():
        nonlocal emitted
        # Re-raised in the loop below: `ignore_errors` would otherwise swallow a failing text_fn.
        try:
          stream = shard_by_shard()
          while chunk := list(itertools.islice(stream, _GENERATOR_CHUNK)):
            if caption_fn is not None:
              chunk = [(key, image, caption_fn(caption), *rest) for key, image, caption, *rest in chunk]
              kept = [sample for sample in chunk if (sample[2][0] if isinstance(sample[2], tuple) else sample[2])]
              if len(kept) < len(chunk):
                stats.add('no_text_after_cleaning', len(chunk) - len(kept))
              if not (chunk := kept):
                continue
            keys, images, captions, *stored_masks = zip(*chunk)
            yield (np.array(keys, object), np.array(images, object), np.stack([sample_tokens(c) for c in captions]),
                   np.arange(emitted, emitted + len(chunk)), *(np.array(m, object) for m in stored_masks))
            emitted += len(chunk)
        except Exception as e:
          failures.append(e)

      dataset = tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()
      if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=int(sample_seed))
      augment = functools.partial(_decode_and_augment, sample_seed=int(sample_seed), image_size=image_size,
                                  crop_scale=crop_scale, flip=flip, with_keys=with_keys,
                                  pseudo_mask_grid=pseudo_mask_grid)
      dataset = dataset.map(augment, num_parallel_calls=num_parallel_calls).ignore_errors()
      # Batched without drop_remainder so every sample that arrives is counted (see docstring).
      dataset = dataset.batch(batch_size).prefetch(prefetch).with_options(options)
      arrived = full_batches = 0
      for batch in dataset.as_numpy_iterator():
        arrived += len(batch['tokens'])
        if len(batch['tokens']) == batch_size:
          full_batches += 1
          yield batch
      if failures:
        raise failures[0]
      if emitted > arrived:
        stats.add('decode_error', emitted - arrived)
      logging.info('Epoch %d, host %d: %d samples, skipped so far: %s', epoch, process_index, arrived, stats.counts)
      if not full_batches and not skip:  # A resumed epoch may legitimately have little left.
        preview = ', '.join(host_shards[:5]) + (', ...' if len(host_shards) > 5 else '')
        raise ValueError(
            f'Epoch {epoch} gave only {arrived} samples on host {process_index}, fewer than batch_size='
            f'{batch_size} (skipped: {stats.counts}). Its {len(host_shards)} shards: {preview}. '
            'Check that the paths exist and hold img2dataset-style KEY.jpg + KEY.txt samples.')

  return batches(), stats


def _with_stored_masks(samples: Iterator[tuple[str, bytes, str]], shard: str, stats: shards_lib.SkipStats
                       ) -> Iterator[tuple[str, bytes, str, bytes]]:
  stored = pseudo_mask_shards.read_companion(shard)
  for key, image, caption in samples:
    if key in stored:
      yield key, image, caption, stored[key]
    else:
      stats.add('no_pseudo_mask')


def _stored_labels_under_crop(png, begin, size, full_hw, grid_hw: tuple[int, int]):
  """The stored cluster map [h', w'] of the whole image -> [h, w] cells of the crop window: each output cell
  takes the stored cell that holds its centre."""
  labels = tf.io.decode_png(png, channels=1)[..., 0]
  stored_hw = tf.cast(tf.shape(labels), tf.float64)

  def cells(axis):
    count = grid_hw[axis]
    centres = tf.cast(begin[axis], tf.float64) + (tf.range(count, dtype=tf.float64) + 0.5) * tf.cast(
        size[axis], tf.float64) / count
    index = tf.cast(tf.floor(centres * stored_hw[axis] / tf.cast(full_hw[axis], tf.float64)), tf.int32)
    return tf.clip_by_value(index, 0, tf.shape(labels)[axis] - 1)
  return tf.gather(tf.gather(labels, cells(0)), cells(1), axis=1)


def _decode_and_augment(key, image_bytes, tokens, index, pseudo_png=None, *, sample_seed: int, image_size: int,
                        crop_scale: tuple[float, float], flip: bool, with_keys: bool,
                        pseudo_mask_grid: tuple[int, int] | None):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
      tf.stack([tf.constant(sample_seed, tf.int64), index]), 2))

  def crop_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), seed=crop_seed,
        min_object_covered=0, aspect_ratio_range=_ASPECT_RATIO_RANGE, area_range=crop_scale,
        use_image_if_no_bounding_boxes=True)
    return begin, size

  def jpeg():  # Decodes only the crop window: the cheap path for nearly all web images.
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, size = crop_window(shape)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # The accurate integer DCT cost no more than TF's default fast one here, and matches PIL.
    return (tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method='INTEGER_ACCURATE'),
            begin, size, shape)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    shape = tf.shape(image)
    begin, size = crop_window(shape)
    return tf.slice(image, begin, size), begin, size, shape

  image, begin, size, full_shape = tf.cond(tf.strings.substr(image_bytes, 0, 2) == _JPEG_SOI, jpeg, other)
  # Shrinking averages the covered area (no aliasing); it ran 1.5-1.8x faster end to end than antialiased
  # bilinear (benchmarks/README.md). Enlarged crops are interpolated bilinearly.
  resize = functools.partial(tf.image.resize, size=[image_size, image_size])
  image = tf.cond(tf.reduce_any(tf.shape(image)[:2] > image_size),
                  lambda: resize(image, method='area'), lambda: resize(image, method='bilinear'))
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  batch = {'image': tf.saturate_cast(tf.round(image), tf.uint8), 'tokens': tokens}
  if pseudo_mask_grid is not None:
    labels = _stored_labels_under_crop(pseudo_png, begin, size, full_shape, pseudo_mask_grid)[..., None]
    if flip:  # The same seed and rank as the image's flip: the same decision.
      labels = tf.image.stateless_random_flip_left_right(labels, flip_seed)
    batch['pseudo_labels'] = labels[..., 0]
  if with_keys:
    batch['key'] = key
  return batch
