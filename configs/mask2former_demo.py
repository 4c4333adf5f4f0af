r"""Mask2Former trained with the pixel labels of the embedded demo's training scenes, three object classes held
out (their pixels ignored), evaluated on the held-out split with seen / unseen / harmonic mIoU.

  python -m ovseg_jax.main --config=configs/mask2former_demo.py --workdir=/tmp/m2f_demo
  python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo   # the text tower, then:
  python -m ovseg_jax.main --config=configs/mask2former_demo.py:text --workdir=/tmp/m2f_text_demo

The recipe is Mask2Former's (AdamW, poly, full-model clip 0.01, class 2 / mask 5 / dice 5, no-object 0.1, deep
supervision, matching and importance sampling on device); the demo's choices: a small ResNet trained from
scratch (so no backbone lr multiplier), a 2-layer deformable encoder and 3 decoder layers (one round over the
three scales), 16 queries, lr 1e-3 with 50 warmup steps, 512 points per mask (the masks are 16 x 16), and the
64-pixel scenes resized to a short side of 48-96 before their 64 crops. The K+1 head names the seen classes
only: the held-out classes are never predicted (unseen mIoU 0 by construction). `:text` replaces it by a text
classifier over the demo CLIP's text embeddings of the class names (`model.classifier.text_encoder`, default
/tmp/clip_demo: the workdir of configs/clip_demo.py), trained on the seen names and evaluated on all of them.
`:tiny` is the test-sized run (`:tiny,text` with a text classifier).
"""
import ml_collections

from configs import eval_suite, mask2former_common
from data_pipelines import demo_data

UNSEEN = ("star", "moon", "house")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set((arg or "").split(",")) - {"", "default"}
  if variants - {"tiny", "text"}:
    raise ValueError(f"configs/mask2former_demo.py: unknown variant {arg!r}; use 'default', 'text', 'tiny' or "
                     "'tiny,text'.")
  c = mask2former_common.semantic(tuple(demo_data.class_names()), crop_size=64,
                                  short_sides=(48, 56, 64, 72, 80, 96), max_size=0, batch_size=32, total_steps=600)
  c.max_train_minutes = 0.0  # A fixed number of steps on every machine.
  # The demo cache of configs/sseg_demo.py (same scenes); the first `num_labelled` training scenes with labels.
  # Read through the tf.data pipeline: the labelled scenes are prepared as TensorFlow Datasets into WORKDIR/data.
  c.data.update(source="demo", demo_root="~/.cache/ovseg_jax/demo", image_size=64, num_train=12000, num_eval=300,
                num_tune=150, palette="per_class", num_labelled=6000, unseen_classes=UNSEEN, max_targets=8, workers=2,
                tfds_name="demo", color_aug=False)  # Off, as in the measured demo runs.
  demo_model(c)
  c.checkpoint.every_steps = 500
  c.eval = eval_suite.get_config("demo")
  c.eval.datasets[0].unseen_classes = UNSEEN
  c.eval.num_overlays = 8
  if "text" in variants:
    # configs/clip_demo.py's text tower (embed_dim 128); its caption vocabulary names every demo class.
    c.model.classifier.update(kind="text", text_encoder="/tmp/clip_demo", embed_dim=128)
  if "tiny" in variants:
    c.batch_size = 4
    c.total_steps = 3
    c.max_train_minutes = 0.0
    c.log_every_steps = 1
    c.data.update(num_train=32, num_eval=8, num_tune=4, num_labelled=16)
    c.model.backbone.update(stem_width=8, bottleneck_widths=(8, 8, 8, 8), out_channels=(16, 16, 16, 16))
    c.model.pixel_decoder.update(conv_dim=16, mask_dim=16, num_layers=1, num_heads=2, ffn_dim=32, num_groups=4)
    c.model.decoder.update(num_queries=6, hidden_dim=16, num_heads=2, ffn_dim=32)
    c.loss.num_points = 64
    c.optimizer.warmup_steps = 1
    c.checkpoint.every_steps = 2
    c.eval.protocol.batch_size = 8
    c.eval.num_overlays = 1
  return c


def demo_model(c: ml_collections.ConfigDict) -> None:
  """The small Mask2Former of the demos (a custom 4-stage ResNet, 16 queries, 3 decoder layers) and its optimizer."""
  c.model.backbone = ml_collections.ConfigDict(dict(
      depths=(1, 1, 2, 1), stem_width=32, bottleneck_widths=(32, 48, 64, 96), out_channels=(64, 96, 128, 192)))
  c.model.pixel_decoder.update(conv_dim=64, mask_dim=64, num_layers=2, num_heads=4, ffn_dim=256, num_groups=8)
  c.model.decoder.update(num_queries=16, hidden_dim=64, num_heads=4, ffn_dim=256, num_layers=3)
  c.loss.num_points = 512
  c.optimizer.update(lr=1e-3, backbone_multiplier=1.0, warmup_steps=50)
