r"""EBSeg with CLIP ViT-L/14 at 336 pixels as released (slonetime/EBSeg `configs/ebseg/ebseg_l.yaml` over
`ebseg_b.yaml`): BASE_LR 8e-5, CLIP_RESOLUTION 0.7, fusion after CLIP blocks 6/12/18 and the recognition head from
block 18 (`ebseg_mask2former_head.py`, `EBSeg.py`), inference weights (0.12, 0.4, 0.6); the SAM image encoder stays
ViT-B (supplement 2.3). Everything else is `configs/ebseg_vitb.py`.

  python -m ovseg_jax.main --config=configs/ebseg_vitl.py --workdir=W --config.data.root=/data/coco \
      --config.init.sam=sam_vit_b_01ec64.pth --config.init.clip=ViT-L-14-336px.pt
"""
import ml_collections

from configs import ebseg_vitb

# OpenAI's ViT-L/14 at 336 (open_clip 'ViT-L-14-336', pretrained 'openai').
VIT_L14_336 = dict(embed_dim=768, image_size=336, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
                   context_length=77, vocab_size=49408, text_width=768, text_layers=12, text_heads=12,
                   activation="quick_gelu", layer_norm_eps=1e-5, mask_prompt_depth=0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ebseg_vitb.get_config(arg)
  c.model.clip = ml_collections.ConfigDict(VIT_L14_336)
  c.model.ebseg.update(clip_fusion_blocks=(6, 12, 18), clip_recognition_block=18, clip_resolution=0.7)
  c.optimizer.lr = 8e-5
  c.inference.ensemble = "ebseg_vitl"
  return c
