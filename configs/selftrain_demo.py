r"""S-Seg+ on the embedded demo: the demo S-Seg labels 6,000 of its own training images (captions unused),
then a small ViT UperNet, initialised from the teacher's ViT, trains on those pseudo labels.

  python -m ovseg_jax.main --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo          # the teacher
  python -m ovseg_jax.main --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus \
      --config.teacher_workdir=/tmp/sseg_demo

Prints S-Seg+ beside S-Seg on the same held-out images. Variant `tiny` is the test-sized run.
"""
import ml_collections

from configs import eval_suite, selftrain_common, sseg_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/selftrain_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  c = selftrain_common.second_stage(total_steps=1200)
  c.teacher = sseg_demo.get_config(None if variant == "default" else "tiny")
  c.teacher_workdir = "/tmp/sseg_demo"
  c.batch_size = 32
  c.max_train_minutes = 0.0  # A fixed number of steps on every machine.
  c.pseudo_labels.num_images = 6000
  c.init.from_teacher = True  # The demo has no MAE checkpoint; the teacher's image-text-trained ViT stands in.
  size = c.teacher.data.image_size  # Whole 64-px images, flipped at random: no rescaling or cropping.
  c.data.update(crop_size=size, scale=(size, size), ratio_range=(1.0, 1.0), cat_max_ratio=1.0, workers=2)
  c.model.backbone = c.teacher.model.backbone.to_dict()
  c.model.feature_blocks = ()  # Blocks at 4/6/8/12 twelfths of the teacher's depth.
  c.model.channels = 64
  c.optimizer.update(lr=5e-4, warmup_steps=100)
  c.checkpoint.update(every_steps=300)
  # S-Seg+ beside its teacher and the chance baselines on the demo's held-out split (the teacher's background
  # threshold chosen on the tune split); the teacher also labels the training images with this protocol.
  c.eval = eval_suite.get_config("demo")
  c.eval.num_overlays = 8
  if variant == "tiny":
    c.teacher.model.backbone.depth = 4  # UperNet takes four depths.
    c.model.backbone.depth = 4
    c.total_steps = 4
    c.batch_size = 8
    c.log_every_steps = 2
    c.pseudo_labels.num_images = 16
    c.model.channels = 16
    c.optimizer.warmup_steps = 1
    c.checkpoint.every_steps = 2
    c.eval.protocol.batch_size = 8
    c.eval.num_overlays = 2
  return c
