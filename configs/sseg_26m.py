r"""S-Seg on 26M pairs as published: CC3M + CC12M + the first 11M of RedCaps, everything else as
`configs/sseg_cc12m.py` (Table 5: batch 4096, 30 epochs, 2 warmup epochs).

  python -m ovseg_jax.main --config=configs/sseg_26m.py --workdir=gs://BUCKET/sseg_26m \
      --config.data.shards="('gs://B/cc3m/{00000..00331}.tar', 'gs://B/cc12m/{00000..01242}.tar', \
                             'gs://B/redcaps/{00000..01099}.tar')" \
      --config.pseudo_masks.dino_checkpoint=/path/dino_deitsmall8_pretrain.pth
"""
import ml_collections

from configs import sseg_cc12m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return sseg_cc12m.paper_config(
      arg, shards=("cc3m/{00000..00331}.tar", "cc12m/{00000..01242}.tar", "redcaps/{00000..01099}.tar"),
      num_examples=26_000_000)
