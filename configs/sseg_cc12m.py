r"""S-Seg as published (Lai 2024, appendix A.1, Table 5), trained on CC12M.

MaskFormer with a Swin-S backbone, 64 queries, 6-layer decoder, hidden and output width 256; a 12-layer,
width-256 text transformer (context 77, vocabulary 49408); 2-layer MLPs into a 256-d joint space; pseudo
masks from DINO ViT-S/8 with K-means K=8; loss weights dice 1, focal 20, mask 1, contrastive 1; AdamW
(lr 5e-4 at batch 4096, scaled linearly for other batches; weight decay 0.05; betas 0.9/0.999), cosine decay,
2 warmup epochs, 30 epochs; random resized 224x224 crops; nouns and verbs of the captions.

  python -m ovseg_jax.main --config=configs/sseg_cc12m.py --workdir=gs://BUCKET/sseg_cc12m \
      --config.data.shards='gs://BUCKET/cc12m/{00000..01242}.tar' \
      --config.pseudo_masks.dino_checkpoint=/path/dino_deitsmall8_pretrain.pth

On a TPU pod: launch/tpu_pod.sh with this command. `--config=configs/sseg_cc12m.py:runlocal` shrinks the run
(batch 8, 20 steps, random DINO weights) to check a machine end to end.
"""
import ml_collections

from configs import eval_suite

REFERENCE_BATCH = 4096
REFERENCE_LR = 5e-4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return paper_config(arg, shards="cc12m/{00000..01242}.tar", num_examples=12_000_000)


def paper_config(arg: str | None, shards: str | tuple[str, ...], num_examples: int) -> ml_collections.ConfigDict:
  """The published setting on `shards` (img2dataset output; a tuple of patterns trains on their union) of
  `num_examples` pairs, which sets the epoch length."""
  variant = arg or "default"
  if variant not in ("default", "runlocal"):
    raise ValueError(f"unknown variant {variant!r} of the S-Seg paper config; use 'default' or 'runlocal'.")
  c = ml_collections.ConfigDict()
  c.trainer = "sseg"
  c.seed = 0
  c.batch_size = REFERENCE_BATCH
  c.num_epochs = 30
  c.warmup_epochs = 2
  c.log_every_steps = 100
  c.max_train_minutes = 0.0  # No wall-clock budget: pods are preempted by SIGTERM, which checkpoints.

  c.data = ml_collections.ConfigDict()
  c.data.source = "shards"
  c.data.shards = shards
  # Or a weighted mixture instead of the union: (name, shard pattern, weight) triples; each batch then takes
  # weight-proportional shares from every source (data_pipelines/mixture.py).
  c.data.datasets = ()
  c.data.num_examples = num_examples
  c.data.image_size = 224
  c.data.crop_scale = (0.08, 1.0)  # Random resized crop (torchvision's default scale range).
  c.data.shuffle_buffer = 10_000
  c.data.context_length = 77
  c.data.text = "nouns_verbs"  # The captions' nouns and verbs (data_pipelines/captions.py), as published.
  c.data.num_prompts = 3  # With data.text='multi_label': GroupViT's noun prompts per image (not in S-Seg).

  c.model = ml_collections.ConfigDict()
  c.model.backbone = ml_collections.ConfigDict(dict(name="Swin-S", drop_path_rate=0.3, checkpoint=""))
  c.model.pixel_decoder = ml_collections.ConfigDict(dict(conv_dim=256, mask_dim=256))
  c.model.decoder = ml_collections.ConfigDict(dict(num_queries=64, dim=256, num_heads=8, mlp_dim=2048, num_layers=6,
                                                   dropout_rate=0.1))
  c.model.text = ml_collections.ConfigDict(dict(vocab_size=49408, width=256, depth=12, num_heads=4,
                                                context_length=c.data.get_ref("context_length")))
  c.model.embed_dim = 256
  c.model.mask_feature_source = "query"
  c.model.pool_order = "mean_then_project"
  c.model.dtype = "bfloat16"  # Compute dtype; parameters stay float32.

  c.pseudo_masks = ml_collections.ConfigDict()
  c.pseudo_masks.features = "dino"
  c.pseudo_masks.dino_checkpoint = ""  # dino_deitsmall8_pretrain.pth or a facebook/dino-vits8 directory.
  c.pseudo_masks.dino_num_heads = 0
  c.pseudo_masks.num_clusters = 8
  c.pseudo_masks.num_iters = 10
  c.pseudo_masks.init = "kmeans++"
  c.pseudo_masks.cell = 4  # Only for features='pixels'.
  c.pseudo_masks.position_weight = 0.0
  # 'online': K-means in every step on each crop (the paper); 'stored': read the maps that
  # `python -m ovseg_jax.store_pseudo_masks` computed once per whole image (squashed to store_size; 0: image_size).
  c.pseudo_masks.source = "online"
  c.pseudo_masks.store_size = 0

  c.loss = ml_collections.ConfigDict(dict(weight_focal=20.0, weight_dice=1.0, weight_mask=1.0,
                                          weight_contrastive=1.0, aux_layers=True, empty_unmatched_weight=0.0))

  c.optimizer = ml_collections.ConfigDict(dict(end_lr_factor=0.0, weight_decay=0.05, b1=0.9,
                                               b2=0.999, grad_clip_norm=0.0))

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", -1), ("fsdp", 1))  # e.g. (("data", -1), ("fsdp", 8)) to shard the state 8 ways.
  c.sharding_rules = ((".*", "fsdp"),)

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=2000, keep=3, async_save=True))

  # S-Seg's evaluation suite (VOC, Pascal Context, COCO-Object): runs after training once the dataset roots are
  # set (--config.eval.datasets.0.root=...), else `python -m ovseg_jax.evaluate` runs it later.
  c.eval = eval_suite.get_config()
  if variant == "runlocal":
    c.batch_size = 8
    c.num_epochs = 1
    c.warmup_epochs = 0
    c.data.num_examples = 160
    c.data.shuffle_buffer = 64
    c.log_every_steps = 5
    c.pseudo_masks.dino_checkpoint = "random:S/8"
    c.model.dtype = "float32"
    c.checkpoint.every_steps = 10
  # Derived lazily, so overrides of batch_size, num_examples or epochs on the command line carry through:
  # the learning rate scaled linearly with the batch, epochs turned into steps.
  batch, examples = c.get_ref("batch_size"), c.data.get_ref("num_examples")
  c.optimizer.lr = batch.to_float() * (REFERENCE_LR / REFERENCE_BATCH)
  steps_per_epoch = examples // batch
  c.total_steps = c.get_ref("num_epochs") * steps_per_epoch
  c.optimizer.warmup_steps = c.get_ref("warmup_epochs") * steps_per_epoch
  return c
