"""Settings shared by the S-Seg+ second-stage configs (paper sec. 4 / appendix: UperNet on an MAE ViT-B/16)."""
import ml_collections

from configs import eval_suite


def second_stage(total_steps: int) -> ml_collections.ConfigDict:
  """The published second stage (S-Seg appendix, Table 6): UperNet (512 channels) on MAE ViT-B/16 features of
  blocks 4/6/8/12, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, layer-wise lr decay 0.7, batch 16,
  polynomial decay after 1.5k warmup iterations; 20k (VOC), 40k (Context), 80k (COCO) iterations; mmseg's
  512 x 512 crops of images rescaled to (2048, 512) x [0.5, 2.0]."""
  c = ml_collections.ConfigDict()
  c.trainer = "selftrain"
  c.seed = 0
  c.batch_size = 16
  c.total_steps = total_steps
  c.max_train_minutes = 0.0
  c.log_every_steps = 50
  c.teacher_workdir = ""
  c.pseudo_labels = ml_collections.ConfigDict(dict(num_images=-1, min_confidence=0.0))
  # vit_checkpoint: an MAE (mae_pretrain_vit_base.pth), DINO or timm ViT file for the backbone.
  c.init = ml_collections.ConfigDict(dict(from_teacher=False, vit_checkpoint=""))
  c.data = ml_collections.ConfigDict(dict(crop_size=512, scale=(2048, 512), ratio_range=(0.5, 2.0),
                                          cat_max_ratio=0.75, workers=8))
  c.model = ml_collections.ConfigDict()
  c.model.backbone = ml_collections.ConfigDict(dict(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072))
  c.model.channels = 512
  c.model.feature_blocks = (4, 6, 8, 12)
  c.model.dropout_rate = 0.1
  c.model.dtype = "float32"
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=1500, poly_power=1.0, weight_decay=0.05, layer_decay=0.7, b1=0.9, b2=0.999,
      grad_clip_norm=0.0))
  c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),)))
  c.sharding_rules = ((".*", "fsdp"),)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=2000, keep=2, async_save=True))
  return c


def on_dataset(total_steps: int, dataset: str, background_threshold: float) -> ml_collections.ConfigDict:
  """The second stage on a real dataset (`data_pipelines.eval_datasets` name): its train split is
  pseudo-labelled by the teacher with S-Seg's evaluation protocol (short side 448, windows 448 / 224, one
  prompt, GroupViT's background threshold), optionally with a CLIP classifier (`pseudo_labels.classifier`:
  'clip_crop', 'ensemble:ovseg_voc', ... with `pseudo_labels.clip.checkpoint`); S-Seg+ is evaluated on its
  val split as mmseg does (short side 512, sliding 512 windows, stride 341), through the evaluation engine."""
  c = second_stage(total_steps)
  c.data.update(dataset=dataset, root="", split="train")
  c.pseudo_labels.classifier = "learned"
  c.pseudo_labels.protocol = eval_suite.protocol(background_threshold=background_threshold)
  c.pseudo_labels.clip = eval_suite.clip()
  # mmseg's whole-model evaluation of the second stage: every class (background included) competes by argmax.
  c.eval = eval_suite.get_config()
  c.eval.protocol = eval_suite.protocol(short_side=512, window=512, stride=341, batch_size=4, background="none")
  c.eval.datasets = [eval_suite.dataset(dataset, root=c.data.get_ref("root"), split="val")]
  c.eval.num_overlays = 8
  return c
