r"""OVSeg's open-vocabulary demo: every stage of its CLIP adaptation in the shared-palette demo world (colours and
textures shared by all classes, so a masked crop is named by its shape), with star, moon and house held out of the
proposal model's labels, over several seeds; one table of seen / unseen / harmonic mIoU per classifier.

  python -m ovseg_jax.main --config=configs/ovseg_demo.py --workdir=/tmp/ovseg_demo

Per seed (the world's scenes, initialisations and data order all follow it), in WORKDIR/seed_N/:
  clip       a small CLIP pre-trained on the demo's image-caption shards (configs/clip_demo.py, fewer steps);
  proposals  supervised Mask2Former on the seen classes' pixel labels (configs/mask2former_demo.py, fewer steps);
  pairs      mask-category pairs: the proposals on the first `mining.num_shards` caption shards, named by the
             pre-trained CLIP with each caption's nouns;
  finetune   masked-crop fine-tuning of the image tower on the pairs (text locked, open_clip's AdamW, crops at
             scale 0.9-1.0, no flip, as released; the demo's lr and step count are its own);
  prompts    mask prompt tuning (depth 3, lr 0.05 as released) on the fine-tuned weights, only the prompts train;
  maft       MAFT's IP-CLIP fine-tuning of the pre-trained CLIP on the proposal model's masks (configs/maft_demo.py);
  ebseg      EBSeg trained on the seen classes' labels from the pre-trained CLIP (configs/ebseg_demo.py), which
             names its own masks;
  eval       the rows of `ovseg_jax.methods.ovseg.demo_rows.ROWS` on the held-out split, every classifier naming the
             proposal model's own masks, and masked-crop accuracy of each CLIP on the split's labelled regions.
WORKDIR/results.md holds the mean and spread over the seeds and the per-class figures. Every stage trains a fixed
number of steps; re-running the command skips finished stages and resumes an interrupted one. `:tiny` is the
test-sized run.
"""
import ml_collections

from configs import clip_demo, ebseg_demo, eval_suite, maft_demo, mask2former_demo

UNSEEN = mask2former_demo.UNSEEN


def _world(data: ml_collections.ConfigDict) -> None:
  """The shared-palette world, the same in every stage (one demo cache per seed)."""
  data.update(demo_root="~/.cache/ovseg_jax/demo", image_size=64, num_train=12000, num_eval=300, num_tune=150,
              palette="shared")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/ovseg_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  c = ml_collections.ConfigDict()
  c.trainer = "ovseg_demo"
  c.seeds = (0, 1, 2)
  # The stages this command runs, in order (empty: all of ovseg_jax.methods.ovseg.demo.STAGES). Commands running
  # different stages may share a workdir, e.g. `proposals` and `ebseg` side by side once `clip` is done; a seed's
  # rows are evaluated by the command that finds all its stages finished.
  c.stages = ()
  c.unseen_classes = UNSEEN

  c.clip = clip_demo.get_config("tiny" if variant == "tiny" else None)
  c.clip.total_steps = 1500  # The shared-palette world names objects by shape alone: slower to learn.
  c.clip.checkpoint.every_steps = 250
  _world(c.clip.data)

  c.proposals = mask2former_demo.get_config("tiny" if variant == "tiny" else None)
  c.proposals.total_steps = 1000
  c.proposals.checkpoint.every_steps = 250
  c.proposals.eval.num_overlays = 2
  _world(c.proposals.data)

  c.mining = ml_collections.ConfigDict(dict(
      num_shards=3,  # The first shards of the world's caption shards (1,000 images each).
      mask_threshold=0.5,
      min_pixels=32,  # Masks of fewer pixels (under 1% of a 64-pixel scene) are dropped and counted.
      assign="mask"))  # Each mask its best noun (OVSeg's pairs); 'noun': each noun its best mask.

  # Masked-crop fine-tuning: configs/ovseg_finetune.py's recipe on the demo CLIP's architecture; the demo's own
  # lr (a fifth of pre-training's: the released 5e-6 is for OpenAI's CLIP at batch 128-1024) and step count (about
  # two thirds of a pass over the 3 shards' pairs; released: 5 epochs).
  c.finetune = clip_demo.get_config("tiny" if variant == "tiny" else None)
  c.finetune.data.update(source="shards", shards="", crop_scale=(0.9, 1.0), flip=False)
  c.finetune.freeze = ("text",)
  c.finetune.init.required = True
  c.finetune.total_steps = 400
  c.finetune.optimizer.update(lr=1e-4, warmup_steps=50)

  c.prompts = ml_collections.ConfigDict(c.finetune.to_dict())
  c.prompts.model.mask_prompt_depth = 3
  c.prompts.freeze = ("image", "text", "logit_scale")
  c.prompts.total_steps = 200
  c.prompts.optimizer.update(lr=0.05, weight_decay=0.0)

  # MAFT (configs/maft_demo.py) on the seed's CLIP and proposal model; EBSeg (configs/ebseg_demo.py) from the
  # seed's CLIP with its own segmenter, trained on the same seen classes' labels.
  c.maft = maft_demo.get_config(variant)
  _world(c.maft.data)
  c.ebseg = ebseg_demo.get_config(variant)
  _world(c.ebseg.data)

  # Every classifier names the proposal model's masks: each pixel takes its winning mask's class, background a
  # class like the others (named by the scene words for CLIP); masks cut at 0.4 for CLIP's crops (OVSeg's inference).
  c.eval = eval_suite.get_config("demo")
  c.eval.protocol.background = "none"
  c.eval.datasets[0].tune_split = ""
  c.eval.datasets[0].unseen_classes = UNSEEN
  c.eval.num_overlays = 2
  c.eval.clip.mask_threshold = 0.4
  c.ensemble = "ensemble:ovseg_ade"  # OVSeg's lambda 0.7 (appendix C; the released CLIP_ENSEMBLE_WEIGHT).

  if variant == "tiny":
    c.seeds = (0, 1)
    c.clip.total_steps = c.proposals.total_steps = 3
    c.finetune.total_steps = c.prompts.total_steps = 3
    c.finetune.optimizer.warmup_steps = c.prompts.optimizer.warmup_steps = 1
    c.mining.update(num_shards=1, min_pixels=1)
    for section in (c.clip, c.proposals, c.finetune, c.prompts, c.maft, c.ebseg):
      section.data.update(num_train=32, num_eval=8, num_tune=4)
      section.checkpoint.every_steps = 3
    for section in (c.proposals, c.maft, c.ebseg):
      section.data.num_labelled = 16
    c.eval.protocol.batch_size = 8
    c.eval.num_overlays = 0
  return c
