"""Data-efficiency reference: supervised training on the gold trajectories of the 16,000-task offline set,
then static GRPO on that set (the stand-in for the paper's 17K-trajectory offline pipeline).

python -m launch.train --config=configs/offline.py --workdir=runs/offline        # CPU lab
python -m launch.train --config=configs/offline.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  # The supervised stage reads env.seed_split's gold trajectories: ~2 epochs of the 16K offline set at batch 32.
  config.sft.steps = 1000
  return arms.apply_arm(config, "offline")
