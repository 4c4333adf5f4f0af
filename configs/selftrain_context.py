r"""S-Seg+ on Pascal Context with background (59 classes and background, as S-Seg evaluates it), as published (S-Seg
appendix Table 6): 40,000 iterations.

  python -m ovseg_jax.main --config=configs/selftrain_context.py --workdir=WORKDIR \
      --config.teacher_workdir=SSEG_WORKDIR --config.data.root=VOCdevkit/VOC2010 \
      --config.init.vit_checkpoint=mae_pretrain_vit_base.pth

The teacher labels the context60 train split (background below GroupViT's threshold 0.35, so the second stage
learns background too); add
`--config.pseudo_labels.classifier=ensemble:ovseg_context --config.pseudo_labels.clip.checkpoint=ViT-B-16.pt` to
label with a CLIP ensemble. `python -m ovseg_jax.evaluate --config=configs/selftrain_context.py --workdir=WORKDIR
...` re-evaluates the latest checkpoint.
"""
import ml_collections

from configs import selftrain_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return selftrain_common.on_dataset(total_steps=40_000, dataset="context60", background_threshold=0.35)
