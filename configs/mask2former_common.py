"""Settings shared by the Mask2Former configs: the released R50 semantic-segmentation model and training recipe
(Mask2Former `configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml` and its Base file), each
config overriding what its own source says."""
import ml_collections

from configs import eval_suite


def semantic(class_names: tuple[str, ...], crop_size: int, short_sides: tuple[int, ...], max_size: int,
             batch_size: int, total_steps: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "mask2former"
  c.seed = 0
  c.batch_size = batch_size  # SOLVER.IMS_PER_BATCH
  c.total_steps = total_steps  # SOLVER.MAX_ITER
  c.max_train_minutes = 0.0
  c.log_every_steps = 50

  c.data = ml_collections.ConfigDict()
  c.data.source = "dataset"  # 'dataset': an evaluation reader's split (data.dataset under data.root); or 'demo'.
  c.data.dataset = ""
  c.data.root = ""
  c.data.split = "train"
  c.data.class_names = class_names  # The label ids' names, as the dataset reader lists them.
  c.data.unseen_classes = ()  # Held out of training: their pixels are ignored.
  # INPUT: MIN_SIZE_TRAIN (short side chosen from these), MAX_SIZE_TRAIN, CROP.SIZE, SINGLE_CATEGORY_MAX_AREA,
  # COLOR_AUG_SSD True (detectron2's ColorAugSSDTransform on each crop).
  c.data.crop_size = crop_size
  c.data.short_sides = short_sides
  c.data.max_size = max_size
  c.data.cat_max_ratio = 1.0
  c.data.color_aug = True
  c.data.max_targets = 64  # Classes per crop kept as targets (padding for static shapes).
  c.data.workers = 8
  # A dataset prepared as TensorFlow Datasets (`python -m data_pipelines.prepare NAME --manual_dir --data_dir`),
  # read by tf.data on every host instead of data.dataset's files: its name and data dir.
  c.data.tfds_name = ""
  c.data.tfds_dir = ""
  c.data.shuffle_buffer = 1024

  c.model = ml_collections.ConfigDict()
  # MODEL.WEIGHTS detectron2://ImageNetPretrained/torchvision/R-50.pkl: set checkpoint to that file (or a
  # torchvision resnet50 .pth / Hugging Face directory).
  c.model.backbone = ml_collections.ConfigDict(dict(name="R50", checkpoint=""))
  # SEM_SEG_HEAD: MSDeformAttnPixelDecoder, CONVS_DIM 256, MASK_DIM 256, NORM GN, TRANSFORMER_ENC_LAYERS 6 over
  # res3-res5; 8 heads, 4 points, feed-forward 1024 (the pixel decoder's fixed values).
  c.model.pixel_decoder = ml_collections.ConfigDict(dict(
      conv_dim=256, mask_dim=256, num_layers=6, num_heads=8, num_points=4, ffn_dim=1024, num_groups=32,
      dropout_rate=0.0))
  # MASK_FORMER: 100 queries, HIDDEN_DIM 256, NHEADS 8, DIM_FEEDFORWARD 2048, DEC_LAYERS 10 (9 layers + the
  # queries' own prediction), PRE_NORM False, DROPOUT 0.0 (the pixel decoder's encoder uses it too).
  c.model.decoder = ml_collections.ConfigDict(dict(
      num_queries=100, hidden_dim=256, num_heads=8, ffn_dim=2048, num_layers=9, dropout_rate=0.0))
  # Names the queries' classes: 'head' (the K+1 linear head, as released) or 'text' (cosine with text embeddings
  # of class names from the frozen CLIP `text_encoder`, plus a learned no-object embedding; any vocabulary).
  c.model.classifier = ml_collections.ConfigDict(dict(
      kind="head", text_encoder="", embed_dim=0, templates="single", temperature=0.07, learn_temperature=True))
  c.model.dtype = "float32"

  # CLASS_WEIGHT 2, MASK_WEIGHT 5, DICE_WEIGHT 5, NO_OBJECT_WEIGHT 0.1, TRAIN_NUM_POINTS 12544,
  # OVERSAMPLE_RATIO 3, IMPORTANCE_SAMPLE_RATIO 0.75; DEEP_SUPERVISION True (always on here).
  c.loss = ml_collections.ConfigDict(dict(
      class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, num_points=12544,
      oversample_ratio=3.0, importance_sample_ratio=0.75))

  # SOLVER: ADAMW, BASE_LR 1e-4, WEIGHT_DECAY 0.05 (WEIGHT_DECAY_NORM / _EMBED 0), BACKBONE_MULTIPLIER 0.1,
  # WarmupPolyLR (POLY_LR_POWER 0.9, WARMUP_ITERS 0), CLIP_GRADIENTS full_model 0.01 (L2).
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1, poly_power=0.9, warmup_steps=0, grad_clip_norm=0.01,
      b1=0.9, b2=0.999))

  c.mesh = ml_collections.ConfigDict(dict(axes=(("data", -1),)))
  c.sharding_rules = ((".*", "fsdp"),)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=5000, keep=2, async_save=True))
  c.eval = eval_suite.get_config()
  c.eval.num_overlays = 8
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same model and step at batch 2 for 10 steps: checks a machine end to end (the data root still needed)."""
  c.batch_size = 2
  c.total_steps = 10
  c.log_every_steps = 2
  c.data.workers = 2
  c.checkpoint.every_steps = 5
  return c
