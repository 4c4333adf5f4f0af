"""Mask-category pair mining on a hand-made image, caption and masks, with towers that embed colours: the miner
must pick the noun whose colour each mask shows, drop empty masks, and write resumable shards the CLIP trainer's
reader accepts."""
import io
import json
import tarfile

import numpy as np
from PIL import Image

from data_pipelines import image_text
from ovseg_jax.methods.clip.objective import FILL_COLOUR
from ovseg_jax.methods.ovseg import pairs

COLOURS = {"square": (230, 20, 20), "circle": (20, 20, 230), "grass": (20, 200, 20)}
CAPTION = "A square and a circle lying on the grass."


def _scene():
  image = np.zeros((32, 32, 3), np.uint8)
  image[:] = COLOURS["grass"]
  masks = np.zeros((4, 32, 32), bool)
  masks[0, 2:12, 2:12] = True  # The square.
  yy, xx = np.mgrid[:32, :32]
  masks[1] = (yy - 22) ** 2 + (xx - 22) ** 2 < 36  # The circle.
  image[masks[0]], image[masks[1]] = COLOURS["square"], COLOURS["circle"]
  masks[2] = ~(masks[0] | masks[1])  # The grass.
  return image, masks  # masks[3] stays empty.


def _encode_crops(crops):
  """The mean colour of the kept pixels, centred: a stand-in image tower that sees colour only."""
  kept = np.any(crops != np.asarray(FILL_COLOUR, np.uint8), axis=-1)
  means = np.stack([c[k].mean(0) for c, k in zip(crops.astype(np.float64), kept)])
  return means - 128


def _encode_texts(texts):
  return np.stack([np.asarray(next(v for k, v in COLOURS.items() if k in t), np.float64) - 128 for t in texts])


def test_each_mask_gets_the_noun_of_its_colour_and_empty_masks_are_dropped():
  image, masks = _scene()
  counts = {}
  found = pairs.pairs_of_image(image, CAPTION, masks, _encode_crops, _encode_texts, size=16, counts=counts)
  assert [(p.mask_index, p.noun) for p in found] == [(0, "square"), (1, "circle"), (2, "grass")]
  assert counts == {"images": 1, "masks": 4, "masks_empty": 1, "pairs": 3, "pairs_dropped": 0}
  crop = found[0].crop
  assert crop.shape == (16, 16, 3) and np.all(np.abs(crop[1:-1, 1:-1].astype(int) - COLOURS["square"]) <= 1)


def test_noun_assignment_keeps_one_mask_per_noun():
  image, masks = _scene()
  masks = np.concatenate([masks, masks[:1] & (np.arange(32) < 6)[:, None]])  # A second, smaller square mask.
  counts = {}
  found = pairs.pairs_of_image(image, CAPTION, masks, _encode_crops, _encode_texts, size=16, assign="noun",
                               counts=counts)
  assert sorted(p.noun for p in found) == ["circle", "grass", "square"]
  assert counts["pairs_dropped"] == 1


def test_captions_without_nouns_give_no_pairs():
  image, masks = _scene()
  counts = {}
  assert pairs.pairs_of_image(image, "!!!", masks, _encode_crops, _encode_texts, size=16, counts=counts) == []
  assert counts["images_without_nouns"] == 1


def _write_input(path, keys):
  image, _ = _scene()
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  with tarfile.open(path, "w") as tar:
    for key in keys:
      for name, data in ((f"{key}.png", buffer.getvalue()), (f"{key}.txt", CAPTION.encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_mined_shards_resume_split_over_hosts_and_read_as_training_data(tmp_path):
  (tmp_path / "in").mkdir()
  for shard in range(2):
    _write_input(tmp_path / "in" / f"{shard:05d}.tar", [f"{shard}{i:04d}" for i in range(3)])
  calls = []
  propose = lambda image: (calls.append(1), _scene()[1])[1]
  options = dict(encode_crops=_encode_crops, encode_texts=_encode_texts, size=16)
  pattern = str(tmp_path / "in" / "{00000..00001}.tar")
  first = pairs.mine_shards(pattern, tmp_path / "out", propose, process_index=0, process_count=2, **options)
  assert first["images"] == 3 and first["pairs"] == 9 and len(calls) == 3  # Host 0's share: one shard.
  totals = pairs.mine_shards(pattern, tmp_path / "out", propose, process_index=1, process_count=2, **options)
  assert totals["images"] == 6 and totals["pairs"] == 18 and totals["masks_empty"] == 6
  again = pairs.mine_shards(pattern, tmp_path / "out", propose, process_index=0, process_count=1, **options)
  assert again == totals and len(calls) == 6  # Nothing mined twice.
  batches, _ = image_text.make_image_text_iterator(str(tmp_path / "out" / "{00000..00001}.tar"), batch_size=6, image_size=16,
                                                   context_length=16, crop_scale=(1.0, 1.0), flip=False,
                                                   shuffle_buffer=0)
  batch = next(batches)
  assert batch["image"].shape == (6, 16, 16, 3)
  meta = [json.loads(m.read_text()) for m in (tmp_path / "out").glob("*.json")]
  assert {m["pairs"] for m in meta} == {9}


def test_clip_towers_serve_as_encoders():
  import jax
  from ovseg_jax.models.clip import CLIP, ClipArchitecture
  model = CLIP(ClipArchitecture(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1,
                                vision_heads=2, context_length=16, vocab_size=49408, text_width=8, text_layers=1,
                                text_heads=1))
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32),
                               np.zeros((1, 16), np.int32))["params"]
  encode_crops, encode_texts = pairs.clip_encoders(model, params, context_length=16)
  image, masks = _scene()
  found = pairs.pairs_of_image(image, CAPTION, masks, encode_crops, encode_texts, size=16)
  assert len(found) == 3 and {p.noun for p in found} <= {"square", "circle", "grass"}
