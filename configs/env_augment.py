"""Environment augmentation (EnvTuning idea): uniform structure-preserving perturbations of random seeds
plus actionable hints in tool error messages; not boundary-targeted.

python -m launch.train --config=configs/env_augment.py --workdir=runs/env_augment        # CPU lab
python -m launch.train --config=configs/env_augment.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "env_augment")
