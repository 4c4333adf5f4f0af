r"""EBSeg with CLIP ViT-B/16 as released (slonetime/EBSeg `configs/ebseg/ebseg_b.yaml`, its Base
`Base-coco-stuff-164K-171.yaml` and `ebseg/config.py`): trained on all 171 COCO-Stuff classes, evaluated zero-shot
on other datasets.

  python -m ovseg_jax.main --config=configs/ebseg_vitb.py --workdir=W --config.data.root=/data/coco \
      --config.init.sam=sam_vit_b_01ec64.pth --config.init.clip=ViT-B-16.pt
  python -m ovseg_jax.plan_memory --config=configs/ebseg_vitb.py --per_device_batch=2

Sources: SOLVER ADAMW, BASE_LR 1e-4, WEIGHT_DECAY 0.05 (0 on norms and WEIGHT_DECAY_EMBED_GROUP), IMS_PER_BATCH 16,
MAX_ITER 120k, WarmupPolyLR without warmup, CLIP_GRADIENTS full_model 0.01; INPUT crops 640 of images with short
side 320-960 (max 2560), COLOR_AUG_SSD not applied here; MASK_FORMER 100 queries, DEC_LAYERS 10 (9 layers), hidden
256, 8 heads, feed-forward 2048, deformable encoder 6 layers over res3-res5; EBSEG CLASS_WEIGHT 2 (matching; the
class losses x 0.75, `EBSeg.py`), MASK_WEIGHT 5, DICE_WEIGHT 5, no-object 0.1, 12544 points; SSC weight 10;
CLIP_RESOLUTION 0.5, fusion after blocks 3/6/9, recognition head from block 9, ViLD templates; SAM ViT-B frozen but
for its position embedding (supplement 2.3), CLIP frozen but for its position embedding (CLIP_FROZEN_EXCLUDE).
Inference weights (alpha, beta, gamma) = (0.09, 0.3, 0.7). `:runlocal` runs 10 steps at batch 2.
"""
import ml_collections

from configs import eval_suite, mask2former_common
from data_pipelines.eval_datasets import coco

# OpenAI's ViT-B/16 (open_clip 'ViT-B/16', pretrained 'openai').
VIT_B16 = dict(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
               context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8,
               activation="quick_gelu", layer_norm_eps=1e-5, mask_prompt_depth=0)


def ebseg_sections(c: ml_collections.ConfigDict, clip: dict, sam: dict) -> None:
  """The sections every EBSeg config has beside Mask2Former's (model.sam / clip / ebseg, init, loss_weights,
  inference), in their ViT-B/16 values."""
  c.trainer = "ebseg"
  c.model.sam = ml_collections.ConfigDict(sam)
  c.model.train_sam = False
  c.model.clip = ml_collections.ConfigDict(clip)
  c.model.ebseg = ml_collections.ConfigDict(dict(
      sam_scales=(4.0, 2.0, 1.0, 0.5), clip_fusion_blocks=(3, 6, 9), clip_recognition_block=9, clip_resolution=0.5))
  c.model.templates = "vild"
  del c.model.backbone
  c.init = ml_collections.ConfigDict(dict(sam="", clip="", activation="", required=True))
  c.loss.update(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1)
  c.loss_weights = ml_collections.ConfigDict(dict(class_a=1.5, class_b=1.5, ssc=10.0))
  c.optimizer.update(lr=1e-4, weight_decay=0.05, poly_power=0.9, warmup_steps=0, grad_clip_norm=0.01)
  del c.optimizer.backbone_multiplier  # BACKBONE_MULTIPLIER 1.0: every group at the base rate.
  c.inference = ml_collections.ConfigDict(dict(ensemble="ebseg_vitb", classifiers=("learned",)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/ebseg_vitb.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  c = mask2former_common.semantic((*coco.THINGS, *coco.STUFF), crop_size=640,
                                  short_sides=tuple(int(x * 0.1 * 640) for x in range(5, 16)), max_size=2560,
                                  batch_size=16, total_steps=120_000)
  c.data.dataset = "coco_stuff"  # coco_2017_train_stuff_sem_seg: all 171 classes are training classes.
  ebseg_sections(c, VIT_B16, dict(variant="vit_b"))
  c.checkpoint.every_steps = 10_000  # SOLVER.CHECKPOINT_PERIOD
  # MIN_SIZE_TEST 640; every class named with the ViLD templates; background is a class where a dataset has one.
  c.eval.protocol = eval_suite.protocol(short_side=640, window=640, stride=426, batch_size=2, background="none",
                                        templates="vild")
  c.eval.datasets = [eval_suite.dataset(name) for name in ("voc20", "context59", "context459", "ade150", "ade847")]
  if variant == "runlocal":
    mask2former_common.runlocal(c)
  return c
