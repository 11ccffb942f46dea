"""Ablation: RODS without retirement of mastered / unsolvable / stale generated tasks.

python -m launch.train --config=configs/no_retire.py --workdir=runs/no_retire        # CPU lab
python -m launch.train --config=configs/no_retire.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "no_retire")
