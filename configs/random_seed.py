"""Ablation: skill-aligned synthesis from uniformly drawn seeds instead of boundary seeds.

python -m launch.train --config=configs/random_seed.py --workdir=runs/random_seed        # CPU lab
python -m launch.train --config=configs/random_seed.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "random_seed")
