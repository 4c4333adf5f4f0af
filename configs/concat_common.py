"""Settings shared by the CONCAT configs (Chen et al. 2024, "Generalizable Semantic Vision Query Generation for
Zero-shot Panoptic and Semantic Segmentation", arXiv 2402.13697, and its supplement). Each value names its source;
"chosen" marks a value the papers leave open."""
import ml_collections

from configs import mask2former_common


def concat(class_names: tuple[str, ...], unseen: tuple[str, ...], crop_size: int, batch_size: int,
           stage_steps: tuple[int, int, int]) -> ml_collections.ConfigDict:
  """Mask2Former R50 base (supplement: "the same hyperparameters as the original Mask2Former") with CONCAT's
  heads and stages; `stage_steps` = (base, CAT, union fine-tuning) iterations."""
  c = mask2former_common.semantic(class_names, crop_size=crop_size, short_sides=(crop_size,), max_size=0,
                                  batch_size=batch_size, total_steps=stage_steps[0])
  c.trainer = "concat"
  c.data.unseen_classes = unseen
  # Supplement "Other settings": batch 16, flip 0.5; AdamW lr 1e-4 for ResNet (mask2former_common), ImageNet-1k R50.
  c.stages = ml_collections.ConfigDict(dict(
      base_steps=stage_steps[0], cat_steps=stage_steps[1], union_steps=stage_steps[2],
      generator_lr_multiplier=10.0,  # Supplement sec. 1: "a learning rate ten times higher".
      union_lr_multiplier=0.1))  # Supplement sec. 1: "0.1 times the base model".
  c.concat = ml_collections.ConfigDict(dict(
      setting="transductive",  # 'inductive': no unseen names in training, no CAT / union; +1 on unseen logits.
      tau=0.07,  # Supplement sec. 1: tau = 0.07 (the projector's cosine temperature).
      gamma=2.0,  # Supplement sec. 1 and Table 7: segments enhanced with gamma = 2.
      # Supplement sec. 1 and Table 1: "bank size in CGA is 32" CLS tokens as CON's negatives. Taken from the step's
      # global batch (the other images' complete and segment tokens: batch 16 gives far more than 32), not a queue
      # across steps: the papers' available text does not say the bank persists, and the train state holds only
      # parameters and optimizer state.
      bank_size=32,
      con_weight=1.0,  # Chosen: the papers give no weight for CON beside Mask2Former's terms.
      tau_r=0.07,  # Supplement Table 3: tau_r = 0.07 with bank 32.
      lambda_r=0.1,  # Supplement sec. 1; weights vision -> semantic here (losses.py says which term is which).
      lambda_f=0.01,  # Supplement sec. 1; weights the VAE's reconstruction + KL here.
      unseen_logit_increment=1.0,  # Supplement sec. 1: +1 on unseen logits at inference (inductive only).
      generated_per_class=150,  # Supplement Table 5: 150 noise samples per unseen class (the reported setting).
      projector_hidden_dim=512,  # Chosen: the supplement's "simple MLP", two layers of this width.
      generator_hidden_dims=(512, 512, 512, 512),  # Four Linear-BN-LeakyReLU blocks (supplement); width chosen.
      latent_dim=64,  # Chosen.
      clip_image_size=224,  # CLIP ViT-B/16's input (supplement: CLIP ViT-B/16) for the CLS tokens.
      prompt="a photo of a {}."))  # Chosen: the single template of ZegCLIP / PADing-style text embeddings.
  c.clip = ml_collections.ConfigDict(dict(
      checkpoint="",  # CLIP ViT-B/16: OpenAI .pt, open_clip file, HF directory, or a CLIP training workdir.
      activation=""))
  # Panoptic evaluation of each stage on `eval.split` of data.root; Mask2Former's COCO panoptic inference thresholds.
  c.eval = ml_collections.ConfigDict(dict(name="coco_panoptic", split="val", object_mask_threshold=0.8,
                                          overlap_threshold=0.8, max_images=0))
  return c


def shrink_for_runlocal(c: ml_collections.ConfigDict) -> None:
  """The `:runlocal` variant: ten steps per stage at batch 2, to check a machine end to end."""
  c.batch_size = 2
  c.stages.update(base_steps=10, cat_steps=10, union_steps=10)
  c.total_steps = 10
  c.log_every_steps = 2
  c.data.workers = 2
  c.checkpoint.every_steps = 5
