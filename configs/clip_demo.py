r"""A small CLIP pre-trained on the demo's image-caption shards (the text side of the open-vocabulary demo).

  python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo

Uses the same generated scenes as `configs/sseg_demo.py` (shared cache). Ends with the masked-crop accuracy of
the demo's held-out object regions. `:tiny` is a seconds-long smoke run.
"""
import ml_collections

from configs import sseg_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/clip_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  c = ml_collections.ConfigDict()
  c.trainer = "clip"
  c.seed = 0
  c.batch_size = 64
  c.total_steps = 850
  c.max_train_minutes = 0.0  # A fixed number of steps on every machine.
  c.log_every_steps = 50

  # The S-Seg demo's data section: the same generated scenes and captions (one cache).
  c.data = ml_collections.ConfigDict(sseg_demo.get_config().data.to_dict())
  c.data.flip = True

  # models/clip.py's ClipArchitecture; a file or workdir in init.clip must have the same.
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=128, image_size=c.data.image_size, patch_size=8, vision_width=128, vision_layers=4, vision_heads=4,
      context_length=c.data.context_length, vocab_size=49408, text_width=128, text_layers=4, text_heads=4,
      activation="quick_gelu", layer_norm_eps=1e-5, mask_prompt_depth=0))

  c.init = ml_collections.ConfigDict()
  c.init.clip = ""  # A CLIP file, Hugging Face CLIPModel directory or CLIP training workdir; "" starts at random.
  c.init.activation = ""  # For open_clip state dicts without open_clip_config.json.
  # Parameter groups not trained: 'image', 'text', 'logit_scale', 'prompts' (open_clip's --lock-text: ('text',)).
  c.freeze = ()

  c.optimizer = ml_collections.ConfigDict()  # open_clip's AdamW for ViTs.
  c.optimizer.lr = 5e-4
  c.optimizer.end_lr_factor = 0.0
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.2
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-6
  c.optimizer.grad_clip_norm = 0.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", -1),)
  c.sharding_rules = ((".*", "fsdp"),)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 300
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True

  if variant == "tiny":
    c.batch_size = 8
    c.total_steps = 6
    c.log_every_steps = 2
    c.data.num_train = 64
    c.data.num_eval = 16
    c.data.num_tune = 8
    c.data.shuffle_buffer = 32
    c.data.context_length = 16
    c.model.update(embed_dim=32, vision_width=32, vision_layers=1, vision_heads=2, context_length=16,
                   text_width=32, text_layers=1, text_heads=2)
    c.optimizer.warmup_steps = 2
    c.checkpoint.every_steps = 3
  return c
