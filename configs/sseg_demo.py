r"""S-Seg on the embedded demo: procedurally generated scenes and captions, trained on a laptop CPU.

Generates the demo data on first use (cached under `data.demo_root`), trains a small ViT MaskFormer from
image-text pairs alone (pixel-colour K-means pseudo masks + contrastive captions), then evaluates mIoU on
held-out labelled scenes against a uniform-random and an all-background predictor.

  python -m ovseg_jax.main --config=configs/sseg_demo.py --workdir=/tmp/sseg_demo

Variants: `--config=configs/sseg_demo.py:tiny` is a seconds-long smoke run (tests use it).
"""
import ml_collections

from configs import eval_suite


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/sseg_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  c = ml_collections.ConfigDict()
  c.trainer = "sseg"
  c.seed = 0
  c.batch_size = 32
  c.total_steps = 1600
  # No wall-clock budget: every machine trains the same 1,600 steps, so the result does not depend on its speed
  # (> 0 stops early with a warning, and the results table names the step reached).
  c.max_train_minutes = 0.0
  c.log_every_steps = 50

  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"  # 'demo' generates scenes; 'shards' reads webdataset tars from data.shards.
  c.data.demo_root = "~/.cache/ovseg_jax/demo"
  c.data.shards = ""
  c.data.image_size = 64
  c.data.num_train = 12000
  c.data.num_eval = 300
  c.data.num_tune = 150
  c.data.palette = "per_class"  # 'shared': colours and textures shared by all classes (data_pipelines/demo_scenes.py).
  c.data.crop_scale = (0.6, 1.0)
  c.data.shuffle_buffer = 2000
  c.data.context_length = 32
  # The whole (cleaned) caption; 'nouns_verbs' keeps only its nouns and verbs; 'multi_label' adds
  # `num_prompts` noun prompts per image as extra positives (GroupViT's multi-label contrastive loss).
  c.data.text = "caption"
  c.data.num_prompts = 3

  c.model = ml_collections.ConfigDict()
  c.model.backbone = ml_collections.ConfigDict(dict(
      patch_size=8, width=128, depth=4, num_heads=4, mlp_dim=512))
  c.model.pixel_decoder = ml_collections.ConfigDict(dict(conv_dim=64, mask_dim=128))
  c.model.decoder = ml_collections.ConfigDict(dict(
      num_queries=16, dim=128, num_heads=4, mlp_dim=256, num_layers=3))
  c.model.text = ml_collections.ConfigDict(dict(
      vocab_size=49408, width=128, depth=2, num_heads=4,
      context_length=c.data.get_ref("context_length")))
  c.model.embed_dim = 128
  # Demo choice (not the paper's): mask features pooled from the pixel embeddings under each mask, so a
  # mask can only be named after what it covers; this grounds words in regions within minutes on a CPU.
  # The paper's setting is mask_feature_source='query', pool_order='mean_then_project'.
  c.model.mask_feature_source = "mask_pooled"
  c.model.pool_order = "project_then_mean"
  c.model.dtype = "float32"

  c.pseudo_masks = ml_collections.ConfigDict()
  c.pseudo_masks.features = "pixels"  # 'pixels' (patch colour statistics) or 'dino' (frozen ViT tokens).
  c.pseudo_masks.num_clusters = 6
  c.pseudo_masks.num_iters = 8
  c.pseudo_masks.init = "kmeans++"
  c.pseudo_masks.cell = 4
  c.pseudo_masks.position_weight = 0.1
  c.pseudo_masks.dino_checkpoint = ""
  c.pseudo_masks.dino_num_heads = 0  # 0: width / 64, as in every released DINO ViT.
  # 'online': K-means in every step on each crop (the paper); 'stored': read the maps that
  # `python -m ovseg_jax.store_pseudo_masks` computed once per whole image (squashed to store_size; 0: image_size).
  c.pseudo_masks.source = "online"
  c.pseudo_masks.store_size = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.weight_focal = 20.0
  c.loss.weight_dice = 1.0
  c.loss.weight_mask = 1.0
  c.loss.weight_contrastive = 1.0
  c.loss.aux_layers = True
  # Not in the paper: unmatched queries are pushed towards empty masks so they do not dilute the
  # area-weighted image embedding.
  c.loss.empty_unmatched_weight = 2.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 5e-4
  c.optimizer.end_lr_factor = 0.01
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 1.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", -1),)
  # (regex over parameter paths, tactic) pairs, first match wins; see ovseg_jax/train/sharding.py. On a pod,
  # e.g. mesh.axes=(("data", -1), ("fsdp", 8)) and (".*", "fsdp") shard large tensors over fsdp.
  c.sharding_rules = ((".*", "fsdp"),)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 300
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True

  # The held-out demo split with the demo protocol (`configs/eval_suite.py:demo`): the background threshold is
  # chosen on the separate tune split, background's scene words ("grass", "sand", ...) let it compete as a class,
  # each pixel takes its winning mask's class; chance baselines are scored on the same labels.
  c.eval = eval_suite.get_config("demo")
  c.eval.num_overlays = 8

  if variant == "tiny":
    c.batch_size = 8
    c.total_steps = 6
    c.log_every_steps = 2
    c.data.num_train = 64
    c.data.num_eval = 16
    c.data.num_tune = 8
    c.data.shuffle_buffer = 32
    c.data.context_length = 16
    c.model.backbone.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.pixel_decoder.update(conv_dim=32, mask_dim=32)
    c.model.decoder.update(num_queries=8, dim=32, num_heads=2, mlp_dim=64, num_layers=2)
    c.model.text.update(width=32, depth=1, num_heads=2)
    c.model.embed_dim = 32
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_steps = 3
    c.eval.protocol.batch_size = 8
    c.eval.num_overlays = 2
  return c
