r"""OVSeg's CLIP adaptation as released (facebookresearch/ov-seg, open_clip_training/src/scripts/): masked-crop
fine-tuning of OpenAI's CLIP on mined mask-category pairs, then mask prompt tuning on the fine-tuned weights.

  python -m ovseg_jax.main --config=configs/ovseg_finetune.py:L/14 --workdir=/ckpt/ovseg_ft_l14 \
      --config.init.clip=/weights/ViT-L-14.pt --config.data.shards='/data/coco_pairs/{00000..00442}.tar'
  python -m ovseg_jax.main --config=configs/ovseg_finetune.py:L/14,prompts --workdir=/ckpt/ovseg_mpt_l14 \
      --config.init.clip=/ckpt/ovseg_ft_l14 --config.data.shards='/data/coco_pairs/{00000..00442}.tar'

Variants: 'B/16' or 'L/14', optionally ',prompts'. Values and their sources:
- fine-tuning (coco_proposal_1cap_finetune_Vit{B,L}.sh): --lock-text, --lr 5e-6, --warmup 100, cosine (open_clip's
  only schedule), --epoch 5 over --train-num-samples 442117, --force-quick-gelu; AdamW betas (0.9, 0.98), eps 1e-6
  (open_clip's ViT defaults, training/params.py) and --wd 0.2 (its default) off gains, biases and logit scale;
  RandomResizedCrop(224, scale=(0.9, 1.0)), bicubic, no flip (open_clip/transform.py).
- batch: ViT-L/14 4 GPUs x --batch-size 32 = 128 (the released script); ViT-B/16 1024 (OVSeg appendix D: "a larger
  batch size 1024"; the released ViT-B script has 4 x 128 = 512).
- mask prompt tuning (coco_proposal_1cap_mask_prompt_tuning_VitL.sh): --mask-emb-depth 3, --lr 0.05, --mask_wd 0,
  --lock-text, --lock-image with only the mask embedding unlocked, from the fine-tuned checkpoint; the crops'
  masks are the pixels not of the fill colour (open_clip/transform.py Maskget). The release also leaves the
  logit scale trainable; here only the prompts train (inference uses a fixed scale of 100).
"""
import ml_collections

from configs import clip_demo

NUM_PAIRS = 442117  # Mask-category pairs of COCO proposals x one caption (--train-num-samples).
EPOCHS = 5
ARCHITECTURES = {
    "B/16": dict(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
                 context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8),
    "L/14": dict(embed_dim=768, image_size=224, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
                 context_length=77, vocab_size=49408, text_width=768, text_layers=12, text_heads=12),
}
BATCH_SIZES = {"B/16": 1024, "L/14": 128}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, _, stage = (arg or "L/14").partition(",")
  if name not in ARCHITECTURES or stage not in ("", "prompts"):
    raise ValueError(f"configs/ovseg_finetune.py:{arg}: use one of {sorted(ARCHITECTURES)}, optionally followed by "
                     "',prompts' (e.g. 'L/14,prompts').")
  c = clip_demo.get_config()
  c.batch_size = BATCH_SIZES[name]
  c.total_steps = EPOCHS * (NUM_PAIRS // c.batch_size)  # open_clip drops each epoch's last partial batch.
  c.max_train_minutes = 0.0
  c.log_every_steps = 100
  c.data.source = "shards"
  c.data.shards = ""  # Mined pairs, e.g. '/data/coco_pairs/{00000..00442}.tar'.
  c.data.image_size = 224
  c.data.crop_scale = (0.9, 1.0)
  c.data.flip = False
  c.data.context_length = 77
  c.data.shuffle_buffer = 10000
  c.model.update(ARCHITECTURES[name], mask_prompt_depth=3 if stage else 0)
  c.init.clip = ""  # Fine-tuning: OpenAI's ViT-B-16.pt / ViT-L-14.pt; prompt tuning: the fine-tuning workdir.
  c.init.required = True
  c.freeze = ("image", "text", "logit_scale") if stage else ("text",)
  c.optimizer.lr = 0.05 if stage else 5e-6
  c.optimizer.warmup_steps = 100
  c.checkpoint.every_steps = 1000
  return c
