r"""Mines OVSeg's mask-category pairs: a mask model's proposals on captioned images, named by a CLIP with the
caption's nouns, written as shards the CLIP trainer reads (`ovseg_jax.methods.ovseg.pairs`).

  python -m ovseg_jax.methods.ovseg.mine --proposals=/tmp/m2f_demo --clip=/tmp/clip_demo \
      --shards='/data/cc/{00000..00099}.tar' --output=/tmp/pairs

`--proposals` is a mask model's training workdir (supervised Mask2Former or S-Seg), `--clip` a CLIP file, Hugging
Face CLIPModel directory or CLIP training workdir. Each host mines its share of the shards (run the same command on
every host); shards already mined are skipped, so a killed run resumes. The counts of images, masks and pairs kept
and dropped (summed over every shard mined so far) are printed and written to OUTPUT/counts.json.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections

from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.methods.ovseg import pairs, proposals
from ovseg_jax.train import distributed, progress


def mine(proposals_workdir: str | Path, clip: str | Path, shards: str | Sequence[str], output: str | Path,
         mask_threshold: float = 0.5, min_pixels: int = 1, assign: str = "mask",
         template: str = "a photo of a {}.") -> dict[str, int]:
  """Mines this host's share of `shards` into `output`; returns the counts over every shard mined there so far."""
  mask_model = proposals.load_mask_model(proposals_workdir)
  classifier = clip_setup.classifier(ml_collections.ConfigDict({"checkpoint": str(clip)}))
  arch = classifier.module.architecture
  encode_crops, encode_texts = pairs.clip_encoders(classifier.module, classifier.params, arch.context_length)
  counts = pairs.mine_shards(shards, output, proposals.binary_proposals(mask_model, mask_threshold),
                             jax.process_index(), jax.process_count(), encode_crops=encode_crops,
                             encode_texts=encode_texts, size=arch.image_size, template=template, assign=assign,
                             min_pixels=min_pixels)
  (Path(output).expanduser() / "counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
  progress.log("mined pairs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  return counts


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--proposals", required=True, help="mask model training workdir (mask2former or sseg)")
  parser.add_argument("--clip", required=True, help="CLIP file, HF directory or CLIP training workdir")
  parser.add_argument("--shards", required=True, help="captioned image shards, a brace pattern")
  parser.add_argument("--output", required=True)
  parser.add_argument("--mask_threshold", type=float, default=0.5)
  parser.add_argument("--min_pixels", type=int, default=1, help="smaller masks are dropped (counted)")
  parser.add_argument("--assign", default="mask", choices=("mask", "noun"))
  args = parser.parse_args(argv)
  distributed.initialize_distributed()
  mine(args.proposals, args.clip, args.shards, args.output, args.mask_threshold, args.min_pixels, args.assign)


if __name__ == "__main__":
  main()
