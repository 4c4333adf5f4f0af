r"""MAFT on the embedded demo: the demo CLIP (`configs/clip_demo.py`) fine-tuned as IP-CLIP on the proposals of the
demo Mask2Former (`configs/mask2former_demo.py`), with the labelled demo scenes of the seen classes (the unseen
classes' pixels ignored, as the Mask2Former was trained), then evaluated on the held-out split with seen / unseen
/ harmonic mIoU for IP-CLIP alone and the eq. 1 ensemble, beside the same rows for the frozen demo CLIP.

  python -m ovseg_jax.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo
  python -m ovseg_jax.main --config=configs/mask2former_demo.py --workdir=/tmp/m2f_demo
  python -m ovseg_jax.main --config=configs/maft_demo.py --workdir=/tmp/maft_demo \
      --config.init.clip=/tmp/clip_demo --config.init.mask2former=/tmp/m2f_demo

The recipe is `configs/maft_coco_stuff.py`'s (losses, what trains, AdamW with norms undecayed, poly without
warmup, clip 0.01, batch 16); the demo's choices: 200 steps at lr `optimizer.lr` 1e-4 (the tiny CLIP was
pre-trained at 5e-4; at the released 1e-5 it barely moves in 200 steps), masked attention in the last 2 of its 4
blocks (ViT-B/16 as released: the last 4 of 12), and IP-CLIP at the CLIP's own 64 pixels (released: 480 for a
224 CLIP, the crops being 640). `:tiny` is the test-sized run (give it tiny CLIP and Mask2Former workdirs).
"""
import ml_collections

from configs import clip_demo, eval_suite, maft_coco_stuff, mask2former_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"configs/maft_demo.py: unknown variant {variant!r}; use 'default' or 'tiny'.")
  m2f = mask2former_demo.get_config(variant)
  clip = clip_demo.get_config(variant)
  c = maft_coco_stuff.common(ml_collections.ConfigDict(m2f.data.to_dict()), clip.model.to_dict(), batch_size=16,
                             total_steps=200)
  c.seed = 0
  c.init.update(clip="/tmp/clip_demo", mask2former="/tmp/m2f_demo")
  c.maft.update(start_layers=2, input_size=clip.model.image_size)
  c.optimizer.lr = 1e-4
  c.checkpoint.every_steps = 100
  c.eval = eval_suite.get_config("demo")
  c.eval.datasets[0].unseen_classes = mask2former_demo.UNSEEN
  c.eval.num_overlays = 4
  if variant == "tiny":
    c.batch_size = 4
    c.total_steps = 3
    c.log_every_steps = 1
    c.maft.start_layers = 0
    c.checkpoint.every_steps = 2
    c.eval.protocol.batch_size = 8
    c.eval.num_overlays = 1
  return c
