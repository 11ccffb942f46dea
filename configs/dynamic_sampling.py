"""DAPO-style dynamic sampling on the static seeds: zero-variance groups are dropped and the batch is
refilled from more seeds (what users of other frameworks do instead of RODS).

python -m launch.train --config=configs/dynamic_sampling.py --workdir=runs/dynamic_sampling        # CPU lab
python -m launch.train --config=configs/dynamic_sampling.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "dynamic_sampling")
