r"""CONCAT on COCO panoptic, zero-shot (PADing's split: 119 seen / 14 unseen categories; training images with an
unseen segment dropped), Mask2Former R50 base, CLIP ViT-B/16 text space (arXiv 2402.13697 and its supplement).

  python -m ovseg_jax.main --config=configs/concat_coco_panoptic.py --workdir=W --config.data.root=/data/coco \
      --config.clip.checkpoint=ViT-B-16.pt --config.model.backbone.checkpoint=R-50.pkl
  ... --config.concat.setting=inductive     # base only, +1 on unseen logits at inference

Values and sources: supplement sec. 1 (base 140,350 iterations = 48 epochs, CAT 36,875 = 12 epochs; generator lr
x10; union fine-tuning lr x0.1; gamma 2, tau 0.07, lambda_r 0.1, lambda_f 0.01, bank 32; +1 unseen logit) and
"Other settings" (batch 16, flip 0.5, resize scale 0.1-2.0 and 1024 crops, AdamW 1e-4, ImageNet-1k R50); Mask2Former
R50 COCO panoptic for the rest (`configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml`: class 2 /
mask 5 / dice 5, no-object 0.1, 100 queries, weight decay 0.05, backbone x0.1, clip 0.01, object-mask and overlap
thresholds 0.8). Chosen where the papers are silent: union fine-tuning steps (the supplement reports "the best"
without a count; 10,000 here), CON weight 1, projector / generator widths (concat_common.py).
`:runlocal` runs 10 base steps at batch 2.
"""
import ml_collections

from configs import concat_common
from data_pipelines import coco_panoptic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/concat_coco_panoptic.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  c = concat_common.concat(coco_panoptic.CLASS_NAMES, coco_panoptic.UNSEEN, crop_size=1024, batch_size=16,
                           stage_steps=(140_350, 36_875, 10_000))
  # Large-scale jitter (Mask2Former's COCO panoptic LSJ mapper): fit 1024 x 1024 times 0.1-2.0, crop 1024, flip.
  c.data.update(source="coco_panoptic", targets="panoptic", split="train", short_sides=(), scale=(1024, 1024),
                ratio_range=(0.1, 2.0), max_targets=100)
  c.eval.update(name="coco_panoptic", split="val")
  if variant == "runlocal":
    concat_common.shrink_for_runlocal(c)
    c.eval.max_images = 10
  return c
