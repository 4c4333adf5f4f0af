r"""EBSeg on the embedded demo: trained with the pixel labels of the demo's training scenes, star, moon and house
held out (their pixels ignored, as in `configs/mask2former_demo.py`), evaluated on the held-out split with seen /
unseen / harmonic mIoU. Its CLIP is the demo's (train it first):

  python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo
  python -m ovseg_jax.main --config=configs/ebseg_demo.py --workdir=/tmp/ebseg_demo

The released recipe otherwise (`configs/ebseg_vitb.py`: frozen CLIP but for its position embedding, AdaB, A and B
cross-entropy 1.5 each, mask 5, dice 5, SSC 10, AdamW with weight decay 0.05, full-model clip 0.01, ViLD
templates, the three-way inference with the ViT-B weights); the demo's choices:
- no pretrained SAM exists at this size, and a frozen random encoder would hand AdaB random features, so the
  SAM-architecture encoder (patch 8, width 96, 4 blocks, all global, as the four outputs want one block each) is
  trained from random initialisation (`model.train_sam`);
- the demo CLIP was trained on 64-pixel scenes, so it sees them at full size (`clip_resolution` 1.0: the
  released 0.5 brings 640 crops near CLIP's own 224) and its 4 blocks split as 12 do: fusion after blocks 1/2/3,
  recognition from block 3;
- SAM's token grid is 8 x 8, so its four outputs are resized by 2, 1, 1/2, 1/4 to strides 4..32;
- the decoder, pixel decoder, queries, points, batch, lr 1e-3 and 600 steps are the Mask2Former demo's.
`:tiny` is the test-sized run (a random CLIP).
"""
import ml_collections

from configs import clip_demo, ebseg_vitb, mask2former_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/ebseg_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  c = mask2former_demo.get_config(variant)
  clip = clip_demo.get_config(variant).model.to_dict()
  sam = dict(width=96, depth=4, num_heads=4, mlp_dim=384, out_channels=64, patch_size=8, image_size=64,
             window_size=4, global_attn_indexes=(0, 1, 2, 3))
  ebseg_vitb.ebseg_sections(c, clip, sam)
  c.model.train_sam = True
  c.model.ebseg.update(sam_scales=(2.0, 1.0, 0.5, 0.25), clip_fusion_blocks=(1, 2, 3), clip_recognition_block=3,
                       clip_resolution=1.0)
  c.init.clip = "/tmp/clip_demo"
  c.loss.num_points = 512 if variant == "default" else 64
  c.optimizer.update(lr=1e-3, warmup_steps=50 if variant == "default" else 1)
  c.inference.classifiers = ("learned", "embedding_a", "embedding_b", "embedding_d")
  if variant == "tiny":
    c.model.sam.update(width=16, num_heads=2, mlp_dim=32, out_channels=8)
    c.model.clip.vision_layers = 2  # One block to fuse from, one for the recognition head.
    c.model.ebseg.update(clip_fusion_blocks=(1, 1, 1), clip_recognition_block=1)
    c.init.update(clip="", required=False)
    c.inference.classifiers = ("learned", "embedding_b")
  return c
