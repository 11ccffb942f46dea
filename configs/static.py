"""Static-data GRPO on the fixed seed tasks (no synthesis): the paper's GRPO baseline.

python -m launch.train --config=configs/static.py --workdir=runs/static        # CPU lab
python -m launch.train --config=configs/static.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "static")
