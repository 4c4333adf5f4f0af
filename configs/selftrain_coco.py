r"""S-Seg+ on COCO-Object (81 classes with background), as published (S-Seg appendix Table 6): 80,000 iterations.

  python -m ovseg_jax.main --config=configs/selftrain_coco.py --workdir=WORKDIR \
      --config.teacher_workdir=SSEG_WORKDIR --config.data.root=coco \
      --config.init.vit_checkpoint=mae_pretrain_vit_base.pth

The teacher labels the coco_object train split (background threshold 0.95); add
`--config.pseudo_labels.classifier=ensemble:ovseg_voc --config.pseudo_labels.clip.checkpoint=ViT-B-16.pt` to
label with a CLIP ensemble. `python -m ovseg_jax.evaluate --config=configs/selftrain_coco.py --workdir=WORKDIR
...` re-evaluates the latest checkpoint.
"""
import ml_collections

from configs import selftrain_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return selftrain_common.on_dataset(total_steps=80_000, dataset="coco_object", background_threshold=0.95)
