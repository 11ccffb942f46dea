"""Ablation: synthesize one pool from the warm-up policy's boundary before training, then train statically.

python -m launch.train --config=configs/static_pool.py --workdir=runs/static_pool        # CPU lab
python -m launch.train --config=configs/static_pool.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "static_pool")
