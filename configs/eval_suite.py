r"""Evaluation protocols of S-Seg (paper sec. 4 and appendix A.1): VOC (21 classes), Pascal Context with background
(60) and COCO-Object (81); short side 448, sliding window 448 / stride 224, one prompt, background where the best
class probability (a score in [0, 1], `ovseg_jax/eval/mask_scores.py`) is below GroupViT's thresholds (VOC 0.95,
Pascal Context 0.35, COCO-Object 0.95).

  python -m ovseg_jax.evaluate --config=configs/eval_suite.py --checkpoint=WORKDIR \
      --config.datasets.0.root=/data/VOCdevkit/VOC2012 ...

With `--config.clip.checkpoint=ViT-B-16.pt --config.classifiers="('learned','clip_crop','ensemble:ovseg_voc')"`
masks are also classified by CLIP and the scores ensembled (`ovseg_jax/eval/classify.py`, `ensembles.py`). The
seen/unseen ensembles take a dataset's published zero-shot split as "seen" (VOC 15/5, COCO-Stuff 156/15, ADE-847
572/275) unless `clip.seen_classes` names others; the results say which classes counted as seen.

Variants: `vild` averages the 14 ViLD templates; `without_background` ignores background pixels (the
"without background" protocol of MaskCLIP-style papers); `demo` evaluates the embedded demo's held-out split.
Dataset names and layouts: `data_pipelines.eval_datasets`.
"""
import ml_collections


def protocol(**overrides) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict(dict(
      short_side=448, window=448, stride=224, templates="single", background="threshold",
      background_threshold=0.95, background_score=0.5, decode="sum", batch_size=4, synonyms={}))
  p.update(overrides)
  return p


def dataset(name: str, threshold: float | None = None, root: str = "", split: str = "val",
            tune_split: str = "") -> ml_collections.ConfigDict:
  entry = ml_collections.ConfigDict(dict(name=name, root=root, split=split, tune_split=tune_split))
  entry.protocol = ml_collections.ConfigDict({} if threshold is None else {"background_threshold": threshold})
  return entry


def clip() -> ml_collections.ConfigDict:
  """Which CLIP classifies masks for the non-learned classifiers (`ovseg_jax/eval/classify.py`)."""
  return ml_collections.ConfigDict(dict(
      checkpoint="",  # OpenAI .pt, open_clip file or Hugging Face directory (ViT-B/16 in the papers).
      activation="",  # Only for open_clip state dicts without open_clip_config.json: 'quick_gelu' or 'gelu'.
      crop_size=0,  # 0: the CLIP's own input size.
      mask_threshold=0.5,
      seen_classes=(),  # Empty: the dataset's published zero-shot split, if any.
      no_object_logit=-1.0))  # >= 0: a fixed "no object" class with this logit in CLIP's softmax (e.g. 20).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "vild", "without_background", "demo"):
    raise ValueError(f"configs/eval_suite.py: unknown variant {variant!r}; use default, vild, without_background "
                     "or demo.")
  c = ml_collections.ConfigDict()
  c.protocol = protocol()
  c.datasets = [dataset("voc", 0.95), dataset("context60", 0.35), dataset("coco_object", 0.95)]
  c.num_overlays = 4
  c.baselines = False  # Also score chance predictors (uniform random, all background) on the same labels.
  c.seed = 0  # Of the uniform-random baseline.
  # 'learned' (the segmenter's own mask classes), 'clip_crop', 'clip_dense', or 'ensemble:NAME' with NAME one of
  # ovseg_ade, ovseg_context, ovseg_voc, maft_ipclip, maft_frozen_clip, ebseg_vitb, ebseg_vitl (the released
  # combinations and weights, each cited in ovseg_jax/eval/ensembles.py). Each listed classifier gets its own row.
  c.classifiers = ("learned",)
  c.clip = clip()
  if variant == "vild":
    c.protocol.templates = "vild"
  if variant == "without_background":
    c.protocol.background = "exclude"
    c.datasets = [dataset("voc"), dataset("context60"), dataset("coco_object")]
  if variant == "demo":  # The demo trains at 64 pixels: windows of its size; threshold tuned on its tune split.
    c.protocol = protocol(short_side=64, window=64, stride=32, decode="winner", batch_size=32,
                          background_threshold=-1.0, synonyms={
                              "background": ("background", "grass", "sand", "water", "brick", "wood", "snow")})
    c.datasets = [dataset("demo", split="eval", tune_split="tune")]
    c.baselines = True
  return c
