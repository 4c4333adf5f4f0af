r"""MAFT: IP-CLIP ViT-B/16 fine-tuned on COCO-Stuff with a frozen supervised Mask2Former's proposals, as the released
`configs/coco-stuff-164k-156/mask2former_maft.yaml` (jiaosiyu1999/MAFT) with its base files
(`coco-stuff-164k-171/mask2former_R50_bs32_60k.yaml`, `Base-COCOStuff164K-171.yaml`) and `freeseg/config.py`.

  python -m ovseg_jax.main --config=configs/maft_coco_stuff.py --workdir=W --config.data.root=/data/coco \
      --config.init.clip=ViT-B-16.pt --config.init.mask2former=M2F_WORKDIR
  python -m ovseg_jax.plan_memory --config=configs/maft_coco_stuff.py --per_device_batch=2,1

M2F_WORKDIR: a run of `configs/mask2former_coco_stuff.py` (156 seen classes; the released recipe takes the
proposals of a FreeSeg model trained on them). `:runlocal` runs 10 steps at batch 2.
"""
import ml_collections

from configs import eval_suite, mask2former_coco_stuff

# OpenAI's ViT-B/16 (CLIP_MODEL_NAME "ViT-B/16").
VIT_B16 = dict(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
               context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8,
               activation="quick_gelu", layer_norm_eps=1e-5, mask_prompt_depth=0)


def common(data: ml_collections.ConfigDict, model: dict, batch_size: int, total_steps: int
           ) -> ml_collections.ConfigDict:
  """The MAFT recipe around a data section (Mask2Former's semantic crops) and a CLIP architecture."""
  c = ml_collections.ConfigDict()
  c.trainer = "maft"
  c.seed = 42  # SEED.
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.max_train_minutes = 0.0
  c.log_every_steps = 20
  c.data = data
  c.model = ml_collections.ConfigDict(model)  # The CLIP of init.clip (models/clip.py ClipArchitecture).
  c.init = ml_collections.ConfigDict(dict(
      clip="",  # A CLIP file (OpenAI .pt, open_clip, HF directory) or CLIP training workdir.
      activation="",  # Only for open_clip state dicts without open_clip_config.json.
      required=True,  # MAFT fine-tunes a trained CLIP: no random start.
      mask2former=""))  # The workdir of a Mask2Former training run: the frozen proposal generator.
  c.maft = ml_collections.ConfigDict(dict(
      start_layers=8,  # MODEL.START_LAYERS: masked attention in blocks 8-11 of 12.
      input_size=480,  # MAFT.forward: clip_images_480.
      distillation_weight=0.1,  # MODEL.dis_weight.
      templates="vild"))  # PredefinedPromptExtractor: the 14 ViLD templates, averaged.
  # SOLVER: ADAMW (torch defaults b1 0.9, b2 0.999, eps 1e-8), BASE_LR 1e-5, WEIGHT_DECAY 1e-4 (WEIGHT_DECAY_NORM
  # 0), WarmupPolyLR (POLY_LR_POWER 0.9, WARMUP_ITERS 0), CLIP_GRADIENTS full_model 0.01.
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=1e-4, poly_power=0.9, warmup_steps=0, grad_clip_norm=0.01, b1=0.9, b2=0.999, eps=1e-8))
  c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),)))
  c.sharding_rules = ((".*", "fsdp"),)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, async_save=True))  # TEST.EVAL_PERIOD.
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"configs/maft_coco_stuff.py: unknown variant {variant!r}; use 'default' or 'runlocal'.")
  m2f = mask2former_coco_stuff.get_config()
  # DATASETS.TRAIN coco_2017_train_stuff_sem_seg with all 171 classes (register_coco_stuff_164k.py); INPUT:
  # 640 crops of the Mask2Former base (IMAGE_SIZE 640, mask_former_semantic mapper).
  data = ml_collections.ConfigDict(m2f.data.to_dict())
  data.unseen_classes = ()
  c = common(data, VIT_B16, batch_size=16, total_steps=1000)  # IMS_PER_BATCH 16, MAX_ITER 1000.
  # The released eval.yaml tests on other datasets; here COCO-Stuff val as the proposal network is evaluated.
  c.eval = ml_collections.ConfigDict(m2f.eval.to_dict())
  c.eval.datasets = [eval_suite.dataset("coco_stuff", root=c.data.get_ref("root"), split="val")]
  if variant == "runlocal":
    c.batch_size = 2
    c.total_steps = 10
    c.log_every_steps = 2
    c.data.workers = 2
    c.checkpoint.every_steps = 5
  return c
