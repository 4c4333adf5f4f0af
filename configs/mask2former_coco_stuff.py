r"""Mask2Former R50 trained on the 156 seen classes of COCO-Stuff (15 unseen classes' pixels ignored), the
proposal network of the zero-shot methods, with the recipe of FreeSeg's `configs/coco-stuff-164k-171/
mask2former_R50_bs32_60k.yaml` and its `Base-COCOStuff164K-171.yaml`: batch 32, 60k iterations, AdamW 1e-4,
weight decay 1e-4 (none on norms and embeddings), backbone lr x0.1, WarmupPolyLR without warmup, full-model clip
0.01, loss weights class 1 / mask 20 / dice 5 with no-object 0.1, decoder dropout 0.1, 640 crops of images with
short side 320-960 (max 2560).

  python -m ovseg_jax.main --config=configs/mask2former_coco_stuff.py --workdir=W \
      --config.data.root=/data/coco --config.model.backbone.checkpoint=R-50.pkl
  python -m ovseg_jax.plan_memory --config=configs/mask2former_coco_stuff.py --per_device_batch=4,2

Evaluated on COCO-Stuff val (seen / unseen / harmonic mIoU): the K+1 head predicts the seen classes only, so the
unseen IoUs are 0 until a text classifier replaces the head. `:runlocal` runs 10 steps at batch 2.
"""
import ml_collections

from configs import eval_suite, mask2former_common
from data_pipelines.eval_datasets import coco


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/mask2former_coco_stuff.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  # INPUT.MIN_SIZE_TRAIN [int(x * 0.1 * 640) for x in range(5, 16)], MAX_SIZE_TRAIN 2560, CROP 640.
  c = mask2former_common.semantic((*coco.THINGS, *coco.STUFF), crop_size=640,
                                  short_sides=tuple(int(x * 0.1 * 640) for x in range(5, 16)), max_size=2560,
                                  batch_size=32, total_steps=60_000)
  c.data.dataset = "coco_stuff"
  c.data.unseen_classes = coco.UNSEEN
  c.loss.update(class_weight=1.0, mask_weight=20.0, dice_weight=5.0)  # CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT.
  c.optimizer.weight_decay = 1e-4  # SOLVER.WEIGHT_DECAY
  c.model.decoder.dropout_rate = 0.1  # MASK_FORMER.DROPOUT, also in the pixel decoder's encoder.
  c.model.pixel_decoder.dropout_rate = 0.1
  c.checkpoint.every_steps = 5000  # TEST.EVAL_PERIOD
  # MIN_SIZE_TEST 640: the engine scores 640 windows (stride 426) of images with short side 640.
  c.eval.protocol = eval_suite.protocol(short_side=640, window=640, stride=426, batch_size=4, background="none")
  c.eval.datasets = [eval_suite.dataset("coco_stuff", root=c.data.get_ref("root"), split="val")]
  if variant == "runlocal":
    mask2former_common.runlocal(c)
  return c
