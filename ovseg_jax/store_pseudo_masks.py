r"""Computes S-Seg's pseudo masks once and stores them beside the training shards, for
`--config.pseudo_masks.source=stored` runs (which then skip DINO and K-means in every step).

  python -m ovseg_jax.store_pseudo_masks --config=configs/sseg_cc12m.py \
      --config.pseudo_masks.dino_checkpoint=/path/dino_deitsmall8_pretrain.pth
  python -m ovseg_jax.main --config=configs/sseg_cc12m.py --config.pseudo_masks.source=stored --workdir=...

Run it on every host of a pod (each writes its share of the shards) with the same config training will use;
re-running skips finished shards.
"""
from absl import app, flags

from ovseg_jax import cli

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per pseudo-mask forward.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ovseg_jax.methods.sseg import pseudo_mask_store
  from ovseg_jax.train import distributed
  distributed.initialize_distributed()
  pseudo_mask_store.store_pseudo_masks(cli.CONFIG.value, batch_size=_BATCH.value)


if __name__ == "__main__":
  cli.run(main, required=("config",))
