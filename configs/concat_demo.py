r"""CONCAT on the panoptic demo scenes: several shapes of a kind per image (things) on textured backgrounds (stuff),
three shapes and one background unseen; sPQ / uPQ / hPQ after the base model, after CAT and after union
fine-tuning.

  python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo    # the demo's CLIP, once
  python -m ovseg_jax.main --config=configs/concat_demo.py --workdir=/tmp/concat_demo \
      --config.clip.checkpoint=/tmp/clip_demo

The base model is the Mask2Former demo's (configs/mask2former_demo.py: small ResNet from scratch, 16 queries, lr
1e-3) with CONCAT's projector; the CLIP is the small one configs/clip_demo.py trains on the demo captions (it
reads the shape names; CLIP is never downloaded). Training images with an unseen segment are dropped. Fixed step
counts per stage on every machine; `:tiny` is the test-sized run.
"""
import ml_collections

from configs import concat_common, mask2former_demo
from data_pipelines import demo_panoptic

UNSEEN = ("star", "moon", "house", "water")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/concat_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  names = tuple(c["name"] for c in demo_panoptic.categories())
  c = concat_common.concat(names, UNSEEN, crop_size=64, batch_size=32, stage_steps=(600, 150, 100))
  c.data.update(source="demo_panoptic", targets="panoptic", demo_root="~/.cache/ovseg_jax/demo", image_size=64,
                num_train=6000, num_eval=300, num_tune=50, max_targets=8, workers=2, short_sides=(48, 56, 64, 72, 80))
  mask2former_demo.demo_model(c)
  c.concat.update(clip_image_size=64, projector_hidden_dim=128, generator_hidden_dims=(128, 128, 128, 128),
                  latent_dim=16, generated_per_class=32)
  c.eval.update(name="demo_panoptic", split="val", max_images=0)
  c.checkpoint.every_steps = 100
  if variant == "tiny":
    c.batch_size = 8  # The tests' 8 fake devices.
    c.stages.update(base_steps=2, cat_steps=2, union_steps=2)
    c.total_steps = 2
    c.log_every_steps = 1
    c.data.update(num_train=24, num_eval=4, num_tune=2, max_targets=5)  # A scene has at most 5 segments.
    c.model.backbone.update(depths=(1, 1, 1, 1), stem_width=8, bottleneck_widths=(8, 8, 8, 8),
                            out_channels=(16, 16, 16, 16))
    c.model.pixel_decoder.update(conv_dim=16, mask_dim=16, num_layers=1, num_heads=2, ffn_dim=32, num_groups=4)
    c.model.decoder.update(num_queries=6, hidden_dim=16, num_heads=2, ffn_dim=32, num_layers=1)
    c.loss.num_points = 32
    c.optimizer.warmup_steps = 1
    c.concat.update(projector_hidden_dim=16, generator_hidden_dims=(16, 16, 16, 16), latent_dim=4,
                    generated_per_class=3, bank_size=4)
    c.checkpoint.every_steps = 2
  return c
