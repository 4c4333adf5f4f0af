r"""Mask2Former R50 semantic segmentation on ADE20K-150 as released (Mask2Former
`configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml`): batch 16, 160k iterations, AdamW 1e-4,
weight decay 0.05, backbone lr x0.1, poly 0.9, full-model clip 0.01, class 2 / mask 5 / dice 5, 512 crops of
images with short side 256-1024 (max 2048).

  python -m ovseg_jax.main --config=configs/mask2former_ade150.py --workdir=W \
      --config.data.root=/data/ADEChallengeData2016 --config.model.backbone.checkpoint=R-50.pkl
  python -m ovseg_jax.plan_memory --config=configs/mask2former_ade150.py --per_device_batch=2,1

`:runlocal` runs 10 steps at batch 2.
"""
import ml_collections

from configs import eval_suite, mask2former_common
from data_pipelines.eval_datasets import ade


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/mask2former_ade150.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  # INPUT.MIN_SIZE_TRAIN [int(x * 0.1 * 512) for x in range(5, 21)], MAX_SIZE_TRAIN 2048, CROP 512.
  c = mask2former_common.semantic(ade.CLASSES, crop_size=512, short_sides=tuple(int(x * 0.1 * 512)
                                                                                for x in range(5, 21)),
                                  max_size=2048, batch_size=16, total_steps=160_000)
  c.data.dataset = "ade150"
  # MIN_SIZE_TEST 512: the engine scores 512 windows (stride 341) of images with short side 512.
  c.eval.protocol = eval_suite.protocol(short_side=512, window=512, stride=341, batch_size=4, background="none")
  c.eval.datasets = [eval_suite.dataset("ade150", root=c.data.get_ref("root"), split="val")]
  if variant == "runlocal":
    mask2former_common.runlocal(c)
  return c
