"""RODS: boundary seeds -> skill-aligned synthesis -> dynamic replay buffer (burn-in, retirement, P_max).

python -m launch.train --config=configs/rods.py --workdir=runs/rods        # CPU lab
python -m launch.train --config=configs/rods.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "rods")
