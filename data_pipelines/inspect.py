r"""Check an image-text dataset before spending pod time on it: read it as one training host would.

  python -m data_pipelines.inspect --shards='cc12m/{00000..01242}.tar' [--num_hosts=64 --host=3] \
      [--epochs=1] [--text=nouns_verbs] [--out=/tmp/inspect] [--keys]

Reads this host's shards (the same split as training), counts samples and skipped data by reason, measures
the reading rate and the full training pipeline's img/s, summarises the text the model will read (words per
caption, most frequent words), and writes a contact sheet of decoded training crops with their text. With
`--keys`, prints only the keys of the samples this host reads, one per line.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from data_pipelines import captions, image_text, shards

SHARDS = flags.DEFINE_string("shards", None, "Shard pattern(s), e.g. 'cc12m/{00000..01242}.tar'.")
NUM_HOSTS = flags.DEFINE_integer("num_hosts", 1, "Hosts the shards are split over.")
HOST = flags.DEFINE_integer("host", 0, "This host's index.")
EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs to count.")
TEXT = flags.DEFINE_enum("text", "caption", list(captions.MODES), "What the text tower reads (data.text).")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Training crop size.")
OUT = flags.DEFINE_string("out", "", "Directory for contact_sheet.png; empty: no picture.")
KEYS = flags.DEFINE_bool("keys", False, "Print the sample keys of this host, one per line, and nothing else.")


def inspect(pattern: str | Sequence[str], num_hosts: int = 1, host: int = 0, epochs: int = 1,
            text_mode: str = "caption", image_size: int = 224, out: Path | None = None,
            keys: bool = False, sheet_size: int = 16) -> dict:
  """Reads this host's shards `epochs` times; returns the summary (and prints it, or the keys)."""
  host_shards = shards.host_shards(shards.expand_pattern(pattern), host, num_hosts)
  stats, words, lengths, texts = shards.SkipStats(), collections.Counter(), [], {}
  start, samples = time.perf_counter(), 0
  for _ in range(epochs):
    for key, _, caption in shards.iterate_samples(host_shards, stats):
      text = captions.training_text(caption, text_mode)
      if not text:
        stats.add("no_text_after_cleaning")
        continue
      samples += 1
      if keys:
        print(key)
        continue
      lengths.append(len(text.split()))
      words.update(text.lower().split())
      texts.setdefault(key, text)
  read_rate = samples / max(time.perf_counter() - start, 1e-9)
  summary = {"host": host, "num_hosts": num_hosts, "shards": len(host_shards), "epochs": epochs, "samples": samples,
             "skipped": dict(stats.counts), "read_samples_per_sec": read_rate}
  if keys:
    return summary
  if not samples:
    _print(summary)
    return summary
  summary.update(words_per_text={"mean": float(np.mean(lengths)), "p50": float(np.median(lengths)),
                                 "max": int(np.max(lengths))},
                 most_common_words=words.most_common(15))
  batch = min(sheet_size, samples)
  batches, _ = image_text.make_image_text_iterator(
      pattern, batch_size=batch, image_size=image_size, process_index=host, process_count=num_hosts,
      shuffle_buffer=min(1000, samples), with_keys=True,
      caption_fn=lambda c: captions.training_text(c, text_mode))
  first = next(batches)
  start, n = time.perf_counter(), 0
  for _ in range(max(1, min(20, samples // batch - 1))):
    n += len(next(batches)["image"])
  summary["pipeline_img_per_sec"] = n / max(time.perf_counter() - start, 1e-9)
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(first["image"], [texts.get(k.decode(), "") for k in first["key"]])
    sheet.save(out / "contact_sheet.png")
    summary["contact_sheet"] = str(out / "contact_sheet.png")
  _print(summary)
  return summary


def _print(summary: dict) -> None:
  for name, value in summary.items():
    print(f"{name}: {value}")


def contact_sheet(images: np.ndarray, texts: Sequence[str], columns: int = 4, caption_height: int = 28) -> Image.Image:
  """A grid of images, each with the first words of its text below it."""
  size = images.shape[1]
  rows = -(-len(images) // columns)
  sheet = Image.new("RGB", (columns * size, rows * (size + caption_height)), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for i, (image, text) in enumerate(zip(images, texts)):
    x, y = (i % columns) * size, (i // columns) * (size + caption_height)
    sheet.paste(Image.fromarray(image), (x, y))
    chars = max(8, size // 6)
    draw.text((x + 2, y + size + 2), text[:chars], fill=(0, 0, 0))
    draw.text((x + 2, y + size + 14), text[chars:2 * chars], fill=(0, 0, 0))
  return sheet


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    inspect(SHARDS.value, NUM_HOSTS.value, HOST.value, EPOCHS.value, TEXT.value, IMAGE_SIZE.value,
            Path(OUT.value).expanduser() if OUT.value else None, KEYS.value)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  flags.mark_flag_as_required("shards")
  app.run(main)
