r"""CONCAT for zero-shot semantic segmentation on COCO-Stuff (171 classes, 156 seen / 15 unseen: the supplement's
list, equal to `data_pipelines.eval_datasets.coco.UNSEEN`), Mask2Former R50 base, CLIP ViT-B/16 text space.

  python -m ovseg_jax.main --config=configs/concat_coco_stuff.py --workdir=W --config.data.root=/data/coco \
      --config.clip.checkpoint=ViT-B-16.pt --config.model.backbone.checkpoint=R-50.pkl

Values and sources: supplement "Other settings" (ZSS: 512 crops, 80k iterations for each of the three stages,
batch 16, flip, AdamW 1e-4) and sec. 1 (CONCAT's values, configs/concat_common.py). Semantic targets (one per class
present), unseen pixels ignored (in ZSS images with unseen classes stay in training, supplement sec. 1);
Mask2Former's semantic recipe for the rest (mask2former_common.py). Chosen: the resize before the 512 crop follows
Mask2Former's COCO-Stuff semantic config (short side 256-1024, max 2048); evaluation as
configs/mask2former_coco_stuff.py (512 windows). `:runlocal` runs 10 steps per stage at batch 2.
"""
import ml_collections

from configs import concat_common, eval_suite
from data_pipelines.eval_datasets import coco


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/concat_coco_stuff.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  c = concat_common.concat((*coco.THINGS, *coco.STUFF), coco.UNSEEN, crop_size=512, batch_size=16,
                           stage_steps=(80_000, 80_000, 80_000))
  c.data.update(source="dataset", dataset="coco_stuff", targets="semantic", split="train",
                short_sides=tuple(int(x * 0.1 * 512) for x in range(5, 21)), max_size=2048)
  c.eval = eval_suite.get_config()
  c.eval.protocol = eval_suite.protocol(short_side=512, window=512, stride=341, batch_size=4, background="none")
  c.eval.datasets = [eval_suite.dataset("coco_stuff", root=c.data.get_ref("root"), split="val")]
  c.eval.num_overlays = 8
  if variant == "runlocal":
    concat_common.shrink_for_runlocal(c)
  return c
